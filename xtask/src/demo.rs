//! `cargo xtask demo`: builds the release binary and runs the demo (`tests/src/bin/demo.rs`):
//! egress-filter on a gateway in a lab of network namespaces, with the shipped rules. Needs root.

use crate::{release_binary, run_cmd, test_program, workspace_root};

pub(crate) fn run() -> anyhow::Result<()> {
    let binary = release_binary()?;
    run_cmd(
        test_program("demo")
            .arg("--rules")
            .arg(workspace_root().join("rules"))
            .env("EGRESS_FILTER_BIN", &binary),
    )
}
