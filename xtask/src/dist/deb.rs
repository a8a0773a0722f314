//! The Debian package, built with dpkg-deb from a tree staged here: every file and maintainer
//! script is in view, and nothing beyond dpkg-dev is needed.
//!
//! What it holds, and why:
//! - `/usr/bin/egress-filter`, the static binary (no `Depends:`);
//! - `/lib/systemd/system/egress-filter.service`, `deploy/egress-filter.service` with the
//!   binary's packaged path; `postinst` only reloads systemd: installing enables and starts
//!   nothing, since the interfaces are the operator's to choose;
//! - `/etc/egress-filter/rules/*.toml` (and `optional/`), the shipped rules, as conffiles: an
//!   upgrade never overwrites an operator's edit (dpkg asks);
//! - man pages, bash/zsh/fish completions, the copyright file and the README.
//!
//! There is no `prerm`: removing the package stops nothing, so it detaches nothing.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

use super::{Dist, VERSION};
use crate::{run_cmd, workspace_root};

/// Where the packaged unit finds the binary, replacing the source install's path.
const SOURCE_BINARY_PATH: &str = "/usr/local/bin/egress-filter";
const PACKAGED_BINARY_PATH: &str = "/usr/bin/egress-filter";

/// Completion scripts and where each shell looks for a package's.
const COMPLETIONS: [(&str, &str); 3] = [
    ("egress-filter", "usr/share/bash-completion/completions"),
    ("_egress-filter", "usr/share/zsh/vendor-completions"),
    ("egress-filter.fish", "usr/share/fish/vendor_completions.d"),
];

/// Builds the package; returns its path.
pub(crate) fn build(dist: &Dist) -> anyhow::Result<PathBuf> {
    let root = workspace_root();
    let stage = dist.dir.join("deb-root");
    let _stale = std::fs::remove_dir_all(&stage);

    install(&dist.binary, &stage.join("usr/bin/egress-filter"), 0o755)?;

    let unit = std::fs::read_to_string(root.join("deploy/egress-filter.service"))?;
    anyhow::ensure!(
        unit.contains(SOURCE_BINARY_PATH),
        "deploy/egress-filter.service no longer runs {SOURCE_BINARY_PATH}: update the packaging"
    );
    write(
        &stage.join("lib/systemd/system/egress-filter.service"),
        &unit.replace(SOURCE_BINARY_PATH, PACKAGED_BINARY_PATH),
        0o644,
    )?;

    let mut conffiles = String::new();
    for (from, to) in [
        ("rules", "etc/egress-filter/rules"),
        ("rules/optional", "etc/egress-filter/rules/optional"),
    ] {
        for file in files_with_extension(&root.join(from), "toml")? {
            let name = file.file_name().context("rules file name")?;
            install(&file, &stage.join(to).join(name), 0o644)?;
            writeln!(conffiles, "/{to}/{}", name.to_string_lossy())?;
        }
    }

    for page in files_with_extension(&dist.docs.join("man"), "1")? {
        let name = page.file_name().context("man page name")?.to_string_lossy();
        let target = stage.join("usr/share/man/man1").join(format!("{name}.gz"));
        gzip(&page, &target)?;
    }
    for (script, dir) in COMPLETIONS {
        install(
            &dist.docs.join("completions").join(script),
            &stage.join(dir).join(script),
            0o644,
        )?;
    }
    let doc = stage.join("usr/share/doc/egress-filter");
    install(
        &root.join("deploy/debian/copyright"),
        &doc.join("copyright"),
        0o644,
    )?;
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;

    let control = std::fs::read_to_string(root.join("deploy/debian/control"))?
        .replace("@VERSION@", VERSION)
        .replace("@INSTALLED_SIZE@", &installed_size_kib(&stage)?.to_string());
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), &control, 0o644)?;
    write(&debian.join("conffiles"), &conffiles, 0o644)?;
    for script in ["postinst", "postrm"] {
        install(
            &root.join("deploy/debian").join(script),
            &debian.join(script),
            0o755,
        )?;
    }

    let deb = dist.dir.join(format!("egress-filter_{VERSION}_amd64.deb"));
    run_cmd(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&stage)
            .arg(&deb),
    )?;
    Ok(deb)
}

/// The `*.EXTENSION` files directly in `dir`, sorted.
fn files_with_extension(dir: &Path, extension: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.is_file() && path.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    Ok(files)
}

fn install(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let contents =
        std::fs::read(from).with_context(|| format!("cannot read {}", from.display()))?;
    write_bytes(to, &contents, mode)
}

fn write(to: &Path, contents: &str, mode: u32) -> anyhow::Result<()> {
    write_bytes(to, contents.as_bytes(), mode)
}

fn write_bytes(to: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(to, contents).with_context(|| format!("cannot write {}", to.display()))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// gzip -9n: no name or time stamp inside, so the same page packs to the same bytes.
fn gzip(from: &Path, to: &Path) -> anyhow::Result<()> {
    let out = Command::new("gzip")
        .args(["-9n", "--stdout"])
        .arg(from)
        .output()
        .context("cannot run gzip")?;
    anyhow::ensure!(out.status.success(), "gzip {} failed", from.display());
    write_bytes(to, &out.stdout, 0o644)
}

/// What `Installed-Size` counts: the staged files, in KiB, rounded up per file as dpkg-gencontrol
/// does.
fn installed_size_kib(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            total += installed_size_kib(&entry.path())?;
        } else {
            total += entry.metadata()?.len().div_ceil(1024);
        }
    }
    Ok(total)
}
