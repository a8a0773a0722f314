//! What a believed answer teaches: only what answers the question.

use super::*;

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
