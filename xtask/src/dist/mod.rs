//! `cargo xtask dist`: what a user installs, built into `target/dist/`.
//!
//! ```text
//! target/dist/
//!   egress-filter                 static (musl), stripped, kernel object embedded
//!   egress-filter.debug           its debug info (objcopy --only-keep-debug), named by a
//!                                 .gnu_debuglink in the binary
//!   docs/man/*.1, docs/completions/*   generated from the command line's definition
//!   egress-filter_<version>_amd64.deb
//!   egress-filter-<version>.oci.tar    an OCI image FROM scratch (oci-archive)
//! ```
//!
//! Every step is a plain tool from Debian (objcopy, dpkg-deb, buildah) run on files staged
//! here, so the result does not depend on anything but this tree.

mod deb;
mod image;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::Context as _;

use crate::{cargo, run_cmd, workspace_root};

/// The static binary's target; `cargo xtask setup` adds it.
pub(crate) const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";
/// The version of every artifact: the workspace's.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The workspace's licence (Cargo.toml), for the package and the image.
pub(crate) const LICENSE: &str = env!("CARGO_PKG_LICENSE");

/// What the packaging steps share: where things are and what identifies this build.
pub(crate) struct Dist {
    pub dir: PathBuf,
    pub binary: PathBuf,
    pub docs: PathBuf,
    pub commit: String,
}

pub(crate) fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let dir = workspace_root().join("target/dist");
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;

    let build_started = Instant::now();
    run_cmd(cargo().args([
        "build",
        "--locked",
        "--release",
        "--target",
        MUSL_TARGET,
        "--package",
        "filter-user",
        "--bin",
        "egress-filter",
    ]))?;
    let build_time = build_started.elapsed();
    let built = workspace_root().join(format!("target/{MUSL_TARGET}/release/egress-filter"));
    let binary = dir.join("egress-filter");
    split_debug_info(&built, &binary)?;

    let docs = dir.join("docs");
    let _stale = std::fs::remove_dir_all(&docs);
    run_cmd(Command::new(&binary).arg("generate-docs").arg(&docs))?;

    let dist = Dist {
        dir,
        binary,
        docs,
        commit: git_commit(),
    };
    let deb = deb::build(&dist)?;
    let image = image::build(&dist)?;

    println!("dist: release musl build {build_time:.0?}");
    for path in [
        dist.binary.clone(),
        dist.binary.with_extension("debug"),
        deb,
        image.archive,
    ] {
        println!("dist: {} {}", size(&path)?, path.display());
    }
    println!(
        "dist: the image's layer holds {} of files",
        human(image.content_bytes)
    );
    println!("dist: done in {:.0?}", started.elapsed());
    Ok(())
}

/// Copies `built` to `stripped` without symbols or debug info, keeping those in
/// `stripped.debug`, which the binary names in its .gnu_debuglink (gdb finds it beside it or
/// under /usr/lib/debug).
fn split_debug_info(built: &Path, stripped: &Path) -> anyhow::Result<()> {
    let debug = stripped.with_extension("debug");
    run_cmd(
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(built)
            .arg(&debug),
    )?;
    // objcopy records the debug file's base name and checksum; run beside it.
    let dir = stripped.parent().context("dist file without a directory")?;
    run_cmd(
        Command::new("objcopy")
            .current_dir(dir)
            .arg("--strip-all")
            .arg(format!(
                "--add-gnu-debuglink={}",
                debug
                    .file_name()
                    .context("debug file name")?
                    .to_string_lossy()
            ))
            .arg(built)
            .arg(stripped),
    )
}

/// The commit being packaged, as `--version` shows it.
fn git_commit() -> String {
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// What git prints for `args` in the workspace, if it succeeds.
pub(crate) fn git(args: &[&str]) -> Option<String> {
    Command::new("git")
        .args(args)
        .current_dir(workspace_root())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn size(path: &Path) -> anyhow::Result<String> {
    let bytes = std::fs::metadata(path)
        .with_context(|| format!("{} is missing", path.display()))?
        .len();
    Ok(human(bytes))
}

fn human(bytes: u64) -> String {
    let tenths = bytes * 10 / (1024 * 1024);
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}
