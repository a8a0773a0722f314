//! When to resolve each hostname again, and how long each answered address stays allowed.
//!
//! - A name is resolved again when its answer's TTL runs out, but never sooner than the minimum
//!   refresh (to spare the resolver) nor later than the maximum (so a long TTL cannot pin a stale
//!   address for a day).
//! - An address stays allowed for a grace period after it was last seen in an answer: devices
//!   cache DNS longer than they should, and connections outlive the answer that opened them.
//! - A failed lookup changes nothing that is allowed: its addresses are kept (and kept beyond
//!   their grace) until a lookup succeeds. A broken resolver must not empty the allow list.
//!
//! Pure bookkeeping over a caller-given clock, so every rule above is unit-tested.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::{Duration, Instant},
};

use crate::{
    compile::Resolved,
    resolve::{Answer, LookupError, Lookups, Resolver},
};

/// An address a name gained or lost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub name: String,
    pub address: IpAddr,
    pub added: bool,
}

/// Refresh and expiry bounds.
#[derive(Clone, Copy, Debug)]
pub struct RefreshPolicy {
    pub min_refresh: Duration,
    pub max_refresh: Duration,
    pub grace: Duration,
}

#[derive(Debug)]
struct HostState {
    /// Address → until when it stays allowed.
    addresses: BTreeMap<IpAddr, Instant>,
    next_refresh: Instant,
    /// A lookup was started and has not reported back: its addresses do not expire meanwhile
    /// (a slow or dead resolver must not empty the list while it keeps us waiting).
    in_flight: bool,
    /// Consecutive failed lookups, for logs.
    failures: u32,
    last_error: Option<String>,
}

/// The state of every hostname the rules name.
#[derive(Debug)]
pub struct HostTable {
    policy: RefreshPolicy,
    hosts: BTreeMap<String, HostState>,
}

impl HostTable {
    #[must_use]
    pub fn new(policy: RefreshPolicy) -> Self {
        Self {
            policy,
            hosts: BTreeMap::new(),
        }
    }

    /// Makes the table track exactly `names`: new names are due at once, names no longer in the
    /// rules are forgotten, the rest keep their addresses and schedule.
    pub fn set_names<'a>(&mut self, names: impl IntoIterator<Item = &'a str>, now: Instant) {
        let wanted: BTreeSet<&str> = names.into_iter().collect();
        self.hosts.retain(|name, _| wanted.contains(name.as_str()));
        for name in wanted {
            self.hosts
                .entry(name.to_owned())
                .or_insert_with(|| HostState {
                    addresses: BTreeMap::new(),
                    next_refresh: now,
                    in_flight: false,
                    failures: 0,
                    last_error: None,
                });
        }
    }

    /// Seeds a name with addresses known from before (an adopted filter's last state), allowed
    /// until `until` unless answers renew them.
    pub fn seed(&mut self, name: &str, addresses: &[IpAddr], until: Instant) {
        if let Some(state) = self.hosts.get_mut(name) {
            for addr in addresses {
                let keep = state.addresses.entry(*addr).or_insert(until);
                *keep = (*keep).max(until);
            }
        }
    }

    /// Names whose refresh time has come.
    #[must_use]
    pub fn due(&self, now: Instant) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|(_, s)| s.next_refresh <= now)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Names whose refresh time has come, marked as being resolved: they are not due again
    /// until the minimum refresh has passed, so a lookup that never reports back is retried.
    pub fn take_due(&mut self, now: Instant) -> Vec<String> {
        let retry = now + self.policy.min_refresh;
        self.hosts
            .iter_mut()
            .filter(|(_, s)| s.next_refresh <= now)
            .map(|(name, state)| {
                state.next_refresh = retry;
                state.in_flight = true;
                name.clone()
            })
            .collect()
    }

    /// The next moment something happens: a refresh or an expiry (none while in flight).
    #[must_use]
    pub fn next_event(&self) -> Option<Instant> {
        self.hosts
            .values()
            .flat_map(|s| {
                let expiries = s.addresses.values().copied().filter(|_| !s.in_flight);
                std::iter::once(s.next_refresh).chain(expiries)
            })
            .min()
    }

    /// Takes in a lookup's outcome. Returns the addresses it added (a failure adds none and
    /// removes none).
    pub fn record(
        &mut self,
        name: &str,
        answer: &Result<Answer, LookupError>,
        now: Instant,
    ) -> Vec<Change> {
        let policy = self.policy;
        let Some(state) = self.hosts.get_mut(name) else {
            return Vec::new();
        };
        state.in_flight = false;
        match answer {
            Ok(answer) => {
                let wait = answer.ttl.clamp(policy.min_refresh, policy.max_refresh);
                state.next_refresh = now + wait;
                state.failures = 0;
                state.last_error = None;
                let keep_until = now + wait.max(answer.ttl) + policy.grace;
                let mut added = Vec::new();
                for addr in &answer.addresses {
                    if state.addresses.insert(*addr, keep_until).is_none() {
                        added.push(Change {
                            name: name.to_owned(),
                            address: *addr,
                            added: true,
                        });
                    }
                }
                added
            }
            Err(error) => {
                // Retry soon, and hold every address at least until the retry plus grace.
                state.next_refresh = now + policy.min_refresh;
                state.failures += 1;
                state.last_error = Some(error.to_string());
                let hold = state.next_refresh + policy.grace;
                for keep in state.addresses.values_mut() {
                    *keep = (*keep).max(hold);
                }
                Vec::new()
            }
        }
    }

    /// Drops addresses whose time is up. Returns the ones that went.
    pub fn expire(&mut self, now: Instant) -> Vec<Change> {
        let mut removed = Vec::new();
        for (name, state) in self.hosts.iter_mut().filter(|(_, s)| !s.in_flight) {
            state.addresses.retain(|address, until| {
                let keep = *until > now;
                if !keep {
                    removed.push(Change {
                        name: name.clone(),
                        address: *address,
                        added: false,
                    });
                }
                keep
            });
        }
        removed
    }

    /// What every name resolves to now, as the compiler takes it.
    #[must_use]
    pub fn resolved(&self) -> Resolved {
        self.hosts
            .iter()
            .filter(|(_, s)| !s.addresses.is_empty())
            .map(|(name, s)| (name.clone(), s.addresses.keys().copied().collect()))
            .collect()
    }

    /// How many names have addresses now.
    #[must_use]
    pub fn resolved_count(&self) -> usize {
        self.hosts
            .values()
            .filter(|s| !s.addresses.is_empty())
            .count()
    }

    /// Names whose last lookup failed, with the error and how many times in a row.
    #[must_use]
    pub fn failing(&self) -> Vec<(&str, u32, &str)> {
        self.hosts
            .iter()
            .filter_map(|(n, s)| Some((n.as_str(), s.failures, s.last_error.as_deref()?)))
            .collect()
    }

    /// Address → the names it was learned from, for enriching events.
    #[must_use]
    pub fn names_by_address(&self) -> BTreeMap<IpAddr, Vec<String>> {
        let mut out: BTreeMap<IpAddr, Vec<String>> = BTreeMap::new();
        for (name, state) in &self.hosts {
            for addr in state.addresses.keys() {
                out.entry(*addr).or_default().push(name.clone());
            }
        }
        out
    }
}

/// Resolves every name that is due, waiting for the answers (at start).
pub async fn resolve_now(resolver: &Resolver, hosts: &mut HostTable, now: Instant) -> Lookups {
    let due = hosts.take_due(now);
    let names: Vec<&str> = due.iter().map(String::as_str).collect();
    resolver.resolve_all(&names).await
}

/// Sends the names that are due to `resolver` in a task of their own (a slow resolver must
/// delay neither DNS answers nor signals); their answers come back on `results`.
pub fn resolve_in_background(
    hosts: &mut HostTable,
    resolver: &Resolver,
    results: &tokio::sync::mpsc::Sender<Lookups>,
    now: Instant,
) {
    let due = hosts.take_due(now);
    if due.is_empty() {
        return;
    }
    let (resolver, results) = (resolver.clone(), results.clone());
    tokio::spawn(async move {
        let names: Vec<&str> = due.iter().map(String::as_str).collect();
        let _ = results.send(resolver.resolve_all(&names).await).await;
    });
}

/// Takes in a batch of lookups. Returns the addresses that came.
pub fn record_answers(hosts: &mut HostTable, answers: &Lookups) -> Vec<Change> {
    let now = Instant::now();
    let mut changed = Vec::new();
    for (name, answer) in answers {
        changed.extend(hosts.record(name, answer, now));
    }
    let failed: Vec<(&String, &LookupError)> = answers
        .iter()
        .filter_map(|(n, a)| Some((n, a.as_ref().err()?)))
        .collect();
    if let Some((_, error)) = failed.first() {
        let names: Vec<&str> = failed.iter().take(5).map(|(n, _)| n.as_str()).collect();
        tracing::warn!(
            "cannot resolve {} name(s) ({}{}): {error}; their last addresses stay allowed",
            failed.len(),
            names.join(", "),
            if failed.len() > names.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RefreshPolicy = RefreshPolicy {
        min_refresh: Duration::from_secs(10),
        max_refresh: Duration::from_hours(1),
        grace: Duration::from_mins(1),
    };

    #[expect(
        clippy::unnecessary_wraps,
        reason = "HostTable::record takes a lookup's result"
    )]
    fn answer(addrs: &[&str], ttl: u64) -> Result<Answer, LookupError> {
        Ok(Answer {
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            ttl: Duration::from_secs(ttl),
        })
    }

    fn table(now: Instant) -> HostTable {
        let mut t = HostTable::new(POLICY);
        t.set_names(["a.example.com"], now);
        t
    }

    fn addrs(t: &HostTable) -> Vec<String> {
        t.resolved()
            .values()
            .flatten()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn refresh_follows_the_ttl_within_bounds() {
        let t0 = Instant::now();
        let mut t = table(t0);
        assert_eq!(t.due(t0), ["a.example.com"], "a new name is due at once");
        t.record("a.example.com", &answer(&["192.0.2.1"], 300), t0);
        assert!(t.due(t0 + Duration::from_secs(299)).is_empty());
        assert_eq!(
            t.due(t0 + Duration::from_mins(5)).len(),
            1,
            "due when the TTL runs out"
        );
        t.record("a.example.com", &answer(&["192.0.2.1"], 1), t0);
        assert!(
            t.due(t0 + Duration::from_secs(9)).is_empty(),
            "never before the minimum refresh"
        );
        t.record("a.example.com", &answer(&["192.0.2.1"], 86_400), t0);
        assert_eq!(
            t.due(t0 + Duration::from_hours(1)).len(),
            1,
            "never after the maximum"
        );
    }

    #[test]
    fn a_vanished_address_stays_for_ttl_plus_grace_then_goes() {
        let t0 = Instant::now();
        let mut t = table(t0);
        assert_eq!(
            t.record("a.example.com", &answer(&["192.0.2.1"], 30), t0)
                .len(),
            1,
            "a new address is a change"
        );
        let t1 = t0 + Duration::from_secs(30);
        assert_eq!(
            t.record("a.example.com", &answer(&["192.0.2.2"], 30), t1)
                .len(),
            1
        );
        assert_eq!(
            addrs(&t),
            ["192.0.2.1", "192.0.2.2"],
            "the old address is still in its grace"
        );
        assert!(t.expire(t0 + Duration::from_secs(30 + 59)).is_empty());
        assert_eq!(
            t.expire(t0 + Duration::from_secs(30 + 60)),
            [Change {
                name: "a.example.com".into(),
                address: "192.0.2.1".parse().unwrap(),
                added: false
            }],
            "gone after TTL plus grace"
        );
        assert_eq!(addrs(&t), ["192.0.2.2"]);
    }

    #[test]
    fn a_failing_resolver_never_empties_the_list() {
        let t0 = Instant::now();
        let mut t = table(t0);
        t.record("a.example.com", &answer(&["192.0.2.1"], 30), t0);
        let mut now = t0;
        for _ in 0..100 {
            now += POLICY.min_refresh;
            assert!(
                t.record(
                    "a.example.com",
                    &Err(LookupError::Failed("timed out".into())),
                    now
                )
                .is_empty(),
                "a failure changes nothing"
            );
            t.expire(now);
            assert_eq!(addrs(&t), ["192.0.2.1"], "kept at {:?}", now - t0);
        }
        assert_eq!(t.failing(), [("a.example.com", 100, "timed out")]);
        assert_eq!(
            t.due(now + POLICY.min_refresh).len(),
            1,
            "retried after the minimum refresh"
        );
    }

    #[test]
    fn addresses_wait_for_a_lookup_in_flight_however_slow() {
        let t0 = Instant::now();
        let mut t = table(t0);
        t.record("a.example.com", &answer(&["192.0.2.1"], 10), t0);
        let due = t0 + Duration::from_secs(10);
        assert_eq!(t.take_due(due), ["a.example.com"]);
        let late = due + POLICY.grace + Duration::from_secs(5);
        assert!(t.expire(late).is_empty(), "kept while the lookup is out");
        assert!(
            t.next_event().is_some_and(|e| e > due),
            "and no wake-up for an expiry that cannot happen yet"
        );
        t.record(
            "a.example.com",
            &Err(LookupError::Failed("timed out".into())),
            late,
        );
        assert!(t.expire(late).is_empty(), "a failure holds it further");
        assert_eq!(addrs(&t), ["192.0.2.1"]);
    }

    #[test]
    fn names_taken_for_resolution_are_not_due_again_until_the_retry() {
        let t0 = Instant::now();
        let mut t = table(t0);
        assert_eq!(t.take_due(t0), ["a.example.com"]);
        assert!(t.take_due(t0).is_empty(), "in flight");
        assert!(t.due(t0 + Duration::from_millis(9_999)).is_empty());
        assert_eq!(
            t.take_due(t0 + POLICY.min_refresh),
            ["a.example.com"],
            "a lookup that never came back is retried"
        );
    }

    #[test]
    fn renaming_keeps_state_for_names_that_stay() {
        let t0 = Instant::now();
        let mut t = table(t0);
        t.record("a.example.com", &answer(&["192.0.2.1"], 300), t0);
        t.set_names(["a.example.com", "b.example.com"], t0);
        assert_eq!(t.due(t0), ["b.example.com"], "only the new name is due");
        assert_eq!(addrs(&t), ["192.0.2.1"]);
        t.set_names(["b.example.com"], t0);
        assert!(
            t.resolved().is_empty(),
            "a removed name takes its addresses with it"
        );
    }
}
