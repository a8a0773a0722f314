//! `cargo xtask test`: every check in the order that fails fastest.

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
};

use anyhow::Context as _;

use crate::{cargo, run_cmd, workspace_root};

pub(crate) fn run() -> anyhow::Result<()> {
    let root = workspace_root();

    run_cmd(cargo().args(["fmt", "--all", "--check"]))?;
    // The fuzz targets are a workspace of their own (nightly, sanitizers).
    run_cmd(cargo().args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--check"]))?;
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--exclude",
        "filter-ebpf",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The kernel programs are linted for the target they run on.
    run_cmd(
        Command::new("cargo")
            .current_dir(root.join("filter-ebpf"))
            .args([
                "+nightly",
                "clippy",
                "--release",
                "--locked",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--",
                "-D",
                "warnings",
            ]),
    )?;

    // The docs build without a broken or private link: they are part of the code.
    run_cmd(
        cargo()
            .args([
                "doc",
                "--no-deps",
                "--locked",
                "--workspace",
                "--exclude",
                "filter-ebpf",
            ])
            .env("RUSTDOCFLAGS", "-D warnings"),
    )?;

    let unit = counted(cargo().args(["test", "--locked"]))?;
    anyhow::ensure!(unit > 0, "the unit tests ran no test");

    // Loading BPF programs and making network namespaces needs root.
    anyhow::ensure!(
        // Safety: geteuid has no preconditions.
        unsafe { libc_geteuid() } == 0,
        "the privileged suites need root: run `cargo xtask test` as root"
    );
    // The end-to-end suites run the real binary.
    run_cmd(cargo().args([
        "build",
        "--locked",
        "--package",
        "filter-user",
        "--bin",
        "egress-filter",
    ]))?;
    let binary = root.join("target/debug/egress-filter");
    // What users install is built as CI builds it, and checked by the suites (tests/dist.rs).
    crate::dist::run()?;
    let suites = counted(
        cargo()
            .args(["test", "--locked", "--package", "filter-tests"])
            .args(["--", "--skip", FRAME_DIFFERENTIAL])
            .env("EGRESS_FILTER_BIN", &binary)
            .env("EGRESS_FILTER_DIST", root.join("target/dist")),
    )?;
    // The frame differential on its own, its output shown: how many frames each hook judged and
    // under which reasons, so that a run checking nothing would be seen (it also fails then).
    let frames = counted(cargo().args([
        "test",
        "--locked",
        "--package",
        "filter-tests",
        "--test",
        "frames",
        "--",
        "--nocapture",
        "--exact",
        FRAME_DIFFERENTIAL,
    ]))?;
    anyhow::ensure!(frames == 1, "the frame differential did not run");
    let privileged = suites + frames;
    anyhow::ensure!(
        privileged > 0,
        "the privileged suites ran no test: that is a failure, not a pass"
    );

    // Every parser that takes outside input, coverage-guided, briefly (`cargo xtask fuzz` runs
    // longer, and the frame differential too): a crash fails the test.
    crate::fuzz::run_targets(FUZZ_SECONDS)?;

    println!("xtask test: {unit} unit tests and {privileged} privileged tests passed");
    println!("{} passed, 0 failed", unit + privileged);
    Ok(())
}

/// The frame differential's test (`tests/tests/frames.rs`), run on its own with its output.
pub(crate) const FRAME_DIFFERENTIAL: &str = "kernel_and_model_agree_on_random_and_mutated_frames";

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SECONDS: u32 = 15;

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

/// Runs `cargo test`, echoing its output, and returns how many tests passed in total.
fn counted(cmd: &mut Command) -> anyhow::Result<usize> {
    eprintln!("+ {}", crate::display(cmd));
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start cargo test")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut passed = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ok. ") {
            passed += rest
                .split_once(" passed")
                .and_then(|(n, _)| n.parse::<usize>().ok())
                .unwrap_or(0);
        }
    }
    let status = child.wait()?;
    anyhow::ensure!(
        status.success(),
        "{} failed ({status})",
        crate::display(cmd)
    );
    Ok(passed)
}
