//! The forwarder's counters, shared with the daemon (which saves them to the state file for
//! `stats`).

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// What the forwarder has done since it started.
#[derive(Debug, Default)]
pub struct DnsCounters {
    pub(super) queries: AtomicU64,
    pub(super) matched: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) servfail: AtomicU64,
    pub(super) overloaded: AtomicU64,
    pub(super) client_limited: AtomicU64,
    pub(super) merged: AtomicU64,
    pub(super) tcp_retries: AtomicU64,
    pub(super) mismatched: AtomicU64,
    pub(super) late: AtomicU64,
    pub(super) already_open: AtomicU64,
}

/// [`DnsCounters`] read at one moment, as `stats` shows them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsCounterValues {
    /// Client queries taken in (well-formed, one question).
    pub queries: u64,
    /// Answers whose question or CNAME chain matched a rule's host.
    pub matched: u64,
    /// Questions refused with NXDOMAIN by `--dns-block-unlisted`.
    pub refused: u64,
    /// Messages answered FORMERR or NOTIMP.
    pub malformed: u64,
    /// Queries answered SERVFAIL because the upstream failed or timed out.
    pub servfail: u64,
    /// Queries answered SERVFAIL because too many were in flight.
    pub overloaded: u64,
    /// Queries answered SERVFAIL because their client had its bound in flight already
    /// ([`super::forwarder::MAX_QUERIES_PER_CLIENT`] by default).
    #[serde(default)]
    pub client_limited: u64,
    /// Queries answered from the upstream query of an identical question already in flight.
    #[serde(default)]
    pub merged: u64,
    /// Truncated UDP answers asked again over TCP.
    pub tcp_retries: u64,
    /// Upstream datagrams ignored for not answering the query (ID, question, or the case of
    /// its name).
    pub mismatched: u64,
    /// Answers sent before the daemon confirmed their addresses were in the maps.
    pub late: u64,
    /// Listed answers whose addresses were known open already (sent without waiting for the
    /// daemon).
    #[serde(default)]
    pub already_open: u64,
}

impl DnsCounters {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    #[must_use]
    pub fn values(&self) -> DnsCounterValues {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsCounterValues {
            queries: read(&self.queries),
            matched: read(&self.matched),
            refused: read(&self.refused),
            malformed: read(&self.malformed),
            servfail: read(&self.servfail),
            overloaded: read(&self.overloaded),
            client_limited: read(&self.client_limited),
            merged: read(&self.merged),
            tcp_retries: read(&self.tcp_retries),
            mismatched: read(&self.mismatched),
            late: read(&self.late),
            already_open: read(&self.already_open),
        }
    }
}
