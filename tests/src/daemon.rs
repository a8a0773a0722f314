//! The `egress-filter` binary run as a daemon inside a lab namespace.
//!
//! Started with `nsenter --net=…` rather than `ip netns exec`: the latter gives its process a
//! fresh /sys without bpffs, so pins would vanish with the process.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// The binary under test: `EGRESS_FILTER_BIN`, or the workspace's debug build (`cargo xtask
/// test` builds it before the privileged suites).
pub fn binary() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("EGRESS_FILTER_BIN").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/egress-filter"),
        PathBuf::from,
    );
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `cargo build -p filter-user` (cargo xtask test does)",
        path.display()
    );
    Ok(path)
}

/// A running daemon whose stdout (events) and stderr (logs) are collected.
pub struct Daemon {
    child: Mutex<Child>,
    pub pin_path: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `egress-filter run ARGS --pin-path PIN` in `netns` and waits until it enforces.
    pub fn start(netns: &str, pin_path: &str, args: &[&str]) -> anyhow::Result<Self> {
        let daemon = Self::spawn(netns, pin_path, args)?;
        daemon.wait_for_log("enforcing", Duration::from_secs(20))?;
        Ok(daemon)
    }

    /// Starts it without waiting.
    pub fn spawn(netns: &str, pin_path: &str, args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(binary()?)
            .arg("run")
            .args(args)
            .args(["--pin-path", pin_path])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start egress-filter")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        for (pipe, sink) in [
            (
                Box::new(child.stdout.take().context("stdout")?) as Box<dyn std::io::Read + Send>,
                Arc::clone(&stdout),
            ),
            (
                Box::new(child.stderr.take().context("stderr")?),
                Arc::clone(&stderr),
            ),
        ] {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Ok(mut lines) = sink.lock() {
                        lines.push(line);
                    }
                }
            });
        }
        Ok(Self {
            child: Mutex::new(child),
            pin_path: pin_path.to_owned(),
            stdout,
            stderr,
        })
    }

    /// Waits (bounded) for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.logs().iter().any(|l| l.contains(needle)) {
                return Ok(());
            }
            if let Some(status) = self.try_wait()? {
                bail!(
                    "egress-filter exited ({status}) before logging {needle:?}:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "no log line with {needle:?} within {timeout:?}:\n{}",
            self.logs().join("\n")
        )
    }

    /// Event lines printed so far.
    #[must_use]
    pub fn events(&self) -> Vec<String> {
        self.stdout.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Log lines printed so far.
    #[must_use]
    pub fn logs(&self) -> Vec<String> {
        self.stderr.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (bounded) for an event line that satisfies `predicate`.
    pub fn wait_for_event(
        &self,
        predicate: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(line) = self.events().into_iter().find(|l| predicate(l)) {
                return Ok(line);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!(
            "no matching event within {timeout:?}; events:\n{}",
            self.events().join("\n")
        )
    }

    fn try_wait(&self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        let mut child = self
            .child
            .lock()
            .map_err(|_| anyhow::anyhow!("child lock poisoned"))?;
        Ok(child.try_wait()?)
    }

    fn pid(&self) -> u32 {
        self.child.lock().map_or(0, |c| c.id())
    }

    /// Sends a signal.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        crate::lab::sh(&["kill", &format!("-{signal}"), &self.pid().to_string()])?;
        Ok(())
    }

    /// Waits (bounded) for the process to exit and returns whether it exited successfully.
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status.success());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("egress-filter did not exit within {timeout:?}")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(None)) {
            let _term = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline && matches!(self.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
            if let Ok(mut child) = self.child.lock() {
                let _killed = child.kill();
                let _reaped = child.wait();
            }
        }
        // Whatever the test did (kill -9 included), leave no pins behind.
        if std::path::Path::new(&self.pin_path).exists() {
            if let Ok(bin) = binary() {
                let _detached = Command::new(bin)
                    .args(["detach", "--pin-path", &self.pin_path])
                    .output();
            }
        }
    }
}
