//! What clients get back, and random answers through all of it.

use proptest::prelude::*;

use super::*;

#[test]
fn malformed_queries_get_formerr_with_their_id_and_non_queries_nothing() {
    let mut bytes = query_bytes("a.example.com.", RecordType::A, 0xbeef);
    bytes.truncate(bytes.len() - 3);
    let Incoming::Reply(reply) = read_query(&bytes) else {
        panic!("a reply")
    };
    let reply = Message::from_vec(&reply).unwrap();
    assert_eq!(
        (reply.metadata.id, reply.metadata.response_code),
        (0xbeef, ResponseCode::FormErr)
    );
    assert!(
        matches!(read_query(&[0xbe, 0xef, 1]), Incoming::Ignore),
        "no header, no reply"
    );
    let q = client_query("a.example.com.");
    let response = answer_to(&UpstreamQuery::new(&q.question()), vec![])
        .to_vec()
        .unwrap();
    assert!(matches!(read_query(&response), Incoming::Ignore));
}

#[test]
fn other_opcodes_get_notimp_and_several_questions_formerr() {
    let mut m = Message::new(5, MessageType::Query, OpCode::Status);
    m.add_query(Query::query(
        Name::from_str("a.example.com.").unwrap(),
        RecordType::A,
    ));
    let Incoming::Reply(reply) = read_query(&m.to_vec().unwrap()) else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::NotImp
    );
    let mut m = query_message("a.example.com.", RecordType::A, 5);
    m.add_query(Query::query(
        Name::from_str("b.example.com.").unwrap(),
        RecordType::A,
    ));
    let Incoming::Reply(reply) = read_query(&m.to_vec().unwrap()) else {
        panic!()
    };
    assert_eq!(
        Message::from_vec(&reply).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );
}

#[test]
fn an_answer_too_big_for_udp_is_truncated_for_a_retry_over_tcp() {
    let q = client_query("big.example.com.");
    let records: Vec<Record> = (0..40u8)
        .map(|i| {
            a(
                "big.example.com.",
                60,
                &Ipv4Addr::new(192, 0, 2, i).to_string(),
            )
        })
        .chain((0..10).map(|_| {
            record(
                "big.example.com.",
                60,
                RData::TXT(TXT::new(vec!["x".repeat(200)])),
            )
        }))
        .collect();
    let answer = answer_to(&UpstreamQuery::new(&q.question()), records);
    let reply = Message::from_vec(&q.reply(&answer, q.udp_limit(), 0).unwrap().bytes).unwrap();
    assert!(reply.metadata.truncation && reply.answers.is_empty());
    assert_eq!(reply.queries, q.message.queries);
    let full =
        Message::from_vec(&q.reply(&answer, usize::from(u16::MAX), 0).unwrap().bytes).unwrap();
    assert!(
        !full.metadata.truncation && full.answers.len() == 50,
        "over TCP it all goes"
    );
}

#[test]
fn a_client_claiming_a_huge_edns_size_gets_at_most_the_cap_over_udp_truncated() {
    let mut m = query_message("big.example.com.", RecordType::A, 9);
    let mut edns = Edns::new();
    edns.set_max_payload(u16::MAX);
    m.set_edns(edns);
    let q = read(&m);
    assert_eq!(q.udp_limit(), usize::from(MAX_UDP_REPLY));
    // 4,000 addresses: about 64 KB, the answer that once got no UDP reply at all.
    let records: Vec<Record> = (0..4000u32)
        .map(|i| {
            let [_, _, x, y] = i.to_be_bytes();
            a(
                "big.example.com.",
                60,
                &Ipv4Addr::new(10, 78, x, y).to_string(),
            )
        })
        .collect();
    let answer = answer_to(&UpstreamQuery::new(&q.question()), records);
    let reply = q.reply(&answer, q.udp_limit(), 0).unwrap();
    assert!(reply.truncated);
    assert!(
        reply.bytes.len() <= usize::from(MAX_UDP_REPLY),
        "{}",
        reply.bytes.len()
    );
    let parsed = Message::from_vec(&reply.bytes).unwrap();
    assert!(parsed.metadata.truncation && parsed.answers.is_empty());
    assert_eq!(parsed.metadata.id, 9);
    let small = answer_to(
        &UpstreamQuery::new(&q.question()),
        vec![a("big.example.com.", 60, "192.0.2.1")],
    );
    assert!(
        !q.reply(&small, q.udp_limit(), 0).unwrap().truncated,
        "what fits goes whole"
    );
    assert_eq!(
        client_query("a.example.com.").udp_limit(),
        512,
        "no EDNS: 512"
    );
}

#[test]
fn ttls_passed_on_are_capped_like_the_learned_entries() {
    let q = client_query("a.example.com.");
    let answer = answer_to(
        &UpstreamQuery::new(&q.question()),
        vec![
            a("a.example.com.", 7 * 86_400, "192.0.2.1"),
            a("a.example.com.", u32::MAX, "192.0.2.2"),
            a("a.example.com.", 300, "192.0.2.3"),
        ],
    );
    let reply = Message::from_vec(&q.reply(&answer, 512, 0).unwrap().bytes).unwrap();
    let ttls: Vec<u32> = reply.answers.iter().map(|r| r.ttl).collect();
    assert_eq!(ttls, [86_400, 0, 300]);
}

#[test]
fn nxdomain_and_servfail_echo_the_question() {
    let q = client_query("tracker.example.net.");
    for (bytes, code) in [
        (q.nxdomain(), ResponseCode::NXDomain),
        (q.servfail(), ResponseCode::ServFail),
    ] {
        let m = Message::from_vec(&bytes).unwrap();
        assert_eq!((m.metadata.id, m.metadata.response_code), (7, code));
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.queries, q.message.queries);
    }
}

fn arb_name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9][a-zA-Z0-9-]{0,11}", 1..5)
        .prop_map(|labels| format!("{}.", labels.join(".")))
}

fn arb_record(names: Vec<String>) -> impl Strategy<Value = Record> {
    let pick = prop::sample::select(names);
    (
        pick.clone(),
        pick,
        any::<u32>(),
        any::<[u8; 4]>(),
        any::<[u8; 16]>(),
        0..3u8,
        prop::sample::select(vec![DNSClass::IN, DNSClass::IN, DNSClass::CH]),
    )
        .prop_map(|(owner, target, ttl, v4, v6, kind, class)| {
            let data = match kind {
                0 => RData::A(A(v4.into())),
                1 => RData::AAAA(AAAA(v6.into())),
                _ => RData::CNAME(CNAME(Name::from_str(&target).unwrap())),
            };
            in_class(record(&owner, ttl, data), class)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Random bytes never panic; whatever comes back is a well-formed reply with the ID the
    /// bytes carried.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        match read_query(&bytes) {
            Incoming::Reply(reply) => {
                let reply = Message::from_vec(&reply).unwrap();
                prop_assert_eq!(reply.metadata.message_type, MessageType::Response);
                prop_assert_eq!(reply.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]));
            }
            Incoming::Query(q) => {
                let sent = UpstreamQuery::new(&q.question());
                let _ = sent.to_bytes();
                let _ = q.reply(&answer_to(&sent, vec![]), 512, 0);
            }
            Incoming::Ignore => {}
        }
    }

    /// Well-formed answers: every learned address is of the asked type and class IN, owned
    /// by the last name of the chain; the chain starts at the question and never repeats;
    /// the reply round-trips.
    #[test]
    fn random_answers_teach_only_the_end_of_the_chain(
        names in prop::collection::vec(arb_name(), 1..6)
            .prop_flat_map(|names| (Just(names.clone()), prop::collection::vec(arb_record(names), 0..12))),
        asked in prop::sample::select(vec![RecordType::A, RecordType::AAAA]),
    ) {
        let (names, records) = names;
        let q = client_query_of(&names[0], asked);
        let question = q.question();
        let sent = UpstreamQuery::new(&question);
        let answer = answer_to(&sent, records.clone());
        let checked = sent.check_answer(&answer.to_vec().unwrap()).unwrap();
        let learned = learnable(&question, &checked);
        prop_assert_eq!(&learned.chain[0], &q.name);
        let unique: BTreeSet<&String> = learned.chain.iter().collect();
        prop_assert_eq!(unique.len(), learned.chain.len());
        let end = learned.chain.last().unwrap();
        for (address, ttl) in &learned.addresses {
            let answers_the_question = records.iter().any(|r| {
                owner(r) == *end && r.dns_class == DNSClass::IN && r.ttl == *ttl
                    && r.record_type() == asked
                    && match &r.data {
                        RData::A(a) => IpAddr::V4(a.0) == *address,
                        RData::AAAA(a) => IpAddr::V6(a.0) == *address,
                        _ => false,
                    }
            });
            prop_assert!(answers_the_question, "{} does not answer {:?} for {}", address, asked, end);
        }
        let reply = Message::from_vec(&q.reply(&checked, usize::from(u16::MAX), 0).unwrap().bytes).unwrap();
        prop_assert_eq!(reply.metadata.id, 7);
        prop_assert_eq!(reply.answers.len(), records.len());
    }
}
