//! Builds the kernel programs (filter-ebpf) for the BPF target and leaves the object in OUT_DIR,
//! where `src/loader.rs` embeds it. Needs nightly with rust-src and bpf-linker: `cargo xtask
//! setup` installs both.
//!
//! Also hands `--version` what identifies a build: the git commit and the embedded object's
//! sha256, as `EGRESS_FILTER_COMMIT` and `EGRESS_FILTER_OBJECT_SHA256`.
use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::Context as _;
use sha2::{Digest as _, Sha256};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR unset")?;
    let ebpf_dir = Path::new(&manifest_dir).join("../filter-ebpf");
    let ebpf_dir = ebpf_dir
        .canonicalize()
        .with_context(|| format!("kernel programs not found at {}", ebpf_dir.display()))?;
    let root_dir = ebpf_dir.to_str().context("non-UTF-8 path to filter-ebpf")?;
    // filter-common is part of the programs too: rebuild when it changes.
    println!(
        "cargo:rerun-if-changed={}",
        ebpf_dir.join("../filter-common").display()
    );
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "filter-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )?;

    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR unset")?);
    let object = std::fs::read(out_dir.join("egress-filter"))
        .context("the kernel object egress-filter is missing from OUT_DIR")?;
    let digest = Sha256::digest(&object)
        .iter()
        .fold(String::new(), |mut hex, byte| {
            let _infallible = write!(hex, "{byte:02x}");
            hex
        });
    println!("cargo:rustc-env=EGRESS_FILTER_OBJECT_SHA256={digest}");
    println!("cargo:rustc-env=EGRESS_FILTER_COMMIT={}", git_commit());
    Ok(())
}

/// The commit being built: `EGRESS_FILTER_COMMIT` if set (a source tarball has no .git), else
/// git's HEAD, else "unknown". Reruns when HEAD moves.
fn git_commit() -> String {
    println!("cargo:rerun-if-env-changed=EGRESS_FILTER_COMMIT");
    if let Ok(commit) = std::env::var("EGRESS_FILTER_COMMIT") {
        return commit;
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    // HEAD, and the branch file it points to: a commit changes one of them. A worktree's HEAD
    // and a packed ref may live elsewhere; only paths that exist are watched, since cargo
    // reruns the script every build for one that does not.
    for file in ["HEAD", "packed-refs"]
        .into_iter()
        .filter_map(|name| git(&["rev-parse", "--git-path", name]))
        .chain(
            git(&["symbolic-ref", "-q", "HEAD"])
                .and_then(|branch| git(&["rev-parse", "--git-path", &branch])),
        )
    {
        if Path::new(&file).exists() {
            let file = Path::new(&file)
                .canonicalize()
                .unwrap_or_else(|_| file.into());
            println!("cargo:rerun-if-changed={}", file.display());
        }
    }
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}
