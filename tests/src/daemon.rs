//! The `egress-filter` binary run as a daemon inside a lab namespace.
//!
//! Started with `nsenter --net=…` rather than `ip netns exec`: the latter gives its process a
//! fresh /sys without bpffs, so pins would vanish with the process.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
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

/// `egress-filter VERB --pin-path PIN --json` (`stats`, `learned`), parsed.
pub fn query_json(binary: &Path, verb: &str, pin_path: &str) -> anyhow::Result<serde_json::Value> {
    json_output(
        Command::new(binary).args([verb, "--pin-path", pin_path, "--json"]),
        verb,
    )
}

/// Runs `cmd`, fails with its stderr unless it succeeds, and parses its stdout as JSON.
fn json_output(cmd: &mut Command, what: &str) -> anyhow::Result<serde_json::Value> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// A running daemon whose stdout (events) and stderr (logs) are collected.
pub struct Daemon {
    child: Mutex<Child>,
    /// The network namespace it runs in.
    pub netns: String,
    pub pin_path: String,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// What the daemon told its service manager (`sd_notify` messages), in order.
    notifications: Arc<Mutex<Vec<String>>>,
    notify_socket: PathBuf,
    /// The binary it runs, and `detach`es with if it leaves pins behind.
    binary: PathBuf,
    /// The threads reading its stdout and stderr: they end when it has exited and they have
    /// read the last line.
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Daemon {
    /// Starts `egress-filter run ARGS --pin-path PIN` in `netns` and waits until it tells its
    /// service manager it is ready (enforcing).
    pub fn start(netns: &str, pin_path: &str, args: &[&str]) -> anyhow::Result<Self> {
        let daemon = Self::spawn(netns, pin_path, args)?;
        daemon.wait_for_notification("READY=1", 0, Duration::from_mins(1))?;
        Ok(daemon)
    }

    /// Like [`Daemon::start`], and prints every event and log line as it comes, prefixed (for
    /// the demo, where the daemon is part of the show).
    pub fn start_echoed(netns: &str, pin_path: &str, args: &[&str]) -> anyhow::Result<Self> {
        let daemon = Self::spawn_with(binary()?, netns, pin_path, args, true)?;
        daemon.wait_for_notification("READY=1", 0, Duration::from_mins(1))?;
        Ok(daemon)
    }

    /// Starts it without waiting.
    pub fn spawn(netns: &str, pin_path: &str, args: &[&str]) -> anyhow::Result<Self> {
        Self::spawn_with(binary()?, netns, pin_path, args, false)
    }

    /// Like [`Daemon::start`], running `binary` rather than [`binary`] (a packaged build, or the
    /// benchmark's own).
    pub fn start_binary(
        binary: &Path,
        netns: &str,
        pin_path: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let daemon = Self::spawn_full(binary.to_owned(), netns, pin_path, args, false, &[])?;
        daemon.wait_for_notification("READY=1", 0, Duration::from_mins(1))?;
        Ok(daemon)
    }

    /// Like [`Daemon::spawn`], running `binary`.
    pub fn spawn_binary(
        binary: &Path,
        netns: &str,
        pin_path: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn_full(binary.to_owned(), netns, pin_path, args, false, &[])
    }

    /// Like [`Daemon::start`], with more environment variables (`WATCHDOG_USEC`, …).
    pub fn start_with_env(
        netns: &str,
        pin_path: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let daemon = Self::spawn_full(binary()?, netns, pin_path, args, false, env)?;
        daemon.wait_for_notification("READY=1", 0, Duration::from_mins(1))?;
        Ok(daemon)
    }

    fn spawn_with(
        binary: PathBuf,
        netns: &str,
        pin_path: &str,
        args: &[&str],
        echo: bool,
    ) -> anyhow::Result<Self> {
        Self::spawn_full(binary, netns, pin_path, args, echo, &[])
    }

    fn spawn_full(
        binary: PathBuf,
        netns: &str,
        pin_path: &str,
        args: &[&str],
        echo: bool,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        // The service manager's side of sd_notify: a datagram socket of our own.
        let notify_socket =
            std::env::temp_dir().join(format!("ef-notify-{}.sock", crate::lab::unique_id()));
        let _stale = std::fs::remove_file(&notify_socket);
        let listener = UnixDatagram::bind(&notify_socket)
            .with_context(|| format!("cannot bind {}", notify_socket.display()))?;
        let notifications = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&notifications);
        listener.set_read_timeout(Some(Duration::from_millis(200)))?;
        std::thread::spawn(move || {
            let mut buffer = [0u8; 1024];
            loop {
                match listener.recv(&mut buffer) {
                    Ok(len) => {
                        if let Ok(mut all) = sink.lock() {
                            all.push(String::from_utf8_lossy(&buffer[..len]).into_owned());
                        }
                    }
                    // Quiet: go on while the `Daemon` (the other holder of `sink`) lives.
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) && Arc::strong_count(&sink) > 1 => {}
                    Err(_) => break,
                }
            }
        });
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(&binary)
            .arg("run")
            .args(args)
            .args(["--pin-path", pin_path])
            .env("RUST_LOG", "info")
            .env("NOTIFY_SOCKET", &notify_socket)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start egress-filter")?;
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        for (pipe, sink, prefix) in [
            (
                Box::new(child.stdout.take().context("stdout")?) as Box<dyn std::io::Read + Send>,
                Arc::clone(&stdout),
                "   event │ ",
            ),
            (
                Box::new(child.stderr.take().context("stderr")?),
                Arc::clone(&stderr),
                "   log   │ ",
            ),
        ] {
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if echo {
                        println!("{prefix}{line}");
                    }
                    if let Ok(mut lines) = sink.lock() {
                        lines.push(line);
                    }
                }
            }));
        }
        Ok(Self {
            child: Mutex::new(child),
            netns: netns.to_owned(),
            pin_path: pin_path.to_owned(),
            stdout,
            stderr,
            notifications,
            notify_socket,
            binary,
            readers,
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

    /// Waits (bounded) for the log line holding `needle` and returns how long after `since` the
    /// daemon wrote it, by the timestamp it starts with: the test may have been busy meanwhile.
    pub fn logged_after(&self, needle: &str, since: SystemTime) -> anyhow::Result<Duration> {
        self.wait_for_log(needle, Duration::from_secs(5))?;
        let line = self
            .logs()
            .into_iter()
            .rfind(|l| l.contains(needle))
            .context("just seen")?;
        let stamp = line.split_whitespace().next().unwrap_or_default();
        let at = humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z'))?;
        Ok(at.duration_since(since).unwrap_or(Duration::ZERO))
    }

    /// Waits (bounded) until the daemon has sent more than `after` notifications and one of
    /// those after the first `after` contains `needle`; returns it. With `after` the count
    /// before an action, this waits for what the action caused.
    pub fn wait_for_notification(
        &self,
        needle: &str,
        after: usize,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(found) = self
                .notifications()
                .into_iter()
                .skip(after)
                .find(|n| n.contains(needle))
            {
                return Ok(found);
            }
            if let Some(status) = self.try_wait()? {
                bail!(
                    "egress-filter exited ({status}) before notifying {needle:?}:\n{}",
                    self.logs().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "no notification with {needle:?} within {timeout:?} (got {:?}):\n{}",
            self.notifications(),
            self.logs().join("\n")
        )
    }

    /// The sd_notify messages so far.
    #[must_use]
    pub fn notifications(&self) -> Vec<String> {
        self.notifications
            .lock()
            .map(|n| n.clone())
            .unwrap_or_default()
    }

    /// Sends SIGHUP and waits until the reload it causes is over; returns the daemon's status
    /// line for it (`enforcing the reloaded rules`, or why the old policy stays).
    pub fn reload(&self) -> anyhow::Result<String> {
        let before = self.notifications().len();
        self.signal("HUP")?;
        let ready = self.wait_for_notification("READY=1", before, Duration::from_secs(10))?;
        Ok(ready
            .lines()
            .find_map(|l| l.strip_prefix("STATUS="))
            .unwrap_or_default()
            .to_owned())
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

    /// `egress-filter stats --json` for this daemon's pin path.
    pub fn stats(&self) -> anyhow::Result<serde_json::Value> {
        query_json(&self.binary, "stats", &self.pin_path)
    }

    /// The mode `stats` reports XDP running in on `iface`, and why, once the state file holds
    /// the attachment (waiting up to 5 s for it).
    pub fn xdp_mode(&self, iface: &str) -> anyhow::Result<(String, String)> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let stats = self.stats()?;
            let found = stats["interfaces"]["attached"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|a| a["hook"] == "xdp" && a["iface"] == iface)
                .and_then(|a| {
                    Some((
                        a["xdp_mode"]["mode"].as_str()?.to_owned(),
                        a["xdp_mode"]["why"].as_str()?.to_owned(),
                    ))
                });
            if let Some(found) = found {
                return Ok(found);
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "stats reports no XDP mode on {iface}: {stats}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The attachments `stats` reports for `hook` (`xdp`, `tc-ingress`, …), as interface names.
    pub fn attached(&self, hook: &str) -> anyhow::Result<Vec<String>> {
        let stats = self.stats()?;
        Ok(stats["interfaces"]["attached"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["hook"] == hook)
            .filter_map(|a| a["iface"].as_str().map(str::to_owned))
            .collect())
    }

    /// `egress-filter explain ARGS --json` against this daemon's pinned filter and `rules`, in
    /// its namespace, parsed.
    pub fn explain(&self, rules: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        json_output(
            Command::new("nsenter")
                .arg(format!("--net=/run/netns/{}", self.netns))
                .arg(&self.binary)
                .arg("explain")
                .args(args)
                .args(["--rules", rules, "--pin-path", &self.pin_path, "--json"]),
            &format!("explain {args:?}"),
        )
    }

    /// The process id (of `nsenter`, which execs the daemon in place).
    #[must_use]
    pub fn pid(&self) -> u32 {
        self.child.lock().map_or(0, |c| c.id())
    }

    /// Sends a signal.
    pub fn signal(&self, signal: &str) -> anyhow::Result<()> {
        crate::lab::sh(&["kill", &format!("-{signal}"), &self.pid().to_string()])?;
        Ok(())
    }

    /// Waits (bounded) for the process to exit, and for the lines it wrote last (an error on
    /// its way out) to be read; whether it exited successfully.
    pub fn wait_exit(&self, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        let success = self.wait_gone(timeout)?;
        while Instant::now() < deadline
            && !self
                .readers
                .iter()
                .all(std::thread::JoinHandle::is_finished)
        {
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(success)
    }

    /// Waits (bounded) for the process to exit, and no longer: what the benchmark times.
    pub fn wait_gone(&self, timeout: Duration) -> anyhow::Result<bool> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status.success());
            }
            // Fine enough for the benchmark to time an exit by it.
            std::thread::sleep(Duration::from_millis(2));
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
        let _removed = std::fs::remove_file(&self.notify_socket);
        // Whatever the test did (kill -9 included), leave no pins behind.
        if Path::new(&self.pin_path).exists() {
            let _detached = Command::new(&self.binary)
                .args(["detach", "--pin-path", &self.pin_path])
                .output();
        }
    }
}
