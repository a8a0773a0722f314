//! The upstream socket pool against a stub upstream on loopback: IDs never reused on a socket,
//! retirement (by count, by age, on an anomaly), answers handed to their own query, and what is
//! dropped: datagrams under no waiting ID, answers that come after their query gave up, answers
//! from another source, answers to another question. No root needed.

use std::{net::Ipv4Addr, str::FromStr as _, sync::atomic::Ordering};

use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{rdata::A, Name, RData, Record, RecordType},
};
use tokio::time::timeout;

use super::*;
use crate::dns::message::{read_query, Incoming};

const WAIT: Duration = Duration::from_secs(2);

struct Upstream {
    socket: UdpSocket,
}

impl Upstream {
    async fn start() -> Self {
        Self {
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn pool(&self, limits: PoolLimits) -> (UpstreamPool, Arc<DnsCounters>) {
        let counters = Arc::new(DnsCounters::default());
        let addr = self.socket.local_addr().unwrap();
        (
            UpstreamPool::new(addr, limits, Arc::clone(&counters)),
            counters,
        )
    }

    /// The next query and the port it came from.
    async fn receive(&self) -> (Message, SocketAddr) {
        let mut buffer = vec![0u8; 4096];
        let (len, from) = timeout(WAIT, self.socket.recv_from(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        (Message::from_vec(&buffer[..len]).unwrap(), from)
    }

    async fn send(&self, answer: &Message, to: SocketAddr) {
        self.socket
            .send_to(&answer.to_vec().unwrap(), to)
            .await
            .unwrap();
    }
}

fn limits(sockets: usize, queries_per_socket: usize) -> PoolLimits {
    PoolLimits {
        sockets,
        queries_per_socket,
        lifetime: Duration::from_mins(1),
    }
}

fn upstream_query(name: &str) -> UpstreamQuery {
    let mut message = Message::new(1, MessageType::Query, OpCode::Query);
    message.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    let Incoming::Query(query) = read_query(&message.to_vec().unwrap()) else {
        panic!("a valid query");
    };
    UpstreamQuery::new(&query.question())
}

/// The stub's answer to `query`: `address` for its name, as asked.
fn answer(query: &Message, address: Ipv4Addr) -> Message {
    let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
    answer.add_queries(query.queries.iter().cloned());
    answer.add_answer(Record::from_rdata(
        query.queries[0].name().clone(),
        60,
        RData::A(A(address)),
    ));
    answer
}

/// Leases a place for `query` and sends it.
async fn send(pool: &UpstreamPool, query: &mut UpstreamQuery) -> Lease {
    let lease = pool.lease(query).unwrap();
    lease.send(&query.to_bytes().unwrap()).await.unwrap();
    lease
}

/// The next datagram for `lease`, checked as the forwarder checks it: the address answered.
async fn answered(lease: &mut Lease, query: &UpstreamQuery) -> Ipv4Addr {
    let datagram = timeout(WAIT, lease.next_datagram()).await.unwrap().unwrap();
    let answer = query.check_answer(&datagram).unwrap();
    match &answer.answers[0].data {
        RData::A(a) => a.0,
        other => panic!("not an A record: {other:?}"),
    }
}

/// The address real answers carry; forged ones carry another.
const REAL: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);

/// One query sent from a one-socket pool, as the upstream received it.
struct Sent {
    upstream: Upstream,
    pool: UpstreamPool,
    counters: Arc<DnsCounters>,
    query: UpstreamQuery,
    lease: Lease,
    asked: Message,
    from: SocketAddr,
}

async fn one_query_sent() -> Sent {
    let upstream = Upstream::start().await;
    let (pool, counters) = upstream.pool(limits(1, 32));
    let mut query = upstream_query("a.example.test.");
    let lease = send(&pool, &mut query).await;
    let (asked, from) = upstream.receive().await;
    Sent {
        upstream,
        pool,
        counters,
        query,
        lease,
        asked,
        from,
    }
}

impl Sent {
    /// The upstream answers truly; the query must take that answer.
    async fn answer_truly_and_expect_it_taken(&mut self) {
        self.upstream
            .send(&answer(&self.asked, REAL), self.from)
            .await;
        assert_eq!(answered(&mut self.lease, &self.query).await, REAL);
    }

    /// The query's socket takes no new queries: the next goes from another port.
    fn assert_socket_retired(&self) {
        let mut next = upstream_query("b.example.test.");
        let next_lease = self.pool.lease(&mut next).unwrap();
        assert_ne!(next_lease.local_port(), self.lease.local_port(), "retired");
    }
}

async fn mismatched_becomes(counters: &DnsCounters, expected: u64) {
    let started = Instant::now();
    while counters.mismatched.load(Ordering::SeqCst) < expected && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(counters.mismatched.load(Ordering::SeqCst), expected);
}

#[tokio::test]
async fn an_id_is_never_given_twice_on_one_socket() {
    let upstream = Upstream::start().await;
    let (pool, _counters) = upstream.pool(limits(1, 32));
    let mut first = upstream_query("a.example.test.");
    let first_lease = pool.lease(&mut first).unwrap();
    // The second query drew the first one's ID: it gets another on the same socket.
    let mut second = upstream_query("b.example.test.");
    second.set_id(first.id());
    let second_lease = pool.lease(&mut second).unwrap();
    assert_eq!(first_lease.local_port(), second_lease.local_port());
    assert_ne!(second.id(), first.id());
    // Not even once the first query has ended: a late answer to it must not fit a new one.
    drop(first_lease);
    let mut third = upstream_query("c.example.test.");
    third.set_id(first.id());
    let third_lease = pool.lease(&mut third).unwrap();
    assert_eq!(third_lease.local_port(), second_lease.local_port());
    assert!(third.id() != first.id() && third.id() != second.id());
}

#[tokio::test]
async fn queries_in_flight_on_one_socket_get_their_own_answers() {
    let upstream = Upstream::start().await;
    let (pool, counters) = upstream.pool(limits(1, 32));
    let mut first = upstream_query("a.example.test.");
    let mut second = upstream_query("b.example.test.");
    let mut first_lease = send(&pool, &mut first).await;
    let mut second_lease = send(&pool, &mut second).await;
    assert_eq!(first_lease.local_port(), second_lease.local_port());
    let (asked_first, from) = upstream.receive().await;
    let (asked_second, _) = upstream.receive().await;
    // Answered in the other order.
    upstream
        .send(&answer(&asked_second, Ipv4Addr::new(192, 0, 2, 2)), from)
        .await;
    upstream
        .send(&answer(&asked_first, Ipv4Addr::new(192, 0, 2, 1)), from)
        .await;
    assert_eq!(
        answered(&mut first_lease, &first).await,
        Ipv4Addr::new(192, 0, 2, 1)
    );
    assert_eq!(
        answered(&mut second_lease, &second).await,
        Ipv4Addr::new(192, 0, 2, 2)
    );
    assert_eq!(counters.mismatched.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_socket_retires_after_its_queries_and_after_its_lifetime() {
    let upstream = Upstream::start().await;
    let (pool, _counters) = upstream.pool(limits(1, 2));
    let mut queries: Vec<_> = (0..3)
        .map(|i| upstream_query(&format!("q{i}.example.test.")))
        .collect();
    let mut leases = Vec::new();
    for query in &mut queries {
        leases.push(pool.lease(query).unwrap());
    }
    assert_eq!(leases[0].local_port(), leases[1].local_port());
    assert_ne!(leases[1].local_port(), leases[2].local_port());
    // A retired socket still hands its queries their answers.
    leases[0]
        .send(&queries[0].to_bytes().unwrap())
        .await
        .unwrap();
    let (asked, from) = upstream.receive().await;
    upstream
        .send(&answer(&asked, Ipv4Addr::new(192, 0, 2, 1)), from)
        .await;
    assert_eq!(
        answered(&mut leases[0], &queries[0]).await,
        Ipv4Addr::new(192, 0, 2, 1)
    );

    // Past its lifetime, a socket takes no new queries, however few it carried.
    let (pool, _counters) = upstream.pool(PoolLimits {
        sockets: 1,
        queries_per_socket: 32,
        lifetime: Duration::ZERO,
    });
    let mut one = upstream_query("a.example.test.");
    let mut other = upstream_query("b.example.test.");
    let one_lease = pool.lease(&mut one).unwrap();
    let other_lease = pool.lease(&mut other).unwrap();
    assert_ne!(one_lease.local_port(), other_lease.local_port());
}

#[tokio::test]
async fn a_datagram_under_no_waiting_id_is_dropped_counted_and_retires_its_socket() {
    let mut sent = one_query_sent().await;
    let mut stray = answer(&sent.asked, Ipv4Addr::new(192, 0, 2, 66));
    stray.metadata.id = stray.metadata.id.wrapping_add(1);
    sent.upstream.send(&stray, sent.from).await;
    // The query still gets its real answer, and only it.
    sent.answer_truly_and_expect_it_taken().await;
    assert_eq!(sent.counters.mismatched.load(Ordering::SeqCst), 1);
    sent.assert_socket_retired();
}

#[tokio::test]
async fn an_answer_under_the_id_but_to_another_question_is_not_taken() {
    let mut sent = one_query_sent().await;
    let mut other = sent.asked.clone();
    other.queries[0].set_name(Name::from_str("other.example.test.").unwrap());
    sent.upstream
        .send(&answer(&other, Ipv4Addr::new(192, 0, 2, 66)), sent.from)
        .await;
    let datagram = timeout(WAIT, sent.lease.next_datagram())
        .await
        .unwrap()
        .unwrap();
    assert!(sent.query.check_answer(&datagram).is_err());
    // What the forwarder does on such a datagram (`ask_udp`).
    sent.lease.retire_socket();
    sent.answer_truly_and_expect_it_taken().await;
    sent.assert_socket_retired();
}

#[tokio::test]
async fn an_answer_from_another_source_is_never_read() {
    let mut sent = one_query_sent().await;
    // A forger who got the port, the ID and the case right, from the wrong address or port.
    let forged = answer(&sent.asked, Ipv4Addr::new(192, 0, 2, 66));
    for source in ["127.0.0.2:0", "127.0.0.1:0"] {
        let wrong_source = UdpSocket::bind(source).await.unwrap();
        wrong_source
            .send_to(&forged.to_vec().unwrap(), sent.from)
            .await
            .unwrap();
    }
    sent.answer_truly_and_expect_it_taken().await;
    // The kernel dropped them: the connected socket never read them.
    assert_eq!(sent.counters.mismatched.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_late_answer_after_its_query_gave_up_is_dropped_and_counted() {
    let Sent {
        upstream,
        pool,
        counters,
        mut lease,
        asked,
        from,
        ..
    } = one_query_sent().await;
    // The forwarder's timeout: the query gives up and its lease goes.
    assert!(timeout(Duration::from_millis(50), lease.next_datagram())
        .await
        .is_err());
    let port = lease.local_port();
    drop(lease);
    // Another query on the same socket, waiting still: the late answer must not reach it.
    let mut waiting = upstream_query("a.example.test.");
    let mut waiting_lease = send(&pool, &mut waiting).await;
    assert_eq!(waiting_lease.local_port(), port);
    let (asked_again, _) = upstream.receive().await;
    upstream
        .send(&answer(&asked, Ipv4Addr::new(192, 0, 2, 66)), from)
        .await;
    mismatched_becomes(&counters, 1).await;
    upstream.send(&answer(&asked_again, REAL), from).await;
    assert_eq!(answered(&mut waiting_lease, &waiting).await, REAL);
}

#[tokio::test]
async fn a_socket_error_ends_its_queries_at_once() {
    // An upstream port nothing listens on: the kernel answers port unreachable.
    let closed = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let counters = Arc::new(DnsCounters::default());
    let pool = UpstreamPool::new(addr, limits(1, 32), counters);
    let mut query = upstream_query("a.example.test.");
    let mut lease = send(&pool, &mut query).await;
    assert_eq!(timeout(WAIT, lease.next_datagram()).await.unwrap(), None);
    let mut next = upstream_query("b.example.test.");
    let next_lease = pool.lease(&mut next).unwrap();
    assert_ne!(next_lease.local_port(), lease.local_port(), "retired");
}
