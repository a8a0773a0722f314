//! What the forwarder remembers of the daemon's confirmations, so that a name asked all day
//! costs the daemon one renewal per half grace period, not one per answer (see `forwarder`).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use super::learned::ttl_hold;

/// An entry about to expire is not counted on: the renewal sent with the answer might reach the
/// daemon after the entry went.
const RENEWAL_MARGIN: Duration = Duration::from_secs(2);

/// Most (chain, address) pairs [`OpenAddresses`] remembers; past it, it starts over.
const MAX_REMEMBERED: usize = 65_536;

/// Until when each address the daemon confirmed for an answer's chain of names (the question
/// and its CNAMEs, which decide the services) is sure to stay open, under which epoch of the
/// daemon. The daemon keeps each entry its grace period past that.
#[derive(Debug, Default)]
pub(super) struct OpenAddresses {
    entries: Mutex<HashMap<(String, IpAddr), (Instant, u64)>>,
}

/// What [`OpenAddresses::check`] knows of an answer's addresses.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Known {
    /// Open, and staying open at least half the grace period past this answer's TTL.
    Covered,
    /// Open now, but the entries must be extended for this answer.
    OpenNow,
    /// Not known open: the daemon must confirm before the answer goes.
    Unknown,
}

impl OpenAddresses {
    /// What is known of `addresses` answered for `chain` at `now` under `epoch`.
    pub(super) fn check(
        &self,
        chain: &str,
        addresses: &[(IpAddr, u32)],
        now: Instant,
        epoch: u64,
        min_ttl: Duration,
        grace: Duration,
    ) -> Known {
        let Ok(entries) = self.entries.lock() else {
            return Known::Unknown;
        };
        let mut known = Known::Covered;
        for (address, ttl) in addresses {
            let Some((until, at)) = entries.get(&(chain.to_owned(), *address)) else {
                return Known::Unknown;
            };
            // Open until `until + grace`, less the time a renewal needs to reach the daemon.
            if *at != epoch || now + RENEWAL_MARGIN >= *until + grace {
                return Known::Unknown;
            }
            // Covered if the entry outlasts this answer's TTL by half the grace or more: every
            // answer gets at least that, and a name asked all day is renewed only every
            // half-grace, not on every answer.
            if now + ttl_hold(*ttl, min_ttl) > *until + grace / 2 {
                known = Known::OpenNow;
            }
        }
        known
    }

    /// Remembers a confirmation the daemon gave for a request sent at `sent`: each entry lives
    /// at least its TTL (within the daemon's bounds) from then, and the daemon's grace beyond.
    pub(super) fn confirmed(
        &self,
        chain: &str,
        addresses: &[(IpAddr, u32)],
        sent: Instant,
        min_ttl: Duration,
        epoch: u64,
    ) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() + addresses.len() > MAX_REMEMBERED {
            entries.clear();
        }
        for (address, ttl) in addresses {
            let until = sent + ttl_hold(*ttl, min_ttl);
            let entry = entries
                .entry((chain.to_owned(), *address))
                .or_insert((until, epoch));
            *entry = if entry.1 == epoch {
                (entry.0.max(until), epoch)
            } else {
                (until, epoch)
            };
        }
    }
}
