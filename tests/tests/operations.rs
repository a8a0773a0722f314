//! Operations end to end: a real Prometheus scrapes the daemon's `/metrics`, `/healthz` follows
//! the policy through a refused and a good reload, systemd's watchdog hears from the loop, and
//! `explain` answers from the running filter. Needs root and the setup's packages (prometheus,
//! curl, dnsmasq, iproute2, netcat-openbsd).

use std::{
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use filter_tests::{
    daemon::Daemon,
    dns::DnsServer,
    lab::{eventually, Lab, Netns, RulesDir, DNS_V4, WEB_A_V4, WEB_B_V4},
};

/// A wildcard learned from DNS, and a CIDR with TCP 443 and UDP 53.
const RULES: &str = r#"
[[service]]
name = "lab-cdn"
source = "test"
hosts = ["*.cdn.example.test"]
tcp = [443]

[[service]]
name = "lab-net"
source = "test"
cidrs = ["198.51.100.20/32"]
tcp = [443]
udp = [53]
"#;

/// Where the daemon serves metrics, inside the gateway's namespace.
const METRICS: &str = "127.0.0.1:9469";
/// Where the test's Prometheus listens, inside the gateway's namespace.
const PROMETHEUS: &str = "127.0.0.1:9090";
/// Nothing covers it: a destination for no-service drops.
const UNCOVERED_V4: &str = "203.0.113.77";

/// The gateway, XDP on the LAN side, answering the LAN's DNS, serving metrics.
fn gateway(lab: &Lab, rules: &RulesDir, env: &[(&str, &str)]) -> anyhow::Result<Daemon> {
    lab.client.use_resolver("10.77.0.1")?;
    let upstream = format!("{DNS_V4}:53");
    let args = [
        "--rules",
        rules.path(),
        "--xdp",
        &lab.gw_lan,
        "--dns-listen",
        "10.77.0.1:53",
        "--dns-upstream",
        &upstream,
        "--resolver",
        &upstream,
        "--metrics-listen",
        METRICS,
    ];
    Daemon::start_with_env(&lab.gw.name, &lab.pin_path(), &args, env)
}

/// The simulated internet's DNS: every name below cdn.example.test is WEB_A.
fn upstream(lab: &Lab) -> anyhow::Result<(DnsServer, std::path::PathBuf)> {
    let hosts = std::env::temp_dir().join(format!("ef-ops-hosts-{}", lab.id));
    std::fs::write(&hosts, "")?;
    let server = DnsServer::start_with_options(
        &hosts,
        300,
        format!("{DNS_V4}:53").parse()?,
        &lab.inet.name,
        &[format!("--address=/cdn.example.test/{WEB_A_V4}")],
    )?;
    Ok((server, hosts))
}

/// `curl` in `ns`: the status code and the body.
fn http_get(ns: &Netns, url: &str) -> anyhow::Result<(u16, String)> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "curl", "-s", "-m", "5"])
        .args(["-w", "\n%{http_code}", url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').context("no status code from curl")?;
    Ok((code.trim().parse()?, body.to_owned()))
}

/// Sends `count` UDP datagrams from the client to `address:port`, from one socket (each `nc -u`
/// run may exit before it sends: a count must be exact).
fn send_udp(lab: &Lab, address: &str, port: u16, count: usize) -> anyhow::Result<()> {
    let script = format!(
        "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         for _ in range({count}):\n    s.sendto(b'probe', ('{address}', {port}))\n"
    );
    lab.client.exec(&["/usr/bin/python3", "-c", &script])?;
    Ok(())
}

/// A Prometheus server in the gateway's namespace, scraping the daemon every second.
struct Prometheus {
    child: Child,
    dir: std::path::PathBuf,
}

impl Prometheus {
    fn start(ns: &Netns) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("ef-prometheus-{}", ns.name));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: egress-filter\n    static_configs:\n      \
                 - targets: ['{METRICS}']\n"
            ),
        )?;
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "prometheus"])
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROMETHEUS}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start prometheus (installed by cargo xtask setup)")?;
        Ok(Self { child, dir })
    }

    /// The value of an instant query's single result, if there is exactly one.
    fn query(ns: &Netns, query: &str) -> Option<f64> {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.name, "curl", "-s", "-m", "5", "-G"])
            .arg(format!("http://{PROMETHEUS}/api/v1/query"))
            .args(["--data-urlencode", &format!("query={query}")])
            .output()
            .ok()?;
        let answer: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let results = answer["data"]["result"].as_array()?;
        match results.as_slice() {
            [only] => only["value"][1].as_str()?.parse().ok(),
            _ => None,
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn a_real_prometheus_scrapes_drops_per_reason_and_the_dns_hold_time() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let (_dns, hosts) = upstream(&lab)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &[])?;

    // The exposition is valid for Prometheus' own linter.
    let (status, exposition) = http_get(&lab.gw, &format!("http://{METRICS}/metrics"))?;
    assert_eq!(status, 200);
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(
        &mut promtool.stdin.take().context("promtool stdin")?,
        exposition.as_bytes(),
    )?;
    let lint = promtool.wait_with_output()?;
    let complaints =
        String::from_utf8_lossy(&lint.stdout).into_owned() + &String::from_utf8_lossy(&lint.stderr);
    assert!(
        lint.status.success() && complaints.trim().is_empty(),
        "promtool check metrics: {complaints}"
    );

    let prometheus = Prometheus::start(&lab.gw)?;
    // Known traffic: 4 datagrams to a covered address on a port no rule lists, 3 to an address
    // nothing covers, and one lookup of a listed wildcard through the forwarder.
    send_udp(&lab, WEB_B_V4, 9999, 4)?;
    send_udp(&lab, UNCOVERED_V4, 9999, 3)?;
    let looked_up = lab
        .client
        .exec(&["getent", "ahostsv4", "a.cdn.example.test"])?;
    assert!(String::from_utf8_lossy(&looked_up.stdout).contains(WEB_A_V4));

    let on_lan = format!("interface=\"{}\",hook=\"xdp\"", lab.gw_lan);
    let expectations = [
        (
            format!("egress_filter_packets_total{{{on_lan},reason=\"port-not-allowed\"}}"),
            4.0,
        ),
        (
            format!("egress_filter_packets_total{{{on_lan},reason=\"no-service\"}}"),
            3.0,
        ),
        (
            "egress_filter_dns_learned_addresses_total{event=\"learned\"}".to_owned(),
            1.0,
        ),
        (
            "egress_filter_dns_answer_hold_seconds_count".to_owned(),
            1.0,
        ),
        ("egress_filter_enforcing".to_owned(), 1.0),
    ];
    for (query, expected) in &expectations {
        let mut last = None;
        let reached = eventually(Duration::from_secs(30), || {
            last = Prometheus::query(&lab.gw, query);
            last == Some(*expected)
        });
        assert!(
            reached,
            "Prometheus has {query} = {last:?}, expected {expected}; daemon logs:\n{}",
            daemon.logs().join("\n")
        );
    }
    // The hold time was measured, and is far below the forwarder's one-second limit.
    let held = Prometheus::query(&lab.gw, "egress_filter_dns_answer_hold_seconds_sum")
        .context("no hold-time sum")?;
    assert!(held > 0.0 && held < 1.0, "held {held} s");
    drop(prometheus);
    std::fs::remove_file(hosts)?;
    Ok(())
}

#[test]
fn healthz_follows_a_refused_and_a_good_reload_while_the_watchdog_hears_the_loop(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let (_dns, hosts) = upstream(&lab)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &[("WATCHDOG_USEC", "1000000")])?;
    let healthz = format!("http://{METRICS}/healthz");
    let metrics = format!("http://{METRICS}/metrics");

    assert_eq!(
        http_get(&lab.gw, &healthz)?,
        (200, "enforcing\n".to_owned())
    );
    // Half the watchdog's second: several pings within two seconds.
    assert!(
        eventually(Duration::from_secs(3), || daemon
            .notifications()
            .iter()
            .filter(|n| n.contains("WATCHDOG=1"))
            .count()
            >= 3),
        "watchdog pings: {:?}",
        daemon.notifications()
    );

    let file = rules.0.join("lab.toml");
    std::fs::write(&file, "[[service]]\nname = \"broken\"\ntcp = [\"https\"]\n")?;
    daemon.reload()?;
    let (status, why) = http_get(&lab.gw, &healthz)?;
    assert_eq!(status, 503, "{why}");
    assert!(
        why.contains("reload refused") && why.contains("lab.toml"),
        "{why}"
    );
    let (_, text) = http_get(&lab.gw, &metrics)?;
    assert!(
        text.contains("egress_filter_policy_reloads_total{result=\"failure\"} 1"),
        "{text}"
    );
    assert!(text.contains("egress_filter_enforcing 0"), "{text}");
    // The previous policy still runs.
    assert!(lab.client.connects(WEB_B_V4, 443, 2));

    std::fs::write(&file, RULES)?;
    daemon.reload()?;
    assert_eq!(
        http_get(&lab.gw, &healthz)?,
        (200, "enforcing\n".to_owned())
    );
    let (_, text) = http_get(&lab.gw, &metrics)?;
    assert!(
        text.contains("egress_filter_policy_reloads_total{result=\"success\"} 1"),
        "{text}"
    );
    std::fs::remove_file(hosts)?;
    Ok(())
}

#[test]
fn explain_answers_from_the_running_filter_with_each_origin() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let (_dns, hosts) = upstream(&lab)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let daemon = gateway(&lab, &rules, &[])?;

    // Covered by a CIDR, with its file and line.
    let covered = daemon.explain(rules.path(), &[WEB_B_V4, "tcp/443"])?;
    assert_eq!(covered["verdict"], "pass", "{covered}");
    assert_eq!(covered["reason"], "allowed");
    assert_eq!(covered["allowed_by"], "lab-net");
    assert!(covered["answered_from"]
        .as_str()
        .is_some_and(|f| f.contains("running")));
    let origin = &covered["covered_by"][0]["origin"];
    assert_eq!(origin["kind"], "cidr", "{covered}");
    assert_eq!(origin["line"], 11, "{covered}");

    // The same address on a port no rule lists.
    let wrong_port = daemon.explain(rules.path(), &[WEB_B_V4, "tcp/80"])?;
    assert_eq!(wrong_port["verdict"], "drop");
    assert_eq!(wrong_port["reason"], "port-not-allowed");

    // Nothing covers it.
    let uncovered = daemon.explain(rules.path(), &[UNCOVERED_V4, "tcp/443"])?;
    assert_eq!(uncovered["reason"], "no-service");
    assert_eq!(uncovered["covered_by"], serde_json::json!([]));

    // Before a lookup the wildcard's address is closed; after it, learned with its expiry.
    let before = daemon.explain(rules.path(), &[WEB_A_V4, "tcp/443"])?;
    assert_eq!(before["reason"], "no-service", "{before}");
    lab.client
        .exec(&["getent", "ahostsv4", "device.cdn.example.test"])?;
    let mut learned = serde_json::Value::Null;
    assert!(
        eventually(Duration::from_secs(5), || {
            learned = daemon
                .explain(rules.path(), &[WEB_A_V4, "tcp/443"])
                .unwrap_or_default();
            learned["reason"] == "allowed"
                && learned["covered_by"][0]["origin"]["kind"] == "learned"
        }),
        "{learned}"
    );
    let origin = &learned["covered_by"][0]["origin"];
    assert_eq!(origin["name"], "device.cdn.example.test", "{learned}");
    assert!(origin["expires_in_secs"].as_u64().is_some_and(|s| s > 0));
    assert_eq!(learned["allowed_by"], "lab-cdn");
    std::fs::remove_file(hosts)?;
    Ok(())
}
