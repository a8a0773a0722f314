//! The daemon with a million IPv4 prefixes (issue 11): from exec to enforcing, and a
//! whole-table replacement (SIGHUP after the rules file was swapped for another million
//! prefixes) until the reloaded rules enforce. Both timed by the daemon's own service-manager
//! notifications (`READY=1`; after a SIGHUP, the `READY=1` that follows its `RELOADING=1`),
//! each round on fresh pins. Goal: each within 2 s.

use std::{
    fmt::Write as _,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use filter_tests::{
    daemon::Daemon,
    lab::{sh, unique_id},
};

use crate::{
    prefixes::{self, Rng},
    updates::Cleanup,
};

const PREFIXES: usize = 1_000_000;
const ROUNDS: usize = 3;
const GOAL: Duration = Duration::from_secs(2);

/// Each round's start-up and replacement.
pub(crate) struct Startup {
    pub starts: Vec<Duration>,
    pub replacements: Vec<Duration>,
}

/// One service with `PREFIXES` IPv4 prefixes (the benches' routing-table-like spread, TCP 443),
/// drawn from `seed`.
fn rules(seed: u64) -> String {
    let mut rng = Rng::new(seed);
    let cidrs: Vec<String> = prefixes::v4_prefixes(PREFIXES, &mut rng)
        .iter()
        .map(|net| format!("\"{net}\""))
        .collect();
    format!(
        "[[service]]\nname = \"table\"\ncidrs = [{}]\ntcp = [443]\n",
        cidrs.join(", ")
    )
}

pub(crate) fn measure(binary: &Path) -> anyhow::Result<Startup> {
    let id = unique_id();
    let ns = format!("ef-bench-st-{id}");
    let dir = std::env::temp_dir().join(format!("ef-bench-st-{id}"));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = Cleanup {
        ns: ns.clone(),
        dir: dir.clone(),
    };
    sh(&["ip", "netns", "add", &ns])?;
    sh(&[
        "ip", "-n", &ns, "link", "add", "bt0", "type", "veth", "peer", "name", "bt1",
    ])?;
    sh(&["ip", "-n", &ns, "link", "set", "bt0", "up"])?;
    let (first, second) = (rules(0x57a7), rules(0x57a8));
    let file = dir.join("table.toml");
    let rules_dir = dir.to_str().context("rules path")?;
    let mut startup = Startup {
        starts: Vec::new(),
        replacements: Vec::new(),
    };
    for round in 0..ROUNDS {
        std::fs::write(&file, &first)?;
        let pin = format!("/sys/fs/bpf/ef-bench-st-{id}-{round}");
        let started = Instant::now();
        let daemon = Daemon::spawn_binary(
            binary,
            &ns,
            &pin,
            &["--rules", rules_dir, "--xdp", "bt0", "--no-self-allow"],
        )?;
        daemon.wait_for_notification("READY=1", 0, Duration::from_mins(1))?;
        startup.starts.push(started.elapsed());

        std::fs::write(&file, &second)?;
        let signalled = Instant::now();
        let status = daemon.reload()?;
        startup.replacements.push(signalled.elapsed());
        ensure!(
            status.contains("enforcing the reloaded rules"),
            "the replacement was not taken: {status}"
        );
        daemon.signal("TERM")?;
        daemon.wait_exit(Duration::from_secs(30))?;
    }
    eprintln!(
        "bench: start-up {:?}, replacement {:?}",
        startup.starts, startup.replacements
    );
    Ok(startup)
}

/// The section of BENCHMARKS.md.
pub(crate) fn table(startup: &Startup, command: &str) -> String {
    let mut t = format!(
        "## Start-up and whole-table replacement with 1M IPv4 prefixes\n\nThe daemon (`run \
         --rules DIR --xdp IF`) on one rules file of one service with {PREFIXES} IPv4 prefixes \
         (a routing-table-like spread of lengths, TCP 443), fresh pins each round: from exec \
         to its `READY=1` (enforcing: parsed, compiled, written, programs verified and \
         attached), then the file swapped for another {PREFIXES} prefixes and SIGHUP, until the \
         `READY=1` after its `RELOADING=1` (the new table switched in). {ROUNDS} rounds. Goal: \
         each ≤ 2 s. Produced by `{command}`.\n\n\
         | what | rounds | median | slowest | goal |\n|---|---|---|---|---|\n"
    );
    for (what, times) in [
        ("exec to enforcing", &startup.starts),
        (
            "SIGHUP with a new file to enforcing it",
            &startup.replacements,
        ),
    ] {
        let mut sorted = times.clone();
        sorted.sort();
        let (median, slowest) = (sorted[sorted.len() / 2], sorted[sorted.len() - 1]);
        let _ = writeln!(
            t,
            "| {what} | {} | {median:.2?} | {slowest:.2?} | ≤ 2 s: {} |",
            sorted.len(),
            if slowest <= GOAL {
                "met"
            } else {
                "**not met**"
            }
        );
    }
    t
}
