//! End to end: real TCP connections through a gateway (XDP on its LAN side, forwarding) and from
//! a host (TC on its uplink), in namespaces each test creates. Needs root and the setup's
//! packages (iproute2, netcat-openbsd, dnsmasq, bpftool).

use std::{os::unix::fs::symlink, time::Duration};

use anyhow::Context as _;

use filter_tests::{
    daemon::{binary, Daemon},
    dns::DnsServer,
    lab::{
        eventually, sh, Lab, RulesDir, CLIENT_V4, DNS_V4, WEB_A_443, WEB_A_V4, WEB_A_V6, WEB_B_V4,
        WEB_B_V6,
    },
};

/// WEB_A_443 with tcp/8080 added.
const WEB_A_443_AND_8080: &str = r#"
[[service]]
name = "lab-web"
source = "test"
cidrs = ["198.51.100.10/32", "2001:db8:1::10/128"]
tcp = [443, 8080]
"#;

fn gateway(lab: &Lab, rules: &RulesDir, extra: &[&str]) -> anyhow::Result<Daemon> {
    let mut args = vec![
        "--rules",
        rules.path(),
        "--xdp",
        &lab.gw_lan,
        "--events",
        "json",
    ];
    args.extend_from_slice(extra);
    Daemon::start(&lab.gw.name, &lab.pin_path(), &args)
}

#[test]
fn xdp_gateway_forwards_listed_connections_and_drops_the_rest() -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &[])?;
    assert!(
        lab.client.connects(WEB_A_V4, 443, 2),
        "listed IPv4 address and port"
    );
    assert!(
        lab.client.connects(WEB_A_V6, 443, 2),
        "listed IPv6 address and port"
    );
    assert!(
        !lab.client.connects(WEB_A_V4, 8080, 1),
        "unlisted port, IPv4"
    );
    assert!(
        !lab.client.connects(WEB_A_V6, 8080, 1),
        "unlisted port, IPv6"
    );
    assert!(
        !lab.client.connects(WEB_B_V4, 443, 1),
        "unlisted address, IPv4"
    );
    assert!(
        !lab.client.connects(WEB_B_V6, 443, 1),
        "unlisted address, IPv6"
    );
    assert!(
        lab.client
            .exec(&["ping", "-c", "1", "-W", "1", "10.77.0.1"])
            .is_ok(),
        "the gateway itself stays reachable"
    );

    let line = daemon.wait_for_event(
        |l| l.contains("\"dport\":8080") && l.contains(WEB_A_V4),
        Duration::from_secs(5),
    )?;
    let event: serde_json::Value = serde_json::from_str(&line)?;
    assert_eq!(event["action"], "drop");
    assert_eq!(event["iface"], lab.gw_lan.as_str());
    assert_eq!(event["proto"], "tcp");
    assert_eq!(event["src"], CLIENT_V4);
    assert_eq!(event["dst"], WEB_A_V4);
    assert_eq!(event["reason"], "port-not-allowed");
    assert_eq!(event["service"], "lab-web");
    assert!(
        event["sport"].as_u64().is_some_and(|p| p > 0)
            && event["ts"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{event}"
    );
    let v6 = daemon.wait_for_event(|l| l.contains(WEB_B_V6), Duration::from_secs(5))?;
    assert!(v6.contains("\"reason\":\"no-service\""), "{v6}");
    Ok(())
}

/// Jumbo frames (MTU 9000 end to end) through XDP in driver mode: a veth runs XDP natively past
/// a page-sized MTU only for a program loaded for multi-buffer frames, which the daemon attaches
/// when driver mode is asked for (the default falls back to generic mode). Listed traffic passes
/// whole, the rest is dropped, and the counters count each frame whole, not its first buffer.
#[test]
fn jumbo_frames_pass_driver_mode_xdp_whole() -> anyhow::Result<()> {
    const SENT: usize = 2_000_000;
    let lab = Lab::new(&[443])?;
    lab.set_mtu(9000)?;
    let rules = RulesDir::new(
        &lab,
        "[[service]]\nname = \"jumbo\"\ncidrs = [\"198.51.100.10/32\"]\ntcp = [9443]\n",
    )?;
    // The default takes generic mode here, and says why.
    let auto = gateway(&lab, &rules, &[])?;
    let (mode, why) = auto.xdp_mode(&lab.gw_lan)?;
    assert_eq!(mode, "generic", "{why}");
    assert!(
        why.contains("--xdp-mode native tries the multi-buffer"),
        "{why}"
    );
    auto.signal("TERM")?;
    assert!(auto.wait_exit(Duration::from_secs(10))?, "a clean exit");
    // Asked for driver mode, the daemon attaches the multi-buffer program.
    let daemon = gateway(&lab, &rules, &["--xdp-mode", "native"])?;
    let (mode, why) = daemon.xdp_mode(&lab.gw_lan)?;
    assert_eq!(mode, "driver", "{why}");
    assert!(why.contains("so the multi-buffer one"), "{why}");
    let received = std::env::temp_dir().join(format!("ef-jumbo-{}", lab.id));
    let _receiver = lab.inet.spawn(&[
        "sh",
        "-c",
        &format!(
            "timeout 30 nc -l -n 198.51.100.10 9443 | wc -c > {}",
            received.display()
        ),
    ])?;
    std::thread::sleep(Duration::from_millis(300));
    lab.client.exec(&[
        "sh",
        "-c",
        &format!("head -c {SENT} /dev/zero | timeout 20 nc -N -n -w 10 198.51.100.10 9443"),
    ])?;
    assert!(
        eventually(Duration::from_secs(10), || {
            std::fs::read_to_string(&received).is_ok_and(|n| n.trim() == SENT.to_string())
        }),
        "every byte arrived: {:?}",
        std::fs::read_to_string(&received)
    );
    let _ = std::fs::remove_file(&received);
    let stats = daemon.stats()?;
    let allowed = stats["reasons"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["reason"] == "allowed")
        .context("an allowed row")?;
    let (packets, bytes) = (
        allowed["packets"].as_u64().unwrap_or(0),
        allowed["bytes"].as_u64().unwrap_or(0),
    );
    // 2 MB in frames of up to 9,014 bytes, besides a few small ones (SYN, FIN, ACKs); a veth's
    // first buffer holds under 4 KiB, so counting only it would stay far below this.
    assert!(
        packets > 0 && bytes >= SENT as u64 && bytes / packets > 4000,
        "{packets} packets, {bytes} bytes allowed: {stats}"
    );
    assert!(
        !lab.client.connects(WEB_B_V4, 443, 1),
        "unlisted traffic is still dropped"
    );
    // A restart adopts the link with the multi-buffer program in it (the plain one would be
    // refused there).
    daemon.signal("KILL")?;
    daemon.wait_exit(Duration::from_secs(5))?;
    let restarted = gateway(&lab, &rules, &["--xdp-mode", "native"])?;
    restarted.wait_for_log("adopted the pinned link", Duration::from_secs(1))?;
    assert_eq!(restarted.xdp_mode(&lab.gw_lan)?.0, "driver");
    assert!(!lab.client.connects(WEB_B_V4, 443, 1), "still enforcing");
    Ok(())
}

#[test]
fn tc_on_an_uplink_filters_the_hosts_own_connections() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let _daemon = Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &["--rules", rules.path(), "--tc", &lab.gw_wan],
    )?;
    assert!(lab.gw.connects(WEB_A_V4, 443, 2));
    assert!(lab.gw.connects(WEB_A_V6, 443, 2));
    assert!(!lab.gw.connects(WEB_B_V4, 443, 1));
    assert!(!lab.gw.connects(WEB_B_V6, 443, 1));
    Ok(())
}

#[test]
fn hostnames_follow_their_dns_answers_with_ttl_and_grace() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let hosts_file = std::env::temp_dir().join(format!("ef-hosts-{}", lab.id));
    std::fs::write(&hosts_file, format!("{WEB_A_V4} mdm.example.test\n"))?;
    let dns = DnsServer::start_with_hosts_file(
        &hosts_file,
        1,
        format!("{DNS_V4}:53").parse()?,
        &lab.inet.name,
    );
    let rules = RulesDir::new(
        &lab,
        "[[service]]\nname = \"mdm\"\nhosts = [\"mdm.example.test\"]\ntcp = [443]\n",
    );
    let result = (|| -> anyhow::Result<()> {
        let (dns, rules) = (dns?, rules?);
        let daemon = gateway(
            &lab,
            &rules,
            &[
                "--resolver",
                &format!("{DNS_V4}:53"),
                "--min-refresh",
                "1",
                "--grace",
                "2",
            ],
        )?;
        assert!(
            lab.client.connects(WEB_A_V4, 443, 2),
            "the resolved address is allowed"
        );
        assert!(
            !lab.client.connects(WEB_B_V4, 443, 1),
            "another address is not"
        );

        // The name moves: the new address is allowed after a refresh, the old one for its grace.
        std::fs::write(&hosts_file, format!("{WEB_B_V4} mdm.example.test\n"))?;
        dns.reload()?;
        let moved = std::time::Instant::now();
        assert!(
            eventually(Duration::from_secs(8), || lab
                .client
                .connects(WEB_B_V4, 443, 1)),
            "the new address is allowed after a refresh; logs:\n{}",
            daemon.logs().join("\n")
        );
        eprintln!("refresh latency (TTL 1 s, --min-refresh 1): the new address was allowed {} ms after the DNS change", moved.elapsed().as_millis());
        assert!(
            eventually(Duration::from_secs(10), || !lab
                .client
                .connects(WEB_A_V4, 443, 1)),
            "the old address is blocked again after TTL plus grace"
        );
        let event = daemon.wait_for_event(|l| l.contains(WEB_A_V4), Duration::from_secs(3))?;
        assert!(event.contains("\"reason\":\"no-service\""), "{event}");
        Ok(())
    })();
    let _removed = std::fs::remove_file(&hosts_file);
    result
}

#[test]
fn audit_mode_passes_everything_and_reports_what_it_would_drop() -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &["--audit"])?;
    assert!(
        lab.client.connects(WEB_A_V4, 8080, 2),
        "audit drops nothing"
    );
    let event = daemon.wait_for_event(|l| l.contains("\"dport\":8080"), Duration::from_secs(5))?;
    assert!(event.contains("\"action\":\"audit\""), "{event}");
    Ok(())
}

#[test]
fn a_killed_daemon_keeps_enforcing_and_a_restart_adopts_it() -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &[])?;
    let second = Daemon::spawn(
        &lab.gw.name,
        &lab.pin_path(),
        &["--rules", rules.path(), "--xdp", &lab.gw_lan],
    );
    let second = second?;
    assert!(
        !second.wait_exit(Duration::from_secs(10))?,
        "a second run on the same pin path must fail"
    );
    assert!(
        second
            .logs()
            .iter()
            .any(|l| l.contains("another egress-filter is running")),
        "{:?}",
        second.logs()
    );

    daemon.signal("KILL")?;
    daemon.wait_exit(Duration::from_secs(5))?;
    assert!(
        !lab.client.connects(WEB_A_V4, 8080, 1),
        "still enforcing after kill -9"
    );
    assert!(lab.client.connects(WEB_A_V4, 443, 2), "and still allowing");

    // A restart with broken rules fails and changes nothing: the programs it verified while it
    // read them were loaded beside the pinned filter, never in its place.
    let broken = RulesDir::with_id(
        &format!("{}-broken", lab.id),
        "[[service]]\nname = \"x\"\ncidrs = [\"198.51.100.10/8\"]\ntcp = [443]\n",
    )?;
    let refused = Daemon::spawn(
        &lab.gw.name,
        &lab.pin_path(),
        &["--rules", broken.path(), "--xdp", &lab.gw_lan],
    )?;
    assert!(
        !refused.wait_exit(Duration::from_secs(10))?,
        "broken rules fail the start"
    );
    assert!(
        refused.logs().iter().any(|l| l.contains("lab.toml:3:10")),
        "{:?}",
        refused.logs()
    );
    assert!(
        std::path::Path::new(&lab.pin_path())
            .join("links")
            .read_dir()?
            .count()
            == 1,
        "the pinned link stays"
    );
    assert!(!lab.client.connects(WEB_A_V4, 8080, 1), "still enforcing");
    assert!(lab.client.connects(WEB_A_V4, 443, 2), "still allowing");

    let restarted = gateway(&lab, &rules, &[])?;
    restarted.wait_for_log("adopted the pinned link", Duration::from_secs(1))?;
    assert!(
        restarted
            .logs()
            .iter()
            .any(|l| l.contains("(0 written, 0 removed)")),
        "adoption rewrote nothing: {:?}",
        restarted.logs()
    );
    assert!(!lab.client.connects(WEB_A_V4, 8080, 1));
    assert!(lab.client.connects(WEB_A_V4, 443, 2));
    drop(daemon);
    Ok(())
}

#[test]
fn with_keep_on_stop_sigterm_leaves_the_filter_enforcing_for_the_next_run() -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &["--keep-on-stop"])?;
    daemon.signal("TERM")?;
    assert!(daemon.wait_exit(Duration::from_secs(10))?, "a clean exit");
    assert!(
        daemon
            .notifications()
            .iter()
            .any(|n| n.contains("STOPPING=1")),
        "{:?}",
        daemon.notifications()
    );
    // Stopped, and the filter still enforces: what a rolling update's next pod adopts.
    assert!(
        !lab.client.connects(WEB_A_V4, 8080, 1),
        "still enforcing after SIGTERM"
    );
    assert!(lab.client.connects(WEB_A_V4, 443, 2), "and still allowing");
    let next = gateway(&lab, &rules, &["--keep-on-stop"])?;
    next.wait_for_log("adopted the pinned link", Duration::from_secs(1))?;
    assert!(!lab.client.connects(WEB_A_V4, 8080, 1));
    // `detach` removes what was kept.
    next.signal("TERM")?;
    assert!(next.wait_exit(Duration::from_secs(10))?);
    let detached = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gw.name))
        .arg(binary()?)
        .args(["detach", "--pin-path", &lab.pin_path()])
        .output()?;
    assert!(
        detached.status.success(),
        "{}",
        String::from_utf8_lossy(&detached.stderr)
    );
    assert!(
        lab.client.connects(WEB_A_V4, 8080, 2),
        "unfiltered after detach"
    );
    Ok(())
}

#[test]
fn sighup_with_a_broken_file_keeps_the_running_policy() -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &[])?;
    std::fs::write(
        rules.0.join("broken.toml"),
        "[[service]]\nname = \"oops\"\ncidrs = [\"198.51.100.0/33\"]\ntcp = [8080]\n",
    )?;
    let status = daemon.reload()?;
    assert!(status.contains("reload refused"), "{status}");
    assert!(
        daemon.logs().iter().any(|l| l.contains("broken.toml:3:10")),
        "the log names file and line"
    );
    assert!(
        lab.client.connects(WEB_A_V4, 443, 2),
        "the old policy still allows"
    );
    assert!(!lab.client.connects(WEB_A_V4, 8080, 1), "and still drops");

    std::fs::write(
        rules.0.join("broken.toml"),
        "[[service]]\nname = \"fixed\"\ncidrs = [\"198.51.100.0/24\"]\ntcp = [8080]\n",
    )?;
    assert_eq!(daemon.reload()?, "enforcing the reloaded rules");
    assert!(
        lab.client.connects(WEB_A_V4, 8080, 2),
        "a good reload is in the kernel once the daemon says it is ready"
    );
    Ok(())
}

#[test]
fn sigterm_leaves_nothing_attached_or_pinned() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &[
            "--rules",
            rules.path(),
            "--xdp",
            &lab.gw_lan,
            "--tc",
            &lab.gw_wan,
        ],
    )?;
    assert!(
        std::path::Path::new(&lab.pin_path())
            .join("links")
            .read_dir()?
            .count()
            == 2,
        "two pinned links"
    );
    daemon.signal("TERM")?;
    assert!(daemon.wait_exit(Duration::from_secs(10))?, "a clean exit");
    assert!(
        !std::path::Path::new(&lab.pin_path()).exists(),
        "the pin path is gone"
    );
    let state = format!(
        "/run/egress-filter/{}.json",
        lab.pin_path().trim_start_matches('/').replace('/', "_")
    );
    assert!(
        !std::path::Path::new(&state).exists(),
        "the state file is gone"
    );
    let net = lab.gw.exec(&["bpftool", "-j", "net", "show"])?;
    let net = String::from_utf8_lossy(&net.stdout);
    assert!(!net.contains("egress_"), "no program attached: {net}");
    assert!(
        lab.client.connects(WEB_B_V4, 443, 2),
        "traffic flows unfiltered again"
    );
    Ok(())
}

/// The verifier's load pins the maps while the rules are still being read: a stop request in
/// that window must leave nothing pinned either.
#[test]
fn sigterm_while_the_rules_are_read_leaves_nothing_pinned() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    // Enough prefixes that reading them takes a good while after the maps are pinned.
    let cidrs: Vec<String> = (0..400_000u32)
        .map(|i| format!("\"10.{}.{}.{}/32\"", i >> 16, (i >> 8) & 0xff, i & 0xff))
        .collect();
    let rules = RulesDir::new(
        &lab,
        &format!(
            "[[service]]\nname = \"big\"\ncidrs = [{}]\ntcp = [443]\n",
            cidrs.join(", ")
        ),
    )?;
    let daemon = Daemon::spawn(
        &lab.gw.name,
        &lab.pin_path(),
        &["--rules", rules.path(), "--xdp", &lab.gw_lan],
    )?;
    // Polled closely: the stop must land while the rules are still being read.
    let maps = std::path::Path::new(&lab.pin_path()).join("maps");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !maps.read_dir().is_ok_and(|mut dir| dir.next().is_some()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the verifier's load pins the maps: {:?}",
            daemon.logs()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    daemon.signal("TERM")?;
    assert!(
        !daemon
            .logs()
            .iter()
            .any(|l| l.contains("hostnames have addresses")),
        "the stop came after the rules were read, so this tests nothing: {:?}",
        daemon.logs()
    );
    assert!(
        !daemon.wait_exit(Duration::from_secs(30))?,
        "a start stopped fails"
    );
    assert!(
        daemon
            .logs()
            .iter()
            .any(|l| l.contains("stopped while starting")),
        "{:?}",
        daemon.logs()
    );
    assert!(
        !std::path::Path::new(&lab.pin_path()).exists(),
        "nothing left pinned"
    );
    assert!(lab.client.connects(WEB_B_V4, 443, 2), "nothing attached");
    Ok(())
}

#[test]
fn bad_rules_at_start_attach_nothing() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let rules = RulesDir::new(
        &lab,
        "[[service]]\nname = \"x\"\ncidrs = [\"198.51.100.10/8\"]\ntcp = [443]\n",
    )?;
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gw.name))
        .arg(binary()?)
        .args([
            "run",
            "--rules",
            rules.path(),
            "--xdp",
            &lab.gw_lan,
            "--pin-path",
            &lab.pin_path(),
        ])
        .output()?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("lab.toml:3:10"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !std::path::Path::new(&lab.pin_path()).exists(),
        "nothing pinned"
    );
    assert!(lab.client.connects(WEB_B_V4, 443, 2), "nothing attached");
    let _ok = sh(&["true"]);
    Ok(())
}

#[test]
fn maps_pinned_by_another_version_are_not_adopted() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    // A counter map of the shape an older build pinned: 25 entries, one per reason.
    let maps = std::path::Path::new(&lab.pin_path()).join("maps");
    std::fs::create_dir_all(&maps)?;
    let pinned = maps.join("REASON_STATS");
    sh(&[
        "bpftool",
        "map",
        "create",
        pinned.to_str().context("UTF-8 pin path")?,
        "type",
        "percpu_array",
        "key",
        "4",
        "value",
        "16",
        "entries",
        "25",
        "name",
        "REASON_STATS",
    ])?;
    let out = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", lab.gw.name))
        .arg(binary()?)
        .args(["run", "--rules", rules.path(), "--xdp", &lab.gw_lan])
        .args(["--pin-path", &lab.pin_path()])
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("REASON_STATS") && stderr.contains("another version"),
        "{stderr}"
    );
    // What was pinned stays as it was (a running filter of that version keeps enforcing), and
    // nothing of this build was attached.
    assert!(pinned.exists());
    assert!(lab.client.connects(WEB_B_V4, 443, 2), "nothing attached");
    std::fs::remove_dir_all(lab.pin_path())?;
    Ok(())
}

/// Lays out `version` of a ConfigMap with one key, `lab.toml`, as the kubelet does: the file in
/// `..<version>/`, swapped in under `..data` by renaming a fresh symlink over it.
fn publish_configmap(dir: &std::path::Path, version: &str, rules: &str) -> anyhow::Result<()> {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data)?;
    std::fs::write(data.join("lab.toml"), rules)?;
    symlink(format!("..{version}"), dir.join("..data_tmp"))?;
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
    if std::fs::symlink_metadata(dir.join("lab.toml")).is_err() {
        symlink("..data/lab.toml", dir.join("lab.toml"))?;
    }
    Ok(())
}

/// `--watch-rules`: rules mounted the way a Kubernetes ConfigMap is, updated the way the kubelet
/// updates one, reload without a signal and reach the kernel.
#[test]
fn a_configmap_update_reloads_the_watched_rules() -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let rules = RulesDir::new(&lab, "")?;
    std::fs::remove_file(rules.0.join("lab.toml"))?;
    publish_configmap(&rules.0, "v1", WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &["--watch-rules"])?;
    assert!(lab.client.connects(WEB_A_V4, 443, 2));
    assert!(!lab.client.connects(WEB_A_V4, 8080, 1), "not listed yet");

    let before = daemon.notifications().len();
    publish_configmap(&rules.0, "v2", WEB_A_443_AND_8080)?;
    std::fs::remove_dir_all(rules.0.join("..v1"))?;
    let ready = daemon.wait_for_notification("READY=1", before, Duration::from_secs(10))?;
    assert!(ready.contains("enforcing the reloaded rules"), "{ready}");
    assert!(
        lab.client.connects(WEB_A_V4, 8080, 2),
        "the updated ConfigMap is in the kernel once the daemon says so"
    );
    Ok(())
}
