//! The outputs of `cargo xtask dist` (`target/dist/`), for the suites that check what users
//! install: the static binary, the .deb and the OCI image.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;

/// The version every artifact carries: the workspace's.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The workspace root.
#[must_use]
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// `target/dist/`, or `EGRESS_FILTER_DIST`; it must have been built (`cargo xtask test` runs
/// `cargo xtask dist` before these suites).
pub fn dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::var_os("EGRESS_FILTER_DIST")
        .map_or_else(|| workspace().join("target/dist"), PathBuf::from);
    anyhow::ensure!(
        dir.join("egress-filter").exists(),
        "{} holds no build: run `cargo xtask dist` (cargo xtask test does)",
        dir.display()
    );
    Ok(dir)
}

/// Runs a command and returns its stdout; fails with its stderr unless it succeeds.
pub fn stdout(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", cmd.get_program().display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A directory of the test's own, removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("ef-{name}-{}", crate::lab::unique_id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Self(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

/// An OCI archive read back: the image's config and its layers unpacked in order.
pub struct OciImage {
    pub config: serde_json::Value,
    pub rootfs: PathBuf,
    _scratch: Scratch,
}

impl OciImage {
    /// Reads `archive` as a runtime would: index.json → manifest → config and layers.
    pub fn unpack(archive: &Path) -> anyhow::Result<Self> {
        let scratch = Scratch::new("oci")?;
        let layout = scratch.0.join("layout");
        let rootfs = scratch.0.join("rootfs");
        std::fs::create_dir_all(&layout)?;
        std::fs::create_dir_all(&rootfs)?;
        stdout(
            Command::new("tar")
                .arg("-xf")
                .arg(archive)
                .arg("-C")
                .arg(&layout),
        )?;
        let blob = |descriptor: &serde_json::Value| -> anyhow::Result<PathBuf> {
            let digest = descriptor["digest"]
                .as_str()
                .context("descriptor without digest")?;
            let (algorithm, hex) = digest.split_once(':').context("malformed digest")?;
            Ok(layout.join("blobs").join(algorithm).join(hex))
        };
        let read_json = |path: &Path| -> anyhow::Result<serde_json::Value> {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(serde_json::from_str(&text)?)
        };
        let index = read_json(&layout.join("index.json"))?;
        let manifests = index["manifests"]
            .as_array()
            .context("index without manifests")?;
        anyhow::ensure!(manifests.len() == 1, "one image expected: {index}");
        let manifest = read_json(&blob(&manifests[0])?)?;
        let config = read_json(&blob(&manifest["config"])?)?;
        for layer in manifest["layers"]
            .as_array()
            .context("manifest without layers")?
        {
            // tar recognises gzip and zstd layers by themselves.
            stdout(
                Command::new("tar")
                    .arg("-xf")
                    .arg(blob(layer)?)
                    .arg("-C")
                    .arg(&rootfs),
            )?;
        }
        Ok(Self {
            config,
            rootfs,
            _scratch: scratch,
        })
    }
}
