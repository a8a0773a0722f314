//! `cargo xtask fuzz`: every coverage-guided target in `fuzz/` (cargo-fuzz, libFuzzer, nightly)
//! for a given time each, from the corpus committed under `fuzz/corpus/<target>`. `cargo xtask
//! test` runs each for a few seconds. A crash leaves its input under `fuzz/artifacts/<target>`
//! and fails the run; each one found becomes a unit test.

use std::process::Command;

use anyhow::Context as _;

use crate::{run_cmd, setup::NIGHTLY};

/// Every target: rule files, a client's DNS query, an upstream's answer, the state file, a
/// drop event's record.
pub(crate) const TARGETS: [&str; 5] = [
    "rules",
    "dns_query",
    "dns_answer",
    "state_file",
    "drop_event",
];

/// Runs each target for `seconds`.
pub(crate) fn run(seconds: u32) -> anyhow::Result<()> {
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
