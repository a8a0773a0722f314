//! The daemon's state file: what `stats` needs to name services, and what a restarted daemon
//! needs to keep hostname-derived addresses allowed while it resolves them again.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    daemon::attachments::AttachmentCounts,
    dns::{DnsCounterValues, LearnCounters, LearnedView},
};

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Service names by id (the index of their kernel counters).
    pub services: Vec<String>,
    /// Hostname → addresses it resolved to.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Seconds since the epoch when this was written.
    pub written_at: u64,
    pub mode: String,
    /// What the DNS forwarder learned, as of `written_at`, as state files before the learned
    /// store (`crate::learned_store`) kept it: read when no store exists, never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<LearnedView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStats>,
    /// The interfaces attached to, and those asked for that are not.
    #[serde(default)]
    pub interfaces: InterfaceReport,
    /// Each named client group's kernel number: a restart keeps them (see
    /// `Rules::keep_group_ids`), and events and `stats` name groups by them.
    #[serde(default)]
    pub groups: BTreeMap<String, u32>,
    /// The sha256 of the kernel object whose programs the daemon attached: a restart of the
    /// same build knows the attached programs read its maps as it writes them.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub programs: String,
}

/// What `stats` says about interfaces: every attachment held, the exact names asked for that do
/// not exist, the attachments that failed, and what happened since the daemon started.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct InterfaceReport {
    pub attached: Vec<AttachmentView>,
    pub missing: Vec<AttachmentView>,
    pub failed: Vec<AttachmentView>,
    pub counts: AttachmentCounts,
}

/// One attachment: the hook and the interface (with its index, when it exists; with why, when
/// attaching it failed).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachmentView {
    pub hook: String,
    pub iface: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// XDP only: the mode the kernel reports the program running in (`driver`, `generic`), and
    /// why it runs in that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp_mode: Option<XdpModeView>,
}

/// The mode an XDP attachment runs in, as the kernel reports it, and why.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct XdpModeView {
    pub mode: String,
    pub why: String,
}

/// The forwarder's counters and the learned table's, as `stats` shows them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsStats {
    #[serde(flatten)]
    pub forwarder: DnsCounterValues,
    #[serde(flatten)]
    pub learning: LearnCounters,
    /// Entries in the learned table now.
    pub learned_now: usize,
}

impl State {
    /// Writes atomically (see [`write_atomically`]).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        write_atomically(path, &serde_json::to_vec_pretty(self)?)
    }

    /// Reads the state, or `None` if there is none.
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
        read_json(path)
    }

    /// What a starting daemon takes back: the state, or `None` when there is none or it cannot
    /// be used. A damaged file is logged and moved aside (to `*.damaged`, for a post-mortem), so
    /// it is neither trusted nor silently overwritten.
    #[must_use]
    pub fn take_back(path: &Path) -> Option<Self> {
        match Self::load(path) {
            Ok(state) => state,
            Err(err) => {
                let aside = path.with_extension("json.damaged");
                let moved = std::fs::rename(path, &aside);
                tracing::warn!(
                    "{err:#}; starting without it{}",
                    match moved {
                        Ok(()) => format!(" (moved to {})", aside.display()),
                        Err(_) => String::new(),
                    }
                );
                None
            }
        }
    }

    #[must_use]
    pub fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`: a reader sees
/// the old file or the new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Reads a JSON file, or `None` if there is none; a file that does not parse is an error that
/// names it as damaged.
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => {
            Ok(Some(serde_json::from_slice(&bytes).with_context(|| {
                format!("{} is damaged", path.display())
            })?))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// How often the state file is written when only the DNS counters changed.
const COUNTERS_SAVE: Duration = Duration::from_secs(5);

/// When the state file was last written, and whether what it holds is behind: attachments,
/// reloads and the learned table's size are written within a second, counters alone every few
/// seconds. (The learned entries themselves go to `crate::learned_store` as they change.)
#[derive(Debug)]
pub struct StateSaver {
    /// Something the state file shows changed since it was written.
    pub dirty: bool,
    last_dns: Option<DnsStats>,
    last_saved: Instant,
}

impl StateSaver {
    #[must_use]
    pub fn new(now: Instant) -> Self {
        Self {
            dirty: false,
            last_dns: None,
            last_saved: now,
        }
    }

    /// Whether the file is behind enough to write it again, with the counters `dns` now.
    #[must_use]
    pub fn due(&self, dns: Option<&DnsStats>, now: Instant) -> bool {
        let counters_due = dns != self.last_dns.as_ref()
            && now.saturating_duration_since(self.last_saved) >= COUNTERS_SAVE;
        self.dirty || counters_due
    }

    /// Writes `state`; a failure is logged and the next chance tries again.
    pub fn save(&mut self, path: &Path, state: &State) {
        match state.save(path) {
            Ok(()) => {
                self.dirty = false;
                self.last_dns = state.dns;
                self.last_saved = Instant::now();
            }
            Err(err) => {
                tracing::warn!("cannot save state (stats will lack service names): {err:#}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_damaged_state_file_is_moved_aside_not_trusted() {
        let dir = std::env::temp_dir().join(format!("ef-state-damaged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("state.json");
        std::fs::write(&path, b"{\"services\": [tru").expect("write");
        assert!(State::take_back(&path).is_none());
        let aside = dir.join("state.json.damaged");
        let kept = std::fs::read(&aside).expect("moved aside");
        assert!(
            !path.exists(),
            "the damaged file is gone from where a daemon reads it"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(kept, b"{\"services\": [tru");
    }

    #[test]
    fn changes_are_due_at_once_counters_alone_after_a_few_seconds() {
        let t0 = Instant::now();
        let mut saver = StateSaver::new(t0);
        assert!(!saver.due(None, t0), "nothing changed");
        let counters = DnsStats {
            learned_now: 3,
            ..DnsStats::default()
        };
        assert!(!saver.due(Some(&counters), t0 + Duration::from_secs(1)));
        assert!(saver.due(Some(&counters), t0 + COUNTERS_SAVE));
        saver.dirty = true;
        assert!(saver.due(None, t0), "an attachment came or went");

        let dir = std::env::temp_dir().join(format!("ef-state-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("state.json");
        let state = State {
            dns: Some(counters),
            ..State::default()
        };
        saver.save(&path, &state);
        let read = State::load(&path).expect("readable").expect("present");
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert_eq!(read, state);
        assert!(
            !saver.due(Some(&counters), Instant::now() + COUNTERS_SAVE),
            "saved: the same counters are not due again"
        );
    }
}
