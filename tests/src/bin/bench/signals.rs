//! How soon the daemon acts on a signal while its hostname lookups hang (issue 13): a stop
//! request during the start-up resolution, a reload and a stop while running. Goal: within
//! 100 ms, whatever the resolver does.
//!
//! One namespace holds an idle veth (XDP) and a UDP socket on 127.0.0.1:5399 that takes every
//! query and answers none: the daemon's `--resolver`. The rules list [`HOSTNAMES`] names, so the
//! start-up batch waits for its deadline (10 s) and every refresh after it hangs as long.
//! - Start-up: SIGTERM half a second after exec, timed until the process is gone.
//! - Reload: SIGHUP, timed until the daemon took it in: the `MONOTONIC_USEC` its `RELOADING=1`
//!   notification carries (systemd's reload protocol), against the clock read just before the
//!   signal went.
//! - Stop while running: SIGTERM, timed until the process is gone (polled every 2 ms).

use std::{
    fmt::Write as _,
    net::UdpSocket,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use filter_tests::{
    daemon::Daemon,
    lab::{enter_netns, sh, unique_id},
};

/// Names in the rules, all asked of the silent resolver.
const HOSTNAMES: usize = 50;
const SILENT_RESOLVER: &str = "127.0.0.1:5399";
const START_ROUNDS: usize = 5;
/// Daemons started to be reloaded, then stopped, and reloads each.
const STOP_ROUNDS: usize = 3;
const RELOADS_PER_DAEMON: usize = 7;

/// Each kind of signal's delays, in the order measured.
pub(crate) struct Signals {
    pub start_stop: Vec<Duration>,
    pub reload: Vec<Duration>,
    pub running_stop: Vec<Duration>,
}

struct Setup {
    ns: String,
    dir: std::path::PathBuf,
    /// Takes the daemon's queries and never answers; lives as long as the setup.
    _silent: UdpSocket,
}

impl Setup {
    fn new() -> anyhow::Result<Self> {
        let id = unique_id();
        let ns = format!("ef-bench-sig-{id}");
        let dir = std::env::temp_dir().join(format!("ef-bench-sig-{id}"));
        std::fs::create_dir_all(&dir)?;
        sh(&["ip", "netns", "add", &ns])?;
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        sh(&[
            "ip", "-n", &ns, "link", "add", "bs0", "type", "veth", "peer", "name", "bs1",
        ])?;
        sh(&["ip", "-n", &ns, "link", "set", "bs0", "up"])?;
        let mut rules = String::new();
        for i in 0..HOSTNAMES {
            let _ = writeln!(
                rules,
                "[[service]]\nname = \"slow-{i}\"\nhosts = [\"h{i}.slow.bench.test\"]\ntcp = [443]\n"
            );
        }
        std::fs::write(dir.join("slow.toml"), rules)?;
        // A socket belongs to the namespace it was made in: make it on a thread that entered.
        let silent = {
            let ns = ns.clone();
            std::thread::spawn(move || -> anyhow::Result<UdpSocket> {
                enter_netns(&ns)?;
                Ok(UdpSocket::bind(SILENT_RESOLVER)?)
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the socket thread panicked"))??
        };
        Ok(Self {
            ns,
            dir,
            _silent: silent,
        })
    }

    fn spawn(&self, binary: &Path, pin: &str, extra: &[&str]) -> anyhow::Result<Daemon> {
        let rules = self.dir.join("slow.toml");
        let rules = rules.to_str().context("rules path")?;
        let mut args = vec![
            "--rules",
            rules,
            "--xdp",
            "bs0",
            "--no-self-allow",
            "--resolver",
            SILENT_RESOLVER,
        ];
        args.extend_from_slice(extra);
        Daemon::spawn_binary(binary, &self.ns, pin, &args)
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `CLOCK_MONOTONIC` in microseconds: the clock `MONOTONIC_USEC` is read from.
fn monotonic_usec() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // Safety: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) };
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or(0) / 1000
}

/// Sends SIGTERM and times the exit.
fn timed_stop(daemon: &Daemon) -> anyhow::Result<Duration> {
    let sent = Instant::now();
    daemon.signal("TERM")?;
    daemon.wait_gone(Duration::from_secs(30))?;
    Ok(sent.elapsed())
}

pub(crate) fn measure(binary: &Path) -> anyhow::Result<Signals> {
    let setup = Setup::new()?;
    let pin = format!("/sys/fs/bpf/ef-bench-sig-{}", unique_id());
    let mut start_stop = Vec::new();
    for _ in 0..START_ROUNDS {
        let daemon = setup.spawn(binary, &pin, &[])?;
        std::thread::sleep(Duration::from_millis(500));
        if !daemon.notifications().is_empty() {
            bail!("the daemon was ready before its lookups could hang");
        }
        start_stop.push(timed_stop(&daemon)?);
    }
    let mut reload = Vec::new();
    let mut running_stop = Vec::new();
    for _ in 0..STOP_ROUNDS {
        // Refreshes as often as allowed, so that lookups hang all along.
        let daemon = setup.spawn(binary, &pin, &["--min-refresh", "1", "--max-refresh", "2"])?;
        daemon.wait_for_notification("READY=1", 0, Duration::from_mins(1))?;
        for _ in 0..RELOADS_PER_DAEMON {
            let before = daemon.notifications().len();
            let sent = monotonic_usec();
            daemon.signal("HUP")?;
            let reloading =
                daemon.wait_for_notification("RELOADING=1", before, Duration::from_secs(10))?;
            let taken: u64 = reloading
                .lines()
                .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
                .context("RELOADING=1 without MONOTONIC_USEC")?
                .parse()?;
            reload.push(Duration::from_micros(taken.saturating_sub(sent)));
            daemon.wait_for_notification("READY=1", before, Duration::from_secs(10))?;
            std::thread::sleep(Duration::from_millis(300));
        }
        running_stop.push(timed_stop(&daemon)?);
    }
    eprintln!(
        "bench: signals: start-up stop {start_stop:?}, reload {reload:?}, stop {running_stop:?}"
    );
    Ok(Signals {
        start_stop,
        reload,
        running_stop,
    })
}

fn median_and_max(delays: &[Duration]) -> (Duration, Duration) {
    let mut sorted = delays.to_vec();
    sorted.sort();
    (
        sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default(),
    )
}

pub(crate) fn table(signals: &Signals, command: &str) -> String {
    let mut out = format!(
        "## Signals while lookups hang\n\nMeasured by `{command}`: the daemon's resolver takes \
         every query and answers none ({HOSTNAMES} hostnames, a 10 s batch deadline). Goal: \
         every signal acted on within 100 ms.\n\n| signal | when | runs | median | max | goal |\n\
         |---|---|---|---|---|---|\n"
    );
    for (signal, when, delays, how) in [
        (
            "SIGTERM",
            "during the start-up resolution",
            &signals.start_stop,
            "until the process is gone",
        ),
        (
            "SIGHUP",
            "running, refreshes hanging",
            &signals.reload,
            "until `RELOADING=1` (its timestamp)",
        ),
        (
            "SIGTERM",
            "running, refreshes hanging",
            &signals.running_stop,
            "until the process is gone (detached)",
        ),
    ] {
        let (median, max) = median_and_max(delays);
        let met = if max <= Duration::from_millis(100) {
            "met"
        } else {
            "NOT met"
        };
        let _ = writeln!(
            out,
            "| {signal} | {when}; timed {how} | {} | {:.1} ms | {:.1} ms | ≤ 100 ms: {met} |",
            delays.len(),
            median.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0,
        );
    }
    out
}
