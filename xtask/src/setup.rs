//! Installs what the project needs on a fresh Debian 12 machine, and nothing twice.
//!
//! The toolchain facts behind these steps were measured on this machine kind:
//! bpf-linker must be built against LLVM 22, the LLVM of the nightly rustc, and cannot find it
//! without `LLVM_PREFIX`.

use std::process::Command;

use anyhow::Context as _;

use crate::run_cmd;

/// Debian packages: LLVM 22 for bpf-linker; iproute2 and friends for the network-namespace
/// tests; dnsmasq for a real DNS server in the lab; nftables for the comparison and for counting
/// what arrives in the lab; bpftool for inspecting what is loaded; python3-scapy for the crafted
/// attack packets of the end-to-end tests (`tests/tools/packets.py`). For `cargo xtask dist` and
/// its tests: musl-tools (a C compiler for the static binary's C dependencies), binutils
/// (objcopy), buildah (the image, without a daemon or registry), file, systemd
/// (`systemd-analyze verify`), python3-venv (kubernetes-validate's own environment). prometheus
/// (with promtool) and curl for the metrics tests, which a real Prometheus scrapes.
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "iproute2",
    "iputils-ping",
    "netcat-openbsd",
    "dnsmasq-base",
    "nftables",
    "bpftool",
    "python3-scapy",
    "xdp-tools",
    "prometheus",
    "curl",
    "musl-tools",
    "binutils",
    "buildah",
    "file",
    "systemd",
    "python3-venv",
];
pub(crate) const NIGHTLY: &str = "nightly";
const BPF_LINKER_VERSION: &str = "0.13.0";
/// The libFuzzer driver the fuzz targets run under.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
/// The Kubernetes API schemas the manifests are validated against, offline (PyPI).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// Its virtual environment, under target/ so that it is the project's alone.
pub(crate) const KUBERNETES_VENV: &str = "target/k8s-venv";

pub(crate) fn run() -> anyhow::Result<()> {
    apt_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
    musl_target()?;
    kubernetes_validate()?;
    Ok(())
}

/// The static binary's target, for the toolchain that builds the workspace.
fn musl_target() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if installed.lines().any(|l| l == crate::dist::MUSL_TARGET) {
        return Ok(());
    }
    run_cmd(Command::new("rustup").args(["target", "add", crate::dist::MUSL_TARGET]))
}

fn kubernetes_validate() -> anyhow::Result<()> {
    let venv = crate::workspace_root().join(KUBERNETES_VENV);
    let present = Command::new(venv.join("bin/kubernetes-validate"))
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success());
    if present {
        return Ok(());
    }
    // Debian's own python, whatever else is first on PATH.
    run_cmd(
        Command::new("/usr/bin/python3")
            .args(["-m", "venv"])
            .arg(&venv),
    )?;
    run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(KUBERNETES_VALIDATE),
    )
}

fn apt_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|pkg| !dpkg_installed(pkg))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing Debian packages: {}", missing.join(" "));
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with(NIGHTLY)) {
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
        ]))?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            NIGHTLY,
        ]))?;
    }
    Ok(())
}

fn bpf_linker() -> anyhow::Result<()> {
    let present = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION));
    if present {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    run_cmd(
        Command::new("cargo")
            .args([
                "install",
                &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                "--locked",
            ])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", LLVM_PREFIX),
    )
}

fn cargo_fuzz() -> anyhow::Result<()> {
    let present = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(CARGO_FUZZ_VERSION));
    if present {
        return Ok(());
    }
    run_cmd(Command::new("cargo").args([
        "install",
        &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
        "--locked",
    ]))
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {}", crate::display(cmd)))?;
    anyhow::ensure!(out.status.success(), "{} failed", crate::display(cmd));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
