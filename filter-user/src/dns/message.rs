//! The forwarder's message handling, free of sockets: what to do with a client's bytes, what
//! is asked upstream for it, what an upstream answer must look like to be believed, what it
//! teaches, and what goes back to the client. Every message is parsed and built by
//! hickory-proto; nothing here touches wire bytes.
//!
//! An answer teaches only what answers the question: records of the asked type (A or AAAA) and
//! class IN, owned by the end of the CNAME chain that starts at the question. Anything else an
//! upstream adds (a record for the question beside its CNAME, for a name mid-chain, of another
//! type or class) is passed on to the client but opens nothing.

use std::{collections::BTreeSet, net::IpAddr};

use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode},
    rr::{DNSClass, Name, RData, RecordType},
    serialize::binary::{BinDecodable as _, BinDecoder},
};

use super::{learned::MAX_TTL, names::normalize};

/// Longest CNAME chain followed. Resolvers give up around 8-16 hops; a longer chain in one
/// answer is broken or hostile, and teaches no address.
pub const MAX_CHAIN: usize = 16;

/// The UDP payload size advertised upstream (EDNS), whatever the client's: the DNS Flag Day
/// 2020 value, which keeps answers out of IP fragments. A fragmented answer lets an off-path
/// attacker swap its second fragment without guessing the port, ID or case of the first.
/// Larger answers come back truncated and are fetched over TCP.
pub const UPSTREAM_UDP_PAYLOAD: u16 = 1232;

/// A client's query that passed the checks: one question, opcode QUERY.
#[derive(Clone, Debug)]
pub struct ClientQuery {
    message: Message,
    /// The question's name as the forwarder records it ([`normalize`]).
    pub name: String,
}

/// Everything of a client's query that shapes the upstream's answer. Clients asking the same
/// share one upstream query: spoofing a name then takes one race, not one per client. The
/// upstream query is built from this alone: a client's other EDNS options (its cookie, padding,
/// client subnet) are meant for the forwarder, not passed on, and its UDP size is not the
/// upstream's business ([`UPSTREAM_UDP_PAYLOAD`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Question {
    /// In lower case; each upstream query spells it in a random case of its own (0x20).
    name: Name,
    query_type: RecordType,
    query_class: DNSClass,
    recursion_desired: bool,
    checking_disabled: bool,
    authentic_data: bool,
    /// `None` without EDNS, else whether DNSSEC records are wanted (DO).
    dnssec_ok: Option<bool>,
}

/// One query sent upstream for a [`Question`]: a random ID, and the name with the case of its
/// letters randomised (0x20, draft-vixie-dnsext-dns0x20), which the answer must echo exactly.
/// Beside the random source port, a blind forger must guess the 16 bits of the ID and one bit
/// per letter of the name.
#[derive(Clone, Debug)]
pub struct UpstreamQuery {
    message: Message,
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
    #[error("answer to another query (ID, QR flag, question or the case of its name differ)")]
    Mismatch,
}

/// What an answer teaches: the names it speaks for and the addresses they have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Learnable {
    /// The question, then each CNAME target in order; normalized, each once.
    pub chain: Vec<String>,
    /// The records of the asked type (A or AAAA) owned by the end of the chain, with their
    /// TTLs.
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
    let name = normalize(message.queries[0].name());
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
    /// What is asked upstream for this query.
    #[must_use]
    pub fn question(&self) -> Question {
        let query = &self.message.queries[0];
        let metadata = &self.message.metadata;
        Question {
            name: query.name().to_lowercase(),
            query_type: query.query_type(),
            query_class: query.query_class(),
            recursion_desired: metadata.recursion_desired,
            checking_disabled: metadata.checking_disabled,
            authentic_data: metadata.authentic_data,
            dnssec_ok: self.message.edns.as_ref().map(|e| e.flags().dnssec_ok),
        }
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

    /// The answer as the client gets it: under its own ID and its own spelling of the
    /// question, and, when it does not fit in `limit` bytes, truncated (TC set, question only)
    /// so the client asks again over TCP.
    pub fn reply(&self, answer: &Message, limit: usize) -> Result<Vec<u8>, String> {
        let mut answer = answer.clone();
        answer.metadata.id = self.message.metadata.id;
        answer.queries.clone_from(&self.message.queries);
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

impl Question {
    /// The name as the forwarder records it ([`normalize`]).
    #[must_use]
    pub fn name(&self) -> String {
        normalize(&self.name)
    }
}

impl UpstreamQuery {
    /// A fresh query for `question`: new ID, new spelling, both from `rand`.
    #[must_use]
    pub fn new(question: &Question) -> Self {
        let mut name = question.name.clone();
        name.randomize_label_case();
        let mut query = Query::query(name, question.query_type);
        query.set_query_class(question.query_class);
        let mut message = Message::new(rand::random(), MessageType::Query, OpCode::Query);
        message.metadata.recursion_desired = question.recursion_desired;
        message.metadata.checking_disabled = question.checking_disabled;
        message.metadata.authentic_data = question.authentic_data;
        message.add_query(query);
        if let Some(dnssec_ok) = question.dnssec_ok {
            let mut edns = Edns::new();
            edns.set_max_payload(UPSTREAM_UDP_PAYLOAD)
                .set_dnssec_ok(dnssec_ok);
            message.set_edns(edns);
        }
        Self { message }
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        self.message.to_vec().map_err(|e| e.to_string())
    }

    /// The most a UDP answer to this query may carry (512, or [`UPSTREAM_UDP_PAYLOAD`]).
    #[must_use]
    pub fn udp_limit(&self) -> usize {
        usize::from(self.message.max_payload())
    }

    /// Checks that `bytes` answer this query: its ID, a response to a QUERY, and its one
    /// question with the name in exactly the case it was sent.
    pub fn check_answer(&self, bytes: &[u8]) -> Result<Message, AnswerError> {
        let answer = Message::from_vec(bytes).map_err(|e| AnswerError::Malformed(e.to_string()))?;
        let sent = &self.message.queries[0];
        let echoes_the_question = match answer.queries.as_slice() {
            [echoed] => {
                echoed.name().eq_case(sent.name())
                    && echoed.query_type() == sent.query_type()
                    && echoed.query_class() == sent.query_class()
            }
            _ => false,
        };
        if answer.metadata.id != self.message.metadata.id
            || answer.metadata.message_type != MessageType::Response
            || answer.metadata.op_code != OpCode::Query
            || !echoes_the_question
        {
            return Err(AnswerError::Mismatch);
        }
        Ok(answer)
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

/// The chain of names a successful answer speaks for, and the addresses that answer the
/// question: of its type (A or AAAA; other types teach no address) and class IN, owned by the
/// end of the chain. The chain runs owner to target over class IN CNAMEs from the question; a
/// chain that loops, forks (two CNAMEs for one owner) or runs past [`MAX_CHAIN`] has no end,
/// and teaches no address. Records for other owners (an upstream may add any) teach nothing.
#[must_use]
pub fn learnable(question: &Question, answer: &Message) -> Learnable {
    if answer.metadata.response_code != ResponseCode::NoError {
        return Learnable::default();
    }
    let mut chain = vec![question.name()];
    let mut seen: BTreeSet<String> = chain.iter().cloned().collect();
    let mut end = question.name.clone();
    let ended = loop {
        let targets: BTreeSet<Name> = answer
            .answers
            .iter()
            .filter(|record| record.dns_class == DNSClass::IN && record.name.eq_ignore_root(&end))
            .filter_map(|record| match &record.data {
                RData::CNAME(target) => Some(target.0.to_lowercase()),
                _ => None,
            })
            .collect();
        if targets.len() > 1 {
            // Two CNAMEs for one name: a fork no zone can hold.
            break false;
        }
        let Some(target) = targets.into_iter().next() else {
            break true;
        };
        let name = normalize(&target);
        if chain.len() == MAX_CHAIN || !seen.insert(name.clone()) {
            break false;
        }
        chain.push(name);
        end = target;
    };
    let asked_type = question.query_type;
    let addresses = if ended && question.query_class == DNSClass::IN {
        answer
            .answers
            .iter()
            .filter(|record| {
                record.dns_class == DNSClass::IN
                    && record.record_type() == asked_type
                    && record.name.eq_ignore_root(&end)
            })
            .filter_map(|record| match &record.data {
                RData::A(a) => Some((IpAddr::V4(a.0), record.ttl)),
                RData::AAAA(aaaa) => Some((IpAddr::V6(aaaa.0), record.ttl)),
                _ => None,
            })
            .collect()
    } else {
        Vec::new()
    };
    Learnable { chain, addresses }
}

#[cfg(test)]
mod tests {
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
}
