//! The daemon's state file: what `stats` needs to name services, and what a restarted daemon
//! needs to keep hostname-derived addresses allowed while it resolves them again.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::dns::{DnsCounterValues, LearnCounters, LearnedView};

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    /// Service names by id (the index of their kernel counters).
    pub services: Vec<String>,
    /// Hostname → addresses it resolved to.
    pub hosts: BTreeMap<String, Vec<IpAddr>>,
    /// Seconds since the epoch when this was written.
    pub written_at: u64,
    pub mode: String,
    /// What the DNS forwarder learned, as of `written_at` (absent without `--dns-listen`).
    #[serde(default)]
    pub learned: Vec<LearnedView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStats>,
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
    /// Writes atomically (a temporary file renamed over the old one).
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
    }

    /// Reads the state, or `None` if there is none.
    pub fn load(path: &Path) -> anyhow::Result<Option<Self>> {
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

    #[must_use]
    pub fn now_secs() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs()
    }
}
