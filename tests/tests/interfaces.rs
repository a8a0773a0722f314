//! Interfaces that come and go: a gateway's LAN deleted and created again (by exact name and by
//! pattern), and a Kubernetes-like node whose pods' veths appear, vanish and reappear, filtered
//! with `--tc-ingress PATTERN`, including across a `kill -9` of the daemon. Needs root.
//!
//! ```text
//!  pod N ──(eth0 │ pXXXxN)── node ──(uplink)── inet
//!  10.88.N.2        10.88.N.1     192.0.2.1   192.0.2.2; hosts 198.51.100.10 (allowed :443),
//!                                 masquerade              198.51.100.20 (blocked)
//! ```
//!
//! The node (`filter_tests::node`) is shared with the client-group tests (`tests/groups.rs`).

use std::time::{Duration, Instant, SystemTime};

use filter_tests::{
    daemon::Daemon,
    lab::{eventually, Lab, RulesDir, WEB_A_443, WEB_A_V4, WEB_B_V4},
    node::Node,
};

/// How soon an interface that appears must be filtered.
const ATTACH_WITHIN: Duration = Duration::from_secs(1);

fn gateway(lab: &Lab, rules: &RulesDir, xdp: &str) -> anyhow::Result<Daemon> {
    Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &["--rules", rules.path(), "--xdp", xdp],
    )
}

/// The state file `stats` reads is written once a second.
const STATS_WITHIN: Duration = Duration::from_secs(2);

fn lan_is_filtered_again(by: &str) -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let pattern = format!("e{}l*", lab.id);
    let daemon = gateway(
        &lab,
        &rules,
        if by == "name" { &lab.gw_lan } else { &pattern },
    )?;
    lab.inet
        .count_arrivals(&[("blocked", &format!("ip daddr {WEB_B_V4}"))])?;
    assert!(lab.client.connects(WEB_A_V4, 443, 2), "allowed before");
    assert!(!lab.client.connects(WEB_B_V4, 443, 1), "blocked before");

    lab.delete_lan()?;
    if by == "name" {
        // An exact name that vanished is an error the daemon reports until it is back.
        assert!(
            eventually(STATS_WITHIN, || daemon.stats().is_ok_and(|s| s
                ["interfaces"]["missing"]
                .as_array()
                .is_some_and(|m| m
                    .iter()
                    .any(|i| i["iface"] == lab.gw_lan.as_str())))),
            "the vanished LAN is reported missing: {:?}",
            daemon.stats()
        );
        daemon.wait_for_log("does not exist", ATTACH_WITHIN)?;
    }
    let created = SystemTime::now();
    lab.create_lan_again()?;
    // Straight away, before looking at whether the daemon followed: nothing blocked gets out.
    assert!(
        !lab.client.connects(WEB_B_V4, 443, 1),
        "blocked right after re-creation"
    );
    let attached_after =
        daemon.logged_after(&format!("XDP attached to {}", lab.gw_lan), created)?;
    eprintln!("LAN by {by}: attached again {attached_after:?} after its re-creation began");
    assert!(attached_after < ATTACH_WITHIN, "{attached_after:?}");
    assert!(lab.client.connects(WEB_A_V4, 443, 2), "allowed after");
    assert!(!lab.client.connects(WEB_B_V4, 443, 1), "blocked after");
    assert_eq!(lab.inet.arrivals("blocked")?, 0, "nothing blocked arrived");
    let stats = daemon.stats()?;
    let counts = &stats["interfaces"]["counts"];
    assert!(
        counts["attached"].as_u64() >= Some(2) && counts["released"].as_u64() >= Some(1),
        "counted: {counts}"
    );
    assert!(stats["interfaces"]["missing"]
        .as_array()
        .is_some_and(Vec::is_empty));
    Ok(())
}

#[test]
fn a_lan_deleted_and_created_again_is_filtered_again_by_exact_name() -> anyhow::Result<()> {
    lan_is_filtered_again("name")
}

#[test]
fn a_lan_deleted_and_created_again_is_filtered_again_by_pattern() -> anyhow::Result<()> {
    lan_is_filtered_again("pattern")
}

#[test]
fn pods_are_filtered_as_their_veths_come_and_go() -> anyhow::Result<()> {
    let mut node = Node::new()?;
    let rules = RulesDir::with_id(&node.id, WEB_A_443)?;
    let first = node.add_pod(1)?;
    let daemon = node.start(rules.path(), &[])?;
    node.assert_filtered(first, "for a pod that was there at start");

    // A pod created while the daemon runs: it tries the blocked destination as soon as it can
    // send, and the daemon must have attached within a second.
    let created = SystemTime::now();
    let started = Instant::now();
    let second = node.add_pod(2)?;
    let ready = started.elapsed();
    assert!(
        !node.pods[second].connects(WEB_B_V4, 443, 1),
        "a new pod's first connection to a blocked destination"
    );
    let attached_after =
        daemon.logged_after(&format!("TC ingress attached to {}", node.veth(2)), created)?;
    eprintln!("pod 2: able to send {ready:?} after its veth was created, attached after {attached_after:?}");
    assert!(attached_after < ATTACH_WITHIN, "{attached_after:?}");
    node.assert_filtered(second, "for a pod created while the daemon runs");

    // The same pod's veth deleted and created again, under the same name.
    node.delete_pod_veth(2)?;
    daemon.wait_for_log("let go: the interface vanished", ATTACH_WITHIN)?;
    node.add_pod(2)?;
    node.assert_filtered(second, "after its veth was created again");
    assert_eq!(daemon.attached("tc-ingress")?.len(), 2);

    // kill -9: the pinned filter keeps enforcing; a pod created while no daemon runs is
    // attached by the next start (the adopt path).
    daemon.signal("KILL")?;
    daemon.wait_exit(Duration::from_secs(5))?;
    node.assert_filtered(first, "while the daemon is dead");
    let third = node.add_pod(3)?;
    let restarted = node.start(rules.path(), &[])?;
    restarted.wait_for_log("adopted the pinned link", Duration::from_secs(1))?;
    node.assert_filtered(third, "for a pod created while the daemon was down");
    node.assert_filtered(first, "after the restart");
    let mut veths = restarted.attached("tc-ingress")?;
    veths.sort();
    assert_eq!(veths, [node.veth(1), node.veth(2), node.veth(3)]);

    assert_eq!(
        node.inet.arrivals("web_b")?,
        0,
        "no packet to the blocked destination ever left the node"
    );
    node.assert_masqueraded()?;
    drop(daemon);
    drop(restarted);
    Ok(())
}
