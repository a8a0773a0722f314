//! The daemon's side of DNS learning: what an answer the forwarder is about to pass on opens,
//! and the epoch that tells the forwarder when what it remembers as open no longer is.
//!
//! The forwarder answers a repeat question at once when the daemon confirmed its addresses
//! open until some time (see `dns::forwarder`). That promise breaks whenever an entry goes before
//! its time: evicted for room, forgotten after a failed map write, dropped by a reload. Every such
//! path lives here, and each bumps the epoch itself, so none can be forgotten by a caller.

use std::{
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Instant,
};

use crate::{
    dns::NameMatcher,
    dns::{learned::LearnedKey, message::Learnable, LearnPolicy, LearnedTable, LearnedView},
    rules::Rules,
};

/// The learned table and the epoch it shares with the forwarder.
#[derive(Debug)]
pub struct Learner {
    table: LearnedTable,
    epoch: Arc<AtomicU64>,
}

/// What taking in one answer did to the table.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Learned {
    /// (address, service) entries new to the table.
    pub added: Vec<LearnedKey>,
    /// Entries pushed out to make room (the grown service's oldest, or the largest service's
    /// while the grown one holds less than its share: see `dns::learned`).
    pub evicted: Vec<LearnedKey>,
    /// Whether every entry the answer asks for is in the table: an answer with more addresses
    /// than the table holds pushes out its own, and is not confirmed.
    pub complete: bool,
    /// Every entry the answer asks for, new or renewed.
    pub touched: Vec<LearnedKey>,
}

impl Learner {
    #[must_use]
    pub fn new(policy: LearnPolicy) -> Self {
        Self {
            table: LearnedTable::new(policy),
            epoch: Arc::default(),
        }
    }

    /// The epoch the forwarder checks its memory against.
    #[must_use]
    pub fn epoch(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.epoch)
    }

    /// The table, to read.
    #[must_use]
    pub fn table(&self) -> &LearnedTable {
        &self.table
    }

    fn void_promises(&self) {
        self.epoch.fetch_add(1, Ordering::Release);
    }

    /// Opens every address of `answer` for every service a name on its chain belongs to, each
    /// service under the first name of the chain that matched it.
    pub fn learn(
        &mut self,
        rules: &Rules,
        matcher: &NameMatcher,
        question: &str,
        answer: &Learnable,
        now: Instant,
    ) -> Learned {
        let mut services: Vec<(usize, &str)> = Vec::new();
        for name in &answer.chain {
            for index in matcher.services(name) {
                if !services.iter().any(|(i, _)| *i == index) {
                    services.push((index, name));
                }
            }
        }
        let mut learned = Learned::default();
        let mut touched = Vec::new();
        for (address, ttl) in &answer.addresses {
            for (index, name) in &services {
                let key = (*address, rules.services[*index].name.clone());
                touched.push(key.clone());
                let outcome = self.table.learn(now, key, name, question, *ttl);
                learned.added.extend(outcome.added);
                learned.evicted.extend(outcome.evicted);
            }
        }
        if !learned.evicted.is_empty() {
            self.void_promises();
        }
        learned.complete = !touched.iter().any(|key| learned.evicted.contains(key));
        learned.touched = touched;
        learned
    }

    /// Takes back entries just learned whose map write failed, so the next answer tries again.
    pub fn forget(&mut self, keys: &[LearnedKey]) {
        for key in keys {
            self.table.forget(key);
        }
        if !keys.is_empty() {
            self.void_promises();
        }
    }

    /// Removes the entries whose time is up (no promise made reaches past it).
    pub fn expire(&mut self, now: Instant) -> Vec<LearnedKey> {
        self.table.expire(now)
    }

    /// After a reload: keeps the entries whose name still matches a service of that name.
    /// Returns how many went.
    pub fn keep_matching(&mut self, rules: &Rules, matcher: &NameMatcher) -> usize {
        let forgotten = self
            .table
            .retain(|service, name| still_matches(rules, matcher, service, name));
        // Even when nothing went, the rules behind every promise changed.
        self.void_promises();
        forgotten
    }

    /// Puts back what a previous daemon had learned (its state file), where it still matches.
    pub fn seed(
        &mut self,
        rules: &Rules,
        matcher: &NameMatcher,
        views: impl IntoIterator<Item = LearnedView>,
        now: Instant,
    ) {
        for view in views {
            if view.expires_in_secs > 0 && still_matches(rules, matcher, &view.service, &view.name)
            {
                self.table.seed(now, &view);
            }
        }
    }

    /// The names an address was learned from, for drop events.
    #[must_use]
    pub fn names_for(&self, address: IpAddr) -> Option<String> {
        self.table.names_for(address)
    }
}

/// Whether a learned entry may stay under `rules`: its service still exists and its name still
/// matches that service.
fn still_matches(rules: &Rules, matcher: &NameMatcher, service: &str, name: &str) -> bool {
    matcher
        .services(name)
        .iter()
        .any(|i| rules.services[*i].name == service)
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;

    fn rules() -> Rules {
        Rules::parse_sources(&[(
            Path::new("t.toml"),
            "[[service]]\nname = \"cdn\"\nhosts = [\"*.cdn.example\"]\ntcp = [443]\n\
             [[service]]\nname = \"portal\"\nhosts = [\"portal.example\"]\ntcp = [8443]\n",
        )])
        .expect("valid rules")
    }

    fn learner(capacity: usize) -> Learner {
        Learner::new(LearnPolicy {
            min_ttl: Duration::from_secs(30),
            grace: Duration::from_mins(1),
            capacity,
        })
    }

    fn answer(chain: &[&str], addresses: &[&str]) -> Learnable {
        Learnable {
            chain: chain.iter().map(|n| (*n).to_owned()).collect(),
            addresses: addresses
                .iter()
                .map(|a| (a.parse().expect("test address"), 60))
                .collect(),
        }
    }

    fn epoch(learner: &Learner) -> u64 {
        learner.epoch.load(Ordering::Acquire)
    }

    #[test]
    fn every_service_on_the_chain_gets_every_address_once() {
        let (rules, mut learner) = (rules(), learner(16));
        let matcher = NameMatcher::new(&rules);
        let outcome = learner.learn(
            &rules,
            &matcher,
            "portal.example",
            &answer(
                &["portal.example", "a.cdn.example", "b.cdn.example"],
                &["198.51.100.1", "198.51.100.2"],
            ),
            Instant::now(),
        );
        let mut added = outcome.added.clone();
        added.sort();
        let key = |a: &str, s: &str| (a.parse::<IpAddr>().expect("test address"), s.to_owned());
        assert_eq!(
            added,
            [
                key("198.51.100.1", "cdn"),
                key("198.51.100.1", "portal"),
                key("198.51.100.2", "cdn"),
                key("198.51.100.2", "portal"),
            ]
        );
        assert!(outcome.complete && outcome.evicted.is_empty());
        assert_eq!(epoch(&learner), 0, "nothing went early");
        assert_eq!(
            learner
                .names_for("198.51.100.1".parse().expect("address"))
                .as_deref(),
            Some("a.cdn.example,portal.example"),
        );
    }

    #[test]
    fn an_answer_larger_than_the_table_evicts_its_own_and_voids_the_promises() {
        let (rules, mut learner) = (rules(), learner(1));
        let matcher = NameMatcher::new(&rules);
        let outcome = learner.learn(
            &rules,
            &matcher,
            "x.cdn.example",
            &answer(&["x.cdn.example"], &["198.51.100.1", "198.51.100.2"]),
            Instant::now(),
        );
        assert_eq!(outcome.evicted.len(), 1);
        assert!(!outcome.complete, "its own first address went");
        assert_eq!(epoch(&learner), 1);
    }

    #[test]
    fn forgetting_and_reloading_void_the_promises_and_reloads_keep_what_still_matches() {
        let (rules, mut learner) = (rules(), learner(16));
        let matcher = NameMatcher::new(&rules);
        let now = Instant::now();
        let outcome = learner.learn(
            &rules,
            &matcher,
            "x.cdn.example",
            &answer(&["x.cdn.example"], &["198.51.100.1"]),
            now,
        );
        learner.learn(
            &rules,
            &matcher,
            "portal.example",
            &answer(&["portal.example"], &["198.51.100.9"]),
            now,
        );
        learner.forget(&outcome.added);
        assert_eq!(epoch(&learner), 1);
        assert_eq!(learner.table().len(), 1);

        let narrower = Rules::parse_sources(&[(
            Path::new("t.toml"),
            "[[service]]\nname = \"cdn\"\nhosts = [\"*.cdn.example\"]\ntcp = [443]\n",
        )])
        .expect("valid rules");
        let narrower_matcher = NameMatcher::new(&narrower);
        assert_eq!(learner.keep_matching(&narrower, &narrower_matcher), 1);
        assert!(learner.table().is_empty());
        assert_eq!(epoch(&learner), 2);
    }
}
