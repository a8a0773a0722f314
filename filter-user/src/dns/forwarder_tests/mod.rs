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
/// answers, `delay…` answers after [`STUB_DELAY`], `big` and `huge` come back truncated over
/// UDP and as 40 and 200 addresses over TCP, `spoof` is preceded by an answer under the wrong ID, `lower…` echoes
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
    let count = match label.as_str() {
        "big" if full => 40,
        // Past the 1,232 bytes any client gets over UDP, whatever EDNS size it claims.
        "huge" if full => 200,
        _ => 1,
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
                    "big" | "huge" => {
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
    /// Whom the forwarder answers; tests narrow it.
    served: watch::Sender<Arc<ServedClients>>,
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
    // Loopback only: the tests' clients, 127.0.0.1 and 127.0.0.2, are the host itself.
    let (served, served_rx) = watch::channel(Arc::new(ServedClients::new([])));
    let tasks = listeners.serve(
        config,
        Shared {
            matcher: matcher_rx,
            served: served_rx,
            learn: learn_tx,
            counters: Arc::clone(&counters),
            epoch: Arc::clone(&epoch),
            seen: Arc::default(),
        },
    );
    Harness {
        addr,
        counters,
        epoch,
        learned,
        served,
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

mod cache;
mod clients;
mod guards;
mod learning;
