//! Interfaces that come and go: a gateway's LAN deleted and created again (by exact name and by
//! pattern), and a Kubernetes-like node whose pods' veths appear, vanish and reappear, filtered
//! with `--tc-ingress PATTERN`, including across a `kill -9` of the daemon. Needs root.
//!
//! ```text
//!  pod N ──(eth0 │ pXXXxN)── node ──(uplink)── inet
//!  10.88.N.2        10.88.N.1     192.0.2.1   192.0.2.2; hosts 198.51.100.10 (allowed :443),
//!                                                         198.51.100.20 (blocked)
//! ```

use std::time::{Duration, Instant, SystemTime};

use filter_tests::{
    daemon::Daemon,
    lab::{
        address, eventually, sh, unique_id, Lab, Netns, RulesDir, WEB_A_443, WEB_A_V4, WEB_B_V4,
    },
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

/// Waits (bounded) for the log line holding `needle` and returns how long after `since` the
/// daemon wrote it, by the timestamp it starts with: the test may have been busy meanwhile.
fn logged_after(daemon: &Daemon, needle: &str, since: SystemTime) -> anyhow::Result<Duration> {
    daemon.wait_for_log(needle, Duration::from_secs(5))?;
    let line = daemon
        .logs()
        .into_iter()
        .rfind(|l| l.contains(needle))
        .expect("just seen");
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let at = humantime::parse_rfc3339_weak(stamp.trim_end_matches('Z'))?;
    Ok(at.duration_since(since).unwrap_or(Duration::ZERO))
}

/// The attachments `stats` reports for `hook`, as interface names.
fn attached(daemon: &Daemon, hook: &str) -> anyhow::Result<Vec<String>> {
    let stats = daemon.stats()?;
    Ok(stats["interfaces"]["attached"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["hook"] == hook)
        .filter_map(|a| a["iface"].as_str().map(str::to_owned))
        .collect())
}

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
        .count_arrivals(&[("blocked", "ip daddr 198.51.100.20")])?;
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
        logged_after(&daemon, &format!("XDP attached to {}", lab.gw_lan), created)?;
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

/// A node with an uplink to the simulated internet, and pods on veths of their own.
struct Node {
    id: String,
    host: Netns,
    inet: Netns,
    pods: Vec<Netns>,
    listeners: Vec<std::process::Child>,
}

impl Node {
    fn new() -> anyhow::Result<Self> {
        let id = unique_id();
        let node = Netns::create(format!("ef-{id}-node"))?;
        let inet = Netns::create(format!("ef-{id}-inet"))?;
        let (uplink, far) = (format!("n{id}u"), format!("n{id}i"));
        sh(&[
            "ip", "link", "add", &uplink, "netns", &node.name, "type", "veth", "peer", "name",
            &far, "netns", &inet.name,
        ])?;
        address(&node, &uplink, &["192.0.2.1/24"])?;
        address(&inet, &far, &["192.0.2.2/24"])?;
        for host in ["198.51.100.10/32", "198.51.100.20/32"] {
            inet.exec(&["ip", "addr", "add", host, "dev", "lo"])?;
        }
        node.exec(&["ip", "route", "add", "default", "via", "192.0.2.2"])?;
        inet.exec(&["ip", "route", "add", "10.88.0.0/16", "via", "192.0.2.1"])?;
        node.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        let mut listeners = Vec::new();
        for host in [WEB_A_V4, WEB_B_V4] {
            listeners.push(inet.spawn(&["nc", "-lk", "-n", host, "443"])?);
        }
        inet.count_arrivals(&[("blocked", "ip daddr 198.51.100.20")])?;
        Ok(Self {
            id,
            host: node,
            inet,
            pods: Vec::new(),
            listeners,
        })
    }

    /// The host side of pod `n`'s veth.
    fn veth(&self, n: u8) -> String {
        format!("p{}x{n}", self.id)
    }

    /// What `--tc-ingress` is given: every pod veth of this node.
    fn pattern(&self) -> String {
        format!("p{}x*", self.id)
    }

    /// Creates pod `n` (its namespace, unless it exists) and its veth, as a CNI plugin does:
    /// the veth first, then addresses and routes; returns when the pod can send.
    fn add_pod(&mut self, n: u8) -> anyhow::Result<usize> {
        let name = format!("ef-{}-pod{n}", self.id);
        let index = if let Some(index) = self.pods.iter().position(|p| p.name == name) {
            index
        } else {
            self.pods.push(Netns::create(name)?);
            self.pods.len() - 1
        };
        let veth = self.veth(n);
        let pod = &self.pods[index];
        sh(&[
            "ip",
            "link",
            "add",
            &veth,
            "netns",
            &self.host.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.name,
        ])?;
        address(&self.host, &veth, &[&format!("10.88.{n}.1/24")])?;
        address(pod, "eth0", &[&format!("10.88.{n}.2/24")])?;
        pod.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.88.{n}.1"),
        ])?;
        Ok(index)
    }

    fn delete_pod_veth(&self, n: u8) -> anyhow::Result<()> {
        self.host.exec(&["ip", "link", "del", &self.veth(n)])?;
        Ok(())
    }

    fn pin_path(&self) -> String {
        format!("/sys/fs/bpf/ef-test-{}", self.id)
    }

    fn start(&self, rules: &str) -> anyhow::Result<Daemon> {
        Daemon::start(
            &self.host.name,
            &self.pin_path(),
            &["--rules", rules, "--tc-ingress", &self.pattern()],
        )
    }

    /// The pod's connections: allowed reaches, blocked does not.
    fn assert_filtered(&self, pod: usize, when: &str) {
        let pod = &self.pods[pod];
        assert!(
            pod.connects(WEB_A_V4, 443, 2),
            "{}: allowed {when}",
            pod.name
        );
        assert!(
            !pod.connects(WEB_B_V4, 443, 1),
            "{}: blocked {when}",
            pod.name
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in &mut self.listeners {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }
}

fn node_rules(node: &Node) -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("ef-rules-{}", node.id));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pods.toml"), WEB_A_443)?;
    Ok(dir)
}

#[test]
fn pods_are_filtered_as_their_veths_come_and_go() -> anyhow::Result<()> {
    let mut node = Node::new()?;
    let rules = node_rules(&node)?;
    let rules_path = rules.to_str().expect("UTF-8 temp dir");
    let first = node.add_pod(1)?;
    let daemon = node.start(rules_path)?;
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
    let attached_after = logged_after(
        &daemon,
        &format!("TC ingress attached to {}", node.veth(2)),
        created,
    )?;
    eprintln!("pod 2: able to send {ready:?} after its veth was created, attached after {attached_after:?}");
    assert!(attached_after < ATTACH_WITHIN, "{attached_after:?}");
    node.assert_filtered(second, "for a pod created while the daemon runs");

    // The same pod's veth deleted and created again, under the same name.
    node.delete_pod_veth(2)?;
    daemon.wait_for_log("let go: the interface vanished", ATTACH_WITHIN)?;
    node.add_pod(2)?;
    node.assert_filtered(second, "after its veth was created again");
    assert_eq!(attached(&daemon, "tc-ingress")?.len(), 2);

    // kill -9: the pinned filter keeps enforcing; a pod created while no daemon runs is
    // attached by the next start (the adopt path).
    daemon.signal("KILL")?;
    daemon.wait_exit(Duration::from_secs(5))?;
    node.assert_filtered(first, "while the daemon is dead");
    let third = node.add_pod(3)?;
    let restarted = node.start(rules_path)?;
    restarted.wait_for_log("adopted the pinned link", Duration::from_secs(1))?;
    node.assert_filtered(third, "for a pod created while the daemon was down");
    node.assert_filtered(first, "after the restart");
    let mut veths = attached(&restarted, "tc-ingress")?;
    veths.sort();
    assert_eq!(veths, [node.veth(1), node.veth(2), node.veth(3)]);

    assert_eq!(
        node.inet.arrivals("blocked")?,
        0,
        "no packet to the blocked destination ever left the node"
    );
    drop(daemon);
    drop(restarted);
    let _removed = std::fs::remove_dir_all(rules);
    Ok(())
}
