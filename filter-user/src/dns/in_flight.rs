//! The forwarder's queries in flight: identical questions merged into one upstream query, and
//! the queries each client has waiting (its bound, and which is oldest). Both are released by
//! `Drop`, so a query that ends any way at all (an answer, a failure, a panic) gives back what
//! it held.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use hickory_proto::op::Message;
use tokio::sync::oneshot;

use super::message::Question;

/// What the clients of one upstream query get: the checked answer, or `None` for SERVFAIL.
pub(super) type Outcome = Option<Arc<Message>>;

/// Upstream queries in flight, by question, with the clients waiting on each.
#[derive(Debug, Default)]
pub(super) struct Pending {
    pub(super) waiting: Mutex<HashMap<Question, Vec<oneshot::Sender<Outcome>>>>,
}

/// How a client joins the upstream query for its question.
pub(super) enum Joined {
    /// Another client's identical question is in flight: wait for its answer.
    Merged(oneshot::Receiver<Outcome>),
    /// None is: this client's query asks, and hands the answer to whoever joins meanwhile.
    First(oneshot::Receiver<Outcome>, Asking),
}

impl Pending {
    pub(super) fn join(self: &Arc<Self>, question: &Question) -> Joined {
        let (sender, receiver) = oneshot::channel();
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(others) = waiting.get_mut(question) {
            others.push(sender);
            return Joined::Merged(receiver);
        }
        waiting.insert(question.clone(), vec![sender]);
        let asking = Asking {
            pending: Arc::clone(self),
            question: question.clone(),
            outcome: None,
        };
        Joined::First(receiver, asking)
    }
}

/// The one upstream query under way for a question. However it ends (an answer, a failure, a
/// panic), the question leaves [`Pending`] and its clients get the outcome (SERVFAIL unless
/// [`Self::finish`] gave one); the next client asking starts afresh.
pub(super) struct Asking {
    pub(super) pending: Arc<Pending>,
    pub(super) question: Question,
    pub(super) outcome: Outcome,
}

impl Asking {
    pub(super) fn finish(mut self, outcome: Outcome) {
        self.outcome = outcome;
    }
}

impl Drop for Asking {
    fn drop(&mut self) {
        let waiting = self
            .pending
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.question)
            .unwrap_or_default();
        for client in waiting {
            // A client gone (its task ended) needs nothing.
            let _ = client.send(self.outcome.clone());
        }
    }
}

/// Queries waiting, by client address, oldest first.
#[derive(Debug, Default)]
pub(super) struct PerClient {
    waiting: Mutex<HashMap<IpAddr, VecDeque<Waiting>>>,
    /// Numbers every place ever given, across clients: a displaced query that ends after its
    /// client's queue emptied and filled again must not take a newer query's place with it.
    next_id: AtomicU64,
}

/// A waiting query's place; `displace` tells it that a newer query took its place.
#[derive(Debug)]
struct Waiting {
    id: u64,
    since: Instant,
    displace: oneshot::Sender<()>,
}

/// One of a client's waiting queries; its place is given back when dropped.
pub(super) struct ClientSlot<'a> {
    per_client: &'a PerClient,
    client: IpAddr,
    id: u64,
    displaced: oneshot::Receiver<()>,
}

impl PerClient {
    /// A place for one more query from `client`, unless it has `bound` waiting already. At its
    /// bound, a client whose oldest query has waited `displace_after` or longer gets a place
    /// all the same: the oldest query gives it up (see [`ClientSlot::displaced`]).
    pub(super) fn take(
        &self,
        client: IpAddr,
        bound: usize,
        displace_after: Option<Duration>,
    ) -> Option<ClientSlot<'_>> {
        if bound == 0 {
            return None;
        }
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        let queue = waiting.entry(client).or_default();
        if queue.len() >= bound {
            let stale = displace_after.is_some_and(|after| {
                queue
                    .front()
                    .is_some_and(|oldest| oldest.since.elapsed() >= after)
            });
            if !stale {
                return None;
            }
            if let Some(oldest) = queue.pop_front() {
                // Its task may have ended already: then nobody needs the news.
                let _ = oldest.displace.send(());
            }
        }
        let (displace, displaced) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        queue.push_back(Waiting {
            id,
            since: Instant::now(),
            displace,
        });
        Some(ClientSlot {
            per_client: self,
            client,
            id,
            displaced,
        })
    }
}

impl ClientSlot<'_> {
    /// Completes when a newer query of the same client took this one's place.
    pub(super) async fn displaced(&mut self) {
        let _ = (&mut self.displaced).await;
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .per_client
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(queue) = waiting.get_mut(&self.client) {
            // Gone already if a newer query displaced it.
            queue.retain(|query| query.id != self.id);
            if queue.is_empty() {
                // Only clients with queries waiting take room.
                waiting.remove(&self.client);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_displaced_query_ending_late_does_not_give_back_a_newer_querys_place() {
        let per_client = PerClient::default();
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let displaced = per_client.take(client, 1, Some(Duration::ZERO)).unwrap();
        let newer = per_client.take(client, 1, Some(Duration::ZERO)).unwrap();
        // The client's queue empties and fills again before the displaced query ends.
        drop(newer);
        let holding = per_client.take(client, 1, None).unwrap();
        drop(displaced);
        assert!(
            per_client.take(client, 1, None).is_none(),
            "the place is still held"
        );
        drop(holding);
        assert!(per_client.take(client, 1, None).is_some());
    }
}
