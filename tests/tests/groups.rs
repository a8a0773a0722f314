//! Client groups end to end: a real daemon on the lab's gateway gives two clients on one LAN
//! different allow-lists by their source addresses, names the group in drop events and
//! `explain`, and a reload that renames and reorders the groups keeps each client's rights
//! exactly as the new rules say. Needs root.

use std::time::Duration;

use filter_tests::{
    daemon::Daemon,
    lab::{Lab, RulesDir, WEB_A_V4, WEB_B_V4},
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

/// `stats` and the metrics count the drops of each group's sources, and none for `default`.
fn drops_are_counted_per_group(lab: &Lab, daemon: &Daemon) -> anyhow::Result<()> {
    let stats = daemon.stats()?;
    let dropped = |group: &str| {
        stats["groups"]
            .as_array()
            .and_then(|groups| groups.iter().find(|g| g["group"] == group))
            .and_then(|g| g["dropped_packets"].as_u64())
    };
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
fn explained_as_a_tablet(lab: &Lab, rules: &RulesDir) -> anyhow::Result<()> {
    let explained = std::process::Command::new(filter_tests::daemon::binary()?)
        .args(["explain", WEB_B_V4, "tcp/443", "--from", PHONE, "--json"])
        .args(["--rules", rules.path(), "--pin-path", &lab.pin_path()])
        .output()?;
    let explained: serde_json::Value = serde_json::from_slice(&explained.stdout)?;
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

    explained_as_a_tablet(&lab, &rules)?;

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
