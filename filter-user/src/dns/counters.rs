//! The forwarder's counters, shared with the daemon (which saves them to the state file for
//! `stats`).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use prometheus::{exponential_buckets, Histogram, HistogramOpts};
use serde::{Deserialize, Serialize};

/// What the forwarder has done since it started.
#[derive(Debug)]
pub struct DnsCounters {
    pub(super) queries: AtomicU64,
    pub(super) forwarded: AtomicU64,
    pub(super) matched: AtomicU64,
    pub(super) refused: AtomicU64,
    pub(super) malformed: AtomicU64,
    pub(super) servfail: AtomicU64,
    pub(super) overloaded: AtomicU64,
    pub(super) client_limited: AtomicU64,
    pub(super) displaced: AtomicU64,
    pub(super) cached: AtomicU64,
    pub(super) merged: AtomicU64,
    pub(super) tcp_retries: AtomicU64,
    pub(super) mismatched: AtomicU64,
    pub(super) late: AtomicU64,
    pub(super) already_open: AtomicU64,
    pub(super) unserved: AtomicU64,
    pub(super) truncated: AtomicU64,
    pub(super) tcp_client_limited: AtomicU64,
    pub(super) tcp_full: AtomicU64,
    /// How long answers were held while their addresses were written to the kernel.
    hold_time: Histogram,
}

/// 50 µs to about 1.6 s, doubling: a map write takes tens of microseconds, the forwarder gives
/// up waiting after one second.
fn hold_time_histogram() -> Histogram {
    let buckets = exponential_buckets(50e-6, 2.0, 16).expect("valid buckets");
    Histogram::with_opts(
        HistogramOpts::new(
            "egress_filter_dns_answer_hold_seconds",
            "How long an answer to a rule's name was held while its addresses were written to \
             the kernel, before it went to the client.",
        )
        .buckets(buckets),
    )
    .expect("a valid histogram")
}

impl Default for DnsCounters {
    fn default() -> Self {
        Self {
            queries: AtomicU64::default(),
            forwarded: AtomicU64::default(),
            matched: AtomicU64::default(),
            refused: AtomicU64::default(),
            malformed: AtomicU64::default(),
            servfail: AtomicU64::default(),
            overloaded: AtomicU64::default(),
            client_limited: AtomicU64::default(),
            displaced: AtomicU64::default(),
            cached: AtomicU64::default(),
            merged: AtomicU64::default(),
            tcp_retries: AtomicU64::default(),
            mismatched: AtomicU64::default(),
            late: AtomicU64::default(),
            already_open: AtomicU64::default(),
            unserved: AtomicU64::default(),
            truncated: AtomicU64::default(),
            tcp_client_limited: AtomicU64::default(),
            tcp_full: AtomicU64::default(),
            hold_time: hold_time_histogram(),
        }
    }
}

/// [`DnsCounters`] read at one moment, as `stats` shows them.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DnsCounterValues {
    /// Client queries taken in (well-formed, one question).
    pub queries: u64,
    /// Queries sent upstream (one per question in flight, however many clients asked it).
    #[serde(default)]
    pub forwarded: u64,
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
    /// Queries dropped unanswered because a newer query of their client, at its bound, took
    /// their place after they had waited [`super::forwarder::DISPLACE_AFTER`].
    #[serde(default)]
    pub displaced: u64,
    /// Queries answered from a kept answer ([`super::cache`]), without asking upstream.
    #[serde(default)]
    pub cached: u64,
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
    /// Datagrams and TCP connections from sources the forwarder does not serve (outside the
    /// guarded interfaces' subnets, the host and `--dns-allow-from`), dropped without a reply.
    #[serde(default)]
    pub unserved: u64,
    /// UDP replies cut to their question with TC set: the answer exceeded the client's UDP size
    /// or [`super::message::MAX_UDP_REPLY`].
    #[serde(default)]
    pub truncated: u64,
    /// TCP connections closed at once because their client held its bound of connections
    /// already ([`super::forwarder::MAX_TCP_PER_CLIENT`]).
    #[serde(default)]
    pub tcp_client_limited: u64,
    /// TCP connections closed at once because every slot was taken
    /// ([`super::forwarder::MAX_TCP_CLIENTS`]).
    #[serde(default)]
    pub tcp_full: u64,
}

impl DnsCounters {
    pub(super) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Records that an answer was held `held` while its addresses were written.
    pub(super) fn held(&self, held: Duration) {
        self.hold_time.observe(held.as_secs_f64());
    }

    /// The hold-time histogram, for the metrics.
    #[must_use]
    pub fn hold_time(&self) -> &Histogram {
        &self.hold_time
    }

    #[must_use]
    pub fn values(&self) -> DnsCounterValues {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        DnsCounterValues {
            queries: read(&self.queries),
            forwarded: read(&self.forwarded),
            matched: read(&self.matched),
            refused: read(&self.refused),
            malformed: read(&self.malformed),
            servfail: read(&self.servfail),
            overloaded: read(&self.overloaded),
            client_limited: read(&self.client_limited),
            displaced: read(&self.displaced),
            cached: read(&self.cached),
            merged: read(&self.merged),
            tcp_retries: read(&self.tcp_retries),
            mismatched: read(&self.mismatched),
            late: read(&self.late),
            already_open: read(&self.already_open),
            unserved: read(&self.unserved),
            truncated: read(&self.truncated),
            tcp_client_limited: read(&self.tcp_client_limited),
            tcp_full: read(&self.tcp_full),
        }
    }
}
