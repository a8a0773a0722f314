//! The OCI image: `FROM scratch`, the static binary and the shipped rules, written as an OCI
//! archive by buildah (Debian's package) without a registry or a daemon. buildah keeps its
//! storage under `target/dist/buildah` for the build only, so the machine's own image store is
//! never touched.
//!
//! ```text
//! /usr/bin/egress-filter            the entrypoint
//! /etc/egress-filter/rules/*.toml   the shipped rules (a ConfigMap mounts over them)
//! ```

use std::{path::PathBuf, process::Command};

use anyhow::Context as _;

use super::{Dist, LICENSE, VERSION};
use crate::{run_cmd, workspace_root};

/// The image's name inside the archive (`oci-archive:FILE:NAME`).
pub(crate) const IMAGE_NAME: &str = "egress-filter";
pub(crate) const ENTRYPOINT: &str = "/usr/bin/egress-filter";
/// With no arguments the image checks its own rules: harmless, and says what it is.
const DEFAULT_ARGS: &str = r#"["check", "--rules", "/etc/egress-filter/rules"]"#;

/// What was built.
pub(crate) struct Image {
    pub archive: PathBuf,
    /// The files the layer holds, in bytes.
    pub content_bytes: u64,
}

pub(crate) fn build(dist: &Dist) -> anyhow::Result<Image> {
    let storage = dist.dir.join("buildah");
    let _stale = std::fs::remove_dir_all(&storage);
    let buildah = || {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(storage.join("root"))
            .arg("--runroot")
            .arg(storage.join("run"))
            .args(["--storage-driver", "vfs"]);
        cmd
    };
    let container = format!("egress-filter-dist-{}", std::process::id());
    run_cmd(buildah().args(["from", "--name", &container, "scratch"]))?;

    let result = fill_and_commit(dist, &container, buildah);
    let _removed = buildah().args(["rm", &container]).output();
    let _gone = std::fs::remove_dir_all(&storage);
    result
}

fn fill_and_commit(
    dist: &Dist,
    container: &str,
    buildah: impl Fn() -> Command,
) -> anyhow::Result<Image> {
    let rules: Vec<PathBuf> = std::fs::read_dir(workspace_root().join("rules"))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    run_cmd(
        buildah()
            .args(["copy", "--chmod", "0755", container])
            .arg(&dist.binary)
            .arg(ENTRYPOINT),
    )?;
    run_cmd(
        buildah()
            .args(["copy", "--chmod", "0644", container])
            .args(&rules)
            .arg("/etc/egress-filter/rules/"),
    )?;
    let labels = [
        ("org.opencontainers.image.title", "egress-filter".to_owned()),
        (
            "org.opencontainers.image.description",
            "eBPF egress allow-list for networks of managed devices".to_owned(),
        ),
        ("org.opencontainers.image.version", VERSION.to_owned()),
        ("org.opencontainers.image.revision", dist.commit.clone()),
        ("org.opencontainers.image.source", source()),
        ("org.opencontainers.image.licenses", LICENSE.to_owned()),
    ];
    let mut config = buildah();
    config
        .arg("config")
        .args(["--entrypoint", &format!(r#"["{ENTRYPOINT}"]"#)])
        .args(["--cmd", DEFAULT_ARGS])
        .args(["--os", "linux", "--arch", "amd64"]);
    for (key, value) in &labels {
        config.args(["--label", &format!("{key}={value}")]);
    }
    run_cmd(config.arg(container))?;

    let archive = dist.dir.join(format!("egress-filter-{VERSION}.oci.tar"));
    let _stale = std::fs::remove_file(&archive);
    run_cmd(buildah().args([
        "commit",
        "--format",
        "oci",
        // No build time in the image: the same tree gives the same image.
        "--timestamp",
        "0",
        // A gzip layer, as registries store it (buildah leaves layers uncompressed otherwise).
        "--disable-compression=false",
        container,
        &format!("oci-archive:{}:{IMAGE_NAME}:{VERSION}", archive.display()),
    ]))?;
    let content_bytes = rules
        .iter()
        .chain(std::iter::once(&dist.binary))
        .map(|path| std::fs::metadata(path).map(|m| m.len()))
        .sum::<Result<u64, _>>()
        .context("cannot size the image's files")?;
    Ok(Image {
        archive,
        content_bytes,
    })
}

/// Where the source is published: `EGRESS_FILTER_SOURCE`, else the git remote `origin`'s URL,
/// else "unknown" (a clone without a remote knows no better, and a made-up URL would mislead).
fn source() -> String {
    if let Ok(source) = std::env::var("EGRESS_FILTER_SOURCE") {
        return source;
    }
    super::git(&["remote", "get-url", "origin"]).unwrap_or_else(|| "unknown".into())
}
