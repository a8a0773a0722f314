//! The forwarder on real loopback sockets against a stub upstream built with hickory-proto:
//! ordering (learned before answered), TCP fallback, stray answers, timeouts and bounds, and
//! random datagrams. No root needed.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    str::FromStr as _,
    sync::{atomic::AtomicUsize, Mutex},
    time::Instant,
};

use hickory_proto::{
    op::{Query, ResponseCode},
    rr::{rdata::A, Name, RData, Record, RecordType},
};

use super::*;
use crate::rules::Rules;

/// What the stub upstream does, by the question's first label: `slow` never answers, `big`
/// comes back truncated over UDP and as 40 addresses over TCP, `spoof` is preceded by an answer
/// under the wrong ID; everything else is 192.0.2.1 with TTL 60.
struct Stub {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
}

fn first_label(query: &Message) -> String {
    query.queries[0]
        .name()
        .to_ascii()
        .split('.')
        .next()
        .unwrap_or("")
        .to_owned()
}

fn stub_answer(query: &Message, full: bool) -> Message {
    let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
    answer.add_queries(query.queries.iter().cloned());
    let name = query.queries[0].name().clone();
    let count = if full && first_label(query) == "big" {
        40
    } else {
        1
    };
    for i in 0..count {
        answer.add_answer(Record::from_rdata(
            name.clone(),
            60,
            RData::A(A(Ipv4Addr::new(192, 0, 2, i + 1))),
        ));
    }
    answer
}

async fn stub() -> Stub {
    let udp = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = udp.local_addr().unwrap();
    let tcp = TcpListener::bind(addr).await.unwrap();
    let queries = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&queries);
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let (len, from) = udp.recv_from(&mut buffer).await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let query = Message::from_vec(&buffer[..len]).unwrap();
            let mut answer = stub_answer(&query, false);
            match first_label(&query).as_str() {
                "slow" => continue,
                "big" => {
                    answer.answers.clear();
                    answer.metadata.truncation = true;
                }
                "spoof" => {
                    let mut stray = answer.clone();
                    stray.metadata.id = stray.metadata.id.wrapping_add(1);
                    udp.send_to(&stray.to_vec().unwrap(), from).await.unwrap();
                }
                _ => {}
            }
            udp.send_to(&answer.to_vec().unwrap(), from).await.unwrap();
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = tcp.accept().await.unwrap();
            let len = stream.read_u16().await.unwrap();
            let mut bytes = vec![0u8; usize::from(len)];
            stream.read_exact(&mut bytes).await.unwrap();
            let answer = stub_answer(&Message::from_vec(&bytes).unwrap(), true);
            stream
                .write_all(&frame(&answer.to_vec().unwrap()).unwrap())
                .await
                .unwrap();
        }
    });
    Stub { addr, queries }
}

/// A learn request as the daemon saw it, and when it confirmed it.
type Learned = Arc<Mutex<Vec<(Learnable, Instant)>>>;

struct Harness {
    addr: SocketAddr,
    counters: Arc<DnsCounters>,
    epoch: Arc<AtomicU64>,
    learned: Learned,
    _tasks: JoinSet<()>,
    _matcher: watch::Sender<Arc<NameMatcher>>,
}

/// A forwarder for `*.listed.test`, whose "daemon" takes `ack_delay` to confirm each learning.
async fn forwarder(config: ForwarderConfig, ack_delay: Duration) -> Harness {
    let rules = Rules::parse_sources(&[(
        Path::new("t.toml"),
        "[[service]]\nname = \"listed\"\nhosts = [\"*.listed.test\"]\ntcp = [443]\n",
    )])
    .unwrap();
    let (matcher, matcher_rx) = watch::channel(Arc::new(NameMatcher::new(&rules)));
    let (learn_tx, mut learn_rx) = mpsc::channel::<LearnRequest>(16);
    let learned: Learned = Arc::default();
    let recorded = Arc::clone(&learned);
    tokio::spawn(async move {
        while let Some(request) = learn_rx.recv().await {
            tokio::time::sleep(ack_delay).await;
            recorded
                .lock()
                .unwrap()
                .push((request.learnable, Instant::now()));
            let _ = request.done.send(true);
        }
    });
    let listeners = Listeners::bind(&["127.0.0.1:0".parse().unwrap()])
        .await
        .unwrap();
    let addr = listeners.local_addresses()[0];
    let counters = Arc::new(DnsCounters::default());
    let epoch = Arc::new(AtomicU64::new(0));
    let tasks = listeners.serve(
        config,
        matcher_rx,
        learn_tx,
        Arc::clone(&counters),
        Arc::clone(&epoch),
        Arc::default(),
    );
    Harness {
        addr,
        counters,
        epoch,
        learned,
        _tasks: tasks,
        _matcher: matcher,
    }
}

fn query(name: &str, id: u16) -> Vec<u8> {
    let mut m = Message::new(
        id,
        hickory_proto::op::MessageType::Query,
        hickory_proto::op::OpCode::Query,
    );
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    m.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, bytes: &[u8]) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buffer = vec![0u8; 65535];
    let len = timeout(Duration::from_secs(5), socket.recv(&mut buffer))
        .await
        .unwrap()
        .unwrap();
    Message::from_vec(&buffer[..len]).unwrap()
}

async fn ask_tcp(server: SocketAddr, bytes: &[u8]) -> Message {
    let mut stream = TcpStream::connect(server).await.unwrap();
    stream.write_all(&frame(bytes).unwrap()).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut reply = vec![0u8; usize::from(len)];
    stream.read_exact(&mut reply).await.unwrap();
    Message::from_vec(&reply).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_answers_reach_the_maps_before_the_client() {
    let upstream = stub().await;
    let f = forwarder(
        ForwarderConfig::new(upstream.addr, false),
        Duration::from_millis(200),
    )
    .await;
    let reply = ask_udp(f.addr, &query("a.b.listed.test.", 77)).await;
    let answered = Instant::now();
    assert_eq!(reply.metadata.id, 77);
    assert_eq!(reply.answers.len(), 1);
    let learned = f.learned.lock().unwrap().clone();
    assert_eq!(learned.len(), 1);
    assert_eq!(learned[0].0.chain, ["a.b.listed.test"]);
    assert_eq!(
        learned[0].0.addresses,
        [(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 60)]
    );
    assert!(
        learned[0].1 <= answered,
        "confirmed before the answer went out"
    );

    let reply = ask_udp(f.addr, &query("unlisted.test.", 78)).await;
    assert_eq!(
        reply.answers.len(),
        1,
        "unlisted names are forwarded unchanged"
    );
    assert_eq!(f.learned.lock().unwrap().len(), 1, "and teach nothing");
    let counters = f.counters.values();
    assert_eq!((counters.queries, counters.matched), (2, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_confirmed_open_are_not_waited_for_again_until_the_epoch_moves() {
    let upstream = stub().await;
    let delay = Duration::from_millis(300);
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), delay).await;
    let timed = |id| async move {
        let started = Instant::now();
        ask_udp(f.addr, &query("again.listed.test.", id)).await;
        started.elapsed()
    };
    assert!(
        timed(1).await >= delay,
        "the first answer waits for the daemon"
    );
    assert!(
        timed(2).await < delay,
        "the second does not: the address is open for 60 s"
    );
    assert_eq!(f.counters.values().already_open, 1);
    // The daemon still hears of it, to extend the entry.
    tokio::time::sleep(delay * 2).await;
    assert_eq!(f.learned.lock().unwrap().len(), 2);
    f.epoch.fetch_add(1, Ordering::Release);
    assert!(
        timed(3).await >= delay,
        "after an eviction or reload it waits again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlisted_questions_get_nxdomain_without_asking_upstream() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, true), Duration::ZERO).await;
    let reply = ask_udp(f.addr, &query("tracker.example.net.", 1)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 0);
    let reply = ask_udp(f.addr, &query("x.listed.test.", 2)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert_eq!(f.counters.values().refused, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_answers_are_fetched_over_tcp_and_learned_whole() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), Duration::ZERO).await;
    let reply = ask_udp(f.addr, &query("big.listed.test.", 5)).await;
    assert!(
        reply.metadata.truncation,
        "40 addresses do not fit in 512 bytes: the client retries over TCP"
    );
    assert_eq!(
        f.learned.lock().unwrap()[0].0.addresses.len(),
        40,
        "learned from the full TCP answer"
    );
    assert_eq!(f.counters.values().tcp_retries, 1);
    let reply = ask_tcp(f.addr, &query("big.listed.test.", 6)).await;
    assert!(!reply.metadata.truncation);
    assert_eq!((reply.metadata.id, reply.answers.len()), (6, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_upstream_answers_are_ignored() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), Duration::ZERO).await;
    let reply = ask_udp(f.addr, &query("spoof.listed.test.", 9)).await;
    assert_eq!((reply.metadata.id, reply.answers.len()), (9, 1));
    assert_eq!(f.counters.values().mismatched, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_gets_servfail_and_in_flight_queries_are_bounded() {
    let upstream = stub().await;
    let config = ForwarderConfig {
        upstream_timeout: Duration::from_millis(300),
        max_in_flight: 2,
        ..ForwarderConfig::new(upstream.addr, false)
    };
    let f = forwarder(config, Duration::ZERO).await;
    let mut asks = JoinSet::new();
    for id in 0..6 {
        asks.spawn(async move { ask_udp(f.addr, &query("slow.listed.test.", id)).await });
    }
    while let Some(reply) = asks.join_next().await {
        assert_eq!(
            reply.unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }
    let counters = f.counters.values();
    assert_eq!(
        (counters.servfail, counters.overloaded),
        (2, 4),
        "{counters:?}"
    );
}

/// A small deterministic generator, so a failure replays.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_and_mangled_datagrams_never_stop_the_forwarder() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), Duration::ZERO).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let valid = query("fuzz.listed.test.", 0x4242);
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for i in 0..2_000 {
        let bytes: Vec<u8> = if i % 2 == 0 {
            (0..rng.next() % 300).map(|_| rng.next() as u8).collect()
        } else {
            // A valid query with a few bytes changed and maybe cut short.
            let mut bytes = valid.clone();
            for _ in 0..=rng.next() % 4 {
                let at = (rng.next() as usize) % bytes.len();
                bytes[at] = rng.next() as u8;
            }
            bytes.truncate(1 + (rng.next() as usize) % bytes.len());
            bytes
        };
        socket.send_to(&bytes, f.addr).await.unwrap();
    }
    // Every reply that comes back is a well-formed response.
    let mut buffer = vec![0u8; 65535];
    let mut replies = 0;
    while let Ok(Ok(len)) = timeout(Duration::from_millis(500), socket.recv(&mut buffer)).await {
        let reply = Message::from_vec(&buffer[..len]).expect("replies parse");
        assert_eq!(
            reply.metadata.message_type,
            hickory_proto::op::MessageType::Response
        );
        replies += 1;
    }
    assert!(replies > 0 && f.counters.values().malformed > 0);
    let reply = ask_udp(f.addr, &query("after.listed.test.", 1)).await;
    assert_eq!(
        (reply.metadata.id, reply.answers.len()),
        (1, 1),
        "still answering"
    );
}

#[test]
fn what_is_known_open_follows_ttl_grace_and_epoch() {
    let open = OpenAddresses::default();
    let t0 = Instant::now();
    let a: IpAddr = "192.0.2.1".parse().unwrap();
    let (min_ttl, grace) = (Duration::from_secs(30), Duration::from_mins(2));
    let chain = "q.listed.test";
    let check = |secs, ttl, epoch| {
        open.check(
            chain,
            &[(a, ttl)],
            t0 + Duration::from_secs(secs),
            epoch,
            min_ttl,
            grace,
        )
    };
    assert_eq!(check(0, 60, 0), Known::Unknown, "never confirmed");
    open.confirmed(chain, &[(a, 60)], t0, min_ttl, 0);
    assert_eq!(check(0, 60, 0), Known::Covered);
    assert_eq!(
        check(10, 50, 0),
        Known::Covered,
        "a cache counting the TTL down"
    );
    assert_eq!(
        check(10, 0, 0),
        Known::Covered,
        "a zero TTL counts as min_ttl: 40 ≤ 60"
    );
    assert_eq!(check(10, 60, 0), Known::Covered, "70 ≤ 60 + half the grace");
    assert_eq!(
        check(61, 60, 0),
        Known::OpenNow,
        "121 > 120: extend, for this answer's grace"
    );
    assert_eq!(
        check(177, 60, 0),
        Known::OpenNow,
        "open until 60 + 120, less the margin"
    );
    assert_eq!(
        check(178, 60, 0),
        Known::Unknown,
        "too close to the end to count on"
    );
    assert_eq!(check(1, 60, 1), Known::Unknown, "another epoch");
    assert_eq!(
        open.check(
            "q.listed.test other.cdn.test",
            &[(a, 60)],
            t0,
            0,
            min_ttl,
            grace
        ),
        Known::Unknown,
        "another chain may match other services"
    );
}
