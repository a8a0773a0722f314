//! What DNS answers teach the daemon: wildcard and CNAME answers open the address before the
//! client connects and close it after TTL plus grace; restarts and reloads keep or forget it;
//! unlisted names, a full table and an address the maps cannot take open nothing.

use std::{process::Command, time::Duration};

use filter_tests::{
    daemon::{binary, Daemon},
    lab::{eventually, Lab, RulesDir, DNS_V4, WEB_A_V4, WEB_A_V6, WEB_B_V4},
};

use crate::common::{
    dns_stats_until, gateway, gateway_args, learned_entry, look_up_and_connect, resolve,
    resolve_and_connect, Upstream, RULES,
};

#[test]
fn a_wildcard_name_is_learned_before_the_client_connects_and_expires_after_ttl_plus_grace(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let _upstream = Upstream::start(&lab, 1)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &["--dns-min-ttl", "1", "--grace", "2"])?;

    // Two labels below the wildcard's suffix: any depth matches.
    let name = "device-7.eu.cdn.example.test";
    let (connected, took) = resolve_and_connect(&lab, name, 443);
    eprintln!(
        "resolve through the gateway + TCP connect: {} ms",
        took.as_millis()
    );
    assert!(
        connected,
        "the learned address is allowed; logs:\n{}",
        daemon.logs().join("\n")
    );
    // A dropped first SYN is retransmitted after 1 s: well under that, none was dropped.
    assert!(
        took < Duration::from_millis(800),
        "took {took:?}: the first SYN was dropped?"
    );
    assert!(
        !daemon
            .events()
            .iter()
            .any(|e| e.contains(WEB_A_V4) && e.contains("\"dport\":443")),
        "no drop on the way: {:?}",
        daemon.events()
    );

    // What DNS taught is visible, and names the host in drop events.
    let entry = learned_entry(&lab, |e| e["address"] == WEB_A_V4)?;
    assert_eq!(entry["service"], "lab-cdn");
    assert_eq!(entry["name"], name);
    assert!(
        !lab.client.connects(WEB_A_V4, 8080, 1),
        "only the service's port"
    );
    let event = daemon.wait_for_event(|l| l.contains("\"dport\":8080"), Duration::from_secs(3))?;
    let event: serde_json::Value = serde_json::from_str(&event)?;
    assert_eq!(event["host"], name, "{event}");
    assert_eq!(event["reason"], "port-not-allowed");
    dns_stats_until(&lab, |dns| {
        dns["queries"].as_u64() >= Some(1)
            && dns["matched"].as_u64() >= Some(1)
            && dns["learned"].as_u64() >= Some(1)
    })?;

    // TTL 1 s + grace 2 s: blocked again soon after.
    assert!(
        eventually(Duration::from_secs(8), || !lab
            .client
            .connects(WEB_A_V4, 443, 1)),
        "blocked again after TTL plus grace"
    );
    dns_stats_until(&lab, |dns| dns["expired"].as_u64() >= Some(1))?;
    Ok(())
}

#[test]
fn a_cname_chain_to_an_unlisted_name_is_allowed_because_the_question_matched() -> anyhow::Result<()>
{
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &[])?;
    assert!(
        !lab.client.connects(WEB_B_V4, 443, 1),
        "not allowed before the name is asked"
    );
    let (connected, took) = resolve_and_connect(&lab, "portal.mdm.example.test", 443);
    assert!(connected && took < Duration::from_millis(800), "{took:?}");
    let entry = learned_entry(&lab, |e| e["address"] == WEB_B_V4)?;
    assert_eq!(entry["service"], "lab-portal");
    assert_eq!(entry["name"], "portal.mdm.example.test");
    // `show --resolve` lists it too, beside what polling resolves.
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gw.name))
        .arg(binary()?)
        .args(["show", "--rules", rules.path(), "--resolve", "--json"])
        .args([
            "--resolver",
            &format!("{DNS_V4}:53"),
            "--pin-path",
            &lab.pin_path(),
        ])
        .output()?;
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert!(
        shown["learned"]
            .as_array()
            .is_some_and(|l| l.iter().any(|e| e["address"] == WEB_B_V4)),
        "{shown}"
    );

    // kill -9 keeps it open (the pinned maps enforce on); a restart adopts the maps and takes
    // back what was learned from the state file, so it removes nothing.
    daemon.signal("KILL")?;
    daemon.wait_exit(Duration::from_secs(5))?;
    assert!(lab.client.connects(WEB_B_V4, 443, 2), "open after kill -9");
    let daemon = gateway(&lab, &rules, &[])?;
    assert!(
        daemon.logs().iter().any(|l| l.contains("0 removed)")),
        "{:?}",
        daemon.logs()
    );
    assert!(
        lab.client.connects(WEB_B_V4, 443, 2),
        "open after the restart"
    );
    learned_entry(&lab, |e| e["address"] == WEB_B_V4)?;

    // A reload that keeps the name keeps what was learned; one that drops it forgets it.
    assert_eq!(daemon.reload()?, "enforcing the reloaded rules");
    assert!(lab.client.connects(WEB_B_V4, 443, 2), "survives SIGHUP");
    std::fs::write(
        rules.0.join("lab.toml"),
        RULES.replace("*.mdm.example.test", "other.mdm.example.test"),
    )?;
    assert_eq!(daemon.reload()?, "enforcing the reloaded rules");
    daemon.wait_for_log("forgot 1 learned addresses", Duration::from_secs(1))?;
    assert!(
        eventually(Duration::from_secs(3), || !lab
            .client
            .connects(WEB_B_V4, 443, 1)),
        "a name no rule lists any more is closed"
    );
    Ok(())
}

#[test]
fn with_block_unlisted_other_names_get_nxdomain_and_stay_blocked() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &["--dns-block-unlisted"])?;
    assert_eq!(
        resolve(&lab, "tracker.example.net"),
        Vec::<String>::new(),
        "refused"
    );
    assert!(!lab.client.connects(WEB_B_V4, 443, 1), "and not opened");
    assert_eq!(
        resolve(&lab, "a.cdn.example.test"),
        [WEB_A_V4],
        "listed names still resolve"
    );
    dns_stats_until(&lab, |dns| dns["refused"].as_u64() >= Some(1))?;
    drop(daemon);

    // Without the flag the name resolves, and its address is still not opened; the drop event
    // says which name the device looked up.
    let daemon = gateway(&lab, &rules, &[])?;
    assert_eq!(resolve(&lab, "tracker.example.net"), [WEB_B_V4]);
    assert!(!lab.client.connects(WEB_B_V4, 443, 1), "unlisted: blocked");
    let event = daemon.wait_for_event(|l| l.contains(WEB_B_V4), Duration::from_secs(3))?;
    let event: serde_json::Value = serde_json::from_str(&event)?;
    assert_eq!(event["host"], "tracker.example.net", "{event}");
    assert_eq!(event["reason"], "no-service");
    drop(daemon);
    Ok(())
}

#[test]
fn past_its_bound_the_learned_table_closes_the_oldest_address_first() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let _daemon = gateway(&lab, &rules, &["--dns-max-learned", "1"])?;
    assert!(resolve_and_connect(&lab, "one.mdm.example.test", 443).0);
    assert!(resolve_and_connect(&lab, "two.mdm.example.test", 443).0);
    assert!(
        !lab.client.connects(WEB_A_V4, 443, 1),
        "the first learned address was evicted, and closed"
    );
    assert!(lab.client.connects(WEB_B_V4, 443, 2), "the newest stays");
    learned_entry(&lab, |e| e["address"] == WEB_B_V4)?;
    dns_stats_until(&lab, |dns| dns["evicted"] == 1 && dns["learned_now"] == 1)?;
    Ok(())
}

#[test]
fn an_address_the_maps_cannot_take_is_neither_confirmed_nor_kept() -> anyhow::Result<()> {
    // 32 port rules cover WEB_A's /24 already, the most one prefix holds: the learned host
    // route (which inherits them, plus 443) cannot be written.
    let ports: Vec<String> = (0..32).map(|i| (2 * i + 1).to_string()).collect();
    let rules = format!(
        "{RULES}\n[[service]]\nname = \"wide\"\ncidrs = [\"198.51.100.0/24\"]\ntcp = [{}]\n",
        ports.join(", ")
    );
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let rules = RulesDir::new(&lab, &rules)?;
    let daemon = gateway(&lab, &rules, &[])?;
    let (connected, _) = resolve_and_connect(&lab, "full.cdn.example.test", 443);
    assert!(!connected, "not in the maps, so not open");
    // The answer went without a confirmation (late), nothing stays learned, and the maps are
    // rebuilt to match on the next tick.
    dns_stats_until(&lab, |dns| {
        dns["late"].as_u64() >= Some(1) && dns["learned_now"] == 0
    })?;
    daemon.wait_for_log("policy written again", Duration::from_secs(5))?;
    let failures = daemon
        .logs()
        .iter()
        .filter(|l| l.contains("policy not updated"))
        .count();
    assert_eq!(failures, 1, "said once: {:?}", daemon.logs());
    Ok(())
}

#[test]
fn over_ipv6_an_aaaa_answer_opens_the_ipv6_address() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &["--dns-listen", "[fd00:77::1]:53"])?;
    daemon.wait_for_log("[fd00:77::1]:53", Duration::from_secs(1))?;
    // The client asks the gateway over IPv6 and connects over IPv6.
    lab.client.use_resolver("fd00:77::1")?;
    let (connected, took) = look_up_and_connect(&lab.client, "-6", "v6.cdn.example.test", 443);
    assert!(connected && took < Duration::from_millis(800), "{took:?}");
    let entry = learned_entry(&lab, |e| e["address"] == WEB_A_V6)?;
    assert_eq!(entry["service"], "lab-cdn");
    Ok(())
}

#[test]
fn on_a_host_with_tc_its_own_lookups_through_loopback_open_the_way() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let upstream = format!("{DNS_V4}:53");
    let daemon = Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &[
            "--rules",
            rules.path(),
            "--tc",
            &lab.gw_wan,
            "--dns-listen",
            "127.0.0.1:53",
            "--dns-upstream",
            &upstream,
            "--resolver",
            &upstream,
        ],
    )?;
    daemon.wait_for_log("answering DNS on 127.0.0.1:53", Duration::from_secs(5))?;
    // The host's own programs resolve through the forwarder on loopback; the forwarder's
    // queries to the upstream pass TC (its port 53 is allowed), the learned address opens.
    lab.gw.use_resolver("127.0.0.1")?;
    let (connected, took) = look_up_and_connect(&lab.gw, "-4", "host.cdn.example.test", 443);
    assert!(connected && took < Duration::from_millis(800), "{took:?}");
    assert!(
        !lab.gw.connects(WEB_B_V4, 443, 1),
        "an unlisted address stays closed"
    );
    Ok(())
}

#[test]
fn what_an_answer_taught_just_before_a_kill_9_is_kept_by_the_restart() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 600)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &[])?;
    // The answer is journaled before it goes: a kill at once, well inside the second the state
    // file may lag behind, loses nothing.
    let addresses = resolve(&lab, "portal.mdm.example.test");
    daemon.signal("KILL")?;
    assert!(
        addresses.iter().any(|a| a == WEB_B_V4),
        "answered {addresses:?}"
    );
    daemon.wait_exit(Duration::from_secs(5))?;
    let daemon = gateway(&lab, &rules, &[])?;
    assert!(
        daemon.logs().iter().any(|l| l.contains("0 removed)")),
        "the restart closed something: {:?}",
        daemon.logs()
    );
    assert!(
        lab.client.connects(WEB_B_V4, 443, 2),
        "open after the restart"
    );
    let entry = learned_entry(&lab, |e| e["address"] == WEB_B_V4)?;
    assert_eq!(entry["name"], "portal.mdm.example.test");
    Ok(())
}

#[test]
fn a_restarted_daemon_answers_while_its_programs_are_verified_and_what_it_learns_holds_at_once(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 600)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &[])?;
    daemon.signal("KILL")?;
    daemon.wait_exit(Duration::from_secs(5))?;
    assert!(
        !lab.client.connects(WEB_A_V4, 443, 1),
        "closed before the name is asked"
    );

    // Asked as the new daemon starts, not once it is ready: the forwarder answers as soon as
    // the adopted maps hold the policy, while the programs may still be in the verifier. The
    // answer's address must be open for the very first SYN (a retransmission takes a second),
    // whichever program, the killed daemon's or this one's, is attached at that moment.
    let upstream = format!("{DNS_V4}:53");
    let args = gateway_args(&lab, &rules, "10.77.0.1:53", &upstream);
    let daemon = Daemon::spawn(&lab.gw.name, &lab.pin_path(), &args)?;
    // Until the new daemon has bound the port, a query is refused at once: ask again.
    let mut answered = Vec::new();
    assert!(
        eventually(Duration::from_secs(10), || {
            answered = resolve(&lab, "one.mdm.example.test");
            !answered.is_empty()
        }),
        "never answered"
    );
    assert_eq!(answered, [WEB_A_V4]);
    let started = std::time::Instant::now();
    let connected = lab.client.connects(WEB_A_V4, 443, 3);
    let took = started.elapsed();
    assert!(
        connected && took < Duration::from_millis(800),
        "connected {connected} in {took:?}"
    );
    daemon.wait_for_log("enforcing", Duration::from_secs(10))?;
    let (answering, adopted) = answering_and_adopting(&daemon);
    assert!(
        answering.is_some() && adopted.is_some() && answering < adopted,
        "DNS is answered before the programs are attached again: {:?}",
        daemon.logs()
    );
    assert!(lab.client.connects(WEB_A_V4, 443, 2), "open once enforcing");
    Ok(())
}

#[test]
fn a_restart_over_a_filter_another_build_attached_answers_dns_only_once_its_programs_are(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 600)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &[])?;
    // The state file names the object whose programs are attached: make it another build's.
    let flat = lab.pin_path().trim_matches('/').replace('/', "_");
    let state_file = std::path::Path::new("/run/egress-filter").join(format!("{flat}.json"));
    assert!(
        eventually(Duration::from_secs(3), || std::fs::read_to_string(
            &state_file
        )
        .is_ok_and(|s| s.contains("\"programs\""))),
        "the state file never named the attached programs"
    );
    daemon.signal("KILL")?;
    daemon.wait_exit(Duration::from_secs(5))?;
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&state_file)?)?;
    state["programs"] = "another build".into();
    std::fs::write(&state_file, serde_json::to_string(&state)?)?;

    // Its programs might read the maps otherwise than this build writes them: an answer given
    // before this build's programs are attached might open nothing for the first SYN.
    let daemon = gateway(&lab, &rules, &[])?;
    let (answering, adopted) = answering_and_adopting(&daemon);
    assert!(
        daemon
            .logs()
            .iter()
            .any(|l| l.contains("attached by another build"))
            && adopted.is_some()
            && answering > adopted,
        "DNS waits for this build's programs: {:?}",
        daemon.logs()
    );
    let (connected, took) = resolve_and_connect(&lab, "one.mdm.example.test", 443);
    assert!(connected && took < Duration::from_millis(800), "{took:?}");
    Ok(())
}

/// The log lines (their positions) where a restarted gateway began answering DNS and where it
/// adopted the pinned link: which came first.
fn answering_and_adopting(daemon: &Daemon) -> (Option<usize>, Option<usize>) {
    let logs = daemon.logs();
    let line_of = |needle: &str| logs.iter().position(|l| l.contains(needle));
    (
        line_of("answering DNS on 10.77.0.1:53"),
        line_of("adopted the pinned link"),
    )
}
