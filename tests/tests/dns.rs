//! DNS awareness end to end: the client's resolver is the gateway, the gateway's daemon forwards
//! to a real dnsmasq on the simulated internet and opens what the answers say, before the client
//! sees them. Needs root and the setup's packages (iproute2, netcat-openbsd, dnsmasq).

use std::{
    process::Command,
    time::{Duration, Instant},
};

use filter_tests::{
    daemon::{binary, Daemon},
    dns::DnsServer,
    lab::{eventually, Lab, Netns, RulesDir, DNS_V4, WEB_A_V4, WEB_A_V6, WEB_B_V4},
};

/// Two wildcards, both on 443: polling resolves neither, only answers teach them.
const RULES: &str = r#"
[[service]]
name = "lab-cdn"
source = "test"
hosts = ["*.cdn.example.test"]
tcp = [443]

[[service]]
name = "lab-portal"
source = "test"
hosts = ["*.mdm.example.test"]
tcp = [443]
"#;

/// The simulated internet's DNS: every name below cdn.example.test is WEB_A, v4 and v6 (a
/// wildcard), the
/// portal is a CNAME to a name no rule lists, tracker.example.net is WEB_B, and one and two
/// below mdm.example.test are WEB_A and WEB_B.
struct Upstream {
    _server: DnsServer,
    hosts_file: std::path::PathBuf,
}

impl Upstream {
    fn start(lab: &Lab, ttl: u32) -> anyhow::Result<Self> {
        let hosts_file = std::env::temp_dir().join(format!("ef-dns-hosts-{}", lab.id));
        std::fs::write(
            &hosts_file,
            format!(
                "{WEB_B_V4} edge.unlisted.test\n{WEB_B_V4} tracker.example.net\n\
                 {WEB_A_V4} one.mdm.example.test\n{WEB_B_V4} two.mdm.example.test\n"
            ),
        )?;
        let server = DnsServer::start_with_options(
            &hosts_file,
            ttl,
            format!("{DNS_V4}:53").parse()?,
            &lab.inet.name,
            &[
                format!("--address=/cdn.example.test/{WEB_A_V4}"),
                format!("--address=/cdn.example.test/{WEB_A_V6}"),
                "--cname=portal.mdm.example.test,edge.unlisted.test".into(),
            ],
        )?;
        Ok(Self {
            _server: server,
            hosts_file,
        })
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        let _removed = std::fs::remove_file(&self.hosts_file);
    }
}

/// The gateway with XDP on its LAN side answering the LAN's DNS.
fn gateway(lab: &Lab, rules: &RulesDir, extra: &[&str]) -> anyhow::Result<Daemon> {
    lab.client.use_resolver("10.77.0.1")?;
    let upstream = format!("{DNS_V4}:53");
    let mut args = vec![
        "--rules",
        rules.path(),
        "--xdp",
        &lab.gw_lan,
        "--events",
        "json",
        "--dns-listen",
        "10.77.0.1:53",
        "--dns-upstream",
        &upstream,
        // Polling asks the same server (else the host's resolver, unreachable from the lab).
        "--resolver",
        &upstream,
    ];
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&lab.gw.name, &lab.pin_path(), &args)?;
    daemon.wait_for_log("answering DNS on 10.77.0.1:53", Duration::from_secs(5))?;
    Ok(daemon)
}

/// Resolves `name` in the client namespace and connects to it on `port` (IPv4): the name is
/// looked up through the gateway and the connection starts right after the answer. Returns
/// whether it connected and how long the whole took.
fn resolve_and_connect(lab: &Lab, name: &str, port: u16) -> (bool, Duration) {
    look_up_and_connect(&lab.client, "-4", name, port)
}

/// The same from any namespace, over `family` ("-4" or "-6").
fn look_up_and_connect(ns: &Netns, family: &str, name: &str, port: u16) -> (bool, Duration) {
    let started = Instant::now();
    let connected = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nc", family, "-z", "-w", "3"])
        .args([name, &port.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    (connected, started.elapsed())
}

/// The addresses `name` resolves to in the client namespace (empty when it does not resolve).
fn resolve(lab: &Lab, name: &str) -> Vec<String> {
    lab.client
        .exec(&["getent", "ahostsv4", name])
        .map(|out| {
            let mut addrs: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
                .collect();
            addrs.dedup();
            addrs
        })
        .unwrap_or_default()
}

/// `egress-filter VERB --pin-path PIN --json`, parsed.
fn query(lab: &Lab, verb: &str) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(binary()?)
        .args([verb, "--pin-path", &lab.pin_path(), "--json"])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{verb}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Waits (bounded: the state file is written every second) until `learned` lists an entry
/// `matching`, and returns it.
fn learned_entry(
    lab: &Lab,
    matching: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let learned = query(lab, "learned")?;
        if let Some(entry) = learned
            .as_array()
            .and_then(|a| a.iter().find(|e| matching(e)))
        {
            return Ok(entry.clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "not learned: {learned}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits (bounded: counters alone reach the state file every 5 s) until `stats` shows DNS
/// counters that satisfy `check`.
fn dns_stats_until(lab: &Lab, check: impl Fn(&serde_json::Value) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let stats = query(lab, "stats")?;
        if check(&stats["dns"]) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "stats never showed it: {stats}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

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
