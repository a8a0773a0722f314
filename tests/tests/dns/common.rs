//! The DNS lab: the simulated internet's DNS server, the gateway answering the LAN's DNS, and
//! what the client and the daemon's verbs show.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use filter_tests::{
    daemon::{binary, query_json, Daemon},
    dns::DnsServer,
    lab::{Lab, Netns, RulesDir, DNS_V4, WEB_A_V4, WEB_A_V6, WEB_B_V4},
};

/// Two wildcards, both on 443: polling resolves neither, only answers teach them.
pub(crate) const RULES: &str = r#"
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
pub(crate) struct Upstream {
    _server: DnsServer,
    hosts_file: std::path::PathBuf,
}

impl Upstream {
    pub(crate) fn start(lab: &Lab, ttl: u32) -> anyhow::Result<Self> {
        Self::with_hosts(
            lab,
            ttl,
            &format!(
                "{WEB_B_V4} edge.unlisted.test\n{WEB_B_V4} tracker.example.net\n\
                 {WEB_A_V4} one.mdm.example.test\n{WEB_B_V4} two.mdm.example.test\n"
            ),
            &[
                format!("--address=/cdn.example.test/{WEB_A_V4}"),
                format!("--address=/cdn.example.test/{WEB_A_V6}"),
                "--cname=portal.mdm.example.test,edge.unlisted.test".into(),
            ],
        )
    }

    /// A server answering the lines of a hosts file, `hosts`, with dnsmasq's `options` too.
    pub(crate) fn with_hosts(
        lab: &Lab,
        ttl: u32,
        hosts: &str,
        options: &[String],
    ) -> anyhow::Result<Self> {
        let hosts_file = std::env::temp_dir().join(format!("ef-dns-hosts-{}", lab.id));
        std::fs::write(&hosts_file, hosts)?;
        let server = DnsServer::start_with_options(
            &hosts_file,
            ttl,
            format!("{DNS_V4}:53").parse()?,
            &lab.inet.name,
            options,
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
pub(crate) fn gateway(lab: &Lab, rules: &RulesDir, extra: &[&str]) -> anyhow::Result<Daemon> {
    lab.client.use_resolver("10.77.0.1")?;
    let upstream = format!("{DNS_V4}:53");
    let mut args = gateway_args(lab, rules, "10.77.0.1:53", &upstream);
    args.extend_from_slice(extra);
    let daemon = Daemon::start(&lab.gw.name, &lab.pin_path(), &args)?;
    daemon.wait_for_log("answering DNS on 10.77.0.1:53", Duration::from_secs(5))?;
    Ok(daemon)
}

/// `run`'s arguments for the gateway: XDP on its LAN side, JSON events, the forwarder on
/// `listen` asking `upstream`, which polling asks too (else the host's resolver, unreachable from
/// the lab).
pub(crate) fn gateway_args<'a>(
    lab: &'a Lab,
    rules: &'a RulesDir,
    listen: &'a str,
    upstream: &'a str,
) -> Vec<&'a str> {
    vec![
        "--rules",
        rules.path(),
        "--xdp",
        &lab.gw_lan,
        "--events",
        "json",
        "--dns-listen",
        listen,
        "--dns-upstream",
        upstream,
        "--resolver",
        upstream,
    ]
}

/// Resolves `name` in the client namespace and connects to it on `port` (IPv4): the name is
/// looked up through the gateway and the connection starts right after the answer. Returns
/// whether it connected and how long the whole took.
pub(crate) fn resolve_and_connect(lab: &Lab, name: &str, port: u16) -> (bool, Duration) {
    look_up_and_connect(&lab.client, "-4", name, port)
}

/// The same from any namespace, over `family` ("-4" or "-6").
pub(crate) fn look_up_and_connect(
    ns: &Netns,
    family: &str,
    name: &str,
    port: u16,
) -> (bool, Duration) {
    let started = Instant::now();
    let connected = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nc", family, "-z", "-w", "3"])
        .args([name, &port.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    (connected, started.elapsed())
}

/// The addresses `name` resolves to in the client namespace (empty when it does not resolve).
pub(crate) fn resolve(lab: &Lab, name: &str) -> Vec<String> {
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
pub(crate) fn query(lab: &Lab, verb: &str) -> anyhow::Result<serde_json::Value> {
    query_json(&binary()?, verb, &lab.pin_path())
}

/// Waits (bounded: the state file is written every second) until `learned` lists an entry
/// `matching`, and returns it.
pub(crate) fn learned_entry(
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
pub(crate) fn dns_stats_until(
    lab: &Lab,
    check: impl Fn(&serde_json::Value) -> bool,
) -> anyhow::Result<()> {
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
