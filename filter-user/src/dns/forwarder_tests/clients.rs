//! Whom the forwarder answers, and how much: sources it does not serve get nothing, a UDP reply
//! never exceeds the cap whatever the client claims, one client cannot hold every TCP slot.

use hickory_proto::op::Edns;

use super::*;

/// Waits a moment for a UDP reply from `server` to a query sent from `client`; `None` if none.
async fn reply_within(client: Ipv4Addr, server: SocketAddr, bytes: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind((client, 0)).await.unwrap();
    socket.send_to(bytes, server).await.unwrap();
    let mut buffer = vec![0u8; 65535];
    let len = timeout(Duration::from_millis(500), socket.recv(&mut buffer))
        .await
        .ok()?
        .unwrap();
    Some(buffer[..len].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_it_does_not_serve_gets_no_reply_at_all_and_is_counted() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), Duration::ZERO).await;
    f.served.send_replace(Arc::new(ServedClients::default()));
    let ask = query("a.listed.test.", 1);
    assert_eq!(reply_within(Ipv4Addr::LOCALHOST, f.addr, &ask).await, None);
    // Over TCP the connection closes before a byte is read.
    let mut stream = TcpStream::connect(f.addr).await.unwrap();
    let _ = stream.write_all(&frame(&ask).unwrap()).await;
    let mut byte = [0u8; 1];
    let read = timeout(Duration::from_secs(2), stream.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "closed unanswered: {read:?}"
    );
    let counters = f.counters.values();
    assert_eq!((counters.unserved, counters.queries), (2, 0));
    assert_eq!(upstream.queries.load(Ordering::SeqCst), 0, "nothing asked");
    // Served again (the guarded subnets were read anew): answered.
    f.served.send_replace(Arc::new(ServedClients::new([])));
    let reply = reply_within(Ipv4Addr::LOCALHOST, f.addr, &ask).await;
    assert!(reply.is_some(), "served once the set includes it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_claiming_65535_bytes_gets_a_truncated_reply_within_the_cap() {
    let upstream = stub().await;
    let f = forwarder(ForwarderConfig::new(upstream.addr, false), Duration::ZERO).await;
    let mut m = Message::new(
        7,
        hickory_proto::op::MessageType::Query,
        hickory_proto::op::OpCode::Query,
    );
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_str("huge.listed.test.").unwrap(),
        RecordType::A,
    ));
    let mut edns = Edns::new();
    edns.set_max_payload(u16::MAX);
    m.set_edns(edns);
    let ask = m.to_vec().unwrap();
    let reply = reply_within(Ipv4Addr::LOCALHOST, f.addr, &ask)
        .await
        .expect("a reply, not silence");
    assert!(
        reply.len() <= usize::from(message::MAX_UDP_REPLY),
        "{} bytes",
        reply.len()
    );
    let reply = Message::from_vec(&reply).unwrap();
    assert!(reply.metadata.truncation && reply.answers.is_empty());
    assert_eq!(f.counters.values().truncated, 1);
    // The retry over TCP gets it all.
    let full = ask_tcp(f.addr, &ask).await;
    assert_eq!((full.metadata.truncation, full.answers.len()), (false, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_holding_its_tcp_connections_does_not_shut_out_another() {
    let upstream = stub().await;
    let config = ForwarderConfig {
        max_tcp_per_client: 2,
        ..ForwarderConfig::new(upstream.addr, false)
    };
    let f = forwarder(config, Duration::ZERO).await;
    let connect_from = |client: Ipv4Addr| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((client, 0).into()).unwrap();
        socket.connect(f.addr).await.unwrap()
    };
    // Two connections held open, silent.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(connect_from(Ipv4Addr::LOCALHOST).await);
    }
    // Let the forwarder take both before the third arrives.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut third = connect_from(Ipv4Addr::LOCALHOST).await;
    let _ = third
        .write_all(&frame(&query("a.listed.test.", 1)).unwrap())
        .await;
    let mut byte = [0u8; 1];
    let read = timeout(Duration::from_secs(2), third.read(&mut byte)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "the third is closed: {read:?}"
    );
    assert_eq!(f.counters.values().tcp_client_limited, 1);
    // Another client is served over TCP meanwhile.
    let mut other = connect_from(Ipv4Addr::new(127, 0, 0, 2)).await;
    other
        .write_all(&frame(&query("b.listed.test.", 2)).unwrap())
        .await
        .unwrap();
    let len = timeout(Duration::from_secs(2), other.read_u16())
        .await
        .expect("answered in time")
        .unwrap();
    let mut reply = vec![0u8; usize::from(len)];
    other.read_exact(&mut reply).await.unwrap();
    assert_eq!(Message::from_vec(&reply).unwrap().answers.len(), 1);
    // Closing one gives its place back.
    drop(held.pop());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut again = connect_from(Ipv4Addr::LOCALHOST).await;
    again
        .write_all(&frame(&query("c.listed.test.", 3)).unwrap())
        .await
        .unwrap();
    let answered = timeout(Duration::from_secs(2), again.read_u16()).await;
    assert!(matches!(answered, Ok(Ok(_))), "{answered:?}");
}
