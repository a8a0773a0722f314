//! A client's DNS message, as the forwarder reads it: forwarded, answered at once, or ignored,
//! never a panic; every reply the forwarder builds from it is a message again.
#![no_main]

use filter_user::dns::message::{read_query, Incoming, UpstreamQuery};
use hickory_proto::op::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match read_query(data) {
        Incoming::Query(query) => {
            let question = query.question();
            let upstream = UpstreamQuery::new(&question);
            let bytes = upstream
                .to_bytes()
                .expect("an upstream query always encodes");
            assert!(
                Message::from_vec(&bytes).is_ok(),
                "the upstream query parses"
            );
            for reply in [query.nxdomain(), query.servfail()] {
                assert!(Message::from_vec(&reply).is_ok(), "an error reply parses");
            }
            let _limit = query.udp_limit();
        }
        Incoming::Reply(reply) => {
            assert!(
                Message::from_vec(&reply).is_ok(),
                "an immediate reply parses"
            );
        }
        Incoming::Ignore => {}
    }
});
