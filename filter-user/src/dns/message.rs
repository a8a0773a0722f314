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

use super::{learned::believed_ttl, names::normalize};

/// Longest CNAME chain followed. Resolvers give up around 8-16 hops; a longer chain in one
/// answer is broken or hostile, and teaches no address.
pub const MAX_CHAIN: usize = 16;

/// The UDP payload size advertised upstream (EDNS), whatever the client's: the DNS Flag Day
/// 2020 value, which keeps answers out of IP fragments. A fragmented answer lets an off-path
/// attacker swap its second fragment without guessing the port, ID or case of the first.
/// Larger answers come back truncated and are fetched over TCP.
pub const UPSTREAM_UDP_PAYLOAD: u16 = 1232;

/// The most a UDP reply to a client carries, whatever EDNS size the client claims: BIND's and
/// Unbound's default (the DNS Flag Day 2020 value). The claim is the sender's word, and the
/// sender of a UDP query may be anyone: honouring 65,535 let 1,510 bytes of spoofed queries send
/// about a megabyte to a victim, and made answers too large for one datagram go nowhere at all.
/// Past it the client gets a truncated reply (TC) and asks again over TCP, where the source is
/// proven by the handshake.
pub const MAX_UDP_REPLY: u16 = 1232;

/// A reply to a client, as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    /// Cut to the header and question (TC set): the answer did not fit.
    pub truncated: bool,
}

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

    /// The most a UDP reply to this client may carry: 512, or what its EDNS says, at most
    /// [`MAX_UDP_REPLY`].
    #[must_use]
    pub fn udp_limit(&self) -> usize {
        usize::from(self.message.max_payload().min(MAX_UDP_REPLY))
    }

    /// The answer as the client gets it: under its own ID and its own spelling of the
    /// question, its TTLs `age` seconds shorter (an answer kept that long), and, when it does
    /// not fit in `limit` bytes, truncated (TC set, question only) so the client asks again
    /// over TCP.
    pub fn reply(&self, answer: &Message, limit: usize, age: u32) -> Result<Reply, String> {
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
            record.ttl = believed_ttl(record.ttl).saturating_sub(age);
        }
        let bytes = answer.to_vec().map_err(|e| e.to_string())?;
        if bytes.len() <= limit {
            return Ok(Reply {
                bytes,
                truncated: false,
            });
        }
        let bytes = answer.truncate().to_vec().map_err(|e| e.to_string())?;
        Ok(Reply {
            bytes,
            truncated: true,
        })
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

    /// The query's ID, which its answer must echo.
    #[must_use]
    pub fn id(&self) -> u16 {
        self.message.metadata.id
    }

    /// Gives the query another ID: the one it drew is taken on the socket it is to go from.
    pub fn set_id(&mut self, id: u16) {
        self.message.metadata.id = id;
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
#[path = "message_tests/mod.rs"]
mod tests;
