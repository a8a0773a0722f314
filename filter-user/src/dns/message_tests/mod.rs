//! Tests of `message`: what a query, an answer and a reply must look like.

use std::{net::Ipv4Addr, str::FromStr as _};

use hickory_proto::rr::{
    rdata::{A, AAAA, CNAME, TXT},
    Record,
};

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

mod checks;
mod replies;
mod teaching;
