//! `cargo xtask fuzz`: every coverage-guided target in `fuzz/` (cargo-fuzz, libFuzzer, nightly)
//! for a given time each, from the corpus committed under `fuzz/corpus/<target>`, then the frame
//! differential (`tests/tests/frames.rs`: the kernel programs against a model of the verdict on
//! random and mutated frames) for as long. `cargo xtask test` runs each target for a few seconds
//! and the frame differential for its bounded count. A crash leaves its input under
//! `fuzz/artifacts/<target>` and fails the run; each one found becomes a unit test. A frame the
//! kernel and the model disagree on is printed as hex and becomes a row of the verdict table.

use std::process::Command;

use anyhow::Context as _;

use crate::{cargo, run_cmd, setup::NIGHTLY};

/// Every target: rule files, a client's DNS query, an upstream's answer, the state file, a
/// drop event's record.
pub(crate) const TARGETS: [&str; 5] = [
    "rules",
    "dns_query",
    "dns_answer",
    "state_file",
    "drop_event",
];

/// Runs each coverage-guided target for `seconds`, then the frame differential for as long.
pub(crate) fn run(seconds: u32) -> anyhow::Result<()> {
    run_targets(seconds)?;
    run_frames(seconds)
}

/// The frame differential for `seconds` instead of its bounded count. It loads BPF programs
/// through `BPF_PROG_TEST_RUN`: root only.
fn run_frames(seconds: u32) -> anyhow::Result<()> {
    run_cmd(
        cargo()
            .args([
                "test",
                "--locked",
                "--package",
                "filter-tests",
                "--test",
                "frames",
                "--",
                "--nocapture",
                "--exact",
                crate::test::FRAME_DIFFERENTIAL,
            ])
            .env("FRAMES_SECONDS", seconds.to_string()),
    )
    .context("the frame differential failed: the frames it printed disagree")
}

/// Runs each coverage-guided target for `seconds`.
pub(crate) fn run_targets(seconds: u32) -> anyhow::Result<()> {
    let fuzz_dir = crate::workspace_root().join("fuzz");
    for target in TARGETS {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("cannot create {}", corpus.display()))?;
        // The corpus grows in a scratch copy: the committed seeds stay as reviewed.
        let scratch = crate::workspace_root()
            .join("target/fuzz-corpus")
            .join(target);
        std::fs::create_dir_all(&scratch)?;
        run_cmd(
            Command::new("cargo")
                .arg(format!("+{NIGHTLY}"))
                .args(["fuzz", "run", "--fuzz-dir"])
                .arg(&fuzz_dir)
                .arg(target)
                .arg(&scratch)
                .arg(&corpus)
                .arg("--")
                .arg(format!("-max_total_time={seconds}"))
                .arg("-max_len=65536"),
        )
        .with_context(|| format!("fuzz target {target} failed: see fuzz/artifacts/{target}"))?;
    }
    Ok(())
}
