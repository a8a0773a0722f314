//! What `cargo xtask dist` built, checked as a user meets it: the static binary runs anywhere,
//! the .deb installs into a scratch root (and removes and purges as documented), its unit
//! passes `systemd-analyze verify`, and the OCI image's config and binary are right — the
//! binary taken out of the image filters in a namespace lab. Needs root (the lab) and
//! `cargo xtask dist` first (`cargo xtask test` runs it).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use filter_tests::{
    daemon::Daemon,
    dist::{self, stdout, OciImage, Scratch, VERSION},
    lab::{Lab, RulesDir, WEB_A_443, WEB_A_V4, WEB_B_V4},
};

fn deb() -> anyhow::Result<PathBuf> {
    Ok(dist::dir()?.join(format!("egress-filter_{VERSION}_amd64.deb")))
}

/// The shipped rules files, as the package installs them (`/etc/egress-filter/rules/...`).
fn shipped_rules() -> anyhow::Result<Vec<String>> {
    let mut files = Vec::new();
    for (from, to) in [
        ("rules", "/etc/egress-filter/rules"),
        ("rules/optional", "/etc/egress-filter/rules/optional"),
    ] {
        for entry in std::fs::read_dir(dist::workspace().join(from))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if Path::new(&name).extension().is_some_and(|e| e == "toml") {
                files.push(format!("{to}/{name}"));
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `--version` names the release, the commit and the kernel object's sha256.
fn assert_version(binary: &Path) -> anyhow::Result<()> {
    let version = stdout(Command::new(binary).arg("--version"))?;
    let rest = version
        .strip_prefix(&format!("egress-filter {VERSION} (commit "))
        .unwrap_or_else(|| panic!("unexpected --version: {version}"));
    let (commit, hash) = rest
        .trim_end()
        .trim_end_matches(')')
        .split_once(", kernel object sha256 ")
        .unwrap_or_else(|| panic!("no object hash in --version: {version}"));
    assert!(!commit.is_empty(), "{version}");
    assert!(
        hash.len() == 64 && hash.chars().all(|c| c.is_ascii_hexdigit()),
        "{version}"
    );
    Ok(())
}

/// `check --rules DIR` passes on the rules shipped with the artifact.
fn assert_checks(binary: &Path, rules: &Path) -> anyhow::Result<()> {
    let report = stdout(Command::new(binary).arg("check").arg("--rules").arg(rules))?;
    assert!(report.contains("ok: 64 services"), "{report}");
    Ok(())
}

#[test]
fn the_binary_is_static_stripped_and_runs() -> anyhow::Result<()> {
    let dir = dist::dir()?;
    let binary = dir.join("egress-filter");
    let kind = stdout(Command::new("file").arg("--brief").arg(&binary))?;
    assert!(
        kind.contains("statically linked") || kind.contains("static-pie linked"),
        "{kind}"
    );
    assert!(
        kind.contains("stripped") && !kind.contains("not stripped"),
        "{kind}"
    );
    let headers = stdout(
        Command::new("readelf")
            .args(["--program-headers", "--wide"])
            .arg(&binary),
    )?;
    assert!(!headers.contains("INTERP"), "no dynamic loader: {headers}");
    assert_version(&binary)?;
    assert_checks(&binary, &dist::workspace().join("rules"))?;

    // The debug info sits beside it, and the binary names it.
    let link = stdout(
        Command::new("readelf")
            .args(["--string-dump=.gnu_debuglink"])
            .arg(&binary),
    )?;
    assert!(link.contains("egress-filter.debug"), "{link}");
    let sections = stdout(
        Command::new("readelf")
            .arg("--sections")
            .arg(dir.join("egress-filter.debug")),
    )?;
    assert!(sections.contains(".debug_info"), "{sections}");
    Ok(())
}

#[test]
fn the_deb_declares_its_files_and_conffiles() -> anyhow::Result<()> {
    let deb = deb()?;
    let field = |name: &str| stdout(Command::new("dpkg-deb").arg("--field").arg(&deb).arg(name));
    assert_eq!(field("Package")?.trim(), "egress-filter");
    assert_eq!(field("Version")?.trim(), VERSION);
    assert_eq!(field("Architecture")?.trim(), "amd64");
    assert_eq!(
        field("Depends")?.trim(),
        "",
        "a static binary depends on nothing"
    );

    let info = stdout(Command::new("dpkg-deb").arg("--info").arg(&deb))?;
    assert!(
        info.contains("postinst") && info.contains("postrm"),
        "{info}"
    );
    assert!(
        !info.contains("prerm"),
        "removal stops nothing, so no prerm: {info}"
    );
    let postinst = stdout(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("postinst"),
    )?;
    for never in ["enable", "start", "restart"] {
        assert!(
            !postinst
                .lines()
                .filter(|l| !l.starts_with('#'))
                .any(|l| l.contains(never)),
            "installing must not {never} the service: {postinst}"
        );
    }

    let conffiles = stdout(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles"),
    )?;
    let mut conffiles: Vec<String> = conffiles.lines().map(str::to_owned).collect();
    conffiles.sort();
    assert_eq!(conffiles, shipped_rules()?);

    let contents = stdout(Command::new("dpkg-deb").arg("--contents").arg(&deb))?;
    for path in [
        "./usr/bin/egress-filter",
        "./lib/systemd/system/egress-filter.service",
        "./usr/share/man/man1/egress-filter.1.gz",
        "./usr/share/man/man1/egress-filter-run.1.gz",
        "./usr/share/bash-completion/completions/egress-filter",
        "./usr/share/zsh/vendor-completions/_egress-filter",
        "./usr/share/fish/vendor_completions.d/egress-filter.fish",
        "./usr/share/doc/egress-filter/copyright",
        "./etc/egress-filter/rules/intune.toml",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{contents}"
        );
    }
    Ok(())
}

/// `dpkg --root` on an empty database: installs, upgrades (keeping an edited conffile), removes
/// (keeping the rules) and purges (removing them), each with the package's own scripts.
#[test]
fn the_deb_installs_upgrades_removes_and_purges_in_a_scratch_root() -> anyhow::Result<()> {
    let deb = deb()?;
    let scratch = Scratch::new("dpkg-root")?;
    let root = &scratch.0;
    std::fs::create_dir_all(root.join("var/lib/dpkg/info"))?;
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates"))?;
    std::fs::write(root.join("var/lib/dpkg/status"), "")?;
    let dpkg = |args: &[&str]| {
        stdout(
            Command::new("dpkg")
                .arg(format!("--root={}", root.display()))
                // The scripts run here, told the root by DPKG_ROOT: the scratch root has no shell.
                .args(["--force-script-chrootless", "--force-confold"])
                .args(args),
        )
    };
    dpkg(&["--install", deb.to_str().expect("UTF-8 path")])?;
    let installed = root.join("usr/bin/egress-filter");
    assert_version(&installed)?;
    assert_checks(&installed, &root.join("etc/egress-filter/rules"))?;
    verify_unit(root)?;

    let edited = root.join("etc/egress-filter/rules/apple.toml");
    let mut text = std::fs::read_to_string(&edited)?;
    text.push_str("# the operator's edit\n");
    std::fs::write(&edited, &text)?;
    dpkg(&["--install", deb.to_str().expect("UTF-8 path")])?;
    assert_eq!(
        std::fs::read_to_string(&edited)?,
        text,
        "an upgrade keeps an edit"
    );

    dpkg(&["--remove", "egress-filter"])?;
    assert!(!installed.exists());
    assert!(edited.exists(), "remove keeps the rules");
    dpkg(&["--purge", "egress-filter"])?;
    assert!(!edited.exists(), "purge removes them");
    Ok(())
}

/// `systemd-analyze verify` on the installed unit, its binary path pointed into `root` (verify
/// checks that the commands exist on this machine).
fn verify_unit(root: &Path) -> anyhow::Result<()> {
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/egress-filter.service"))?;
    assert!(
        unit.contains("ExecStart=/usr/bin/egress-filter run"),
        "{unit}"
    );
    let scratch = Scratch::new("unit")?;
    let path = scratch.0.join("egress-filter.service");
    let binary = root.join("usr/bin/egress-filter");
    std::fs::write(
        &path,
        unit.replace(
            "/usr/bin/egress-filter",
            binary.to_str().expect("UTF-8 path"),
        ),
    )?;
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()?;
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

#[test]
fn the_image_config_names_the_entrypoint_and_labels() -> anyhow::Result<()> {
    let image = OciImage::unpack(&dist::dir()?.join(format!("egress-filter-{VERSION}.oci.tar")))?;
    let config = &image.config["config"];
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/bin/egress-filter"])
    );
    assert_eq!(
        config["Cmd"],
        serde_json::json!(["check", "--rules", "/etc/egress-filter/rules"])
    );
    assert_eq!(image.config["os"], "linux");
    assert_eq!(image.config["architecture"], "amd64");
    let labels = &config["Labels"];
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(
        labels["org.opencontainers.image.licenses"],
        "MIT OR Apache-2.0"
    );
    for key in ["revision", "source", "title"] {
        let value = labels[format!("org.opencontainers.image.{key}")].as_str();
        assert!(
            value.is_some_and(|v| !v.is_empty()),
            "label {key}: {labels}"
        );
    }

    // FROM scratch: the binary and the rules, nothing else.
    let binary = image.rootfs.join("usr/bin/egress-filter");
    assert_version(&binary)?;
    assert_checks(&binary, &image.rootfs.join("etc/egress-filter/rules"))?;
    let top: Vec<String> = std::fs::read_dir(&image.rootfs)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    let mut top = top;
    top.sort();
    assert_eq!(top, ["etc", "usr"]);
    Ok(())
}

#[test]
fn the_image_binary_filters_in_a_namespace_lab() -> anyhow::Result<()> {
    let image = OciImage::unpack(&dist::dir()?.join(format!("egress-filter-{VERSION}.oci.tar")))?;
    let lab = Lab::new(&[443, 8080])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = Daemon::start_binary(
        &image.rootfs.join("usr/bin/egress-filter"),
        &lab.gw.name,
        &lab.pin_path(),
        &["--rules", rules.path(), "--xdp", &lab.gw_lan],
    )?;
    assert!(lab.client.connects(WEB_A_V4, 443, 2), "listed");
    assert!(!lab.client.connects(WEB_A_V4, 8080, 1), "unlisted port");
    assert!(!lab.client.connects(WEB_B_V4, 443, 1), "unlisted address");
    drop(daemon);
    Ok(())
}
