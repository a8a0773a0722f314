//! The guards against forged answers and floods: merged questions, 0x20, bounds, garbage.

use super::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_at_its_bound_gets_through_once_its_oldest_query_has_waited_long_enough() {
    // The upstream stopped answering: the client's queries pile up to its bound and stay.
    let upstream = stub().await;
    let config = ForwarderConfig {
        upstream_timeout: Duration::from_secs(5),
        max_queries_per_client: 2,
        displace_after: Some(Duration::from_millis(400)),
        ..ForwarderConfig::new(upstream.addr, false)
    };
    let f = forwarder(config, Duration::ZERO).await;
    let mut stranded = JoinSet::new();
    for id in 0..2 {
        let name = format!("slow{id}.listed.test.");
        stranded.spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            socket.send_to(&query(&name, id), f.addr).await.unwrap();
            let mut buffer = vec![0u8; 1500];
            timeout(Duration::from_secs(3), socket.recv(&mut buffer))
                .await
                .is_ok()
        });
    }
    while upstream.queries.load(Ordering::SeqCst) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let reply = ask_udp(f.addr, &query("early.listed.test.", 3)).await;
    assert_eq!(
        reply.metadata.response_code,
        ResponseCode::ServFail,
        "before the oldest has waited long enough, the bound holds"
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    // The upstream is back for other names: the client's new question gets its answer.
    let reply = ask_udp(f.addr, &query("back.listed.test.", 4)).await;
    assert_eq!(
        (reply.metadata.response_code, reply.answers.len()),
        (ResponseCode::NoError, 1),
        "the new query took the oldest's place"
    );
    let counters = f.counters.values();
    assert_eq!((counters.client_limited, counters.displaced), (1, 1));
    let mut replied = 0;
    while let Some(got_reply) = stranded.join_next().await {
        replied += usize::from(got_reply.unwrap());
    }
    assert_eq!(
        replied, 0,
        "the displaced query goes unanswered (a stub retries under the same ID), the other \
         still waits on the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_whose_first_asker_is_displaced_is_still_answered_to_those_who_joined_it() {
    let upstream = stub().await;
    let config = ForwarderConfig {
        max_queries_per_client: 1,
        displace_after: Some(Duration::from_millis(200)),
        ..ForwarderConfig::new(upstream.addr, false)
    };
    let f = forwarder(config, Duration::ZERO).await;
    // 127.0.0.1 asks first (its query drives the upstream query, answered after STUB_DELAY);
    // 127.0.0.2 asks the same and joins it.
    let first = tokio::spawn(reply_within_udp(
        Ipv4Addr::LOCALHOST,
        f.addr,
        query("delay.listed.test.", 1),
    ));
    while upstream.queries.load(Ordering::SeqCst) < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let joined = tokio::spawn(async move {
        ask_udp_from(
            Ipv4Addr::new(127, 0, 0, 2),
            f.addr,
            &query("delay.listed.test.", 2),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(250)).await;
    // 127.0.0.1 at its bound of one, its query older than 200 ms: the new one displaces it.
    let other = ask_udp(f.addr, &query("other.listed.test.", 3)).await;
    assert_eq!(other.metadata.response_code, ResponseCode::NoError);
    assert_eq!(f.counters.values().displaced, 1);
    let joined = joined.await.unwrap();
    assert_eq!(
        (joined.metadata.response_code, joined.answers.len()),
        (ResponseCode::NoError, 1),
        "the client that joined gets the answer the displaced query had asked for"
    );
    assert!(
        first.await.unwrap().is_none(),
        "the displaced query gets no reply"
    );
    assert_eq!(
        upstream.queries.load(Ordering::SeqCst),
        2,
        "delay once, other once"
    );
    assert_eq!(f.learned.lock().unwrap().len(), 2, "both answers opened");
}

/// The reply `client` gets to `bytes` within a second, if any.
async fn reply_within_udp(client: Ipv4Addr, server: SocketAddr, bytes: Vec<u8>) -> Option<Message> {
    let socket = UdpSocket::bind((client, 0)).await.unwrap();
    socket.send_to(&bytes, server).await.unwrap();
    let mut buffer = vec![0u8; 1500];
    let len = timeout(Duration::from_secs(1), socket.recv(&mut buffer))
        .await
        .ok()?
        .ok()?;
    Message::from_vec(&buffer[..len]).ok()
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
