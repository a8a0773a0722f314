//! What answers teach, and when the client gets them.

use super::*;

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
