//! The forwarder's message handling, free of sockets: what to do with a client's bytes, what an
//! upstream answer must look like to be believed, what it teaches, and what goes back to the
//! client. Every message is parsed and built by hickory-proto; nothing here touches wire bytes.

use std::{collections::BTreeSet, net::IpAddr};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, ResponseCode},
    rr::{RData, Record},
    serialize::binary::{BinDecodable as _, BinDecoder},
};

use super::{learned::MAX_TTL, names::normalize};

/// Longest CNAME chain followed. Resolvers give up around 8-16 hops; a longer chain in one
/// answer is broken or hostile, and the names past it are not learned.
pub const MAX_CHAIN: usize = 16;

/// A client's query that passed the checks: one question, opcode QUERY.
#[derive(Clone, Debug)]
pub struct ClientQuery {
    message: Message,
    /// The question's name, lower case, no trailing dot.
    pub name: String,
}

/// What to do with bytes a client sent.
#[derive(Debug)]
pub enum Incoming {
    /// Forward it.
    Query(ClientQuery),
    /// Answer at once with these bytes (FORMERR, NOTIMP).
    Reply(Vec<u8>),
    /// Say nothing: not a query (a response sent to us, or too short to carry an ID to answer).
    Ignore,
}

/// Why an upstream answer is not taken.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("malformed answer: {0}")]
    Malformed(String),
    #[error("answer to another query (ID, QR flag or question differ)")]
    Mismatch,
}

/// What an answer teaches: the names it speaks for and the addresses they have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learnable {
    /// The question, then each CNAME target in order; normalized, each once.
    pub chain: Vec<String>,
    /// A and AAAA records whose owner is on the chain, with their TTLs.
    pub addresses: Vec<(IpAddr, u32)>,
}

/// Reads a client's message.
#[must_use]
pub fn read_query(bytes: &[u8]) -> Incoming {
    let Ok(message) = Message::from_vec(bytes) else {
        return malformed(bytes);
    };
    if message.metadata.message_type != MessageType::Query {
        // Never answer an answer: two forwarders must not ping-pong, nor a spoofed source be
        // sent replies it did not ask for.
        return Incoming::Ignore;
    }
    if message.metadata.op_code != OpCode::Query {
        return Incoming::Reply(error_reply(&message, ResponseCode::NotImp));
    }
    if message.queries.len() != 1 {
        return Incoming::Reply(error_reply(&message, ResponseCode::FormErr));
    }
    let name = normalize(&message.queries[0].name().to_ascii());
    Incoming::Query(ClientQuery { message, name })
}

/// FORMERR for bytes that do not parse, if their header at least carries an ID to answer.
fn malformed(bytes: &[u8]) -> Incoming {
    match Header::read(&mut BinDecoder::new(bytes)) {
        Ok(header) if header.metadata.message_type == MessageType::Query => {
            let reply = Message::error_msg(
                header.metadata.id,
                header.metadata.op_code,
                ResponseCode::FormErr,
            );
            reply.to_vec().map_or(Incoming::Ignore, Incoming::Reply)
        }
        _ => Incoming::Ignore,
    }
}

/// An error reply to a parsed query: same ID, opcode, question and RD flag.
fn error_reply(query: &Message, code: ResponseCode) -> Vec<u8> {
    let mut reply = Message::error_msg(query.metadata.id, query.metadata.op_code, code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        reply.set_edns(Edns::new());
    }
    // Emitting a message built from parsed parts cannot fail short of a bug; an empty reply
    // (which the sender drops) is the safe outcome if it ever did.
    reply.to_vec().unwrap_or_default()
}

impl ClientQuery {
    /// The query as sent upstream: the client's, under a fresh ID.
    pub fn upstream_bytes(&self, id: u16) -> Result<Vec<u8>, String> {
        let mut message = self.message.clone();
        message.metadata.id = id;
        message.to_vec().map_err(|e| e.to_string())
    }

    /// Checks that `bytes` answer this query as sent under `id`.
    pub fn check_answer(&self, id: u16, bytes: &[u8]) -> Result<Message, AnswerError> {
        let answer = Message::from_vec(bytes).map_err(|e| AnswerError::Malformed(e.to_string()))?;
        if answer.metadata.id != id
            || answer.metadata.message_type != MessageType::Response
            || answer.metadata.op_code != self.message.metadata.op_code
            || answer.queries != self.message.queries
        {
            return Err(AnswerError::Mismatch);
        }
        Ok(answer)
    }

    /// NXDOMAIN: what `--dns-block-unlisted` answers for names no rule lists.
    #[must_use]
    pub fn nxdomain(&self) -> Vec<u8> {
        error_reply(&self.message, ResponseCode::NXDomain)
    }

    /// SERVFAIL: the upstream did not answer, or the forwarder is overloaded.
    #[must_use]
    pub fn servfail(&self) -> Vec<u8> {
        error_reply(&self.message, ResponseCode::ServFail)
    }

    /// The most a UDP reply to this client may carry (512, or what its EDNS says).
    #[must_use]
    pub fn udp_limit(&self) -> usize {
        usize::from(self.message.max_payload())
    }

    /// The answer as the client gets it: under its own ID and, when it does not fit in
    /// `limit` bytes, truncated (TC set, question only) so the client asks again over TCP.
    pub fn reply(&self, mut answer: Message, limit: usize) -> Result<Vec<u8>, String> {
        answer.metadata.id = self.message.metadata.id;
        // Clients keep an answer no longer than its learned addresses stay open.
        for record in answer
            .answers
            .iter_mut()
            .chain(&mut answer.authorities)
            .chain(&mut answer.additionals)
        {
            record.ttl = capped_ttl(record.ttl);
        }
        let bytes = answer.to_vec().map_err(|e| e.to_string())?;
        if bytes.len() <= limit {
            return Ok(bytes);
        }
        answer.truncate().to_vec().map_err(|e| e.to_string())
    }
}

/// A TTL as passed on: at most [`MAX_TTL`], zero if its top bit is set (RFC 2181, 8).
fn capped_ttl(ttl: u32) -> u32 {
    let cap = u32::try_from(MAX_TTL.as_secs()).unwrap_or(u32::MAX);
    if ttl > i32::MAX as u32 {
        0
    } else {
        ttl.min(cap)
    }
}

/// The chain of names a successful answer speaks for, and their addresses. Records for other
/// owners (an upstream may add any) teach nothing.
#[must_use]
pub fn learnable(query: &ClientQuery, answer: &Message) -> Learnable {
    if answer.metadata.response_code != ResponseCode::NoError {
        return Learnable::default();
    }
    let mut chain = vec![query.name.clone()];
    let mut seen: BTreeSet<String> = chain.iter().cloned().collect();
    while chain.len() < MAX_CHAIN {
        let current = &chain[chain.len() - 1];
        let next = answer.answers.iter().find_map(|record| match &record.data {
            RData::CNAME(target) if owner(record) == *current => {
                Some(normalize(&target.0.to_ascii()))
            }
            _ => None,
        });
        match next {
            Some(target) if seen.insert(target.clone()) => chain.push(target),
            _ => break,
        }
    }
    let addresses = answer
        .answers
        .iter()
        .filter_map(|record| {
            let address = match &record.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(aaaa) => IpAddr::V6(aaaa.0),
                _ => return None,
            };
            seen.contains(&owner(record))
                .then_some((address, record.ttl))
        })
        .collect();
    Learnable { chain, addresses }
}

fn owner(record: &Record) -> String {
    normalize(&record.name.to_ascii())
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, str::FromStr as _};

    use hickory_proto::{
        op::Query,
        rr::{
            rdata::{A, AAAA, CNAME, TXT},
            Name, RecordType,
        },
    };
    use proptest::prelude::*;

    use super::*;

    fn query_bytes(name: &str, kind: RecordType, id: u16) -> Vec<u8> {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), kind));
        m.to_vec().unwrap()
    }

    fn client_query(name: &str) -> ClientQuery {
        match read_query(&query_bytes(name, RecordType::A, 7)) {
            Incoming::Query(q) => q,
            other => panic!("{other:?}"),
        }
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

    fn answer_to(q: &ClientQuery, id: u16, records: Vec<Record>) -> Message {
        let mut m = Message::response(id, OpCode::Query);
        m.add_queries(q.message.queries.iter().cloned());
        m.add_answers(records);
        m
    }

    #[test]
    fn a_plain_query_is_forwarded_under_a_new_id_and_answered_under_the_old() {
        let q = client_query("Device.Manage.Microsoft.com.");
        assert_eq!(q.name, "device.manage.microsoft.com");
        let wire = q.upstream_bytes(4242).unwrap();
        assert_eq!(Message::from_vec(&wire).unwrap().metadata.id, 4242);
        let answer = answer_to(
            &q,
            4242,
            vec![a("device.manage.microsoft.com.", 30, "198.51.100.7")],
        );
        let checked = q.check_answer(4242, &answer.to_vec().unwrap()).unwrap();
        let reply = Message::from_vec(&q.reply(checked, 512).unwrap()).unwrap();
        assert_eq!(reply.metadata.id, 7, "the client's ID is restored");
        assert_eq!(reply.answers.len(), 1);
    }

    #[test]
    fn answers_to_other_queries_are_refused() {
        let q = client_query("a.example.com.");
        let good = answer_to(&q, 9, vec![]);
        assert!(q.check_answer(9, &good.to_vec().unwrap()).is_ok());
        assert_eq!(
            q.check_answer(10, &good.to_vec().unwrap()).unwrap_err(),
            AnswerError::Mismatch,
            "ID"
        );
        let other = client_query("b.example.com.");
        let wrong_question = answer_to(&other, 9, vec![]);
        assert_eq!(
            q.check_answer(9, &wrong_question.to_vec().unwrap())
                .unwrap_err(),
            AnswerError::Mismatch
        );
        let not_a_response = query_bytes("a.example.com.", RecordType::A, 9);
        assert_eq!(
            q.check_answer(9, &not_a_response).unwrap_err(),
            AnswerError::Mismatch
        );
        assert!(matches!(
            q.check_answer(9, &[1, 2, 3]),
            Err(AnswerError::Malformed(_))
        ));
    }

    #[test]
    fn the_question_name_compares_without_regard_to_case() {
        let q = client_query("a.example.com.");
        let mut answer = answer_to(&client_query("A.EXAMPLE.com."), 9, vec![]);
        answer.metadata.id = 9;
        assert!(
            q.check_answer(9, &answer.to_vec().unwrap()).is_ok(),
            "0x20 case randomisation is fine"
        );
    }

    #[test]
    fn a_cname_chain_is_followed_and_stray_records_are_ignored() {
        let q = client_query("app.cdn.example.com.");
        let answer = answer_to(
            &q,
            1,
            vec![
                cname("app.cdn.example.com.", "edge.Provider.net."),
                cname("edge.provider.net.", "node7.provider.net."),
                a("node7.provider.net.", 20, "203.0.113.7"),
                record(
                    "node7.provider.net.",
                    20,
                    RData::AAAA(AAAA("2001:db8::7".parse().unwrap())),
                ),
                a("unrelated.example.org.", 20, "192.0.2.99"),
            ],
        );
        let learned = learnable(&q, &answer);
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
            [
                ("203.0.113.7".parse().unwrap(), 20),
                ("2001:db8::7".parse().unwrap(), 20)
            ]
        );
    }

    #[test]
    fn cname_loops_and_overlong_chains_stop() {
        let q = client_query("a.example.com.");
        let looped = answer_to(
            &q,
            1,
            vec![
                cname("a.example.com.", "b.example.com."),
                cname("b.example.com.", "a.example.com."),
            ],
        );
        assert_eq!(learnable(&q, &looped).chain.len(), 2);
        let long: Vec<Record> = (0..40)
            .map(|i| {
                cname(
                    &format!(
                        "{}.example.com.",
                        if i == 0 {
                            "a".to_owned()
                        } else {
                            format!("n{i}")
                        }
                    ),
                    &format!("n{}.example.com.", i + 1),
                )
            })
            .collect();
        assert_eq!(
            learnable(&q, &answer_to(&q, 1, long)).chain.len(),
            MAX_CHAIN
        );
    }

    #[test]
    fn only_successful_answers_teach() {
        let q = client_query("a.example.com.");
        let mut answer = answer_to(&q, 1, vec![a("a.example.com.", 20, "192.0.2.1")]);
        answer.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(learnable(&q, &answer), Learnable::default());
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
        let response = answer_to(&q, 1, vec![]).to_vec().unwrap();
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
        let mut m = Message::new(5, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_str("a.example.com.").unwrap(),
            RecordType::A,
        ));
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
        let answer = answer_to(&q, 1, records);
        let reply = Message::from_vec(&q.reply(answer.clone(), q.udp_limit()).unwrap()).unwrap();
        assert!(reply.metadata.truncation && reply.answers.is_empty());
        assert_eq!(reply.queries, q.message.queries);
        let full = Message::from_vec(&q.reply(answer, usize::from(u16::MAX)).unwrap()).unwrap();
        assert!(
            !full.metadata.truncation && full.answers.len() == 50,
            "over TCP it all goes"
        );
    }

    #[test]
    fn ttls_passed_on_are_capped_like_the_learned_entries() {
        let q = client_query("a.example.com.");
        let answer = answer_to(
            &q,
            1,
            vec![
                a("a.example.com.", 7 * 86_400, "192.0.2.1"),
                a("a.example.com.", u32::MAX, "192.0.2.2"),
                a("a.example.com.", 300, "192.0.2.3"),
            ],
        );
        let reply = Message::from_vec(&q.reply(answer, 512).unwrap()).unwrap();
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
        )
            .prop_map(|(owner, target, ttl, v4, v6, kind)| {
                let data = match kind {
                    0 => RData::A(A(v4.into())),
                    1 => RData::AAAA(AAAA(v6.into())),
                    _ => RData::CNAME(CNAME(Name::from_str(&target).unwrap())),
                };
                record(&owner, ttl, data)
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
                    let _ = q.upstream_bytes(1);
                    let _ = q.reply(answer_to(&q, 1, vec![]), 512);
                }
                Incoming::Ignore => {}
            }
        }

        /// Well-formed answers: every learned address has an owner on the chain, the chain
        /// starts at the question and never repeats, and the reply round-trips.
        #[test]
        fn random_answers_teach_only_the_chain(
            names in prop::collection::vec(arb_name(), 1..6)
                .prop_flat_map(|names| (Just(names.clone()), prop::collection::vec(arb_record(names), 0..12))),
            id in any::<u16>(),
        ) {
            let (names, records) = names;
            let q = client_query(&names[0]);
            let answer = answer_to(&q, id, records.clone());
            let checked = q.check_answer(id, &answer.to_vec().unwrap()).unwrap();
            let learned = learnable(&q, &checked);
            prop_assert_eq!(&learned.chain[0], &q.name);
            let unique: BTreeSet<&String> = learned.chain.iter().collect();
            prop_assert_eq!(unique.len(), learned.chain.len());
            for (address, ttl) in &learned.addresses {
                let taught_by_the_chain = records.iter().any(|r| {
                    learned.chain.contains(&owner(r)) && r.ttl == *ttl && match &r.data {
                        RData::A(a) => IpAddr::V4(a.0) == *address,
                        RData::AAAA(a) => IpAddr::V6(a.0) == *address,
                        _ => false,
                    }
                });
                prop_assert!(taught_by_the_chain, "{} was not answered for a name on {:?}", address, learned.chain);
            }
            let reply = Message::from_vec(&q.reply(checked, usize::from(u16::MAX)).unwrap()).unwrap();
            prop_assert_eq!(reply.metadata.id, 7);
            prop_assert_eq!(reply.answers.len(), records.len());
        }
    }
}
