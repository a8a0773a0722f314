//! `cargo xtask bench`: builds release binaries and runs the benchmark suite
//! (`tests/src/bin/bench`), which prints its tables and writes BENCHMARKS.md; `cargo xtask
//! soak`: the same binaries under load and faults (`tests/src/bin/soak.rs`). Need root.

use crate::{release_binary, run_cmd, test_program, workspace_root};

pub(crate) fn run(only: Option<&str>) -> anyhow::Result<()> {
    let binary = release_binary()?;
    let mut cmd = test_program("bench");
    cmd.arg("--egress-filter").arg(&binary);
    if let Some(part) = only {
        return run_cmd(cmd.args(["--only", part]));
    }
    run_cmd(
        cmd.arg("--out")
            .arg(workspace_root().join("BENCHMARKS.md"))
            .args(["--command", "cargo xtask bench"]),
    )
}

pub(crate) fn soak(minutes: u64) -> anyhow::Result<()> {
    let binary = release_binary()?;
    run_cmd(
        test_program("soak")
            .arg("--egress-filter")
            .arg(&binary)
            .args(["--minutes", &minutes.to_string()]),
    )
}
