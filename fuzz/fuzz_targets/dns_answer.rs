//! An upstream's answer: the first bytes are the client's query, the rest the answer. Whatever
//! both hold, checking the answer, following its CNAME chain and building the client's reply
//! (fresh or from the cache, its TTLs counted down) never panic, and what is learned stays
//! within the chain bound.
#![no_main]

use filter_user::dns::message::{learnable, read_query, Incoming, UpstreamQuery, MAX_CHAIN};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let (query_bytes, answer_bytes) = rest.split_at(usize::from(split).min(rest.len()));
    let Incoming::Query(query) = read_query(query_bytes) else {
        return;
    };
    let question = query.question();
    let upstream = UpstreamQuery::new(&question);
    // The forwarder's own check (ID, flags, question in the exact case) rarely passes on
    // random bytes; it must still never panic.
    let _checked = upstream.check_answer(answer_bytes);
    // What follows a check that passed, on any message that parses.
    let Ok(answer) = Message::from_vec(answer_bytes) else {
        return;
    };
    let learned = learnable(&question, &answer);
    assert!(learned.chain.len() <= MAX_CHAIN + 1, "{:?}", learned.chain);
    // Fresh, kept for a while (TTLs counted down), and kept past every TTL.
    let ages = [0, u32::from(split) << 8, u32::MAX];
    for (limit, age) in [512, 1232, 65_535].into_iter().zip(ages) {
        if let Ok(reply) = query.reply(&answer, limit, age) {
            let reply = reply.bytes;
            assert!(
                reply.len() <= limit.max(512),
                "reply of {} bytes over {limit}",
                reply.len()
            );
        }
    }
});
