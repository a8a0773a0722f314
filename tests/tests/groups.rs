//! Client groups end to end: a real daemon on the lab's gateway gives two clients on one LAN
//! different allow-lists by their source addresses, names the group in drop events and
//! `explain`, and a reload that renames and reorders the groups keeps each client's rights
//! exactly as the new rules say. On a gateway with two LANs each LAN's group gets its own
//! services, and a client claiming the other LAN's addresses gets nothing; grouped by interface
//! instead, a LAN that appears later joins its group, and a client's claimed address changes
//! nothing even with the source check off. On a Kubernetes-like
//! node (`filter_tests::node`) pods get their groups' verdicts as they come, go and come back,
//! across a `kill -9`. Needs root, nftables and python3-scapy (`cargo xtask setup`).

use std::time::{Duration, SystemTime};

use filter_tests::{
    daemon::Daemon,
    lab::{
        eventually, Lab, Lan, Netns, RulesDir, CLIENT_V4, CLIENT_V6, WEB_A_V4, WEB_A_V6, WEB_B_V4,
        WEB_B_V6,
    },
    node::Node,
};

/// Laptops reach web A, phones web B; both reach web A on 8080. The LAN is 10.77.0.0/24: the
/// laptops are its lower half, the phones its upper half.
const RULES: &str = r#"
[[group]]
name = "laptops"
sources = ["10.77.0.0/25"]

[[group]]
name = "phones"
sources = ["10.77.0.128/25"]

[[service]]
name = "laptop-web"
source = "test"
cidrs = ["198.51.100.10/32"]
tcp = [443]
groups = ["laptops"]

[[service]]
name = "phone-web"
source = "test"
cidrs = ["198.51.100.20/32"]
tcp = [443]
groups = ["phones"]

[[service]]
name = "both"
source = "test"
cidrs = ["198.51.100.10/32"]
tcp = [8080]
"#;

/// The same clients after a reload: the groups swap their order in the file, and `phones` is
/// renamed `tablets`, which is now allowed web A as well.
const RELOADED: &str = r#"
[[group]]
name = "tablets"
sources = ["10.77.0.128/25"]

[[group]]
name = "laptops"
sources = ["10.77.0.0/25"]

[[service]]
name = "laptop-web"
source = "test"
cidrs = ["198.51.100.10/32"]
tcp = [443]
groups = ["laptops"]

[[service]]
name = "tablet-web"
source = "test"
cidrs = ["198.51.100.10/32", "198.51.100.20/32"]
tcp = [443]
groups = ["tablets"]
"#;

const LAPTOP: &str = "10.77.0.2";
const METRICS: &str = "127.0.0.1:9470";
const PHONE: &str = "10.77.0.130";

/// The packets `stats` counts as dropped from `group`'s sources.
fn dropped_for(stats: &serde_json::Value, group: &str) -> Option<u64> {
    stats["groups"]
        .as_array()
        .and_then(|groups| groups.iter().find(|g| g["group"] == group))
        .and_then(|g| g["dropped_packets"].as_u64())
}

/// `stats` and the metrics count the drops of each group's sources, and none for `default`.
fn drops_are_counted_per_group(lab: &Lab, daemon: &Daemon) -> anyhow::Result<()> {
    let stats = daemon.stats()?;
    let dropped = |group: &str| dropped_for(&stats, group);
    assert!(dropped("phones") > Some(0), "{}", stats["groups"]);
    assert!(dropped("laptops") > Some(0), "{}", stats["groups"]);
    assert_eq!(dropped("default"), Some(0), "{}", stats["groups"]);
    let metrics = lab.gw.exec(&[
        "curl",
        "-s",
        "-m",
        "5",
        &format!("http://{METRICS}/metrics"),
    ])?;
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    let phones_dropped = metrics
        .lines()
        .find(|l| l.starts_with("egress_filter_group_dropped_packets_total{group=\"phones\"}"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<u64>().ok());
    assert_eq!(phones_dropped, dropped("phones"), "{metrics}");
    Ok(())
}

/// `explain --from` a former phone's address answers for its new group, `tablets`.
fn explained_as_a_tablet(daemon: &Daemon, rules: &RulesDir) -> anyhow::Result<()> {
    let explained = daemon.explain(rules.path(), &[WEB_B_V4, "tcp/443", "--from", PHONE])?;
    assert_eq!(explained["group"], "tablets", "{explained}");
    assert_eq!(explained["verdict"], "pass", "{explained}");
    Ok(())
}

#[test]
fn two_groups_on_one_lan_reach_only_their_own_services_across_a_reload() -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    lab.client.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{PHONE}/24"),
        "dev",
        &lab.client_dev(),
        "nodad",
    ])?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &[
            "--rules",
            rules.path(),
            "--xdp",
            &lab.gw_lan,
            "--events",
            "json",
            "--metrics-listen",
            METRICS,
        ],
    )?;
    let reach =
        |source: &str, addr: &str, port: u16| lab.client.connects_from(source, addr, port, 2);
    assert!(reach(LAPTOP, WEB_A_V4, 443), "a laptop reaches its service");
    assert!(
        !reach(LAPTOP, WEB_B_V4, 443),
        "a laptop does not reach the phones'"
    );
    assert!(reach(PHONE, WEB_B_V4, 443), "a phone reaches its service");
    assert!(
        !reach(PHONE, WEB_A_V4, 443),
        "a phone does not reach the laptops'"
    );
    assert!(
        reach(PHONE, WEB_A_V4, 8080) && reach(LAPTOP, WEB_A_V4, 8080),
        "shared service"
    );

    let line = daemon.wait_for_event(
        |l| l.contains(PHONE) && l.contains(WEB_A_V4) && l.contains("\"dport\":443"),
        Duration::from_secs(5),
    )?;
    let event: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(event["group"], "phones", "{line}");
    // Web A has a service for phones, on another port.
    assert_eq!(event["reason"], "port-not-allowed", "{line}");
    assert_eq!(
        event["service"], "both",
        "a service of the phones', not the laptops'"
    );

    drops_are_counted_per_group(&lab, &daemon)?;

    std::fs::write(rules.0.join("lab.toml"), RELOADED)?;
    let reloaded = daemon.reload()?;
    assert!(reloaded.contains("enforcing"), "reload status: {reloaded}");
    assert!(reach(PHONE, WEB_A_V4, 443), "a tablet now reaches web A");
    assert!(reach(PHONE, WEB_B_V4, 443), "and still web B");
    assert!(reach(LAPTOP, WEB_A_V4, 443), "a laptop keeps web A");
    assert!(
        !reach(LAPTOP, WEB_B_V4, 443),
        "a laptop still does not reach web B"
    );
    assert!(!reach(LAPTOP, WEB_A_V4, 8080), "the shared service is gone");

    explained_as_a_tablet(&daemon, &rules)?;

    // Killed, and a group renamed while it is down: the restarted daemon adopts the pinned
    // maps, keeps the numbers of the names that stay (from its state file) and gives the new
    // name a number no group had.
    daemon.signal("KILL")?;
    daemon.wait_exit(Duration::from_secs(5))?;
    std::fs::write(
        rules.0.join("lab.toml"),
        RELOADED
            .replacen("name = \"tablets\"", "name = \"tablets-renamed\"", 1)
            .replace("groups = [\"tablets\"]", "groups = [\"tablets-renamed\"]"),
    )?;
    let restarted = Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &["--rules", rules.path(), "--xdp", &lab.gw_lan],
    )?;
    assert!(
        reach(PHONE, WEB_B_V4, 443),
        "the renamed group keeps its rights"
    );
    assert!(reach(LAPTOP, WEB_A_V4, 443), "a laptop keeps web A");
    assert!(!reach(LAPTOP, WEB_B_V4, 443), "and still not web B");
    drop(restarted);
    Ok(())
}

/// Whether `client` reaches `dst`:`port` over TCP from its address `from`, after checking that
/// `explain --from` gives the same verdict for `from`'s group, `group`.
fn reaches_as_explained(
    daemon: &Daemon,
    rules: &RulesDir,
    client: &Netns,
    (from, group): (&str, &str),
    dst: &str,
    port: u16,
) -> anyhow::Result<bool> {
    let reached = client.connects_from(from, dst, port, 2);
    let explained = daemon.explain(rules.path(), &[dst, &format!("tcp/{port}"), "--from", from])?;
    assert_eq!(explained["group"], group, "{explained}");
    assert_eq!(
        explained["verdict"],
        if reached { "pass" } else { "drop" },
        "explain disagrees with what {from} saw reaching {dst}:{port}: {explained}"
    );
    Ok(reached)
}

/// The first drop event from `src` to `dst`, parsed.
fn drop_event(daemon: &Daemon, src: &str, dst: &str) -> anyhow::Result<serde_json::Value> {
    let (src, dst) = (format!("\"src\":\"{src}\""), format!("\"dst\":\"{dst}\""));
    let line = daemon.wait_for_event(
        |l| l.contains(&src) && l.contains(&dst),
        Duration::from_secs(5),
    )?;
    Ok(serde_json::from_str(&line)?)
}

/// Laptops on LAN 1 (10.77.0.0/24), phones on LAN 2 (10.78.0.0/24); each group reaches its own
/// web host on 443, both reach web A on 8080.
const TWO_LANS: &str = r#"
[[group]]
name = "laptops"
sources = ["10.77.0.0/24", "fd00:77::/64"]

[[group]]
name = "phones"
sources = ["10.78.0.0/24", "fd00:78::/64"]

[[service]]
name = "laptop-web"
source = "test"
cidrs = ["198.51.100.10/32", "2001:db8:1::10/128"]
tcp = [443]
groups = ["laptops"]

[[service]]
name = "phone-web"
source = "test"
cidrs = ["198.51.100.20/32", "2001:db8:1::20/128"]
tcp = [443]
groups = ["phones"]

[[service]]
name = "both"
source = "test"
cidrs = ["198.51.100.10/32", "2001:db8:1::10/128"]
tcp = [8080]
"#;

/// Addresses of the other LAN's subnet that the attackers claim, IPv4 and IPv6.
const SPOOFED_LAPTOP: [&str; 2] = ["10.77.0.50", "fd00:77::50"];
const SPOOFED_PHONE: [&str; 2] = ["10.78.0.50", "fd00:78::50"];

/// Counts at the internet side what each LAN's client sends from the other LAN's addresses
/// (`spoofed_0` to `spoofed_3`, in the order of [`spoof`]), and the phone's SYNs to its own
/// service (`control`).
fn count_spoofed(lab: &Lab, phones: &Lan) -> anyhow::Result<()> {
    let rules: Vec<(String, String)> = spoofed_syns(lab, phones)
        .iter()
        .enumerate()
        .map(|(i, (_, src, dst))| {
            let family = if src.contains(':') { "ip6" } else { "ip" };
            (
                format!("spoofed_{i}"),
                format!("{family} saddr {src} {family} daddr {dst} tcp dport 443"),
            )
        })
        .chain([(
            "control".to_owned(),
            format!("ip saddr {} ip daddr {WEB_B_V4} tcp dport 443", phones.v4),
        )])
        .collect();
    let counters: Vec<(&str, &str)> = rules
        .iter()
        .map(|(n, r)| (n.as_str(), r.as_str()))
        .collect();
    lab.inet.count_arrivals(&counters)
}

/// Each LAN's client claiming the other LAN's addresses, to the other group's service: who
/// sends, from where, to where (TCP 443).
fn spoofed_syns<'a>(lab: &'a Lab, phones: &'a Lan) -> [(&'a Netns, &'static str, &'static str); 4] {
    [
        (&phones.client, SPOOFED_LAPTOP[0], WEB_A_V4),
        (&phones.client, SPOOFED_LAPTOP[1], WEB_A_V6),
        (&lab.client, SPOOFED_PHONE[0], WEB_B_V4),
        (&lab.client, SPOOFED_PHONE[1], WEB_B_V6),
    ]
}

/// Sends one SYN of each of [`spoofed_syns`].
fn spoof(lab: &Lab, phones: &Lan) -> anyhow::Result<()> {
    for (client, src, dst) in spoofed_syns(lab, phones) {
        client.craft(&["syn", src, dst, "443"])?;
    }
    Ok(())
}

/// What arrived of each of [`spoofed_syns`] so far.
fn spoofed(lab: &Lab) -> anyhow::Result<Vec<u64>> {
    std::thread::sleep(Duration::from_millis(300));
    (0..4)
        .map(|i| lab.inet.arrivals(&format!("spoofed_{i}")))
        .collect()
}

/// Every client against the same destinations: its group's service, the other group's, the
/// shared one; `explain --from` agrees with each. Drop events name the group and the LAN.
fn each_client_reaches_its_groups_services(
    lab: &Lab,
    phones: &Lan,
    daemon: &Daemon,
    rules: &RulesDir,
) -> anyhow::Result<()> {
    for (client, from, group, web_a, web_b) in [
        (&lab.client, CLIENT_V4, "laptops", WEB_A_V4, WEB_B_V4),
        (&lab.client, CLIENT_V6, "laptops", WEB_A_V6, WEB_B_V6),
        (
            &phones.client,
            phones.v4.as_str(),
            "phones",
            WEB_A_V4,
            WEB_B_V4,
        ),
        (
            &phones.client,
            phones.v6.as_str(),
            "phones",
            WEB_A_V6,
            WEB_B_V6,
        ),
    ] {
        let reach =
            |dst, port| reaches_as_explained(daemon, rules, client, (from, group), dst, port);
        let (own, other) = if group == "laptops" {
            (web_a, web_b)
        } else {
            (web_b, web_a)
        };
        assert!(reach(own, 443)?, "{from} ({group}) reaches its own service");
        assert!(
            !reach(other, 443)?,
            "{from} ({group}) does not reach the other group's"
        );
        assert!(
            reach(web_a, 8080)?,
            "{from} ({group}) reaches the shared one"
        );
    }
    let event = drop_event(daemon, &phones.v4, WEB_A_V4)?;
    assert_eq!(event["group"], "phones", "{event}");
    assert_eq!(event["iface"], phones.gw_dev.as_str(), "{event}");
    // Web A has a service for phones, on another port.
    assert_eq!(event["reason"], "port-not-allowed", "{event}");
    let event = drop_event(daemon, CLIENT_V6, WEB_B_V6)?;
    assert_eq!(event["group"], "laptops", "{event}");
    assert_eq!(event["iface"], lab.gw_lan.as_str(), "{event}");
    // Only the phones' service covers web B.
    assert_eq!(event["reason"], "no-service", "{event}");
    Ok(())
}

#[test]
fn two_lans_get_their_groups_services_and_a_client_claiming_the_other_lan_gets_nothing(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let phones = lab.add_lan(2)?;
    // The gateway's own reverse-path filter stays out of the way: the filter must not depend on
    // it (it is off on many gateways, and `loose` lets these through).
    for sysctl in [
        "net.ipv4.conf.all.rp_filter=0".to_owned(),
        format!("net.ipv4.conf.{}.rp_filter=0", lab.gw_lan),
        format!("net.ipv4.conf.{}.rp_filter=0", phones.gw_dev),
    ] {
        lab.gw.exec(&["sysctl", "-q", "-w", &sysctl])?;
    }
    count_spoofed(&lab, &phones)?;
    assert!(
        eventually(Duration::from_secs(5), || {
            phones.client.connects(WEB_B_V4, 443, 1) && phones.client.connects(WEB_B_V6, 443, 1)
        }),
        "the second LAN works without the filter"
    );
    // Without the filter a client's packets from the other LAN's addresses are forwarded: the
    // group those addresses are in would be theirs.
    spoof(&lab, &phones)?;
    let open = spoofed(&lab)?;
    assert_eq!(
        open,
        [1, 1, 1, 1],
        "without the filter spoofed sources are forwarded (phone as laptop IPv4, IPv6, laptop \
         as phone IPv4, IPv6)"
    );

    let rules = RulesDir::new(&lab, TWO_LANS)?;
    let pattern = format!("e{}l*", lab.id);
    let daemon = Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &[
            "--rules",
            rules.path(),
            "--xdp",
            &pattern,
            "--events",
            "json",
        ],
    )?;
    // `stats` reads the state file, written within a second of the attachments.
    let both = [lab.gw_lan.clone(), phones.gw_dev.clone()];
    assert!(
        eventually(Duration::from_secs(3), || daemon.attached("xdp").is_ok_and(
            |mut lans| {
                lans.sort();
                lans == both
            }
        )),
        "both LANs attached: {:?}",
        daemon.attached("xdp")
    );
    each_client_reaches_its_groups_services(&lab, &phones, &daemon, &rules)?;

    // The attack: each LAN's client claims the other LAN's addresses. XDP's source check drops
    // them on the LAN they arrive from, before any group is looked at.
    let control = lab.inet.settled_arrivals("control")?;
    spoof(&lab, &phones)?;
    phones.client.craft(&["syn", &phones.v4, WEB_B_V4, "443"])?;
    assert_eq!(spoofed(&lab)?, open, "a spoofed source got out");
    assert!(
        lab.inet.arrivals("control")? > control,
        "the phone's SYN from its own address arrives"
    );
    for (_, src, dst) in spoofed_syns(&lab, &phones) {
        let event = drop_event(&daemon, src, dst)?;
        assert_eq!(event["reason"], "spoofed-source", "{event}");
        let lan = if SPOOFED_LAPTOP.contains(&src) {
            &phones.gw_dev
        } else {
            &lab.gw_lan
        };
        assert_eq!(event["iface"], lan.as_str(), "{event}");
    }
    // The sources the check lets through on every interface (unspecified, link-local) are in
    // no group: `default`, which these rules leave undefined, so not even the service every
    // group has reaches out from them.
    for (src, dst) in [("0.0.0.0", WEB_A_V4), ("fe80::77:50", WEB_A_V6)] {
        phones.client.craft(&["syn", src, dst, "8080"])?;
        let event = drop_event(&daemon, src, dst)?;
        assert_eq!(event["group"], "default", "{event}");
        assert_eq!(event["reason"], "no-service", "{event}");
    }
    let stats = daemon.stats()?;
    assert!(
        dropped_for(&stats, "laptops") > Some(0),
        "{}",
        stats["groups"]
    );
    assert!(
        dropped_for(&stats, "phones") > Some(0),
        "{}",
        stats["groups"]
    );
    drop(daemon);
    drop(phones);
    Ok(())
}

/// The same two LANs grouped by the interface their packets arrive on, the phones' by a
/// pattern: no source prefix anywhere.
fn two_lans_by_interface(lab: &Lab) -> String {
    TWO_LANS
        .replace(
            "sources = [\"10.77.0.0/24\", \"fd00:77::/64\"]",
            &format!("interfaces = [\"{}\"]", lab.gw_lan),
        )
        .replace(
            "sources = [\"10.78.0.0/24\", \"fd00:78::/64\"]",
            &format!("interfaces = [\"e{}l[2-9]\"]", lab.id),
        )
}

#[test]
fn groups_by_interface_hold_whatever_source_a_client_claims_and_follow_a_new_lan(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let rules = RulesDir::new(&lab, &two_lans_by_interface(&lab))?;
    let pattern = format!("e{}l*", lab.id);
    // The source check off: the interface alone must keep a client to its group.
    let daemon = Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &[
            "--rules",
            rules.path(),
            "--xdp",
            &pattern,
            "--events",
            "json",
            "--no-source-check",
        ],
    )?;
    // The phones' LAN appears after the start: its interface joins its group as it is attached.
    let phones = lab.add_lan(2)?;
    for sysctl in [
        "net.ipv4.conf.all.rp_filter=0".to_owned(),
        format!("net.ipv4.conf.{}.rp_filter=0", phones.gw_dev),
    ] {
        lab.gw.exec(&["sysctl", "-q", "-w", &sysctl])?;
    }
    assert!(
        eventually(Duration::from_secs(2), || daemon
            .attached("xdp")
            .is_ok_and(|lans| lans.contains(&phones.gw_dev))),
        "the new LAN is attached"
    );
    assert!(
        eventually(Duration::from_secs(5), || phones
            .client
            .connects(WEB_B_V4, 443, 1)),
        "a phone reaches the phones' service"
    );
    assert!(
        !phones.client.connects(WEB_A_V4, 443, 1),
        "not the laptops'"
    );
    assert!(
        lab.client.connects(WEB_A_V4, 443, 1),
        "a laptop reaches its own"
    );
    assert!(!lab.client.connects(WEB_B_V4, 443, 1), "not the phones'");
    let event = drop_event(&daemon, &phones.v4, WEB_A_V4)?;
    assert_eq!(event["group"], "phones", "{event}");

    // The attack: a phone claims a laptop's address. With no source check it leaves the LAN,
    // but it arrived on the phones' interface: it is a phone's packet, and the laptops'
    // service stays shut.
    lab.inet.count_arrivals(&[(
        "claimed",
        &format!("ip saddr 10.77.0.50 ip daddr {WEB_A_V4} tcp dport 443"),
    )])?;
    phones
        .client
        .craft(&["syn", "10.77.0.50", WEB_A_V4, "443"])?;
    let event = drop_event(&daemon, "10.77.0.50", WEB_A_V4)?;
    assert_eq!(event["group"], "phones", "{event}");
    // Phones reach web A on 8080 only (the shared service).
    assert_eq!(event["reason"], "port-not-allowed", "{event}");
    assert_eq!(
        lab.inet.settled_arrivals("claimed")?,
        0,
        "the claim got out"
    );
    let explained = daemon.explain(
        rules.path(),
        &[
            WEB_A_V4,
            "tcp/443",
            "--from",
            "10.77.0.50",
            "--via",
            &phones.gw_dev,
        ],
    )?;
    assert_eq!(explained["group"], "phones", "{explained}");
    assert_eq!(explained["verdict"], "drop", "{explained}");
    drop(daemon);
    drop(phones);
    Ok(())
}

/// Pods by address: `build` pods (pods 1 and 4) may reach the package mirror (web A), `app`
/// pods (2 and 5) the API (web B); pod 3 is in no group, and the rules leave `default`
/// undefined: it reaches nothing.
const PODS: &str = r#"
[[group]]
name = "build"
sources = ["10.88.1.0/24", "10.88.4.0/24"]

[[group]]
name = "app"
sources = ["10.88.2.0/24", "10.88.5.0/24"]

[[service]]
name = "package-mirror"
source = "test"
cidrs = ["198.51.100.10/32"]
tcp = [443]
groups = ["build"]

[[service]]
name = "api"
source = "test"
cidrs = ["198.51.100.20/32"]
tcp = [443]
groups = ["app"]
"#;

const MIRROR: &str = WEB_A_V4;
const API: &str = WEB_B_V4;

/// How soon a pod's veth that appears must be filtered.
const ATTACH_WITHIN: Duration = Duration::from_secs(1);

/// Asserts pod `n` (at `index` in the node) gets its group's verdicts, and that none of its
/// packets reached the destination it is refused (its internet counter did not move).
fn pod_gets_its_groups_verdict(node: &Node, n: u8, index: usize, when: &str) -> anyhow::Result<()> {
    let (allowed, blocked, counter) = match n {
        1 | 4 => (&[MIRROR][..], &[API][..], "web_b"),
        2 | 5 => (&[API][..], &[MIRROR][..], "web_a"),
        _ => anyhow::bail!("pod {n} has no group in PODS"),
    };
    let before = node.inet.settled_arrivals(counter)?;
    node.assert_reaches(index, allowed, blocked, when);
    assert_eq!(
        node.inet.settled_arrivals(counter)?,
        before,
        "pod {n}: a packet to {} reached it {when}",
        blocked[0]
    );
    Ok(())
}

/// The drop event of pod `n`'s packet to `dst`: judged at its veth's TC ingress, before the
/// node masqueraded it, for its group.
fn pod_dropped_as(
    daemon: &Daemon,
    node: &Node,
    n: u8,
    dst: &str,
    group: &str,
) -> anyhow::Result<()> {
    let event = drop_event(daemon, &Node::pod_address(n), dst)?;
    assert_eq!(event["group"], group, "{event}");
    assert_eq!(event["iface"], node.veth(n).as_str(), "{event}");
    assert_eq!(event["hook"], "tc", "{event}");
    // Only other groups' services cover it: no service of this pod's.
    assert_eq!(event["reason"], "no-service", "{event}");
    Ok(())
}

/// The pod at `index` sends a SYN to `dst` (the mirror, web A, or the API, web B) from `src`, an
/// address of another pod's prefix; returns how many of it arrived. Only one way: the answer
/// would go to the pod that prefix is routed to.
fn spoofed_syn(node: &Node, index: usize, src: &str, dst: &str) -> anyhow::Result<u64> {
    let counter = if dst == MIRROR { "web_a" } else { "web_b" };
    let before = node.inet.settled_arrivals(counter)?;
    node.pods[index].craft(&["syn", src, dst, "443"])?;
    Ok(node.inet.settled_arrivals(counter)? - before)
}

/// Pod `n`'s SYN from `src` to `dst` was dropped at its veth as a spoofed source.
fn pod_spoof_dropped(
    daemon: &Daemon,
    node: &Node,
    n: u8,
    src: &str,
    dst: &str,
) -> anyhow::Result<()> {
    let event = drop_event(daemon, src, dst)?;
    assert_eq!(event["reason"], "spoofed-source", "{event}");
    assert_eq!(event["iface"], node.veth(n).as_str(), "{event}");
    Ok(())
}

#[test]
fn pods_get_their_groups_verdicts_as_they_come_and_go_and_across_kill_9() -> anyhow::Result<()> {
    let mut node = Node::new()?;
    let rules = RulesDir::with_id(&node.id, PODS)?;
    let pods: Vec<usize> = (1..=3).map(|n| node.add_pod(n)).collect::<Result<_, _>>()?;
    // The attack, shown to work without the filter: pod 3, in no group, sends from an address
    // of the build pods' prefix to their mirror, and the node forwards it.
    assert_eq!(
        spoofed_syn(&node, pods[2], "10.88.1.50", MIRROR)?,
        1,
        "without the filter the node forwards a pod's packet from another pod's prefix"
    );
    let daemon = node.start(rules.path(), &["--events", "json"])?;
    pod_gets_its_groups_verdict(&node, 1, pods[0], "at start")?;
    pod_gets_its_groups_verdict(&node, 2, pods[1], "at start")?;
    node.assert_reaches(pods[2], &[], &[MIRROR, API], "in no group, with no default");
    for (n, dst, group) in [
        (1, API, "build"),
        (2, MIRROR, "app"),
        (3, MIRROR, "default"),
        (3, API, "default"),
    ] {
        pod_dropped_as(&daemon, &node, n, dst, group)?;
    }
    for (n, dst, group) in [(1, MIRROR, "build"), (2, API, "app"), (3, API, "default")] {
        let explained = daemon.explain(
            rules.path(),
            &[dst, "tcp/443", "--from", &Node::pod_address(n)],
        )?;
        assert_eq!(explained["group"], group, "{explained}");
        let verdict = if n == 3 { "drop" } else { "pass" };
        assert_eq!(explained["verdict"], verdict, "{explained}");
    }
    // What the internet saw came from the node's address: the filter judged the pods' own
    // addresses at their veths, before the node masqueraded them.
    node.assert_masqueraded()?;
    let stats = daemon.stats()?;
    for group in ["build", "app", "default"] {
        assert!(
            dropped_for(&stats, group) > Some(0),
            "{group}: {}",
            stats["groups"]
        );
    }

    // The attack, with the filter: dropped at the veth, before any group is looked at.
    assert_eq!(spoofed_syn(&node, pods[2], "10.88.1.50", MIRROR)?, 0);
    pod_spoof_dropped(&daemon, &node, 3, "10.88.1.50", MIRROR)?;

    // A build pod created while the daemon runs tries the API as soon as it can send.
    let api_before = node.inet.settled_arrivals("web_b")?;
    let created = SystemTime::now();
    let fourth = node.add_pod(4)?;
    assert!(
        !node.pods[fourth].connects(API, 443, 1),
        "a new build pod's first connection to the API"
    );
    assert_eq!(
        node.inet.settled_arrivals("web_b")?,
        api_before,
        "the new build pod's first SYN reached the API"
    );
    let attached_after =
        daemon.logged_after(&format!("TC ingress attached to {}", node.veth(4)), created)?;
    eprintln!("pod 4: attached {attached_after:?} after its veth was created");
    assert!(attached_after < ATTACH_WITHIN, "{attached_after:?}");
    pod_gets_its_groups_verdict(&node, 4, fourth, "created while the daemon runs")?;
    pod_dropped_as(&daemon, &node, 4, API, "build")?;
    // Its veth checks sources once the daemon has read the pod's route (README: about a
    // second after the veth appears); by now, seconds later, it refuses the app pods' prefix.
    let mut got_through = 0;
    assert!(
        eventually(Duration::from_secs(5), || {
            let arrived = spoofed_syn(&node, fourth, "10.88.2.50", API).unwrap_or(1);
            got_through += arrived;
            arrived == 0
        }),
        "a new pod's veth never refused another group's prefix"
    );
    eprintln!(
        "pod 4: {got_through} spoofed SYNs got through before its veth refused them, {:?} after \
         its creation",
        created.elapsed()?
    );
    pod_spoof_dropped(&daemon, &node, 4, "10.88.2.50", API)?;

    // An app pod deleted and created again keeps its group's verdict.
    node.delete_pod_veth(2)?;
    daemon.wait_for_log("let go: the interface vanished", ATTACH_WITHIN * 5)?;
    node.add_pod(2)?;
    pod_gets_its_groups_verdict(&node, 2, pods[1], "after its veth was created again")?;

    // kill -9, and an app pod created while no daemon runs: the restart adopts the pinned
    // filter and gives the new pod its group's policy.
    daemon.signal("KILL")?;
    daemon.wait_exit(Duration::from_secs(5))?;
    pod_gets_its_groups_verdict(&node, 1, pods[0], "while the daemon is dead")?;
    let fifth = node.add_pod(5)?;
    let restarted = node.start(rules.path(), &["--events", "json"])?;
    restarted.wait_for_log("adopted the pinned link", Duration::from_secs(1))?;
    pod_gets_its_groups_verdict(&node, 5, fifth, "created while the daemon was down")?;
    pod_dropped_as(&restarted, &node, 5, MIRROR, "app")?;
    assert_eq!(spoofed_syn(&node, fifth, "10.88.1.51", MIRROR)?, 0);
    pod_spoof_dropped(&restarted, &node, 5, "10.88.1.51", MIRROR)?;
    pod_gets_its_groups_verdict(&node, 1, pods[0], "after the restart")?;
    pod_gets_its_groups_verdict(&node, 4, fourth, "after the restart")?;
    node.assert_reaches(pods[2], &[], &[MIRROR, API], "after the restart");
    let mut veths = restarted.attached("tc-ingress")?;
    veths.sort();
    assert_eq!(veths, (1..=5).map(|n| node.veth(n)).collect::<Vec<_>>());
    node.assert_masqueraded()?;
    drop(daemon);
    drop(restarted);
    Ok(())
}
