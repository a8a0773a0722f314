//! The upstream UDP sockets: a few connected sockets on ports the kernel picks at random, each
//! carrying several queries at once and retired after [`QUERIES_PER_SOCKET`] queries,
//! [`SOCKET_LIFETIME`], or the first anomaly.
//!
//! Why a pool: a fresh socket per query (socket, bind, connect, epoll registration, close) was
//! about a third of the forwarder's CPU per query. Why it guards as well as one socket per
//! query did:
//! - the source port is still the kernel's random pick, and retiring sockets keeps it changing;
//!   a blind forger must hit a port with a query in flight and the ID of a query on that port,
//!   which is as likely as with one query per port: the same number of (port, ID) pairs are
//!   live, and the name's random case (0x20) is still to be guessed beside them;
//! - an ID is used at most once on a socket (its `used_ids`): two queries in flight
//!   on one socket never share an ID, and a late answer to an ended query cannot pass for a newer
//!   one;
//! - sockets are connected, so the kernel drops datagrams from anyone but the upstream's address
//!   and port before they are read;
//! - a datagram that answers no query in flight (an unknown ID, a forgery, an answer that came
//!   after its query gave up), or that carries a waiting query's ID but not its question, is
//!   counted (`mismatched`) and dropped, the query still waits for its real answer, and the
//!   socket takes no new queries: whoever found its port gets no more tries at it;
//! - an error from the socket (an ICMP port unreachable from a stopped upstream) fails every
//!   query on it at once, as it failed the one query of a socket of its own.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::{
    net::UdpSocket,
    sync::{mpsc, Notify},
};

use crate::dns::{
    counters::DnsCounters,
    message::{UpstreamQuery, UPSTREAM_UDP_PAYLOAD},
};

/// Sockets taking new queries at once.
pub const POOL_SOCKETS: usize = 4;
/// Queries one socket carries before it is retired: its port stops taking queries, and a new
/// socket on a new random port takes its place.
pub const QUERIES_PER_SOCKET: usize = 32;
/// How long a socket takes new queries, however few it carried: at a low rate, ports change
/// about as often as queries are asked.
pub const SOCKET_LIFETIME: Duration = Duration::from_secs(1);
/// IDs drawn for a query before its socket is given up for a fresh one. A socket uses at most
/// [`QUERIES_PER_SOCKET`] of the 65,536 IDs, so a second draw is already rare.
const ID_DRAWS: usize = 16;
/// Datagrams a waiting query may have queued before further ones are dropped: the first
/// anomaly retires the socket, so a flood of datagrams under one ID is a forger's.
const QUEUED_PER_QUERY: usize = 4;

/// How many sockets, and for how long each.
#[derive(Clone, Copy, Debug)]
pub struct PoolLimits {
    pub sockets: usize,
    pub queries_per_socket: usize,
    pub lifetime: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        Self {
            sockets: POOL_SOCKETS,
            queries_per_socket: QUERIES_PER_SOCKET,
            lifetime: SOCKET_LIFETIME,
        }
    }
}

/// The upstream's UDP sockets.
pub struct UpstreamPool {
    upstream: SocketAddr,
    limits: PoolLimits,
    counters: Arc<DnsCounters>,
    /// The sockets taking new queries. A socket retired leaves this list and lives on, held by
    /// its receiver, until its last query ends.
    taking: Mutex<Vec<Arc<PooledSocket>>>,
}

struct PooledSocket {
    socket: UdpSocket,
    opened: Instant,
    /// A datagram that answered no query arrived: someone other than the upstream may know the
    /// port. Answers that came on it are not kept for others (`dns::cache`).
    saw_stray: AtomicBool,
    state: Mutex<SocketState>,
    /// Tells the receiver to close the socket: retired, and no query waits on it.
    closing: Notify,
}

#[derive(Default)]
struct SocketState {
    /// Every ID the socket has carried: none is used twice on it.
    used_ids: HashSet<u16>,
    /// The queries in flight by ID: where the datagrams carrying each ID go.
    waiting: HashMap<u16, mpsc::Sender<Vec<u8>>>,
    /// Takes no new queries.
    retired: bool,
}

/// One query's place on a socket: its ID, and the datagrams that carry it. Dropped (answered,
/// failed, timed out), the ID stops taking datagrams; later ones are counted as mismatched.
pub struct Lease {
    socket: Arc<PooledSocket>,
    id: u16,
    datagrams: mpsc::Receiver<Vec<u8>>,
}

impl UpstreamPool {
    #[must_use]
    pub fn new(upstream: SocketAddr, limits: PoolLimits, counters: Arc<DnsCounters>) -> Self {
        Self {
            upstream,
            limits,
            counters,
            taking: Mutex::default(),
        }
    }

    /// A place for `query` on one of the sockets, under an ID no other query used on that
    /// socket: `query` gets another ID if its own was.
    pub fn lease(&self, query: &mut UpstreamQuery) -> anyhow::Result<Lease> {
        let mut taking = lock(&self.taking);
        let limits = self.limits;
        taking.retain(|socket| {
            let fresh = socket.opened.elapsed() < limits.lifetime;
            if !fresh {
                socket.retire();
            }
            fresh && !lock(&socket.state).retired
        });
        if taking.len() < limits.sockets.max(1) {
            taking.push(self.open()?);
        }
        let pick = rand::random_range(0..taking.len());
        let chosen = if let Some(lease) = Self::register(&taking[pick], query, limits) {
            lease
        } else {
            // No free ID found on that socket: a fresh one has them all.
            taking.swap_remove(pick).retire();
            let fresh = self.open()?;
            taking.push(Arc::clone(&fresh));
            Self::register(&fresh, query, limits).context("no free ID on a fresh socket")?
        };
        if lock(&chosen.socket.state).used_ids.len() >= limits.queries_per_socket {
            taking.retain(|socket| !Arc::ptr_eq(socket, &chosen.socket));
            chosen.socket.retire();
        }
        Ok(chosen)
    }

    fn register(
        socket: &Arc<PooledSocket>,
        query: &mut UpstreamQuery,
        limits: PoolLimits,
    ) -> Option<Lease> {
        let mut state = lock(&socket.state);
        if state.retired || state.used_ids.len() >= limits.queries_per_socket.max(1) {
            return None;
        }
        for _ in 0..ID_DRAWS {
            if state.used_ids.insert(query.id()) {
                let (sender, datagrams) = mpsc::channel(QUEUED_PER_QUERY);
                state.waiting.insert(query.id(), sender);
                return Some(Lease {
                    socket: Arc::clone(socket),
                    id: query.id(),
                    datagrams,
                });
            }
            query.set_id(rand::random());
        }
        None
    }

    /// A socket on a random port, connected to the upstream, with its receiver running.
    fn open(&self) -> anyhow::Result<Arc<PooledSocket>> {
        let any = match self.upstream {
            SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        };
        // Port 0: the kernel picks a random ephemeral port. Connecting makes the kernel drop
        // datagrams from anyone but the upstream.
        let socket = std::net::UdpSocket::bind(any).context("cannot open an upstream socket")?;
        socket.connect(self.upstream)?;
        socket.set_nonblocking(true)?;
        let pooled = Arc::new(PooledSocket {
            socket: UdpSocket::from_std(socket)?,
            opened: Instant::now(),
            saw_stray: AtomicBool::new(false),
            state: Mutex::default(),
            closing: Notify::new(),
        });
        tokio::spawn(Arc::clone(&pooled).receive(Arc::clone(&self.counters)));
        Ok(pooled)
    }
}

impl Drop for UpstreamPool {
    fn drop(&mut self) {
        for socket in lock(&self.taking).drain(..) {
            socket.retire();
        }
    }
}

impl PooledSocket {
    /// Hands each datagram to the query whose ID it carries, until the socket is retired and
    /// idle, or fails.
    async fn receive(self: Arc<Self>, counters: Arc<DnsCounters>) {
        // The upstream answers within the payload size a query advertises (at most
        // UPSTREAM_UDP_PAYLOAD), or sets TC. One byte more shows an answer that broke that rule:
        // it is cut short, fails to parse, and is ignored like any stray datagram.
        let mut buffer = vec![0u8; usize::from(UPSTREAM_UDP_PAYLOAD) + 1];
        loop {
            let received = tokio::select! {
                received = self.socket.recv(&mut buffer) => received,
                () = self.closing.notified() => return,
            };
            let len = match received {
                Ok(len) => len,
                Err(err) => {
                    tracing::debug!("upstream socket failed: {err}");
                    self.fail();
                    return;
                }
            };
            if !self.deliver(&buffer[..len]) {
                self.saw_stray.store(true, Ordering::Relaxed);
                DnsCounters::bump(&counters.mismatched);
                tracing::debug!("ignored an upstream datagram that answers no query in flight");
                self.retire();
            }
        }
    }

    /// Queues `datagram` for the query whose ID it carries; `false` if none waits under it (or
    /// that query has datagrams enough queued).
    fn deliver(&self, datagram: &[u8]) -> bool {
        let [high, low, ..] = *datagram else {
            return false;
        };
        let state = lock(&self.state);
        state
            .waiting
            .get(&u16::from_be_bytes([high, low]))
            .is_some_and(|query| query.try_send(datagram.to_vec()).is_ok())
    }

    /// Takes no new queries; closes once none waits.
    fn retire(&self) {
        let mut state = lock(&self.state);
        state.retired = true;
        if state.waiting.is_empty() {
            self.closing.notify_one();
        }
    }

    /// Ends every query on the socket: each sees its datagrams end.
    fn fail(&self) {
        let mut state = lock(&self.state);
        state.retired = true;
        state.waiting.clear();
    }
}

impl Lease {
    pub async fn send(&self, wire: &[u8]) -> anyhow::Result<()> {
        self.socket.socket.send(wire).await?;
        Ok(())
    }

    /// The next datagram under this query's ID; `None` once the socket failed.
    pub async fn next_datagram(&mut self) -> Option<Vec<u8>> {
        self.datagrams.recv().await
    }

    /// The query got a datagram under its ID that does not answer it: its port is known to
    /// someone, so the socket takes no new queries.
    pub fn retire_socket(&self) {
        self.socket.saw_stray.store(true, Ordering::Relaxed);
        self.socket.retire();
    }

    /// Whether a datagram that answered no query (or not its query) arrived on the socket so
    /// far.
    #[must_use]
    pub fn saw_stray(&self) -> bool {
        self.socket.saw_stray.load(Ordering::Relaxed)
    }

    /// The socket's port, for tests.
    #[cfg(test)]
    #[must_use]
    pub fn local_port(&self) -> u16 {
        self.socket.socket.local_addr().map_or(0, |a| a.port())
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut state = lock(&self.socket.state);
        state.waiting.remove(&self.id);
        if state.retired && state.waiting.is_empty() {
            self.socket.closing.notify_one();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
