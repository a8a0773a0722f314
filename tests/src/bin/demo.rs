//! `cargo xtask demo`: egress-filter on a gateway in a lab of network namespaces, with the
//! shipped rules, a real DNS server on the simulated internet, allowed and blocked traffic, the
//! live drop events, a wildcard name learned from the client's own DNS answer, and the final
//! counters. It is built from the same lab, DNS server and daemon wrapper as the end-to-end
//! tests, and everything it creates is removed at the end, also when a step fails.
//!
//! ```text
//!  client ──(lan)── gateway: egress-filter, XDP on lan, ──(wan)── internet: dnsmasq + listeners
//!  (resolver: the gateway)   DNS forwarder on 10.77.0.1:53
//! ```
//!
//! Usage: `demo --rules DIR` with `EGRESS_FILTER_BIN` naming the binary (`cargo xtask demo` sets
//! both).

use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use filter_tests::{
    daemon::{binary, Daemon},
    dns::DnsServer,
    lab::{Lab, DNS_V4},
};

/// What the simulated internet answers, and the connections the client tries.
const DNS_RECORDS: &[(&str, &str)] = &[
    ("manage.microsoft.com", "198.51.100.10"),
    ("1-courier.push.apple.com", "198.51.100.11"),
    ("mtalk.google.com", "198.51.100.12"),
    ("login.live.com", "198.51.100.13"),
    ("tracker.example.net", "198.51.100.66"),
];
/// (hostname, address, port, expected to pass)
const ATTEMPTS: &[(&str, &str, u16, bool)] = &[
    ("manage.microsoft.com", "198.51.100.10", 443, true),
    ("1-courier.push.apple.com", "198.51.100.11", 5223, true),
    ("mtalk.google.com", "198.51.100.12", 5228, true),
    ("login.live.com", "198.51.100.13", 443, true),
    ("manage.microsoft.com", "198.51.100.10", 22, false),
    ("tracker.example.net", "198.51.100.66", 443, false),
    ("(no name)", "203.0.113.99", 443, false),
];
/// Every name below this (a `*.mzstatic.com` rule in rules/apple.toml) answers this address:
/// polling cannot know it, the DNS forwarder learns it from the client's own lookup.
const WILDCARD_DOMAIN: (&str, &str) = ("mzstatic.com", "198.51.100.14");
/// (name the client resolves through the gateway, port, expected to pass)
const LOOKUPS: &[(&str, u16, bool)] = &[
    ("is1-ssl.mzstatic.com", 443, true),
    ("tracker.example.net", 443, false),
];

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let rules = match (argv.next().as_deref(), argv.next()) {
        (Some("--rules"), Some(dir)) => PathBuf::from(dir),
        _ => bail!("usage: demo --rules DIR (with EGRESS_FILTER_BIN naming the binary)"),
    };
    println!("== building the lab");
    let mut lab = Lab::new(&[])?;
    println!(
        "   namespaces {}, {}, {}",
        lab.client.name, lab.gw.name, lab.inet.name
    );
    let _dns = start_internet(&mut lab)?;
    let outcome = play(&lab, &rules);
    println!("== lab removed");
    outcome
}

/// dnsmasq answering the demo names, and a TCP listener for every attempt. The client's
/// resolver is the gateway.
fn start_internet(lab: &mut Lab) -> anyhow::Result<(DnsServer, HostsFile)> {
    let hosts: Vec<String> = DNS_RECORDS
        .iter()
        .map(|(name, address)| format!("{address} {name}\n"))
        .collect();
    let hosts = HostsFile::write(&lab.id, &hosts.concat())?;
    let dns = DnsServer::start_with_options(
        &hosts.0,
        60,
        format!("{DNS_V4}:53").parse()?,
        &lab.inet.name,
        &[format!(
            "--address=/{}/{}",
            WILDCARD_DOMAIN.0, WILDCARD_DOMAIN.1
        )],
    )?;
    let mut listening = std::collections::BTreeSet::new();
    for (address, port) in ATTEMPTS
        .iter()
        .map(|(_, address, port, _)| (*address, *port))
        .chain([(WILDCARD_DOMAIN.1, 443)])
    {
        if listening.insert(address) && !lab_has(address) {
            lab.add_internet_host(address)?;
        }
        lab.listen(address, port)?;
    }
    println!(
        "   the internet side runs dnsmasq on {DNS_V4} answering {} names and everything under \
         {}, and TCP listeners",
        DNS_RECORDS.len(),
        WILDCARD_DOMAIN.0
    );
    lab.client.use_resolver("10.77.0.1")?;
    println!("   the client's resolver is the gateway, 10.77.0.1 (as DHCP option 6 would set)");
    Ok((dns, hosts))
}

/// Addresses the lab's internet side has from the start.
fn lab_has(address: &str) -> bool {
    [
        filter_tests::lab::WEB_A_V4,
        filter_tests::lab::WEB_B_V4,
        DNS_V4,
    ]
    .contains(&address)
}

/// The hosts file dnsmasq answers from, removed with the demo.
struct HostsFile(PathBuf);

impl HostsFile {
    fn write(id: &str, contents: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(format!("ef-demo-hosts-{id}"));
        std::fs::write(&path, contents)?;
        Ok(Self(path))
    }
}

impl Drop for HostsFile {
    fn drop(&mut self) {
        let _removed = std::fs::remove_file(&self.0);
    }
}

fn play(lab: &Lab, rules: &std::path::Path) -> anyhow::Result<()> {
    let binary = binary()?;
    let rules_arg = rules.to_str().context("UTF-8 rules path")?;
    println!("\n== egress-filter check --rules rules/");
    show(Command::new(&binary).args(["check", "--rules", rules_arg]))?;

    println!(
        "\n== starting egress-filter on the gateway: XDP on {}, shipped rules, DNS via the \
         simulated internet",
        lab.gw_lan
    );
    let resolver = format!("{DNS_V4}:53");
    let daemon = Daemon::start_echoed(
        &lab.gw.name,
        &lab.pin_path(),
        &[
            "--rules",
            rules_arg,
            "--xdp",
            &lab.gw_lan,
            "--resolver",
            &resolver,
            "--dns-listen",
            "10.77.0.1:53",
            "--dns-upstream",
            &resolver,
        ],
    )?;
    println!("\n== the client connects");
    let mut wrong = Vec::new();
    for (name, address, port, expect) in ATTEMPTS {
        let started = Instant::now();
        let ok = lab.client.connects(address, *port, 2);
        println!(
            "   {name:<26} {address:>15}:{port:<5} {}  ({} ms)",
            verdict(ok),
            started.elapsed().as_millis()
        );
        if ok != *expect {
            wrong.push(format!("{name} {address}:{port}"));
        }
        // Let the event line print before the next attempt.
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("\n== the client looks names up through the gateway, then connects");
    for (name, port, expect) in LOOKUPS {
        let started = Instant::now();
        let ok = lab.client.connects_by_name(name, *port, 2);
        println!(
            "   {name:<26} {:>15}:{port:<5} {}  ({} ms, lookup included)",
            "(via DNS)",
            verdict(ok),
            started.elapsed().as_millis()
        );
        if ok != *expect {
            wrong.push(format!("{name}:{port} (looked up)"));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    println!("\n== egress-filter learned (what the client's DNS answers opened)");
    // The state file behind it is written every second.
    std::thread::sleep(Duration::from_millis(1_200));
    show(Command::new(&binary).args(["learned", "--pin-path", &lab.pin_path()]))?;
    println!("\n== egress-filter stats");
    show(Command::new(&binary).args(["stats", "--pin-path", &lab.pin_path()]))?;
    println!("\n== stopping egress-filter (SIGTERM: detach and unpin)");
    drop(daemon);
    if !wrong.is_empty() {
        bail!("unexpected verdicts: {}", wrong.join(", "));
    }
    println!("\n== done: every connection got the verdict the shipped rules give it");
    Ok(())
}

fn verdict(connected: bool) -> &'static str {
    if connected {
        "connected"
    } else {
        "blocked  "
    }
}

/// Runs a command, its output going straight to the terminal.
fn show(command: &mut Command) -> anyhow::Result<()> {
    println!("+ {command:?}");
    let status = command.status().context("cannot run egress-filter")?;
    anyhow::ensure!(status.success(), "{command:?} failed ({status})");
    Ok(())
}
