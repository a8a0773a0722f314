//! The forwarder's queries in flight: identical questions merged into one upstream query, and
//! the count of queries each client has waiting (its bound). Both are released by `Drop`, so a
//! query that ends any way at all (an answer, a failure, a panic) gives back what it held.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
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

/// Queries waiting, by client address.
#[derive(Debug, Default)]
pub(super) struct PerClient {
    pub(super) waiting: Mutex<HashMap<IpAddr, usize>>,
}

/// One of a client's waiting queries; its place is given back when dropped.
pub(super) struct ClientSlot<'a> {
    pub(super) per_client: &'a PerClient,
    pub(super) client: IpAddr,
}

impl PerClient {
    /// A place for one more query from `client`, unless it has `bound` waiting already.
    pub(super) fn take(&self, client: IpAddr, bound: usize) -> Option<ClientSlot<'_>> {
        let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
        if bound == 0 || waiting.get(&client).is_some_and(|count| *count >= bound) {
            return None;
        }
        *waiting.entry(client).or_default() += 1;
        Some(ClientSlot {
            per_client: self,
            client,
        })
    }
}

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        let mut waiting = self
            .per_client
            .waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = waiting.get_mut(&self.client) {
            *count -= 1;
            if *count == 0 {
                // Only clients with queries waiting take room.
                waiting.remove(&self.client);
            }
        }
    }
}
