//! `cargo xtask`: orchestration only. Every command sets up what it needs first.
//!
//! - `setup`: installs what building and testing need, quickly skipping what is there.
//! - `test`: formatting, lints (host and BPF target), unit tests, then the privileged suites.
//! - `demo`: the filter on a gateway in a namespace lab, with the shipped rules.
//! - `bench`: the benchmarks, written to BENCHMARKS.md.
//! - `dist`: the static binary, the .deb and the OCI image, in `target/dist/`.
//! - `fuzz`: the coverage-guided fuzz targets and the frame differential, each for a given time.

mod bench;
mod demo;
mod dist;
mod fuzz;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "egress-filter's build, setup and test orchestration")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install the toolchain pieces and Debian packages the project needs (idempotent).
    Setup,
    /// Run every check and test: fmt, clippy (host and BPF), unit tests, privileged suites.
    Test,
    /// Run egress-filter on a gateway in a lab of network namespaces with the shipped rules.
    Demo,
    /// Build what users install into target/dist/: the static binary (and its debug info),
    /// the .deb and the OCI image.
    Dist,
    /// Measure the datapath and the daemon against a trivial program and nftables; writes
    /// BENCHMARKS.md.
    Bench {
        /// Measure only this part and print it, leaving BENCHMARKS.md alone (`dns`, `breakdown`,
        /// `per-packet`, `scrape`, `flows`, `groups`, `check`, `signals`).
        #[arg(long, value_name = "PART")]
        only: Option<String>,
    },
    /// Run every fuzz target (rule files, DNS queries and answers, the state file, drop
    /// events) for a given time each, then the frame differential (kernel against the model of
    /// the verdict; needs root) for as long; a crash fails the run and leaves its input in
    /// fuzz/artifacts/, a disagreement prints the frame.
    Fuzz {
        #[arg(long, default_value_t = 60, value_name = "N")]
        seconds: u32,
    },
    /// Run the gateway lab under sustained load (lookup-then-connect cycles, blocked
    /// connections, a DNS flood) and faults (broken and valid rules swapped in, kill -9 and
    /// restart, the upstream DNS server stopped) for N minutes, checking the invariants all
    /// along; prints a summary and fails if one broke. Needs root.
    Soak {
        #[arg(long, default_value_t = 30, value_name = "N")]
        minutes: u64,
    },
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test => setup::run().and_then(|()| test::run()),
        Command::Demo => setup::run().and_then(|()| demo::run()),
        Command::Dist => setup::run().and_then(|()| dist::run()),
        Command::Bench { only } => setup::run().and_then(|()| bench::run(only.as_deref())),
        Command::Fuzz { seconds } => setup::run().and_then(|()| fuzz::run(seconds)),
        Command::Soak { minutes } => setup::run().and_then(|()| bench::soak(minutes)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs a command, inheriting stdio, and fails unless it succeeds.
pub(crate) fn run_cmd(cmd: &mut std::process::Command) -> anyhow::Result<()> {
    eprintln!("+ {}", display(cmd));
    let status = cmd
        .status()
        .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", display(cmd)))?;
    anyhow::ensure!(status.success(), "{} failed ({status})", display(cmd));
    Ok(())
}

pub(crate) fn display(cmd: &std::process::Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cargo`, run at the workspace root.
pub(crate) fn cargo() -> std::process::Command {
    let mut cmd = std::process::Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// `cargo run --release` of one of filter-tests' programs (`demo`, `bench`, `soak`); its own
/// arguments follow.
pub(crate) fn test_program(name: &str) -> std::process::Command {
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--locked",
        "--release",
        "--package",
        "filter-tests",
        "--bin",
        name,
        "--",
    ]);
    cmd
}

/// Builds the release `egress-filter` and returns its path.
pub(crate) fn release_binary() -> anyhow::Result<std::path::PathBuf> {
    run_cmd(cargo().args([
        "build",
        "--locked",
        "--release",
        "--package",
        "filter-user",
        "--bin",
        "egress-filter",
    ]))?;
    Ok(workspace_root().join("target/release/egress-filter"))
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}
