//! The forgery race: forged answers flooded at the forwarder from both sides teach it nothing.

use std::{process::Command, time::Duration};

use filter_tests::{
    daemon::{binary, Daemon},
    lab::{Lab, RulesDir, WEB_B_V4},
};

/// The gateway of the forgery race: a forwarder whose upstream (at `upstream`, on the internet
/// side) hears every query, counted as `upstream_queries`, and never answers, not even with
/// ICMP, so queries stay in flight for the forwarder's whole timeout. One wildcard rule, the one
/// the forgeries aim at.
fn race_gateway(lab: &Lab, upstream: std::net::Ipv4Addr) -> anyhow::Result<(RulesDir, Daemon)> {
    let upstream_ip = upstream.to_string();
    lab.inet.count_arrivals(&[(
        "upstream_queries",
        &format!("ip daddr {upstream_ip} udp dport 53"),
    )])?;
    lab.inet.exec(&[
        "nft",
        "add",
        "rule",
        "inet",
        "arrivals",
        "prerouting",
        "ip",
        "daddr",
        &upstream_ip,
        "drop",
    ])?;
    let rules = RulesDir::new(
        lab,
        "[[service]]\nname = \"lab-wild\"\nsource = \"test\"\n\
         hosts = [\"*.wild.example.test\"]\ntcp = [443]\n",
    )?;
    let upstream = format!("{upstream_ip}:53");
    let daemon = Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &[
            "--rules",
            rules.path(),
            "--xdp",
            &lab.gw_lan,
            "--dns-listen",
            "10.77.0.1:53",
            "--dns-upstream",
            &upstream,
        ],
    )?;
    Ok((rules, daemon))
}

/// The forgery race of the outside review, for a minute: a LAN client keeps as many questions in
/// flight as the forwarder lets it (the upstream never answers), while forged answers (a CNAME
/// from each question to a listed wildcard name, with an address of the forger's choosing) are
/// flooded at the gateway's WAN address from the internet side and, with a spoofed source, from
/// the LAN. Nothing forged may be learned. The review landed 3 forgeries from the LAN and 6 from
/// the internet in 57 s when one client could keep 1,024 queries in flight and answers were
/// guarded by port and ID alone.
#[test]
fn forged_answers_flooded_from_both_sides_for_a_minute_teach_nothing() -> anyhow::Result<()> {
    use filter_tests::flood::{flood, forged_answer, in_netns, joined, keep_asking};
    use std::net::Ipv4Addr;

    const SILENT_UPSTREAM: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
    const GW_WAN: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const RACE: Duration = Duration::from_mins(1);
    const QUESTIONS: usize = 32;
    let forged_address: Ipv4Addr = WEB_B_V4.parse()?;

    let lab = Lab::new(&[443])?;
    let (_rules, daemon) = race_gateway(&lab, SILENT_UPSTREAM)?;

    let questions: Vec<String> = (0..QUESTIONS)
        .map(|i| format!("q{i}.race.example.test"))
        .collect();
    let payloads = questions
        .iter()
        .map(|q| forged_answer(q, "cdn7.wild.example.test", forged_address))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let keeper = {
        let questions = questions.clone();
        in_netns(&lab.client.name, move || {
            keep_asking(
                "10.77.0.2:0".parse()?,
                "10.77.0.1:53".parse()?,
                &questions,
                RACE,
            )
        })
    };
    let from_internet = {
        let payloads = payloads.clone();
        in_netns(&lab.inet.name, move || {
            flood(SILENT_UPSTREAM, GW_WAN, &payloads, RACE, 60_000_000)
        })
    };
    let from_lan = in_netns(&lab.client.name, move || {
        flood(SILENT_UPSTREAM, GW_WAN, &payloads, RACE, 60_000_000)
    });
    let (asked, answered) = joined(keeper)?;
    let internet = joined(from_internet)?;
    let lan = joined(from_lan)?;
    let upstream_queries = lab.inet.arrivals("upstream_queries")?;

    let stats = Command::new(binary()?)
        .args(["stats", "--json", "--pin-path", &lab.pin_path()])
        .output()?;
    let stats: serde_json::Value = serde_json::from_slice(&stats.stdout)?;
    let learned = Command::new(binary()?)
        .args(["learned", "--json", "--pin-path", &lab.pin_path()])
        .output()?;
    let learned_json: serde_json::Value = serde_json::from_slice(&learned.stdout)?;
    eprintln!(
        "forgery race: {} forged answers from the internet ({}/s), {} from the LAN ({}/s); \
         the client asked {asked} and got {answered} answers; {upstream_queries} queries went \
         upstream; forwarder counters: {}; dropped as spoofed at XDP: {}",
        internet.sent,
        internet.rate(),
        lan.sent,
        lan.rate(),
        stats["dns"],
        stats["reasons"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["reason"] == "spoofed-source"))
            .map_or(serde_json::Value::Null, |r| r["packets"].clone()),
    );
    assert!(
        internet.sent > 1_000_000 && lan.sent > 1_000_000,
        "the flood was too thin to mean anything: {internet:?}, {lan:?}"
    );
    assert!(
        learned_json.as_array().is_some_and(Vec::is_empty)
            || learned_json["learned"]
                .as_array()
                .is_some_and(Vec::is_empty),
        "a forged answer was learned: {learned_json}"
    );
    assert!(
        !daemon
            .logs()
            .iter()
            .any(|l| l.contains("cdn7.wild.example.test")),
        "the forged name reached the daemon's logs"
    );
    assert!(
        !lab.client.connects(WEB_B_V4, 443, 1),
        "the forged address is reachable"
    );
    // Identical questions in flight went upstream once, and one client held at most its bound.
    assert!(
        upstream_queries * 2 <= asked,
        "{upstream_queries} upstream queries for {asked} client queries: not merged"
    );
    Ok(())
}
