//! What an upstream query looks like, and what an answer must be to be believed.

use super::*;

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
    let reply = Message::from_vec(&q.reply(&checked, 512, 0).unwrap().bytes).unwrap();
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
