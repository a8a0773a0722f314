//! The forwarder's sockets: UDP and TCP listeners on the addresses given, a pool of upstream
//! sockets on random ports retired after a few queries ([`pool`]), TCP when an answer comes
//! back truncated.
//!
//! Forged answers: an off-path attacker who wants an address opened must land a datagram that
//! matches the upstream query before the real answer does. Each upstream query has a random
//! source port (from the kernel; a socket carries a few queries, each under an ID used once on
//! it, and is then retired), a random ID, and its name's letters in random case (0x20, which the
//! answer must echo exactly; see [`message::UpstreamQuery`]); datagrams that miss are counted
//! (`mismatched`), retire their socket, and the real answer is still waited for. Identical questions in flight
//! share one upstream query (`Pending`), so flooding the forwarder with a question does not
//! buy the attacker more races. Answers above [`message::UPSTREAM_UDP_PAYLOAD`] come over TCP,
//! never in IP fragments.
//!
//! Not done, and why: DNS cookies (RFC 7873) protect only against an upstream that supports
//! them, and only once the forwarder remembers that it does (else an attacker just leaves the
//! cookie out); hickory-proto 0.26 has no cookie type (the option is opaque bytes), and the
//! small upstreams often used here send none (dnsmasq 2.90 does not). Always asking over TCP
//! would stop off-path forgery outright, but costs a handshake per query (no connection reuse
//! here), and small upstreams cap TCP clients (dnsmasq: 20); with the guards above, a forgery is
//! as hard to land as against a resolver that uses them. The upstream must itself be a
//! validating recursive resolver that checks bailiwick: what it believes, the forwarder believes.
//!
//! Whom it answers: only sources the daemon says it serves ([`ServedClients`]); anything else
//! is ignored without a reply (datagrams) or closed before a byte is read (connections), and
//! counted (`unserved`).
//!
//! Bounds: at most [`MAX_IN_FLIGHT`] queries wait on the upstream at once, and at most
//! [`MAX_QUERIES_PER_CLIENT`] from one client address (past either, SERVFAIL at once rather
//! than queueing, except that a client whose oldest query has waited [`DISPLACE_AFTER`] gets
//! the new one through and the oldest is dropped, counted as `displaced`); at most
//! [`MAX_TCP_CLIENTS`] TCP connections, at most [`MAX_TCP_PER_CLIENT`] of them from one client
//! address, each closed after [`TCP_IDLE`] of silence. A UDP reply carries at most
//! [`message::MAX_UDP_REPLY`] bytes whatever size the client claims; a larger answer goes
//! truncated (TC), and the client asks again over TCP.
//!
//! An answer with listed names waits until the daemon confirms its addresses are in the maps.
//! Asked again (the common case: devices re-resolve the same few names all day), it need not:
//! the forwarder remembers, per (question, address), until when the confirmed entry is sure to
//! stay (`OpenAddresses`). If that outlasts the new answer's TTL by half the grace period or
//! more, nothing is to be done; if not, the answer still goes at once and the daemon is asked to
//! extend the entry. Whatever can remove an entry early (eviction at capacity,
//! a reload) bumps the daemon's epoch, which voids everything remembered under the old one.

use std::{
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use hickory_proto::op::Message;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::{mpsc, oneshot, watch, Semaphore},
    task::JoinSet,
    time::timeout,
};

use super::{
    cache::{self, AnswerCache, Exchange},
    clients::ServedClients,
    counters::DnsCounters,
    in_flight::{Asking, Joined, Pending, PerClient},
    message::{self, ClientQuery, Incoming, Learnable, Question},
    names::NameMatcher,
    open_addresses::{Known, OpenAddresses},
    seen::SeenNames,
};

pub mod pool;
mod upstream;

use pool::{PoolLimits, UpstreamPool};

/// Queries waiting on the upstream at once.
pub const MAX_IN_FLIGHT: usize = 1024;
/// Queries one client address may have waiting at once. A stub resolver has a handful out at
/// a time; one that keeps more is looping or flooding, and must not take every slot of
/// [`MAX_IN_FLIGHT`] from the other clients.
pub const MAX_QUERIES_PER_CLIENT: usize = 32;
/// TCP client connections at once.
pub const MAX_TCP_CLIENTS: usize = 64;
/// TCP connections one client address may hold at once: a stub resolver falls back to TCP for
/// one truncated answer at a time, and one that holds more must not take every slot of
/// [`MAX_TCP_CLIENTS`] from the other clients.
pub const MAX_TCP_PER_CLIENT: usize = 8;
/// A TCP client silent this long, or not reading its answer this long, is disconnected.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// No TCP connection lasts longer than this: 64 slow clients cannot hold every slot for ever.
pub const TCP_LIFETIME: Duration = Duration::from_mins(1);
/// After a failed receive or accept (out of file descriptors, say), wait this long before the
/// next: an error that persists must not spin a core.
const ERROR_PAUSE: Duration = Duration::from_millis(100);
/// How long the upstream has to answer one query. Stub resolvers retry after a few seconds;
/// answering SERVFAIL before they do lets them move on.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// A client at its bound of queries in flight gets a new one through when its oldest has
/// waited this long, and the oldest is dropped. Stub resolvers retry after about a second, so
/// by then the oldest is usually asked again anyway; without this, queries stranded on an
/// upstream that stopped answering hold the client's bound for [`UPSTREAM_TIMEOUT`] after the
/// upstream is back.
pub const DISPLACE_AFTER: Duration = Duration::from_secs(1);
/// How long an answer waits for its addresses to reach the maps. The daemon takes
/// microseconds; this only matters if it is stuck, and then the answer goes out regardless
/// (counted as late): the client's connection may be dropped, but its DNS keeps working.
pub const LEARN_TIMEOUT: Duration = Duration::from_secs(1);

/// Whom to ask, and how.
#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    pub upstream: SocketAddr,
    /// Answer NXDOMAIN to questions no rule's host matches.
    pub block_unlisted: bool,
    pub upstream_timeout: Duration,
    pub max_in_flight: usize,
    pub max_queries_per_client: usize,
    /// When a client at its bound may displace its oldest query ([`DISPLACE_AFTER`]); `None`:
    /// never.
    pub displace_after: Option<Duration>,
    pub max_tcp_per_client: usize,
    /// The daemon's floor on learned TTLs (`--dns-min-ttl`).
    pub min_ttl: Duration,
    /// How long the daemon keeps learned entries past their TTL (`--grace`).
    pub grace: Duration,
    /// Answers kept for repeated questions ([`cache`]); 0 keeps none.
    pub cache_entries: usize,
}

impl ForwarderConfig {
    /// The defaults: [`UPSTREAM_TIMEOUT`], [`MAX_IN_FLIGHT`], [`MAX_QUERIES_PER_CLIENT`],
    /// [`DISPLACE_AFTER`], [`MAX_TCP_PER_CLIENT`], no TTL floor, [`cache::DEFAULT_CAPACITY`]
    /// answers kept.
    #[must_use]
    pub fn new(upstream: SocketAddr, block_unlisted: bool) -> Self {
        Self {
            upstream,
            block_unlisted,
            upstream_timeout: UPSTREAM_TIMEOUT,
            max_in_flight: MAX_IN_FLIGHT,
            max_queries_per_client: MAX_QUERIES_PER_CLIENT,
            displace_after: Some(DISPLACE_AFTER),
            max_tcp_per_client: MAX_TCP_PER_CLIENT,
            min_ttl: Duration::ZERO,
            grace: Duration::ZERO,
            cache_entries: cache::DEFAULT_CAPACITY,
        }
    }
}

/// An answer's names and addresses, for the daemon to open before the answer goes out.
#[derive(Debug)]
pub struct LearnRequest {
    pub question: String,
    pub learnable: Learnable,
    /// Answered `true` once the maps hold the addresses, `false` if writing them failed.
    pub done: oneshot::Sender<bool>,
}

/// What the forwarder shares with the daemon while it serves.
pub struct Shared {
    /// Which services each name belongs to (replaced on reload).
    pub matcher: watch::Receiver<Arc<NameMatcher>>,
    /// Whom to answer (replaced when the guarded interfaces' subnets change).
    pub served: watch::Receiver<Arc<ServedClients>>,
    /// Where answers' addresses go to be opened before the answer is released.
    pub learn: mpsc::Sender<LearnRequest>,
    pub counters: Arc<DnsCounters>,
    /// Bumped by the daemon whenever learned entries may go before their time (eviction,
    /// reload).
    pub epoch: Arc<AtomicU64>,
    pub seen: Arc<SeenNames>,
}

/// Sockets bound on every listen address, UDP and TCP. Bound before anything is attached, so a
/// port in use fails the start cleanly.
pub struct Listeners {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl Listeners {
    pub async fn bind(addresses: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut listeners = Self {
            udp: Vec::new(),
            tcp: Vec::new(),
        };
        for address in addresses {
            let hint = "is another DNS server (dnsmasq, systemd-resolved) listening there?";
            let udp = UdpSocket::bind(address)
                .await
                .with_context(|| format!("cannot listen for DNS on udp {address} ({hint})"))?;
            // TCP on the very port UDP got (the same, unless the port asked for was 0).
            let bound = udp.local_addr()?;
            listeners.tcp.push(
                TcpListener::bind(bound)
                    .await
                    .with_context(|| format!("cannot listen for DNS on tcp {bound} ({hint})"))?,
            );
            listeners.udp.push(udp);
        }
        Ok(listeners)
    }

    /// Where the sockets listen (with the ports the kernel chose, for port 0).
    #[must_use]
    pub fn local_addresses(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Serves until the returned set is dropped or aborted.
    #[must_use]
    pub fn serve(self, config: ForwarderConfig, shared: Shared) -> JoinSet<()> {
        let Shared {
            matcher,
            served,
            learn,
            counters,
            epoch,
            seen,
        } = shared;
        let forwarder = Arc::new(Forwarder {
            seen,
            open: Arc::default(),
            epoch,
            in_flight: Semaphore::new(config.max_in_flight),
            upstream_pool: UpstreamPool::new(
                config.upstream,
                PoolLimits::default(),
                Arc::clone(&counters),
            ),
            pending: Arc::default(),
            per_client: PerClient::default(),
            cache: AnswerCache::new(config.cache_entries),
            config,
            matcher,
            served,
            learn,
            counters,
            tcp_clients: Semaphore::new(MAX_TCP_CLIENTS),
            tcp_per_client: PerClient::default(),
        });
        let mut tasks = JoinSet::new();
        for socket in self.udp {
            tasks.spawn(Arc::clone(&forwarder).serve_udp(Arc::new(socket)));
        }
        for listener in self.tcp {
            tasks.spawn(Arc::clone(&forwarder).serve_tcp(listener));
        }
        tasks
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Transport {
    Udp,
    Tcp,
}

struct Forwarder {
    seen: Arc<SeenNames>,
    open: Arc<OpenAddresses>,
    epoch: Arc<AtomicU64>,
    config: ForwarderConfig,
    matcher: watch::Receiver<Arc<NameMatcher>>,
    served: watch::Receiver<Arc<ServedClients>>,
    learn: mpsc::Sender<LearnRequest>,
    counters: Arc<DnsCounters>,
    in_flight: Semaphore,
    upstream_pool: UpstreamPool,
    pending: Arc<Pending>,
    per_client: PerClient,
    cache: AnswerCache,
    tcp_clients: Semaphore,
    /// TCP connections open, by client address.
    tcp_per_client: PerClient,
}

impl Forwarder {
    /// Whether `client` is one the forwarder answers; counts it if not.
    fn serves(&self, client: IpAddr) -> bool {
        let served = self.served.borrow().serves(client);
        if !served {
            DnsCounters::bump(&self.counters.unserved);
        }
        served
    }

    async fn serve_udp(self: Arc<Self>, socket: Arc<UdpSocket>) {
        let mut buffer = vec![0u8; usize::from(u16::MAX)];
        loop {
            let (len, client) = match socket.recv_from(&mut buffer).await {
                Ok(received) => received,
                Err(err) => {
                    tracing::debug!("DNS receive failed: {err}");
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
            };
            if !self.serves(client.ip()) {
                continue;
            }
            let bytes = buffer[..len].to_vec();
            let (forwarder, socket) = (Arc::clone(&self), Arc::clone(&socket));
            tokio::spawn(async move {
                let reply = forwarder.answer(&bytes, Transport::Udp, client.ip()).await;
                if let Some(reply) = reply {
                    if let Err(err) = socket.send_to(&reply, client).await {
                        tracing::debug!("cannot send a DNS reply to {client}: {err}");
                    }
                }
            });
        }
    }

    async fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, client) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!("DNS over TCP: cannot accept ({err})");
                    tokio::time::sleep(ERROR_PAUSE).await;
                    continue;
                }
            };
            if !self.serves(client.ip()) {
                continue;
            }
            let forwarder = Arc::clone(&self);
            tokio::spawn(async move {
                // Past either bound, the new connection is closed at once; the others go on.
                let limit = forwarder.config.max_tcp_per_client;
                let Some(_slot) = forwarder.tcp_per_client.take(client.ip(), limit, None) else {
                    DnsCounters::bump(&forwarder.counters.tcp_client_limited);
                    return;
                };
                let Ok(_permit) = forwarder.tcp_clients.try_acquire() else {
                    DnsCounters::bump(&forwarder.counters.tcp_full);
                    return;
                };
                if let Err(err) = forwarder.serve_tcp_client(stream, client.ip()).await {
                    tracing::debug!("DNS over TCP from {client}: {err}");
                }
            });
        }
    }

    async fn serve_tcp_client(
        self: &Arc<Self>,
        mut stream: TcpStream,
        client: IpAddr,
    ) -> anyhow::Result<()> {
        let opened = Instant::now();
        while opened.elapsed() < TCP_LIFETIME {
            let Ok(Ok(len)) = timeout(TCP_IDLE, stream.read_u16()).await else {
                return Ok(());
            };
            let mut bytes = vec![0u8; usize::from(len)];
            timeout(TCP_IDLE, stream.read_exact(&mut bytes)).await??;
            if let Some(reply) = self.answer(&bytes, Transport::Tcp, client).await {
                timeout(TCP_IDLE, stream.write_all(&frame(&reply)?)).await??;
            }
        }
        Ok(())
    }

    /// The reply to one client message, if it gets one.
    async fn answer(
        self: &Arc<Self>,
        bytes: &[u8],
        transport: Transport,
        client: IpAddr,
    ) -> Option<Vec<u8>> {
        let query = match message::read_query(bytes) {
            Incoming::Query(query) => query,
            Incoming::Reply(reply) => {
                DnsCounters::bump(&self.counters.malformed);
                return Some(reply);
            }
            Incoming::Ignore => return None,
        };
        DnsCounters::bump(&self.counters.queries);
        if self.config.block_unlisted && !self.matcher.borrow().matches_any(&query.name) {
            DnsCounters::bump(&self.counters.refused);
            return Some(query.nxdomain());
        }
        let question = query.question();
        if let Some(reply) = self.answer_kept(&query, &question, transport) {
            return Some(reply);
        }
        let Some(mut slot) = self.per_client.take(
            client,
            self.config.max_queries_per_client,
            self.config.displace_after,
        ) else {
            DnsCounters::bump(&self.counters.client_limited);
            return Some(query.servfail());
        };
        let Ok(_permit) = self.in_flight.try_acquire() else {
            DnsCounters::bump(&self.counters.overloaded);
            return Some(query.servfail());
        };
        // The first client asking a question drives its upstream query itself (no task of its
        // own, one wake-up less per query); the answer is for every client that joined.
        let (joined, mut asking) = match self.pending.join(&question) {
            Joined::Merged(outcome) => {
                DnsCounters::bump(&self.counters.merged);
                (outcome, None)
            }
            Joined::First(outcome, asking) => (
                outcome,
                Some(Box::pin(Arc::clone(self).ask_for_all(asking, transport))),
            ),
        };
        let asked = async {
            if let Some(ask) = asking.as_mut() {
                ask.await;
            }
        };
        let outcome = tokio::select! {
            outcome = async { asked.await; joined.await } => outcome,
            () = slot.displaced() => {
                DnsCounters::bump(&self.counters.displaced);
                // The clients that joined still get the answer: the query goes on without this
                // one.
                if let Some(ask) = asking.take() {
                    tokio::spawn(ask);
                }
                // Over UDP no reply: a stub resolver retries under the same ID, and a SERVFAIL
                // would answer the retry too. Over TCP the client waits on the connection.
                return match transport {
                    Transport::Udp => None,
                    Transport::Tcp => Some(query.servfail()),
                };
            }
        };
        let Ok(Some(answer)) = outcome else {
            DnsCounters::bump(&self.counters.servfail);
            return Some(query.servfail());
        };
        Some(
            self.reply(&query, &answer, 0, transport)
                .unwrap_or_else(|| query.servfail()),
        )
    }

    /// `answer` as `query`'s client gets it over `transport`, its TTLs `age` seconds shorter;
    /// `None` if it cannot be built.
    fn reply(
        &self,
        query: &ClientQuery,
        answer: &Message,
        age: u32,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let limit = match transport {
            Transport::Udp => query.udp_limit(),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let reply = query.reply(answer, limit, age).ok()?;
        if reply.truncated {
            DnsCounters::bump(&self.counters.truncated);
        }
        Some(reply.bytes)
    }

    /// The reply from a kept answer to `question`, if one may be given now: kept under the
    /// rules and epoch in force, and, for a rule's name, its addresses known open for the rest
    /// of its TTL (see [`cache`]).
    fn answer_kept(
        &self,
        query: &ClientQuery,
        question: &Question,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        // With the cache off, every query would pay the rules' lock for nothing.
        if self.cache.keeps_nothing() {
            return None;
        }
        let matcher = Arc::clone(&self.matcher.borrow());
        let epoch = self.epoch.load(Ordering::Acquire);
        let now = Instant::now();
        let hit = self.cache.get(question, &matcher, epoch, now)?;
        if let Some(opened) = &hit.opened {
            let (min_ttl, grace) = (self.config.min_ttl, self.config.grace);
            let known =
                self.open
                    .check(&opened.chain, &opened.addresses, now, epoch, min_ttl, grace);
            if known != Known::Covered {
                return None;
            }
        }
        let reply = self.reply(query, &hit.answer, hit.age, transport)?;
        DnsCounters::bump(&self.counters.cached);
        Some(reply)
    }

    /// Asks the upstream once for every client waiting on `asking`'s question, and opens what
    /// the answer teaches before any of them gets it. Driven by the first client's query, and
    /// spawned to go on alone if that query is displaced: the answer is for every waiting
    /// client, whatever becomes of the first.
    async fn ask_for_all(self: Arc<Self>, asking: Asking, transport: Transport) {
        let question = &asking.question;
        DnsCounters::bump(&self.counters.forwarded);
        // The rules and epoch the question was asked under: if either changes before the
        // answer is kept, it is kept under the old ones, and so never given.
        let asked_under = Arc::clone(&self.matcher.borrow());
        let epoch = self.epoch.load(Ordering::Acquire);
        let outcome = match self.ask_upstream(question, transport).await {
            Ok(answered) => {
                let answer = Arc::new(answered.message);
                // Learned under the rules in force now: a rule added meanwhile opens its names.
                let rules_now = Arc::clone(&self.matcher.borrow());
                let (learnable, listed) = self.learn_from(question, &answer, &rules_now).await;
                let exchange = Exchange {
                    answer: &answer,
                    learnable: &learnable,
                    matched: listed,
                    stray: answered.stray,
                    matcher: &asked_under,
                    epoch,
                };
                self.cache.keep(question, &exchange, Instant::now());
                Some(answer)
            }
            Err(err) => {
                tracing::debug!(
                    "no answer from {} for {}: {err:#}",
                    self.config.upstream,
                    question.name()
                );
                None
            }
        };
        asking.finish(outcome);
    }

    /// Records what `answer` teaches and, if a rule's host (by `matcher`) is on its chain,
    /// opens its addresses. Returns what it teaches, and whether a rule's host is on the chain.
    async fn learn_from(
        &self,
        question: &Question,
        answer: &Message,
        matcher: &NameMatcher,
    ) -> (Learnable, bool) {
        let learnable = message::learnable(question, answer);
        let name = question.name();
        self.seen
            .record(&name, learnable.addresses.iter().map(|(a, _)| *a));
        let listed = learnable.chain.iter().any(|name| matcher.matches_any(name));
        if listed {
            DnsCounters::bump(&self.counters.matched);
            if !learnable.addresses.is_empty() {
                self.open_before_answering(&name, &learnable).await;
            }
        }
        (learnable, listed)
    }

    /// Hands the answer's addresses to the daemon and waits until they are in the maps, unless
    /// the daemon already confirmed them for this question and they are sure to stay open: then
    /// it only asks the daemon to extend them.
    async fn open_before_answering(&self, question: &str, learnable: &Learnable) {
        let sent = Instant::now();
        let epoch = self.epoch.load(Ordering::Acquire);
        let chain = learnable.chain.join(" ");
        let (min_ttl, grace) = (self.config.min_ttl, self.config.grace);
        let known = self
            .open
            .check(&chain, &learnable.addresses, sent, epoch, min_ttl, grace);
        if known == Known::Covered {
            DnsCounters::bump(&self.counters.already_open);
            return;
        }
        let (done, confirmed) = oneshot::channel();
        let addresses = learnable.addresses.clone();
        let mut request = LearnRequest {
            question: question.to_owned(),
            learnable: learnable.clone(),
            done,
        };
        if known == Known::OpenNow {
            // Open for a while yet: answer at once, and have the entries extended beside.
            match self.learn.try_send(request) {
                Ok(()) => {
                    DnsCounters::bump(&self.counters.already_open);
                    let open = Arc::clone(&self.open);
                    tokio::spawn(async move {
                        if let Ok(Ok(true)) = timeout(LEARN_TIMEOUT, confirmed).await {
                            open.confirmed(&chain, &addresses, sent, min_ttl, epoch);
                        }
                    });
                    return;
                }
                // A full queue: wait like a first answer, or the entry could close early.
                Err(
                    mpsc::error::TrySendError::Full(back) | mpsc::error::TrySendError::Closed(back),
                ) => request = back,
            }
        }
        let confirmed = timeout(LEARN_TIMEOUT, async {
            self.learn.send(request).await.ok()?;
            confirmed.await.ok()
        })
        .await;
        self.counters.held(sent.elapsed());
        if confirmed == Ok(Some(true)) {
            self.open
                .confirmed(&chain, &addresses, sent, min_ttl, epoch);
        } else {
            DnsCounters::bump(&self.counters.late);
        }
    }
}

/// DNS over TCP: each message behind its two-byte length (RFC 1035 4.2.2).
fn frame(message: &[u8]) -> anyhow::Result<Vec<u8>> {
    let len = u16::try_from(message.len()).context("DNS message longer than 65535 bytes")?;
    let mut framed = Vec::with_capacity(message.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(message);
    Ok(framed)
}

#[cfg(test)]
#[path = "forwarder_tests/mod.rs"]
mod tests;
