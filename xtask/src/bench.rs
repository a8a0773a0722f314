//! `cargo xtask bench`: builds release binaries and runs the benchmark suite
//! (`tests/src/bin/bench`), which prints its tables and writes BENCHMARKS.md. Needs root.

use std::process::Command;

use crate::{run_cmd, workspace_root};

pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let cargo = || {
        let mut cmd = Command::new("cargo");
        cmd.current_dir(&root);
        cmd
    };
    run_cmd(cargo().args([
        "build",
        "--locked",
        "--release",
        "--package",
        "filter-user",
        "--bin",
        "egress-filter",
    ]))?;
    let binary = root.join("target/release/egress-filter");
    run_cmd(
        cargo()
            .args([
                "run",
                "--locked",
                "--release",
                "--package",
                "filter-tests",
                "--bin",
                "bench",
                "--",
            ])
            .arg("--egress-filter")
            .arg(&binary)
            .arg("--out")
            .arg(root.join("BENCHMARKS.md"))
            .args(["--command", "cargo xtask bench"]),
    )
}
