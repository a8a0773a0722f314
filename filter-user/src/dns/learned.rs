//! Addresses learned from DNS answers: which service each opens, from which name, until when.
//!
//! - An entry lives for the record's TTL plus the grace period, with the TTL raised to a floor
//!   first: a zero-TTL answer must still let the device connect a moment later. An answer seen
//!   again extends the entry (never shortens it: the earlier answer is still in some cache).
//! - The table is bounded: past its capacity an entry goes, counted as evicted, so a flood of
//!   unique names cannot grow memory or the kernel maps. Which one is fair across services: the
//!   service that grew pays with its own entry learned (or renewed) longest ago, unless it holds
//!   no more than its share of the table (capacity over the services holding entries); then the
//!   service holding the most pays. One answer of thousands of addresses, or a flood of names
//!   under one wildcard, thus pushes out its own service's entries, never another service's
//!   that clients still hold answers for.
//!
//! Pure bookkeeping over a caller-given clock, like `daemon::hosts`.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// Expiry and size bounds.
#[derive(Clone, Copy, Debug)]
pub struct LearnPolicy {
    /// TTLs below this count as this.
    pub min_ttl: Duration,
    pub grace: Duration,
    pub capacity: usize,
}

/// TTLs above this count as this: like a caching resolver's cap, it keeps a broken or hostile
/// upstream's TTL of years from opening an address for years.
pub const MAX_TTL: Duration = Duration::from_hours(24);

/// A TTL as this forwarder believes it: zero if its top bit is set (RFC 2181, 8), at most
/// [`MAX_TTL`]. The one place the rule lives: the TTLs passed on to clients and the time learned
/// addresses stay open both come from here.
#[must_use]
pub fn believed_ttl(ttl: u32) -> u32 {
    let cap = u32::try_from(MAX_TTL.as_secs()).unwrap_or(u32::MAX);
    if ttl > i32::MAX as u32 {
        0
    } else {
        ttl.min(cap)
    }
}

/// How long an answer with `ttl` keeps its addresses, before the grace period: the
/// [`believed_ttl`], raised to `min_ttl` (itself at most [`MAX_TTL`]).
#[must_use]
pub fn ttl_hold(ttl: u32, min_ttl: Duration) -> Duration {
    Duration::from_secs(u64::from(believed_ttl(ttl))).max(min_ttl.min(MAX_TTL))
}

/// One address a service is open to because a name of its answered with it.
pub type LearnedKey = (IpAddr, String);

#[derive(Clone, Debug)]
struct Entry {
    /// The name on the answer's chain that matched the service.
    name: String,
    /// The question the client asked.
    question: String,
    learned: Instant,
    until: Instant,
    /// Position in learning order (renewing moves it to the end).
    order: u64,
}

/// A learned address as `learned` and the state file show it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LearnedView {
    pub address: IpAddr,
    pub service: String,
    pub name: String,
    pub question: String,
    /// Seconds since it was first learned (or renewed).
    pub age_secs: u64,
    /// Seconds until it expires.
    pub expires_in_secs: u64,
}

/// Totals since the daemon started.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct LearnCounters {
    /// New (address, service) entries.
    pub learned: u64,
    /// Entries an answer extended.
    pub renewed: u64,
    pub expired: u64,
    /// Entries pushed out by newer ones at capacity.
    pub evicted: u64,
}

/// What one [`LearnedTable::learn`] did to the allow table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct LearnOutcome {
    pub added: Option<LearnedKey>,
    pub evicted: Vec<LearnedKey>,
}

#[derive(Debug)]
pub struct LearnedTable {
    policy: LearnPolicy,
    entries: HashMap<IpAddr, BTreeMap<String, Entry>>,
    by_order: BTreeMap<u64, LearnedKey>,
    /// Each service's entries in learning order, to evict within a service.
    by_service: HashMap<String, BTreeSet<u64>>,
    by_expiry: BTreeSet<(Instant, u64)>,
    next_order: u64,
    counters: LearnCounters,
}

impl LearnedTable {
    #[must_use]
    pub fn new(policy: LearnPolicy) -> Self {
        Self {
            policy,
            entries: HashMap::new(),
            by_order: BTreeMap::new(),
            by_service: HashMap::new(),
            by_expiry: BTreeSet::new(),
            next_order: 0,
            counters: LearnCounters::default(),
        }
    }

    /// Records that `name` (asked as `question`) answered `address` with `ttl` for `service`.
    pub fn learn(
        &mut self,
        now: Instant,
        key: LearnedKey,
        name: &str,
        question: &str,
        ttl: u32,
    ) -> LearnOutcome {
        let hold = ttl_hold(ttl, self.policy.min_ttl) + self.policy.grace;
        self.insert(key, name, question, now, now + hold)
    }

    /// Puts back an entry a previous daemon had learned, valid until `until`.
    pub fn seed(&mut self, now: Instant, view: &LearnedView) -> LearnOutcome {
        let until = now + Duration::from_secs(view.expires_in_secs);
        let before = self.counters;
        let outcome = self.insert(
            (view.address, view.service.clone()),
            &view.name,
            &view.question,
            now,
            until,
        );
        // A restart is not news: only evictions (which did happen) are counted.
        self.counters.learned = before.learned;
        self.counters.renewed = before.renewed;
        outcome
    }

    fn insert(
        &mut self,
        key: LearnedKey,
        name: &str,
        question: &str,
        now: Instant,
        until: Instant,
    ) -> LearnOutcome {
        let order = self.next_order;
        self.next_order += 1;
        let services = self.entries.entry(key.0).or_default();
        let service_orders = self.by_service.entry(key.1.clone()).or_default();
        if let Some(entry) = services.get_mut(&key.1) {
            service_orders.remove(&entry.order);
            service_orders.insert(order);
            self.by_order.remove(&entry.order);
            self.by_expiry.remove(&(entry.until, entry.order));
            entry.until = entry.until.max(until);
            entry.order = order;
            entry.learned = now;
            name.clone_into(&mut entry.name);
            question.clone_into(&mut entry.question);
            self.by_order.insert(order, key);
            self.by_expiry.insert((entry.until, order));
            self.counters.renewed += 1;
            return LearnOutcome::default();
        }
        services.insert(
            key.1.clone(),
            Entry {
                name: name.to_owned(),
                question: question.to_owned(),
                learned: now,
                until,
                order,
            },
        );
        service_orders.insert(order);
        self.by_order.insert(order, key.clone());
        self.by_expiry.insert((until, order));
        self.counters.learned += 1;
        let mut evicted = Vec::new();
        while self.by_order.len() > self.policy.capacity {
            let Some(victim) = self.eviction_victim(&key.1) else {
                break;
            };
            self.remove(&victim);
            self.counters.evicted += 1;
            evicted.push(victim);
        }
        LearnOutcome {
            added: Some(key),
            evicted,
        }
    }

    /// The entry to evict when `grown` has just added one past capacity: its own oldest, unless
    /// it holds no more than its share; then the oldest of the service holding the most (ties:
    /// the one with the older entry).
    fn eviction_victim(&self, grown: &str) -> Option<LearnedKey> {
        let held = |service: &str| self.by_service.get(service).map_or(0, BTreeSet::len);
        let share = self.policy.capacity / self.by_service.len().max(1);
        let payer = if held(grown) > share {
            grown
        } else {
            self.by_service
                .iter()
                .max_by_key(|(_, orders)| {
                    (orders.len(), std::cmp::Reverse(orders.first().copied()))
                })
                .map(|(service, _)| service.as_str())?
        };
        let oldest = self.by_service.get(payer)?.first()?;
        self.by_order.get(oldest).cloned()
    }

    /// Takes back an entry just learned (its map write failed). Counts nothing.
    pub fn forget(&mut self, key: &LearnedKey) -> bool {
        let forgotten = self.remove(key).is_some();
        if forgotten {
            self.counters.learned = self.counters.learned.saturating_sub(1);
        }
        forgotten
    }

    fn remove(&mut self, key: &LearnedKey) -> Option<Entry> {
        let services = self.entries.get_mut(&key.0)?;
        let entry = services.remove(&key.1)?;
        if services.is_empty() {
            self.entries.remove(&key.0);
        }
        if let Some(orders) = self.by_service.get_mut(&key.1) {
            orders.remove(&entry.order);
            if orders.is_empty() {
                self.by_service.remove(&key.1);
            }
        }
        self.by_order.remove(&entry.order);
        self.by_expiry.remove(&(entry.until, entry.order));
        Some(entry)
    }

    /// Removes entries whose time is up; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<LearnedKey> {
        let mut gone = Vec::new();
        while let Some(&(until, order)) = self.by_expiry.first() {
            if until > now {
                break;
            }
            let key = self.by_order[&order].clone();
            self.remove(&key);
            self.counters.expired += 1;
            gone.push(key);
        }
        gone
    }

    /// Keeps only entries `keep(service, name)` approves (after a reload: names that still
    /// match a service of that name). Returns how many went.
    pub fn retain(&mut self, keep: impl Fn(&str, &str) -> bool) -> usize {
        let doomed: Vec<LearnedKey> = self
            .entries
            .iter()
            .flat_map(|(address, services)| {
                services
                    .iter()
                    .filter(|(service, entry)| !keep(service, &entry.name))
                    .map(|(service, _)| (*address, service.clone()))
            })
            .collect();
        for key in &doomed {
            self.remove(key);
        }
        doomed.len()
    }

    /// When the next entry expires.
    #[must_use]
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(until, _)| *until)
    }

    /// Every (address, service) entry.
    pub fn keys(&self) -> impl Iterator<Item = (IpAddr, &str)> + '_ {
        self.entries
            .iter()
            .flat_map(|(address, services)| services.keys().map(|s| (*address, s.as_str())))
    }

    /// The names `address` was learned from, comma-separated, for drop events.
    #[must_use]
    pub fn names_for(&self, address: IpAddr) -> Option<String> {
        let services = self.entries.get(&address)?;
        let names: BTreeSet<&str> = services.values().map(|e| e.name.as_str()).collect();
        Some(names.into_iter().collect::<Vec<_>>().join(","))
    }

    /// Every entry, oldest first, as users see them.
    #[must_use]
    pub fn views(&self, now: Instant) -> Vec<LearnedView> {
        self.by_order
            .values()
            .filter_map(|key| self.view(key, now))
            .collect()
    }

    /// One entry as users see it, if the table holds it.
    #[must_use]
    pub fn view(&self, (address, service): &LearnedKey, now: Instant) -> Option<LearnedView> {
        let entry = self.entries.get(address)?.get(service)?;
        Some(LearnedView {
            address: *address,
            service: service.clone(),
            name: entry.name.clone(),
            question: entry.question.clone(),
            age_secs: now.saturating_duration_since(entry.learned).as_secs(),
            expires_in_secs: entry.until.saturating_duration_since(now).as_secs(),
        })
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }

    #[must_use]
    pub fn counters(&self) -> LearnCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: LearnPolicy = LearnPolicy {
        min_ttl: Duration::from_secs(30),
        grace: Duration::from_mins(1),
        capacity: 3,
    };

    /// Expiry arithmetic reads best in plain seconds.
    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    fn key(address: &str, service: &str) -> LearnedKey {
        (address.parse().unwrap(), service.into())
    }

    #[test]
    fn an_entry_lives_for_ttl_plus_grace() {
        let t0 = Instant::now();
        let mut t = LearnedTable::new(POLICY);
        let out = t.learn(
            t0,
            key("192.0.2.1", "mdm"),
            "a.manage.example.com",
            "a.manage.example.com",
            300,
        );
        assert_eq!(out.added, Some(key("192.0.2.1", "mdm")));
        assert!(t.expire(t0 + secs(359)).is_empty());
        assert_eq!(t.expire(t0 + secs(360)), [key("192.0.2.1", "mdm")]);
        assert!(t.is_empty());
        assert_eq!(t.counters().expired, 1);
    }

    #[test]
    fn a_zero_ttl_is_raised_to_the_floor() {
        let t0 = Instant::now();
        let mut t = LearnedTable::new(POLICY);
        t.learn(t0, key("192.0.2.1", "mdm"), "n", "n", 0);
        assert_eq!(t.next_expiry(), Some(t0 + secs(30 + 60)));
    }

    #[test]
    fn a_ttl_of_years_counts_as_a_day_and_one_with_the_top_bit_as_zero() {
        let t0 = Instant::now();
        let mut t = LearnedTable::new(POLICY);
        t.learn(t0, key("192.0.2.1", "mdm"), "n", "n", i32::MAX as u32);
        assert_eq!(t.next_expiry(), Some(t0 + MAX_TTL + POLICY.grace));
        assert_eq!(ttl_hold(u32::MAX, POLICY.min_ttl), POLICY.min_ttl);
    }

    #[test]
    fn answers_again_extend_but_never_shorten() {
        let t0 = Instant::now();
        let mut t = LearnedTable::new(POLICY);
        t.learn(t0, key("192.0.2.1", "mdm"), "n", "n", 600);
        let out = t.learn(t0 + secs(10), key("192.0.2.1", "mdm"), "n", "n", 0);
        assert_eq!(
            out,
            LearnOutcome::default(),
            "a renewal adds nothing to the maps"
        );
        assert_eq!(t.next_expiry(), Some(t0 + secs(660)));
        t.learn(t0 + secs(100), key("192.0.2.1", "mdm"), "n", "n", 600);
        assert_eq!(t.next_expiry(), Some(t0 + secs(760)));
        assert_eq!((t.counters().learned, t.counters().renewed), (1, 2));
    }

    #[test]
    fn past_capacity_the_oldest_goes_first_and_is_counted() {
        let t0 = Instant::now();
        let mut t = LearnedTable::new(POLICY);
        for i in 1..=3 {
            t.learn(t0, key(&format!("192.0.2.{i}"), "cdn"), "n", "n", 60);
        }
        // Renewing .1 makes .2 the oldest.
        t.learn(t0, key("192.0.2.1", "cdn"), "n", "n", 60);
        let out = t.learn(t0, key("192.0.2.4", "cdn"), "n", "n", 60);
        assert_eq!(out.evicted, [key("192.0.2.2", "cdn")]);
        assert_eq!(t.len(), 3);
        assert_eq!(t.counters().evicted, 1);
        let mut left: Vec<String> = t.keys().map(|(a, _)| a.to_string()).collect();
        left.sort();
        assert_eq!(left, ["192.0.2.1", "192.0.2.3", "192.0.2.4"]);
    }

    #[test]
    fn an_answer_larger_than_the_table_evicts_its_own_service_not_the_others() {
        let t0 = Instant::now();
        let policy = LearnPolicy {
            capacity: 1000,
            ..POLICY
        };
        let mut t = LearnedTable::new(policy);
        t.learn(t0, key("192.0.2.1", "mdm"), "a.manage.example", "q", 60);
        t.learn(t0, key("192.0.2.2", "portal"), "portal.example", "q", 60);
        // One answer of 4,000 addresses for the CDN, learned after the others.
        let mut evicted = Vec::new();
        for i in 0..4000u32 {
            let [_, _, x, y] = i.to_be_bytes();
            let address = format!("10.78.{x}.{y}");
            evicted.extend(
                t.learn(t0, key(&address, "cdn"), "big.cdn.example", "q", 60)
                    .evicted,
            );
        }
        assert_eq!(t.len(), 1000);
        assert_eq!(evicted.len(), 3002);
        assert!(evicted.iter().all(|(_, s)| s == "cdn"), "only its own went");
        let services: BTreeSet<&str> = t.keys().map(|(_, s)| s).collect();
        assert_eq!(services, BTreeSet::from(["cdn", "mdm", "portal"]));
        assert_eq!(t.counters().evicted, 3002);
    }

    #[test]
    fn a_service_below_its_share_takes_room_from_the_largest() {
        let t0 = Instant::now();
        let mut t = LearnedTable::new(LearnPolicy {
            capacity: 4,
            ..POLICY
        });
        for i in 1..=4 {
            t.learn(t0, key(&format!("192.0.2.{i}"), "cdn"), "n", "n", 60);
        }
        // The table is the CDN's alone; the portal holds less than its share (2 of 4).
        let out = t.learn(t0, key("198.51.100.1", "portal"), "p", "p", 60);
        assert_eq!(out.evicted, [key("192.0.2.1", "cdn")]);
        let out = t.learn(t0, key("198.51.100.2", "portal"), "p", "p", 60);
        assert_eq!(out.evicted, [key("192.0.2.2", "cdn")]);
        // At its share now, the portal pays for its own growth.
        let out = t.learn(t0, key("198.51.100.3", "portal"), "p", "p", 60);
        assert_eq!(out.evicted, [key("198.51.100.1", "portal")]);
        // Expiry and removal keep the per-service index in step.
        assert_eq!(t.expire(t0 + secs(1000)).len(), 4);
        assert!(t.is_empty() && t.by_service.is_empty());
    }

    #[test]
    fn one_address_may_serve_several_services_independently() {
        let t0 = Instant::now();
        let mut t = LearnedTable::new(POLICY);
        t.learn(t0, key("192.0.2.1", "mdm"), "a.manage.example.com", "q", 10);
        t.learn(t0, key("192.0.2.1", "cdn"), "b.cdn.example.com", "q", 1000);
        assert_eq!(
            t.names_for("192.0.2.1".parse().unwrap()).unwrap(),
            "a.manage.example.com,b.cdn.example.com"
        );
        assert_eq!(t.expire(t0 + secs(100)), [key("192.0.2.1", "mdm")]);
        assert_eq!(
            t.names_for("192.0.2.1".parse().unwrap()).unwrap(),
            "b.cdn.example.com"
        );
    }

    #[test]
    fn retain_drops_what_no_longer_matches() {
        let t0 = Instant::now();
        let mut t = LearnedTable::new(POLICY);
        t.learn(t0, key("192.0.2.1", "mdm"), "a.manage.example.com", "q", 10);
        t.learn(t0, key("192.0.2.2", "gone"), "x.example.com", "q", 10);
        assert_eq!(t.retain(|service, _| service == "mdm"), 1);
        assert_eq!(t.keys().count(), 1);
        assert_eq!(t.next_expiry(), Some(t0 + secs(90)), "indices follow");
        assert_eq!(t.expire(t0 + secs(90)).len(), 1);
        assert!(t.next_expiry().is_none());
    }

    #[test]
    fn views_and_seeds_round_trip() {
        let t0 = Instant::now();
        let mut t = LearnedTable::new(POLICY);
        t.learn(
            t0,
            key("2001:db8::1", "mdm"),
            "a.manage.example.com",
            "Q",
            100,
        );
        let views = t.views(t0 + secs(10));
        assert_eq!(views[0].expires_in_secs, 150);
        assert_eq!(views[0].age_secs, 10);
        let mut again = LearnedTable::new(POLICY);
        let out = again.seed(t0, &views[0]);
        assert_eq!(out.added, Some(key("2001:db8::1", "mdm")));
        assert_eq!(
            again.counters(),
            LearnCounters::default(),
            "a seed is not counted"
        );
        assert_eq!(again.next_expiry(), Some(t0 + secs(150)));
    }
}
