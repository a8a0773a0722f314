//! Tests of `message`: what a query, an answer and a reply must look like.

use std::{net::Ipv4Addr, str::FromStr as _};

use hickory_proto::rr::{
    rdata::{A, AAAA, CNAME, TXT},
    Record,
};
use proptest::prelude::*;

use super::*;

fn query_message(name: &str, kind: RecordType, id: u16) -> Message {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_str(name).unwrap(), kind));
    m
}

fn query_bytes(name: &str, kind: RecordType, id: u16) -> Vec<u8> {
    query_message(name, kind, id).to_vec().unwrap()
}

fn read(message: &Message) -> ClientQuery {
    match read_query(&message.to_vec().unwrap()) {
        Incoming::Query(q) => q,
        other => panic!("{other:?}"),
    }
}

fn client_query_of(name: &str, kind: RecordType) -> ClientQuery {
    read(&query_message(name, kind, 7))
}

fn client_query(name: &str) -> ClientQuery {
    client_query_of(name, RecordType::A)
}

fn record(owner: &str, ttl: u32, data: RData) -> Record {
    Record::from_rdata(Name::from_str(owner).unwrap(), ttl, data)
}

fn cname(owner: &str, target: &str) -> Record {
    record(
        owner,
        60,
        RData::CNAME(CNAME(Name::from_str(target).unwrap())),
    )
}

fn a(owner: &str, ttl: u32, addr: &str) -> Record {
    record(owner, ttl, RData::A(A(addr.parse().unwrap())))
}

fn aaaa(owner: &str, ttl: u32, addr: &str) -> Record {
    record(owner, ttl, RData::AAAA(AAAA(addr.parse().unwrap())))
}

fn in_class(mut record: Record, class: DNSClass) -> Record {
    record.dns_class = class;
    record
}

/// An answer to `sent`, echoing its question exactly.
fn answer_to(sent: &UpstreamQuery, records: Vec<Record>) -> Message {
    let mut m = Message::response(sent.message.metadata.id, OpCode::Query);
    m.add_queries(sent.message.queries.iter().cloned());
    m.add_answers(records);
    m
}

/// What `records` teach in answer to `q`.
fn teaches(q: &ClientQuery, records: Vec<Record>) -> Learnable {
    let question = q.question();
    learnable(
        &question,
        &answer_to(&UpstreamQuery::new(&question), records),
    )
}

/// The name as sent upstream, in its random case.
fn spelling(sent: &UpstreamQuery) -> &Name {
    sent.message.queries[0].name()
}

fn owner(record: &Record) -> String {
    normalize(&record.name)
}

#[test]
fn a_plain_query_is_forwarded_under_a_new_id_and_answered_under_the_old() {
    let q = client_query("Device.Manage.Microsoft.com.");
    assert_eq!(q.name, "device.manage.microsoft.com");
    let sent = UpstreamQuery::new(&q.question());
    let wire = Message::from_vec(&sent.to_bytes().unwrap()).unwrap();
    assert_eq!(wire.metadata.id, sent.message.metadata.id);
    assert!(wire.queries[0]
        .name()
        .eq_ignore_root(&Name::from_str("device.manage.microsoft.com.").unwrap()));
    let answer = answer_to(
        &sent,
        vec![a("device.manage.microsoft.com.", 30, "198.51.100.7")],
    );
    let checked = sent.check_answer(&answer.to_vec().unwrap()).unwrap();
    let reply = Message::from_vec(&q.reply(&checked, 512).unwrap()).unwrap();
    assert_eq!(reply.metadata.id, 7, "the client's ID is restored");
    assert!(
        reply.queries[0]
            .name()
            .eq_case(&Name::from_str("Device.Manage.Microsoft.com.").unwrap()),
        "and its spelling of the question"
    );
    assert_eq!(reply.answers.len(), 1);
}

#[test]
fn answers_to_other_queries_are_refused() {
    let q = client_query("a.example.com.");
    let sent = UpstreamQuery::new(&q.question());
    let good = answer_to(&sent, vec![]);
    assert!(sent.check_answer(&good.to_vec().unwrap()).is_ok());
    let mut wrong_id = good.clone();
    wrong_id.metadata.id = wrong_id.metadata.id.wrapping_add(1);
    assert_eq!(
        sent.check_answer(&wrong_id.to_vec().unwrap()).unwrap_err(),
        AnswerError::Mismatch,
        "ID"
    );
    let other = UpstreamQuery::new(&client_query("b.example.com.").question());
    let mut wrong_question = answer_to(&other, vec![]);
    wrong_question.metadata.id = sent.message.metadata.id;
    assert_eq!(
        sent.check_answer(&wrong_question.to_vec().unwrap())
            .unwrap_err(),
        AnswerError::Mismatch
    );
    let mut wrong_type = good.clone();
    wrong_type.queries[0].set_query_type(RecordType::AAAA);
    assert_eq!(
        sent.check_answer(&wrong_type.to_vec().unwrap())
            .unwrap_err(),
        AnswerError::Mismatch
    );
    let mut not_a_response = sent.message.clone();
    not_a_response.metadata.message_type = MessageType::Query;
    assert_eq!(
        sent.check_answer(&not_a_response.to_vec().unwrap())
            .unwrap_err(),
        AnswerError::Mismatch
    );
    assert!(matches!(
        sent.check_answer(&[1, 2, 3]),
        Err(AnswerError::Malformed(_))
    ));
}

#[test]
fn upstream_queries_spell_the_name_in_random_case() {
    let q = client_query("abcdefghijklmnopqrstuvwxyz.example.com.");
    let spellings: BTreeSet<String> = (0..16)
        .map(|_| {
            let sent = UpstreamQuery::new(&q.question());
            assert!(spelling(&sent).eq_ignore_root(&Name::from_str(&q.name).unwrap()));
            spelling(&sent).to_ascii()
        })
        .collect();
    assert!(
        spellings.len() > 1,
        "a fixed spelling adds nothing: {spellings:?}"
    );
    assert!(spellings
        .iter()
        .any(|s| s.chars().any(|c| c.is_ascii_uppercase())));
}

#[test]
fn the_question_must_come_back_in_the_case_it_was_sent() {
    let q = client_query("abcdefghijklmnopqrstuvwxyz.example.com.");
    let lower = Name::from_str("abcdefghijklmnopqrstuvwxyz.example.com.").unwrap();
    // One in 2^36 spellings is all lower case, which would not test a thing.
    let sent = std::iter::repeat_with(|| UpstreamQuery::new(&q.question()))
        .take(64)
        .find(|sent| !spelling(sent).eq_case(&lower))
        .expect("upstream queries in random case");
    let exact = answer_to(&sent, vec![]);
    assert!(sent.check_answer(&exact.to_vec().unwrap()).is_ok());
    let mut lowered = exact.clone();
    lowered.queries[0].set_name(lower);
    assert_eq!(
        sent.check_answer(&lowered.to_vec().unwrap()).unwrap_err(),
        AnswerError::Mismatch,
        "a forger who does not know the case"
    );
}

#[test]
fn identical_questions_are_one_and_what_changes_the_answer_is_not() {
    let edns = |mut m: Message, dnssec_ok: bool| {
        let mut edns = Edns::new();
        edns.set_dnssec_ok(dnssec_ok).set_max_payload(4096);
        m.set_edns(edns);
        m
    };
    let base = read(&query_message("A.Example.com.", RecordType::A, 1)).question();
    assert_eq!(
        read(&query_message("a.example.COM.", RecordType::A, 2)).question(),
        base,
        "IDs and case do not matter"
    );
    let mut cd = query_message("a.example.com.", RecordType::A, 1);
    cd.metadata.checking_disabled = true;
    let mut no_rd = query_message("a.example.com.", RecordType::A, 1);
    no_rd.metadata.recursion_desired = false;
    let others = [
        query_message("a.example.com.", RecordType::AAAA, 1),
        query_message("b.example.com.", RecordType::A, 1),
        cd,
        no_rd,
        edns(query_message("a.example.com.", RecordType::A, 1), false),
        edns(query_message("a.example.com.", RecordType::A, 1), true),
    ];
    let mut keys: Vec<Question> = others.iter().map(|m| read(m).question()).collect();
    keys.push(base);
    for (i, key) in keys.iter().enumerate() {
        assert!(!keys[i + 1..].contains(key), "{key:?}");
    }
}

#[test]
fn upstream_queries_ask_edns_only_of_edns_clients_at_a_payload_that_avoids_fragments() {
    let plain = UpstreamQuery::new(&client_query("a.example.com.").question());
    assert!(plain.message.edns.is_none());
    assert_eq!(plain.udp_limit(), 512);
    let mut m = query_message("a.example.com.", RecordType::A, 1);
    let mut edns = Edns::new();
    edns.set_dnssec_ok(true).set_max_payload(4096);
    m.set_edns(edns);
    let sent = UpstreamQuery::new(&read(&m).question());
    let wire = Message::from_vec(&sent.to_bytes().unwrap()).unwrap();
    let edns = wire.edns.unwrap();
    assert_eq!(edns.max_payload(), UPSTREAM_UDP_PAYLOAD);
    assert!(edns.flags().dnssec_ok);
    assert!(wire.metadata.recursion_desired);
}

#[test]
fn a_cname_chain_is_followed_and_stray_records_are_ignored() {
    let records = || {
        vec![
            cname("app.cdn.example.com.", "edge.Provider.net."),
            cname("edge.provider.net.", "node7.provider.net."),
            a("node7.provider.net.", 20, "203.0.113.7"),
            aaaa("node7.provider.net.", 20, "2001:db8::7"),
            a("unrelated.example.org.", 20, "192.0.2.99"),
        ]
    };
    let learned = teaches(&client_query("app.cdn.example.com."), records());
    assert_eq!(
        learned.chain,
        [
            "app.cdn.example.com",
            "edge.provider.net",
            "node7.provider.net"
        ]
    );
    assert_eq!(
        learned.addresses,
        [("203.0.113.7".parse().unwrap(), 20)],
        "an A question learns A records only"
    );
    let learned = teaches(
        &client_query_of("app.cdn.example.com.", RecordType::AAAA),
        records(),
    );
    assert_eq!(
        learned.addresses,
        [("2001:db8::7".parse().unwrap(), 20)],
        "an AAAA question learns AAAA records only"
    );
}

#[test]
fn records_that_do_not_answer_the_question_teach_nothing() {
    let listed_end = || a("edge.listed.test.", 20, "203.0.113.1");
    for (what, q, records) in [
        (
            "an A answering a TXT question",
            client_query_of("q.listed.test.", RecordType::TXT),
            vec![a("q.listed.test.", 20, "192.0.2.66")],
        ),
        (
            "an ANY question",
            client_query_of("q.listed.test.", RecordType::ANY),
            vec![a("q.listed.test.", 20, "192.0.2.66")],
        ),
        (
            "an A answering an AAAA question",
            client_query_of("q.listed.test.", RecordType::AAAA),
            vec![a("q.listed.test.", 20, "192.0.2.66")],
        ),
        (
            "an A of class CHAOS",
            client_query("q.listed.test."),
            vec![in_class(
                a("q.listed.test.", 20, "192.0.2.66"),
                DNSClass::CH,
            )],
        ),
        (
            "the A of a CNAME of class CHAOS",
            client_query("q.example.net."),
            vec![
                in_class(cname("q.example.net.", "edge.listed.test."), DNSClass::CH),
                listed_end(),
            ],
        ),
        (
            "an A owned by the question beside its CNAME",
            client_query("q.example.net."),
            vec![
                cname("q.example.net.", "edge.listed.test."),
                a("q.example.net.", 20, "192.0.2.66"),
            ],
        ),
        (
            "an A owned by a name mid-chain",
            client_query("q.example.net."),
            vec![
                cname("q.example.net.", "mid.listed.test."),
                cname("mid.listed.test.", "end.example.net."),
                a("mid.listed.test.", 20, "192.0.2.66"),
            ],
        ),
        (
            "a chain that forks",
            client_query("q.example.net."),
            vec![
                cname("q.example.net.", "edge.listed.test."),
                cname("q.example.net.", "other.example.net."),
                listed_end(),
            ],
        ),
        (
            "a chain that does not start at the question",
            client_query("q.example.net."),
            vec![
                cname("elsewhere.example.net.", "edge.listed.test."),
                listed_end(),
            ],
        ),
    ] {
        let learned = teaches(&q, records);
        assert!(
            learned.addresses.is_empty(),
            "{what}: {:?}",
            learned.addresses
        );
    }
    let learned = teaches(
        &client_query("q.example.net."),
        vec![
            cname("q.example.net.", "edge.listed.test."),
            a("q.example.net.", 20, "192.0.2.66"),
            listed_end(),
        ],
    );
    assert_eq!(
        learned.addresses,
        [("203.0.113.1".parse().unwrap(), 20)],
        "beside a stray A, the end of the chain is learned alone"
    );
}

#[test]
fn cname_loops_and_overlong_chains_stop_and_teach_no_address() {
    let q = client_query("a.example.com.");
    let looped = teaches(
        &q,
        vec![
            cname("a.example.com.", "b.example.com."),
            cname("b.example.com.", "a.example.com."),
            a("b.example.com.", 20, "192.0.2.1"),
        ],
    );
    assert_eq!(looped.chain.len(), 2);
    assert!(looped.addresses.is_empty());
    let link = |i: usize| {
        if i == 0 {
            "a.example.com.".to_owned()
        } else {
            format!("n{i}.example.com.")
        }
    };
    let long: Vec<Record> = (0..40)
        .map(|i| cname(&link(i), &link(i + 1)))
        .chain([a(&link(40), 20, "192.0.2.1")])
        .collect();
    let long = teaches(&q, long);
    assert_eq!(long.chain.len(), MAX_CHAIN);
    assert!(long.addresses.is_empty());
}

#[test]
fn only_successful_answers_teach() {
    let q = client_query("a.example.com.");
    let question = q.question();
    let mut answer = answer_to(
        &UpstreamQuery::new(&question),
        vec![a("a.example.com.", 20, "192.0.2.1")],
    );
    assert_eq!(learnable(&question, &answer).addresses.len(), 1);
    answer.metadata.response_code = ResponseCode::ServFail;
    assert_eq!(learnable(&question, &answer), Learnable::default());
}

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
    let reply = Message::from_vec(&q.reply(&answer, q.udp_limit()).unwrap()).unwrap();
    assert!(reply.metadata.truncation && reply.answers.is_empty());
    assert_eq!(reply.queries, q.message.queries);
    let full = Message::from_vec(&q.reply(&answer, usize::from(u16::MAX)).unwrap()).unwrap();
    assert!(
        !full.metadata.truncation && full.answers.len() == 50,
        "over TCP it all goes"
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
    let reply = Message::from_vec(&q.reply(&answer, 512).unwrap()).unwrap();
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
                let _ = q.reply(&answer_to(&sent, vec![]), 512);
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
        let reply = Message::from_vec(&q.reply(&checked, usize::from(u16::MAX)).unwrap()).unwrap();
        prop_assert_eq!(reply.metadata.id, 7);
        prop_assert_eq!(reply.answers.len(), records.len());
    }
}
