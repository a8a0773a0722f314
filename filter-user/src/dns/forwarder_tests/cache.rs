//! Kept answers: given again only while their TTL lasts, under the same rules and epoch, with
//! their addresses known open; never after a stray datagram on their socket.

use super::*;

/// A config whose answers to rules' names can come from the cache: with a grace period, a
/// confirmed entry outlasts the TTL the client is given (see `OpenAddresses::check`).
fn with_grace(upstream: SocketAddr) -> ForwarderConfig {
    ForwarderConfig {
        grace: Duration::from_mins(1),
        ..ForwarderConfig::new(upstream, false)
    }
}

fn ttl(reply: &Message) -> u32 {
    reply.answers[0].ttl
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_question_asked_again_is_answered_from_the_cache_with_its_ttl_counted_down() {
    let upstream = stub().await;
    let f = forwarder(with_grace(upstream.addr), Duration::ZERO).await;
    let first = ask_udp(f.addr, &query("again.listed.test.", 1)).await;
    assert_eq!(ttl(&first), 60);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let second = ask_udp(f.addr, &query("AGAIN.listed.test.", 2)).await;
    assert_eq!(second.metadata.id, 2, "under the client's own ID");
    assert!(
        second.queries[0]
            .name()
            .eq_case(&Name::from_str("AGAIN.listed.test.").unwrap()),
        "and its own spelling of the question"
    );
    assert_eq!(second.answers[0].data, first.answers[0].data);
    assert_eq!(ttl(&second), 59, "a second less to live");
    assert_eq!(
        upstream.queries.load(Ordering::SeqCst),
        1,
        "asked upstream once"
    );
    let counters = f.counters.values();
    assert_eq!(
        (counters.queries, counters.forwarded, counters.cached),
        (2, 1, 1)
    );
    assert_eq!(f.learned.lock().unwrap().len(), 1, "the daemon heard once");

    let unlisted = ask_udp(f.addr, &query("other.test.", 3)).await;
    let again = ask_udp(f.addr, &query("other.test.", 4)).await;
    assert_eq!(
        unlisted.answers, again.answers,
        "names no rule lists are kept too"
    );
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_epoch_moves_the_question_is_forwarded_and_its_addresses_opened_again() {
    let upstream = stub().await;
    let f = forwarder(with_grace(upstream.addr), Duration::ZERO).await;
    ask_udp(f.addr, &query("evicted.listed.test.", 1)).await;
    // The daemon evicted or dropped something learned: nothing remembered is to be counted on.
    f.epoch.fetch_add(1, Ordering::Release);
    ask_udp(f.addr, &query("evicted.listed.test.", 2)).await;
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 2);
    assert_eq!(
        f.learned.lock().unwrap().len(),
        2,
        "the daemon confirmed the addresses again before the answer"
    );
    assert_eq!(f.counters.values().cached, 0);
    // Kept again under the new epoch.
    ask_udp(f.addr, &query("evicted.listed.test.", 3)).await;
    assert_eq!(f.counters.values().cached, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_whose_addresses_were_never_confirmed_open_is_not_given_from_the_cache() {
    let upstream = stub().await;
    // The daemon confirms after the forwarder stopped waiting: the answer went late, and its
    // addresses are not known open.
    let f = forwarder(
        with_grace(upstream.addr),
        LEARN_TIMEOUT + Duration::from_millis(300),
    )
    .await;
    ask_udp(f.addr, &query("late.listed.test.", 1)).await;
    assert_eq!(f.counters.values().late, 1);
    ask_udp(f.addr, &query("late.listed.test.", 2)).await;
    assert_eq!(
        upstream.queries.load(Ordering::SeqCst),
        2,
        "forwarded again"
    );
    assert_eq!(f.counters.values().cached, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_came_on_a_socket_a_stray_datagram_reached_is_not_kept() {
    let upstream = stub().await;
    let f = forwarder(with_grace(upstream.addr), Duration::ZERO).await;
    // The stub sends a datagram under another ID before each `spoof` answer.
    let first = ask_udp(f.addr, &query("spoof.example.net.", 1)).await;
    assert_eq!(first.answers.len(), 1);
    ask_udp(f.addr, &query("spoof.example.net.", 2)).await;
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 2);
    assert_eq!(f.counters.values().cached, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_truncations_and_a_cache_of_zero_keep_nothing() {
    let upstream = stub().await;
    let config = ForwarderConfig {
        upstream_timeout: Duration::from_millis(300),
        ..with_grace(upstream.addr)
    };
    let f = forwarder(config, Duration::ZERO).await;
    for id in 1..=2 {
        // Truncated over UDP, fetched over TCP: kept, as the TCP answer is whole.
        let reply = ask_tcp(f.addr, &query("big.example.net.", id)).await;
        assert_eq!(reply.answers.len(), 40);
    }
    assert_eq!(f.counters.values().cached, 1);
    for id in 3..=4 {
        let reply = ask_udp(f.addr, &query("slow.example.net.", id)).await;
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
    }
    assert_eq!(f.counters.values().cached, 1, "a failure is not kept");

    let off = forwarder(
        ForwarderConfig {
            cache_entries: 0,
            ..with_grace(upstream.addr)
        },
        Duration::ZERO,
    )
    .await;
    let before = upstream.queries.load(Ordering::SeqCst);
    for id in 1..=2 {
        ask_udp(off.addr, &query("nocache.example.net.", id)).await;
    }
    assert_eq!(upstream.queries.load(Ordering::SeqCst), before + 2);
    assert_eq!(off.counters.values().cached, 0);
}
