//! The forwarder on real loopback sockets against a stub upstream built with hickory-proto:
//! ordering (learned before answered), TCP fallback, stray and forged answers, what answers
//! teach, merged questions, 0x20, timeouts and bounds, and random datagrams. No root needed.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    str::FromStr as _,
    sync::{atomic::AtomicUsize, Mutex},
    time::Instant,
};

use hickory_proto::{
    op::{Query, ResponseCode},
    rr::{
        rdata::{A, CNAME},
        DNSClass, Name, RData, Record, RecordType,
    },
};

use super::*;
use crate::{dns::counters::DnsCounterValues, rules::Rules};

/// What the stub upstream does, by the question's first label (in any case): `slow…` never
/// answers, `delay…` answers after [`STUB_DELAY`], `big` comes back truncated over UDP and as
/// 40 addresses over TCP, `spoof` is preceded by an answer under the wrong ID, `lower…` echoes
/// the question in lower case; the labels of [`attack_records`] answer with records that do not
/// answer the question. Everything else is 192.0.2.1 with TTL 60, owned by the question.
struct Stub {
    addr: SocketAddr,
    queries: Arc<AtomicUsize>,
    /// The question names as they arrived, in their case.
    asked: Arc<Mutex<Vec<Name>>>,
}

const STUB_DELAY: Duration = Duration::from_millis(500);

/// An address no answer in these tests may teach: only ever in records that do not answer.
const FORGED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 66);

fn first_label(query: &Message) -> String {
    query.queries[0]
        .name()
        .iter()
        .next()
        .map(|label| String::from_utf8_lossy(label).to_ascii_lowercase())
        .unwrap_or_default()
}

fn owned_by(name: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(Name::from_str(name).unwrap(), ttl, data)
}

fn a_record(name: &str, address: Ipv4Addr) -> Record {
    owned_by(name, 60, RData::A(A(address)))
}

fn cname_record(name: &str, target: &str) -> Record {
    owned_by(
        name,
        60,
        RData::CNAME(CNAME(Name::from_str(target).unwrap())),
    )
}

/// The answers to questions named `<label>.example.net` or `<label>.listed.test` that must
/// teach nothing but the end of a proper chain, if any.
fn attack_records(label: &str, question: &Name) -> Option<Vec<Record>> {
    let q = &question.to_ascii();
    Some(match label {
        // Whatever the question's type: an A for its name.
        "wrongtype" => vec![a_record(q, FORGED)],
        "chaos" => {
            let mut record = a_record(q, FORGED);
            record.dns_class = DNSClass::CH;
            vec![record]
        }
        "beside" => vec![
            cname_record(q, "edge.listed.test."),
            a_record(q, FORGED),
            a_record("edge.listed.test.", Ipv4Addr::new(203, 0, 113, 1)),
        ],
        "midchain" => vec![
            cname_record(q, "mid.listed.test."),
            cname_record("mid.listed.test.", "end.example.net."),
            a_record("mid.listed.test.", FORGED),
            a_record("end.example.net.", Ipv4Addr::new(203, 0, 113, 2)),
        ],
        _ => return None,
    })
}

fn stub_answer(query: &Message, full: bool) -> Message {
    let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
    answer.add_queries(query.queries.iter().cloned());
    let name = query.queries[0].name().clone();
    let label = first_label(query);
    if let Some(records) = attack_records(&label, &name) {
        answer.add_answers(records);
        return answer;
    }
    let count = if full && label == "big" { 40 } else { 1 };
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
    let asked: Arc<Mutex<Vec<Name>>> = Arc::default();
    let (counted, recorded) = (Arc::clone(&queries), Arc::clone(&asked));
    tokio::spawn(async move {
        let mut buffer = vec![0u8; 4096];
        loop {
            let (len, from) = udp.recv_from(&mut buffer).await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            let query = Message::from_vec(&buffer[..len]).unwrap();
            recorded
                .lock()
                .unwrap()
                .push(query.queries[0].name().clone());
            let udp = Arc::clone(&udp);
            tokio::spawn(async move {
                let mut answer = stub_answer(&query, false);
                let label = first_label(&query);
                match label.as_str() {
                    _ if label.starts_with("slow") => return,
                    _ if label.starts_with("delay") => tokio::time::sleep(STUB_DELAY).await,
                    _ if label.starts_with("lower") => {
                        let lowered = answer.queries[0].name().to_lowercase();
                        answer.queries[0].set_name(lowered);
                    }
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
            });
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
    Stub {
        addr,
        queries,
        asked,
    }
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

/// A forwarder for `*.listed.test` and `*.wild.example.net`, whose "daemon" takes `ack_delay` to
/// confirm each learning.
async fn forwarder(config: ForwarderConfig, ack_delay: Duration) -> Harness {
    let rules = Rules::parse_sources(&[(
        Path::new("t.toml"),
        "[[service]]\nname = \"listed\"\nhosts = [\"*.listed.test\", \"*.wild.example.net\"]\ntcp = [443]\n",
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
    query_of(name, RecordType::A, id)
}

fn query_of(name: &str, kind: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new(
        id,
        hickory_proto::op::MessageType::Query,
        hickory_proto::op::OpCode::Query,
    );
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), kind));
    m.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, bytes: &[u8]) -> Message {
    ask_udp_from(Ipv4Addr::LOCALHOST, server, bytes).await
}

/// Asks from `client`, any loopback address (all of 127/8 is on `lo`).
async fn ask_udp_from(client: Ipv4Addr, server: SocketAddr, bytes: &[u8]) -> Message {
    let socket = UdpSocket::bind((client, 0)).await.unwrap();
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
    let f = forwarder(
        ForwarderConfig::new(upstream.addr, false),
        Duration::from_millis(300),
    )
    .await;
    // Ordered by events, not by a stopwatch: when the client had each answer, against when
    // the daemon confirmed the learning that answer asked for.
    let answered = |id| async move {
        ask_udp(f.addr, &query("again.listed.test.", id)).await;
        Instant::now()
    };
    let confirmed = |n: usize| {
        let learned = Arc::clone(&f.learned);
        async move {
            for _ in 0..500 {
                if let Some((_, at)) = learned.lock().unwrap().get(n) {
                    return *at;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("the daemon never heard of answer {n}");
        }
    };
    let first = answered(1).await;
    assert!(
        confirmed(0).await <= first,
        "the first answer waits for the daemon"
    );
    let second = answered(2).await;
    assert!(
        second < confirmed(1).await,
        "the second does not (the address is open for 60 s), though the daemon still hears of it \
         to extend the entry"
    );
    assert_eq!(f.counters.values().already_open, 1);
    f.epoch.fetch_add(1, Ordering::Release);
    let third = answered(3).await;
    assert!(
        confirmed(2).await <= third,
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
        let name = format!("slow{id}.listed.test.");
        asks.spawn(async move { ask_udp(f.addr, &query(&name, id)).await });
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
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 2);
}

/// Every address the daemon was asked to open.
fn learned_addresses(f: &Harness) -> Vec<IpAddr> {
    f.learned
        .lock()
        .unwrap()
        .iter()
        .flat_map(|(learnable, _)| learnable.addresses.iter().map(|(a, _)| *a))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_do_not_answer_the_question_open_nothing() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), Duration::ZERO).await;
    for (what, name, kind, answers) in [
        (
            "an A answering TXT",
            "wrongtype.listed.test.",
            RecordType::TXT,
            1,
        ),
        (
            "an A answering AAAA",
            "wrongtype.listed.test.",
            RecordType::AAAA,
            1,
        ),
        (
            "an A of class CHAOS",
            "chaos.listed.test.",
            RecordType::A,
            1,
        ),
        (
            "an A for the question beside its CNAME to a listed name",
            "beside.example.net.",
            RecordType::A,
            3,
        ),
        (
            "an A for a listed name mid-chain",
            "midchain.example.net.",
            RecordType::A,
            4,
        ),
    ] {
        let reply = ask_udp(f.addr, &query_of(name, kind, 3)).await;
        assert_eq!(
            (reply.metadata.response_code, reply.answers.len()),
            (ResponseCode::NoError, answers),
            "{what}: the client still gets the answer as it came"
        );
        let learned = learned_addresses(&f);
        assert!(
            !learned.contains(&IpAddr::V4(FORGED)),
            "{what}: {learned:?}"
        );
    }
    assert_eq!(
        learned_addresses(&f),
        [Ipv4Addr::new(203, 0, 113, 1), Ipv4Addr::new(203, 0, 113, 2)],
        "only the ends of the chains, which do answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_inside_a_label_does_not_reach_a_wildcard() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), Duration::ZERO).await;
    // One label, `e7.wild`, under example.net: not below wild.example.net.
    let reply = ask_udp(f.addr, &query("e7\\.wild.example.net.", 4)).await;
    assert_eq!(reply.answers.len(), 1, "forwarded and answered");
    assert!(f.learned.lock().unwrap().is_empty());
    assert_eq!(f.counters.values().matched, 0);
    ask_udp(f.addr, &query("e7.wild.example.net.", 5)).await;
    assert_eq!(
        f.learned.lock().unwrap()[0].0.chain,
        ["e7.wild.example.net"],
        "while two labels do match"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_questions_in_flight_share_one_upstream_query() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), Duration::ZERO).await;
    let spellings = [
        "delay.listed.test.",
        "DELAY.listed.test.",
        "Delay.Listed.Test.",
        "dElAy.lIsTeD.tEsT.",
    ];
    let mut asks = JoinSet::new();
    for (id, spelling) in (100u16..).zip(spellings) {
        asks.spawn(async move {
            let reply = ask_udp(f.addr, &query(spelling, id)).await;
            (id, spelling, reply)
        });
    }
    while let Some(asked) = asks.join_next().await {
        let (id, spelling, reply) = asked.unwrap();
        assert_eq!(reply.metadata.id, id, "each client under its own ID");
        assert!(
            reply.queries[0]
                .name()
                .eq_case(&Name::from_str(spelling).unwrap()),
            "and its own spelling: {} for {spelling}",
            reply.queries[0].name()
        );
        assert_eq!(reply.answers.len(), 1);
    }
    assert_eq!(
        upstream.queries.load(Ordering::SeqCst),
        1,
        "one upstream query"
    );
    assert_eq!(f.counters.values().merged, 3);
    assert_eq!(f.learned.lock().unwrap().len(), 1, "learned once");
    ask_udp(f.addr, &query("delay.listed.test.", 9)).await;
    assert_eq!(
        upstream.queries.load(Ordering::SeqCst),
        2,
        "once answered, the question is asked afresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_queries_spell_the_question_in_random_case() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), Duration::ZERO).await;
    let asked = Name::from_str("zeroxtwentyspelling.listed.test.").unwrap();
    for id in 0..8 {
        let reply = ask_udp(f.addr, &query("zeroxtwentyspelling.listed.test.", id)).await;
        assert!(
            reply.queries[0].name().eq_case(&asked),
            "the client's own spelling"
        );
    }
    let spellings: Vec<String> = upstream
        .asked
        .lock()
        .unwrap()
        .iter()
        .map(|name| {
            assert!(name.eq_ignore_root(&asked));
            name.to_ascii()
        })
        .collect();
    assert_eq!(spellings.len(), 8);
    let distinct: std::collections::BTreeSet<&String> = spellings.iter().collect();
    assert!(
        distinct.len() > 1
            && spellings
                .iter()
                .any(|s| s.chars().any(|c| c.is_ascii_uppercase())),
        "a random case per query: {spellings:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_does_not_echo_the_case_of_the_question_is_not_taken() {
    let upstream = stub().await;
    let config = ForwarderConfig {
        upstream_timeout: Duration::from_millis(300),
        ..ForwarderConfig::new(upstream.addr, false)
    };
    let f = forwarder(config, Duration::ZERO).await;
    let started = Instant::now();
    // 37 letters: the chance that the random case is all lower (and passes) is 2^-37.
    let reply = ask_udp(
        f.addr,
        &query("lowercasedanswersarerefusedhere.listed.test.", 1),
    )
    .await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "waited for the real answer"
    );
    assert!(f.learned.lock().unwrap().is_empty());
    let counters = f.counters.values();
    assert_eq!((counters.mismatched, counters.servfail), (1, 1));
    let reply = ask_udp(f.addr, &query("echoedexactly.listed.test.", 2)).await;
    assert_eq!(
        (reply.metadata.response_code, reply.answers.len()),
        (ResponseCode::NoError, 1),
        "an exact echo is taken"
    );
    assert_eq!(f.counters.values().mismatched, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_past_its_bound_gets_servfail_at_once_while_others_are_served() {
    let upstream = stub().await;
    let config = ForwarderConfig {
        upstream_timeout: Duration::from_secs(2),
        max_queries_per_client: 2,
        ..ForwarderConfig::new(upstream.addr, false)
    };
    let f = forwarder(config, Duration::ZERO).await;
    let mut waiting = JoinSet::new();
    for id in 0..2 {
        let name = format!("slow{id}.listed.test.");
        waiting.spawn(async move { ask_udp(f.addr, &query(&name, id)).await });
    }
    while upstream.queries.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = ask_udp(f.addr, &query("third.listed.test.", 3)).await;
    assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    assert!(
        waiting.try_join_next().is_none(),
        "at once: before either of the client's queries in flight was answered"
    );
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let reply = ask_udp_from(other, f.addr, &query("other.listed.test.", 4)).await;
    assert_eq!(
        (reply.metadata.response_code, reply.answers.len()),
        (ResponseCode::NoError, 1),
        "another client is served"
    );
    let counters = f.counters.values();
    assert_eq!((counters.client_limited, counters.overloaded), (1, 0));
    while let Some(reply) = waiting.join_next().await {
        assert_eq!(
            reply.unwrap().metadata.response_code,
            ResponseCode::ServFail
        );
    }
    let reply = ask_udp(f.addr, &query("again.listed.test.", 5)).await;
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::NoError,
        "its places are given back"
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

#[tokio::test]
async fn a_query_that_ends_without_an_answer_fails_its_clients_and_the_next_asks_afresh() {
    let Incoming::Query(client) = message::read_query(&query("a.listed.test.", 1)) else {
        panic!("a query")
    };
    let (pending, question) = (Arc::new(Pending::default()), client.question());
    let Joined::First(first, asking) = pending.join(&question) else {
        panic!("the first asks")
    };
    let Joined::Merged(second) = pending.join(&question) else {
        panic!("the second waits")
    };
    // As when the asking task panics.
    drop(asking);
    assert!(first.await.unwrap().is_none() && second.await.unwrap().is_none());
    assert!(matches!(pending.join(&question), Joined::First(..)));
}

#[test]
fn counters_from_an_older_state_file_read_as_zero() {
    let older = r#"{"queries": 5, "matched": 1, "refused": 0, "malformed": 0, "servfail": 2,
        "overloaded": 0, "tcp_retries": 0, "mismatched": 3, "late": 0}"#;
    let values: DnsCounterValues = serde_json::from_str(older).unwrap();
    assert_eq!(
        (
            values.queries,
            values.mismatched,
            values.client_limited,
            values.merged
        ),
        (5, 3, 0, 0)
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
