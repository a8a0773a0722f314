//! Builds the kernel programs (filter-ebpf) for the BPF target and leaves the object in OUT_DIR,
//! where `src/loader.rs` embeds it. Needs nightly with rust-src and bpf-linker: `cargo xtask
//! setup` installs both.
use std::path::Path;

use anyhow::Context as _;

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
    )
}
