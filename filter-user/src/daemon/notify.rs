//! systemd's notification protocol (`sd_notify(3)`, through the `sd-notify` crate): `READY=1`
//! once the filter enforces, `RELOADING=1` and `READY=1` around a reload, `STOPPING=1` when it
//! detaches, each with a `STATUS=` line, and `WATCHDOG=1` from the main loop when the unit sets
//! `WatchdogSec=`. Under `Type=notify` systemd (and anything else that sets `NOTIFY_SOCKET`, such
//! as the end-to-end tests) learns the daemon's state from these, not from its log wording.
//! Without `NOTIFY_SOCKET` nothing is sent.

use std::time::Duration;

use sd_notify::NotifyState;

/// Where notifications go, if anywhere, and how often the watchdog wants a sign of life.
pub struct Notifier {
    enabled: bool,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// Notifications to the socket `NOTIFY_SOCKET` names, if set; the watchdog interval from
    /// `WATCHDOG_USEC` (when `WATCHDOG_PID`, if set, is this process).
    #[must_use]
    pub fn from_env() -> Self {
        Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            watchdog: sd_notify::watchdog_enabled(),
        }
    }

    /// How often to call [`Self::alive`]: half the watchdog's timeout, as `sd_watchdog_enabled(3)`
    /// recommends, so one late tick is not yet a missed one. `None`: no watchdog.
    #[must_use]
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|timeout| timeout / 2)
    }

    /// The filter enforces (again, after a reload).
    pub fn ready(&self, status: &str) {
        self.send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// A reload begins; `ready` ends it. systemd wants the monotonic clock with it, to tell this
    /// reload from an older one.
    pub fn reloading(&self) {
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(err) => tracing::warn!("cannot read the monotonic clock for systemd: {err}"),
        }
    }

    /// The main loop is alive.
    pub fn alive(&self) {
        self.send(&[NotifyState::Watchdog]);
    }

    /// The filter is being detached.
    pub fn stopping(&self) {
        self.send(&[NotifyState::Stopping]);
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        if let Err(err) = sd_notify::notify(states) {
            tracing::warn!("cannot notify the service manager: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;

    #[test]
    fn readiness_reloads_and_watchdog_reach_the_socket_in_order() {
        let path = std::env::temp_dir().join(format!("ef-notify-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        // Only this test reads these variables in the unit-test process.
        std::env::set_var("NOTIFY_SOCKET", &path);
        std::env::set_var("WATCHDOG_USEC", "4000000");
        std::env::remove_var("WATCHDOG_PID");
        let notifier = Notifier::from_env();
        assert_eq!(notifier.watchdog_interval(), Some(Duration::from_secs(2)));
        notifier.ready("enforcing");
        notifier.reloading();
        notifier.ready("enforcing the reloaded rules");
        notifier.alive();
        notifier.stopping();
        let mut received = Vec::new();
        let mut buffer = [0u8; 256];
        for _ in 0..5 {
            let len = listener.recv(&mut buffer).expect("a notification");
            received.push(String::from_utf8_lossy(&buffer[..len]).into_owned());
        }
        std::fs::remove_file(&path).expect("cleanup");
        assert_eq!(received[0], "READY=1\nSTATUS=enforcing\n");
        assert!(
            received[1].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{received:?}"
        );
        assert_eq!(
            received[2],
            "READY=1\nSTATUS=enforcing the reloaded rules\n"
        );
        assert_eq!(received[3], "WATCHDOG=1\n");
        assert_eq!(received[4], "STOPPING=1\n");
    }
}
