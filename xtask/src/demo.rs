//! `cargo xtask demo`: egress-filter on a gateway in a lab of network namespaces, with the
//! shipped rules, a real DNS server on the simulated internet, allowed and blocked traffic, the
//! live drop events, a wildcard name learned from the client's own DNS answer, and the final
//! counters. Everything it creates is removed at the end, also when a step fails.
//!
//! ```text
//!  client ──(lan)── gateway: egress-filter, XDP on lan, ──(wan)── internet: dnsmasq + listeners
//!  (resolver: the gateway)   DNS forwarder on 10.77.0.1:53
//! ```

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

use crate::{release_binary, run_cmd, workspace_root};

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

pub(crate) fn run() -> anyhow::Result<()> {
    let binary = release_binary()?;
    let lab = DemoLab::new()?;
    let result = lab.play(&binary, &workspace_root().join("rules"));
    drop(lab);
    result
}

struct DemoLab {
    id: String,
    children: Vec<Child>,
}

impl DemoLab {
    fn ns(&self, role: &str) -> String {
        format!("ef-demo-{}-{role}", self.id)
    }

    fn pin_path(&self) -> String {
        format!("/sys/fs/bpf/ef-demo-{}", self.id)
    }

    fn client_etc(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(self.ns("client"))
    }

    fn exec(&self, role: &str, args: &[&str]) -> anyhow::Result<()> {
        let ns = self.ns(role);
        let out = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args(args)
            .output()?;
        ensure!(
            out.status.success(),
            "{} in {ns}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    fn spawn(&mut self, role: &str, args: &[&str]) -> anyhow::Result<()> {
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.children.push(child);
        Ok(())
    }

    fn new() -> anyhow::Result<Self> {
        let mut lab = Self {
            id: format!("{:x}", std::process::id()),
            children: Vec::new(),
        };
        println!(
            "== building the lab (namespaces {}, {}, {})",
            lab.ns("client"),
            lab.ns("gw"),
            lab.ns("inet")
        );
        for role in ["client", "gw", "inet"] {
            ip(&["netns", "add", &lab.ns(role)])?;
            lab.exec(role, &["ip", "link", "set", "lo", "up"])?;
        }
        let (lan, wan) = (format!("efd{}l", lab.id), format!("efd{}w", lab.id));
        ip(&[
            "link",
            "add",
            "lan0",
            "netns",
            &lab.ns("client"),
            "type",
            "veth",
            "peer",
            "name",
            &lan,
            "netns",
            &lab.ns("gw"),
        ])?;
        ip(&[
            "link",
            "add",
            &wan,
            "netns",
            &lab.ns("gw"),
            "type",
            "veth",
            "peer",
            "name",
            "wan0",
            "netns",
            &lab.ns("inet"),
        ])?;
        for (role, dev, addr) in [
            ("client", "lan0", "10.77.0.2/24"),
            ("gw", lan.as_str(), "10.77.0.1/24"),
            ("gw", wan.as_str(), "192.0.2.1/24"),
            ("inet", "wan0", "192.0.2.2/24"),
        ] {
            lab.exec(role, &["ip", "addr", "add", addr, "dev", dev])?;
            lab.exec(role, &["ip", "link", "set", dev, "up"])?;
        }
        for addr in [
            "198.51.100.10",
            "198.51.100.11",
            "198.51.100.12",
            "198.51.100.13",
            "198.51.100.14",
            "198.51.100.66",
            "203.0.113.53",
            "203.0.113.99",
        ] {
            lab.exec(
                "inet",
                &["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"],
            )?;
        }
        lab.exec(
            "client",
            &["ip", "route", "add", "default", "via", "10.77.0.1"],
        )?;
        lab.exec("gw", &["ip", "route", "add", "default", "via", "192.0.2.2"])?;
        lab.exec(
            "inet",
            &["ip", "route", "add", "10.77.0.0/24", "via", "192.0.2.1"],
        )?;
        lab.exec("gw", &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        lab.start_internet()?;
        Ok(lab)
    }

    /// dnsmasq answering the demo names, and a TCP listener for every attempt.
    fn start_internet(&mut self) -> anyhow::Result<()> {
        let mut dnsmasq = vec![
            "dnsmasq".to_owned(),
            "--keep-in-foreground".into(),
            "--no-resolv".into(),
            "--no-hosts".into(),
            "--conf-file=/dev/null".into(),
            "--bind-interfaces".into(),
            "--listen-address=203.0.113.53".into(),
            "--user=root".into(),
            "--pid-file=".into(),
            "--local=/#/".into(),
            "--local-ttl=60".into(),
        ];
        dnsmasq.extend(
            DNS_RECORDS
                .iter()
                .map(|(name, addr)| format!("--host-record={name},{addr}")),
        );
        dnsmasq.push(format!(
            "--address=/{}/{}",
            WILDCARD_DOMAIN.0, WILDCARD_DOMAIN.1
        ));
        let dnsmasq: Vec<&str> = dnsmasq.iter().map(String::as_str).collect();
        self.spawn("inet", &dnsmasq)?;
        for (_, addr, port, _) in ATTEMPTS {
            self.spawn("inet", &["nc", "-lk", "-n", addr, &port.to_string()])?;
        }
        self.spawn("inet", &["nc", "-lk", "-n", WILDCARD_DOMAIN.1, "443"])?;
        println!(
            "   the internet side runs dnsmasq on 203.0.113.53 answering {} names and everything \
             under {}, and TCP listeners",
            DNS_RECORDS.len(),
            WILDCARD_DOMAIN.0
        );
        // `ip netns exec` shows the client this resolv.conf: its resolver is the gateway.
        let etc = self.client_etc();
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("resolv.conf"), "nameserver 10.77.0.1\n")?;
        println!("   the client's resolver is the gateway, 10.77.0.1 (as DHCP option 6 would set)");
        Ok(())
    }

    fn play(&self, binary: &std::path::Path, rules: &std::path::Path) -> anyhow::Result<()> {
        println!("\n== egress-filter check --rules rules/");
        run_cmd(Command::new(binary).args(["check", "--rules"]).arg(rules))?;

        let lan = format!("efd{}l", self.id);
        println!("\n== starting egress-filter on the gateway: XDP on {lan}, shipped rules, DNS via the simulated internet");
        let mut daemon = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns("gw")))
            .arg(binary)
            .args(["run", "--rules"])
            .arg(rules)
            .args([
                "--xdp",
                &lan,
                "--resolver",
                "203.0.113.53:53",
                "--dns-listen",
                "10.77.0.1:53",
                "--dns-upstream",
                "203.0.113.53:53",
                "--pin-path",
                &self.pin_path(),
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start egress-filter")?;
        let stdout = daemon.stdout.take().context("stdout")?;
        let stderr = daemon.stderr.take().context("stderr")?;
        let events = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("   event │ {line}");
            }
        });
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let logs = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                println!("   log   │ {line}");
                if line.contains("enforcing") {
                    let _sent = ready_tx.send(());
                }
            }
        });
        let outcome = (|| -> anyhow::Result<()> {
            ready_rx
                .recv_timeout(Duration::from_mins(1))
                .context("egress-filter did not start within a minute")?;
            println!("\n== the client connects");
            let mut wrong = Vec::new();
            for (name, addr, port, expect) in ATTEMPTS {
                let started = Instant::now();
                let ok = Command::new("ip")
                    .args([
                        "netns",
                        "exec",
                        &self.ns("client"),
                        "nc",
                        "-z",
                        "-n",
                        "-w",
                        "2",
                        addr,
                        &port.to_string(),
                    ])
                    .status()
                    .is_ok_and(|s| s.success());
                println!(
                    "   {:<26} {addr:>15}:{port:<5} {}  ({} ms)",
                    name,
                    if ok { "connected" } else { "blocked  " },
                    started.elapsed().as_millis()
                );
                if ok != *expect {
                    wrong.push(format!("{name} {addr}:{port}"));
                }
                // Let the event line print before the next attempt.
                std::thread::sleep(Duration::from_millis(300));
            }
            self.look_up_and_connect(&mut wrong);
            println!("\n== egress-filter learned (what the client's DNS answers opened)");
            // The state file behind it is written every second.
            std::thread::sleep(Duration::from_millis(1_200));
            run_cmd(Command::new(binary).args(["learned", "--pin-path", &self.pin_path()]))?;
            println!("\n== egress-filter stats");
            run_cmd(Command::new(binary).args(["stats", "--pin-path", &self.pin_path()]))?;
            if !wrong.is_empty() {
                bail!("unexpected verdicts: {}", wrong.join(", "));
            }
            Ok(())
        })();
        println!("\n== stopping egress-filter (SIGTERM: detach and unpin)");
        let _term = Command::new("kill")
            .args(["-TERM", &daemon.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(daemon.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _killed = daemon.kill();
        let _reaped = daemon.wait();
        let _joined = (events.join(), logs.join());
        outcome?;
        println!("\n== done: every connection got the verdict the shipped rules give it");
        Ok(())
    }

    /// The client resolves names through the gateway's forwarder and connects at once.
    fn look_up_and_connect(&self, wrong: &mut Vec<String>) {
        println!("\n== the client looks names up through the gateway, then connects");
        for (name, port, expect) in LOOKUPS {
            let started = Instant::now();
            let ok = Command::new("ip")
                .args(["netns", "exec", &self.ns("client"), "nc", "-z", "-w", "2"])
                .args([*name, &port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            println!(
                "   {name:<26} {:>15}:{port:<5} {}  ({} ms, lookup included)",
                "(via DNS)",
                if ok { "connected" } else { "blocked  " },
                started.elapsed().as_millis()
            );
            if ok != *expect {
                wrong.push(format!("{name}:{port} (looked up)"));
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for DemoLab {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
        let _removed = std::fs::remove_dir_all(self.client_etc());
        for role in ["client", "gw", "inet"] {
            let _deleted = Command::new("ip")
                .args(["netns", "del", &self.ns(role)])
                .status();
        }
        if std::path::Path::new(&self.pin_path()).exists() {
            let binary = workspace_root().join("target/release/egress-filter");
            let _detached = Command::new(binary)
                .args(["detach", "--pin-path", &self.pin_path()])
                .status();
        }
        println!("== lab removed");
    }
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}
