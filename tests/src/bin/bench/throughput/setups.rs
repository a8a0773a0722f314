//! The setups compared: no filter, egress-filter on XDP and on TC (the real daemon), and the same
//! policy in nftables; each put in place for its run and removed on drop.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use filter_tests::lab::sh;

use super::{
    policy::{PolicyFiles, NFT_TABLE},
    topology::Topology,
};

/// How long the daemon may take to compile, load and attach.
const DAEMON_START: Duration = Duration::from_secs(30);
/// How long the daemon may take to detach after SIGTERM.
const DAEMON_STOP: Duration = Duration::from_secs(10);
/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(20);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Setup {
    NoFilter,
    Xdp,
    Tc,
    NftForward,
    NftIngress,
}

impl Setup {
    pub(super) const ALL: [Self; 5] = [
        Self::NoFilter,
        Self::Xdp,
        Self::Tc,
        Self::NftForward,
        Self::NftIngress,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::NoFilter => "no filter",
            Self::Xdp => "egress-filter XDP",
            Self::Tc => "egress-filter TC",
            Self::NftForward => "nftables forward",
            Self::NftIngress => "nftables netdev ingress",
        }
    }

    /// Puts the filter of this setup in place; dropping the result removes it.
    pub(super) fn arrange(
        self,
        topo: &Topology,
        binary: &Path,
        files: &PolicyFiles,
    ) -> anyhow::Result<Option<Filter>> {
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/ef-bench-{}-{}", topo.id, self as u8));
        let daemon = |hook, dev| {
            FilterDaemon::start(binary, &topo.rtr.name, &files.rules, hook, dev, pin_path)
        };
        Ok(match self {
            Self::NoFilter => None,
            Self::Xdp => Some(Filter::Daemon(daemon("--xdp", &topo.rx_dev)?)),
            // TC egress sees what leaves an interface: the router's way out.
            Self::Tc => Some(Filter::Daemon(daemon("--tc", &topo.out_dev)?)),
            Self::NftForward => Some(Filter::Nft {
                _table: NftTable::load(&topo.rtr.name, &files.nft_forward, "inet")?,
            }),
            Self::NftIngress => Some(Filter::Nft {
                _table: NftTable::load(&topo.rtr.name, &files.nft_ingress, "netdev")?,
            }),
        })
    }
}

/// The filter under test; removed on drop.
pub(super) enum Filter {
    Daemon(FilterDaemon),
    /// Held for its drop, which deletes the table.
    Nft {
        _table: NftTable,
    },
}

impl Filter {
    /// Packets the filter itself counted as dropped so far, where it counts them.
    pub(super) fn drops(&self) -> anyhow::Result<Option<u64>> {
        match self {
            Self::Daemon(d) => d.drops().map(Some),
            Self::Nft { .. } => Ok(None),
        }
    }
}

/// egress-filter running as the real daemon in the router namespace; stopped (SIGTERM, then
/// SIGKILL and `detach` if it will not go) on drop.
pub(super) struct FilterDaemon {
    child: Child,
    binary: PathBuf,
    pin_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl FilterDaemon {
    fn start(
        binary: &Path,
        netns: &str,
        rules: &Path,
        hook: &str,
        dev: &str,
        pin_path: PathBuf,
    ) -> anyhow::Result<Self> {
        // nsenter, not `ip netns exec`: the latter mounts a fresh /sys without bpffs.
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(binary)
            .arg("run")
            .arg("--rules")
            .arg(rules)
            .args([hook, dev, "--event-rate", "0", "--event-burst", "0"])
            .arg("--pin-path")
            .arg(&pin_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start egress-filter")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take();
        // From here on, the guard stops the daemon whatever fails.
        let mut daemon = Self {
            child,
            binary: binary.to_owned(),
            pin_path,
            logs: Arc::clone(&logs),
        };
        let stderr = stderr.context("egress-filter stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = logs.lock() {
                    lines.push(line);
                }
            }
        });
        daemon.wait_enforcing()?;
        Ok(daemon)
    }

    fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits (bounded) until it logs that it enforces.
    fn wait_enforcing(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DAEMON_START;
        for _ in 0..DAEMON_START.as_millis() / POLL.as_millis() {
            if self
                .logs
                .lock()
                .is_ok_and(|lines| lines.iter().any(|l| l.contains("enforcing")))
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "egress-filter exited ({status}) before enforcing:\n{}",
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "egress-filter did not report enforcing within {DAEMON_START:?}:\n{}",
            self.logs()
        )
    }

    /// Packets its programs counted under a dropping reason, so far.
    fn drops(&self) -> anyhow::Result<u64> {
        let out = sh(&[
            &self.binary.to_string_lossy(),
            "stats",
            "--json",
            "--pin-path",
            &self.pin_path.to_string_lossy(),
        ])?;
        let stats: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("stats --json: not JSON")?;
        let reasons = stats["reasons"]
            .as_array()
            .context("stats --json: no reasons")?;
        Ok(reasons
            .iter()
            .filter(|r| r["verdict"] == "drop")
            .filter_map(|r| r["packets"].as_u64())
            .sum())
    }

    /// Waits (bounded) for the daemon to exit; whether it did.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for _ in 0..timeout.as_millis() / POLL.as_millis() {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return true;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        false
    }
}

impl Drop for FilterDaemon {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // Safety: `pid` is our own child, not yet reaped (we hold its Child), so the id
            // cannot have been reused; SIGTERM asks it to detach and exit.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if !self.wait_exit(DAEMON_STOP) {
            eprintln!("bench: egress-filter ignored SIGTERM; killing it and detaching");
            let _killed = self.child.kill();
            let _reaped = self.child.wait();
        }
        // A daemon that could not clean up leaves its programs pinned and attached.
        if self.pin_path.exists() {
            let _detached = Command::new(&self.binary)
                .arg("detach")
                .arg("--pin-path")
                .arg(&self.pin_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _removed = std::fs::remove_dir_all(&self.pin_path);
        }
    }
}

/// An nftables table loaded in a namespace, deleted on drop.
pub(super) struct NftTable {
    netns: String,
    family: &'static str,
}

impl NftTable {
    fn load(netns: &str, file: &Path, family: &'static str) -> anyhow::Result<Self> {
        sh(&[
            "ip",
            "netns",
            "exec",
            netns,
            "nft",
            "-f",
            &file.to_string_lossy(),
        ])?;
        Ok(Self {
            netns: netns.to_owned(),
            family,
        })
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _deleted = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "nft",
                "delete",
                "table",
                self.family,
                NFT_TABLE,
            ])
            .stderr(Stdio::null())
            .status();
    }
}
