//! Answers kept for the questions clients ask again: devices re-resolve the same few names all
//! day, and an answer from memory costs the forwarder a fraction of a forwarded one (no
//! upstream round trip, no second parse) and the upstream nothing.
//!
//! A kept answer is given only while everything that made it safe to give still holds:
//! - its TTL has not run out (the smallest of its records', as the client would have had it,
//!   at most [`MAX_KEPT`]); the client gets the TTLs less the time it was kept;
//! - the rules are the ones it was answered under (the same [`NameMatcher`]) and the daemon's
//!   epoch has not moved (nothing learned was evicted or dropped since);
//! - for an answer to a rule's name, the forwarder knows its addresses confirmed open for at
//!   least the rest of the TTL (`OpenAddresses` says `Covered`), exactly as for a forwarded
//!   answer that needs no wait. Anything else (an entry due for renewal, say) is a miss: the
//!   question is forwarded and its answer opened as usual.
//!
//! Only clean answers are kept: NOERROR with at least one answer record, not truncated, and
//! from an exchange where no stray datagram arrived (a forger at work on that port is a reason
//! not to spread what came back). A forged answer that got through anyway opens its addresses
//! whether or not it is kept (the kernel entry is what matters to the filter); kept, it also
//! reaches the clients asking the same within its TTL, which [`MAX_KEPT`] bounds.
//!
//! Bounded: at most the configured number of answers. When full, expired answers go; if none
//! has, a new answer is not kept (a client asking random names fills the cache for at most
//! [`MAX_KEPT`], and then answers are forwarded, as without a cache).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use hickory_proto::op::{Message, ResponseCode};

use super::{
    learned::believed_ttl,
    message::{Learnable, Question},
    names::NameMatcher,
};

/// The longest an answer is kept, whatever its TTL.
pub const MAX_KEPT: Duration = Duration::from_mins(5);

/// Answers kept by default (`--dns-cache`).
pub const DEFAULT_CAPACITY: usize = 10_000;

/// Kept answers, by question.
#[derive(Debug, Default)]
pub(super) struct AnswerCache {
    capacity: usize,
    entries: Mutex<HashMap<Question, Kept>>,
}

#[derive(Debug)]
struct Kept {
    answer: Arc<Message>,
    since: Instant,
    until: Instant,
    /// The rules it was answered under: a reload makes it a stranger.
    matcher: Arc<NameMatcher>,
    epoch: u64,
    /// For an answer to a rule's name: the chain and addresses that must be known open.
    opened: Option<Opened>,
}

/// What a kept answer to a rule's name opened: its chain of names (as `OpenAddresses` keys
/// it) and its addresses with their TTLs.
#[derive(Clone, Debug)]
pub(super) struct Opened {
    pub chain: String,
    pub addresses: Vec<(IpAddr, u32)>,
}

/// A kept answer, ready to give.
pub(super) struct Hit {
    pub answer: Arc<Message>,
    /// Whole seconds it was kept: the client's TTLs are that much shorter.
    pub age: u32,
    /// Its addresses, with the TTLs as they stand now, to check they are still open.
    pub opened: Option<Opened>,
}

/// What [`AnswerCache::keep`] is told about the exchange an answer came from.
pub(super) struct Exchange<'a> {
    pub answer: &'a Arc<Message>,
    pub learnable: &'a Learnable,
    /// Whether a rule's name is on its chain (its addresses were opened).
    pub matched: bool,
    /// A datagram that answered nothing arrived during the exchange.
    pub stray: bool,
    pub matcher: &'a Arc<NameMatcher>,
    pub epoch: u64,
}

impl AnswerCache {
    /// A cache of at most `capacity` answers; 0 keeps none.
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            entries: Mutex::default(),
        }
    }

    /// Whether it was made to keep nothing (`--dns-cache 0`).
    pub(super) fn keeps_nothing(&self) -> bool {
        self.capacity == 0
    }

    /// The kept answer to `question`, if it may still be given under `matcher` and `epoch` at
    /// `now`. The caller still checks [`Hit::opened`] against what is known open.
    pub(super) fn get(
        &self,
        question: &Question,
        matcher: &Arc<NameMatcher>,
        epoch: u64,
        now: Instant,
    ) -> Option<Hit> {
        if self.keeps_nothing() {
            return None;
        }
        let mut entries = self.lock();
        let kept = entries.get(question)?;
        if now >= kept.until || kept.epoch != epoch || !Arc::ptr_eq(&kept.matcher, matcher) {
            entries.remove(question);
            return None;
        }
        let age = u32::try_from(now.duration_since(kept.since).as_secs()).unwrap_or(u32::MAX);
        let opened = kept.opened.as_ref().map(|opened| Opened {
            chain: opened.chain.clone(),
            addresses: opened
                .addresses
                .iter()
                .map(|&(address, ttl)| (address, ttl.saturating_sub(age)))
                .collect(),
        });
        Some(Hit {
            answer: Arc::clone(&kept.answer),
            age,
            opened,
        })
    }

    /// Keeps the answer to `question` from `exchange`, if it is one to keep (see the module
    /// docs) and there is room.
    pub(super) fn keep(&self, question: &Question, exchange: &Exchange<'_>, now: Instant) {
        let answer = exchange.answer;
        if self.keeps_nothing()
            || exchange.stray
            || answer.metadata.response_code != ResponseCode::NoError
            || answer.metadata.truncation
            || answer.answers.is_empty()
        {
            return;
        }
        let Some(ttl) = lowest_ttl(answer) else {
            return;
        };
        let kept_for = Duration::from_secs(ttl.into()).min(MAX_KEPT);
        if kept_for.is_zero() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(question) {
            entries.retain(|_, kept| now < kept.until);
            if entries.len() >= self.capacity {
                return;
            }
        }
        let opened = exchange.matched.then(|| Opened {
            chain: exchange.learnable.chain.join(" "),
            addresses: exchange.learnable.addresses.clone(),
        });
        entries.insert(
            question.clone(),
            Kept {
                answer: Arc::clone(answer),
                since: now,
                until: now + kept_for,
                matcher: Arc::clone(exchange.matcher),
                epoch: exchange.epoch,
                opened,
            },
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Question, Kept>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers kept now, expired or not.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The smallest TTL a client would be given for any record of `answer` (the OPT record of EDNS
/// is no record and has none).
fn lowest_ttl(answer: &Message) -> Option<u32> {
    answer
        .answers
        .iter()
        .chain(&answer.authorities)
        .chain(&answer.additionals)
        .map(|record| believed_ttl(record.ttl))
        .min()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use hickory_proto::{
        op::{MessageType, OpCode, Query},
        rr::{rdata::A, Name, RData, Record, RecordType},
    };

    use super::*;
    use crate::dns::message::{read_query, Incoming};

    fn question(name: &str) -> Question {
        let mut query = Message::new(7, MessageType::Query, OpCode::Query);
        query.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
        let Incoming::Query(query) = read_query(&query.to_vec().unwrap()) else {
            panic!("a query");
        };
        query.question()
    }

    fn answer(name: &str, ttl: u32) -> Arc<Message> {
        let mut answer = Message::new(7, MessageType::Response, OpCode::Query);
        answer.add_answer(Record::from_rdata(
            Name::from_str(name).unwrap(),
            ttl,
            RData::A(A::new(192, 0, 2, 1)),
        ));
        Arc::new(answer)
    }

    fn keep(cache: &AnswerCache, name: &str, ttl: u32, matcher: &Arc<NameMatcher>, now: Instant) {
        let exchange = Exchange {
            answer: &answer(name, ttl),
            learnable: &Learnable::default(),
            matched: false,
            stray: false,
            matcher,
            epoch: 0,
        };
        cache.keep(&question(name), &exchange, now);
    }

    #[test]
    fn a_full_cache_makes_room_only_from_expired_answers() {
        let cache = AnswerCache::new(1);
        let matcher = Arc::new(NameMatcher::default());
        let now = Instant::now();
        keep(&cache, "a.example.", 10, &matcher, now);
        keep(&cache, "b.example.", 10, &matcher, now);
        assert_eq!(cache.len(), 1);
        assert!(
            cache
                .get(&question("b.example."), &matcher, 0, now)
                .is_none(),
            "no room"
        );
        assert!(cache
            .get(&question("a.example."), &matcher, 0, now)
            .is_some());
        let later = now + Duration::from_secs(10);
        keep(&cache, "b.example.", 10, &matcher, later);
        assert!(
            cache
                .get(&question("b.example."), &matcher, 0, later)
                .is_some(),
            "a expired"
        );
    }

    #[test]
    fn an_answer_lives_its_lowest_ttl_at_most_five_minutes_under_the_same_rules_and_epoch() {
        let cache = AnswerCache::new(8);
        let matcher = Arc::new(NameMatcher::default());
        let now = Instant::now();
        keep(&cache, "short.example.", 3, &matcher, now);
        keep(&cache, "long.example.", 86_400, &matcher, now);
        keep(&cache, "zero.example.", 0, &matcher, now);
        let (short, long) = (question("short.example."), question("long.example."));
        let hit = cache
            .get(&short, &matcher, 0, now + Duration::from_secs(2))
            .unwrap();
        assert_eq!(hit.age, 2);
        assert!(cache
            .get(&short, &matcher, 0, now + Duration::from_secs(3))
            .is_none());
        assert!(cache
            .get(
                &long,
                &matcher,
                0,
                now + MAX_KEPT.saturating_sub(Duration::from_secs(1))
            )
            .is_some());
        assert!(cache.get(&long, &matcher, 0, now + MAX_KEPT).is_none());
        assert!(cache
            .get(&question("zero.example."), &matcher, 0, now)
            .is_none());

        keep(&cache, "long.example.", 60, &matcher, now);
        let reloaded = Arc::new(NameMatcher::default());
        assert!(cache.get(&long, &reloaded, 0, now).is_none(), "other rules");
        keep(&cache, "long.example.", 60, &matcher, now);
        assert!(
            cache.get(&long, &matcher, 1, now).is_none(),
            "another epoch"
        );
    }
}
