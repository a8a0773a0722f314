//! The ways around the filter an outside review found, tried end to end: each attack is first
//! shown to work through the lab's gateway without the filter (so the test proves the attack is
//! real on this kernel), then shown to stop with it, while an allowed control packet still goes.
//! Arrivals are counted by nftables at the earliest hook of the receiving namespace. Needs root,
//! nftables and python3-scapy (`cargo xtask setup`).

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use filter_tests::{
    daemon::Daemon,
    lab::{
        eventually, packet_tool, unique_id, Lab, Netns, RulesDir, CLIENT_V4, CLIENT_V6, WEB_A_443,
        WEB_A_V4, WEB_A_V6, WEB_B_V4, WEB_B_V6,
    },
};

const GW_LAN_V4: &str = "10.77.0.1";
const GW_LAN_V6: &str = "fd00:77::1";

fn gateway(lab: &Lab, rules: &RulesDir, xdp: &[&str]) -> anyhow::Result<Daemon> {
    let mut args = vec!["--rules", rules.path(), "--events", "json"];
    for iface in xdp {
        args.extend(["--xdp", iface]);
    }
    Daemon::start(&lab.gw.name, &lab.pin_path(), &args)
}

#[test]
fn source_routes_through_the_gateway_do_not_leave_it() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    // The gateway honours source routes: the filter must not depend on these being off.
    for sysctl in [
        "net.ipv4.conf.all.accept_source_route=1".to_owned(),
        format!("net.ipv4.conf.{}.accept_source_route=1", lab.gw_lan),
        "net.ipv4.conf.all.rp_filter=0".to_owned(),
        format!("net.ipv4.conf.{}.rp_filter=0", lab.gw_lan),
        "net.ipv6.conf.all.seg6_enabled=1".to_owned(),
        format!("net.ipv6.conf.{}.seg6_enabled=1", lab.gw_lan),
    ] {
        lab.gw.exec(&["sysctl", "-q", "-w", &sysctl])?;
    }
    lab.inet.count_arrivals(&[
        ("routed_v4", "ip saddr 10.77.0.2 tcp dport 8080"),
        ("routed_v6", "ip6 saddr fd00:77::2 tcp dport 8080"),
        (
            "control",
            "ip saddr 10.77.0.2 ip daddr 198.51.100.10 tcp dport 443",
        ),
    ])?;
    let attack = || -> anyhow::Result<()> {
        lab.client
            .craft(&["lsrr", CLIENT_V4, GW_LAN_V4, WEB_B_V4, "8080"])?;
        lab.client
            .craft(&["ssrr", CLIENT_V4, GW_LAN_V4, WEB_B_V4, "8080"])?;
        lab.client
            .craft(&["srh", CLIENT_V6, GW_LAN_V6, WEB_B_V6, "8080"])?;
        Ok(())
    };

    attack()?;
    let (v4_open, v6_open) = (
        lab.inet.settled_arrivals("routed_v4")?,
        lab.inet.arrivals("routed_v6")?,
    );
    assert!(
        v4_open >= 1 && v6_open >= 1,
        "without the filter the source-routed packets must get through, or this test proves \
         nothing: {v4_open} IPv4, {v6_open} IPv6 arrived"
    );

    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &[&lab.gw_lan])?;
    attack()?;
    lab.client.craft(&["syn", CLIENT_V4, WEB_A_V4, "443"])?;
    assert_eq!(
        lab.inet.settled_arrivals("routed_v4")?,
        v4_open,
        "an IPv4 source route via the gateway's own address got out"
    );
    assert_eq!(
        lab.inet.arrivals("routed_v6")?,
        v6_open,
        "a segment routing header via the gateway's own address got out"
    );
    assert!(
        lab.inet.arrivals("control")? >= 1,
        "the allowed SYN arrives"
    );
    daemon.wait_for_event(
        |l| l.contains("\"reason\":\"source-routed\""),
        Duration::from_secs(5),
    )?;
    Ok(())
}

#[test]
fn neighbour_discovery_to_a_global_address_is_not_relayed() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    lab.inet
        .count_arrivals(&[("nd", "ip6 saddr fd00:77::2 icmpv6 type 133-137")])?;
    let attack = || -> anyhow::Result<()> {
        for kind in ["133", "134", "135", "136", "137"] {
            lab.client.craft(&["nd", kind, CLIENT_V6, WEB_B_V6])?;
        }
        Ok(())
    };
    attack()?;
    let open = lab.inet.settled_arrivals("nd")?;
    assert!(
        open >= 3,
        "a Linux router forwards ND messages to a global address ({open} of 5 arrived)"
    );

    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let _daemon = gateway(&lab, &rules, &[&lab.gw_lan])?;
    attack()?;
    assert_eq!(
        lab.inet.settled_arrivals("nd")?,
        open,
        "an ND message got out"
    );
    // Neighbour discovery on the link still works: the client finds the gateway again and
    // reaches the allowed IPv6 address through it.
    lab.client.exec(&["ip", "-6", "neigh", "flush", "all"])?;
    assert!(
        lab.client.connects(WEB_A_V6, 443, 3),
        "IPv6 through the gateway still works"
    );
    Ok(())
}

#[test]
fn the_metadata_address_is_not_reachable_without_a_rule() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    lab.inet
        .exec(&["ip", "addr", "add", "169.254.169.254/32", "dev", "lo"])?;
    let mut metadata = lab
        .inet
        .spawn(&["nc", "-lk", "-n", "169.254.169.254", "80"])?;
    lab.inet.count_arrivals(&[(
        "tunnelled",
        "ip saddr 10.77.0.2 ip daddr 169.254.7.7 ip protocol 4",
    )])?;
    let reachable = eventually(Duration::from_secs(5), || {
        lab.client.connects("169.254.169.254", 80, 1)
    });
    lab.client
        .craft(&["ipip", CLIENT_V4, "169.254.7.7", WEB_B_V4, "8080"])?;
    let tunnelled = lab.inet.settled_arrivals("tunnelled")?;

    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let _daemon = gateway(&lab, &rules, &[&lab.gw_lan])?;
    let blocked = !lab.client.connects("169.254.169.254", 80, 2);
    lab.client
        .craft(&["ipip", CLIENT_V4, "169.254.7.7", WEB_B_V4, "8080"])?;
    let tunnelled_after = lab.inet.settled_arrivals("tunnelled")?;
    let _killed = metadata.kill();
    let _reaped = metadata.wait();
    assert!(reachable, "without the filter 169.254.169.254 is routed");
    assert_eq!(
        tunnelled, 1,
        "without the filter IP-in-IP to 169.254/16 is routed"
    );
    assert!(
        blocked,
        "connect() to 169.254.169.254 got through the gateway"
    );
    assert_eq!(
        tunnelled_after, tunnelled,
        "IP-in-IP to 169.254.7.7 got out"
    );
    Ok(())
}

#[test]
fn the_gateway_itself_is_open_only_on_its_failsafe_ports() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let mut services: Vec<_> = ["22", "8081"]
        .iter()
        .map(|port| lab.gw.spawn(&["nc", "-lk", "-n", GW_LAN_V4, port]))
        .collect::<Result<_, _>>()?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &[&lab.gw_lan])?;
    let ssh = eventually(Duration::from_secs(3), || {
        lab.client.connects(GW_LAN_V4, 22, 1)
    });
    let other = lab.client.connects(GW_LAN_V4, 8081, 1);
    let ping = lab
        .client
        .exec(&["ping", "-c", "1", "-W", "1", GW_LAN_V4])
        .is_ok();
    for service in &mut services {
        let _killed = service.kill();
        let _reaped = service.wait();
    }
    assert!(ssh, "SSH to the gateway is a failsafe port");
    assert!(ping, "ICMP to the gateway is failsafe");
    assert!(
        !other,
        "a service on another port of the gateway is reachable"
    );
    daemon.wait_for_event(
        |l| l.contains("\"dport\":8081") && l.contains("port-not-allowed"),
        Duration::from_secs(5),
    )?;
    Ok(())
}

/// The question behind every `link-scoped` pass: does a Linux router forward packets to these
/// destinations? Asked of the kernel with no filter at all: each is sent in a frame addressed to
/// the gateway's own MAC, the strongest invitation to route it, and must not reach the far side.
#[test]
fn a_linux_router_does_not_forward_link_scoped_destinations() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let json = lab
        .gw
        .exec(&["ip", "-j", "link", "show", "dev", &lab.gw_lan])?;
    let link: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let gw_mac = link[0]["address"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no MAC in {link}"))?
        .to_owned();
    let inet_dev = format!("e{}i", lab.id);
    let json = lab.inet.exec(&[
        "ip", "-j", "-6", "addr", "show", "dev", &inet_dev, "scope", "link",
    ])?;
    let addrs: serde_json::Value = serde_json::from_slice(&json.stdout)?;
    let inet_link_local = addrs[0]["addr_info"]
        .as_array()
        .and_then(|infos| infos.iter().find_map(|info| info["local"].as_str()))
        .ok_or_else(|| anyhow::anyhow!("no link-local address in {addrs}"))?
        .to_owned();
    lab.inet.count_arrivals(&[
        ("v4", "ip saddr 10.77.0.2 tcp dport 9"),
        ("v6", "ip6 saddr fd00:77::2 tcp dport 9"),
        ("control", "ip saddr 10.77.0.2 tcp dport 443"),
    ])?;
    let client_dev = format!("e{}c", lab.id);
    for dst in [
        "255.255.255.255",
        "224.0.0.5",
        "224.0.0.251",
        "ff02::1",
        "ff02::1:2",
        inet_link_local.as_str(),
    ] {
        let src = if dst.contains(':') {
            CLIENT_V6
        } else {
            CLIENT_V4
        };
        lab.client
            .craft(&["l2syn", &client_dev, &gw_mac, src, dst, "9"])?;
    }
    lab.client
        .craft(&["l2syn", &client_dev, &gw_mac, CLIENT_V4, WEB_A_V4, "443"])?;
    assert!(
        lab.inet.settled_arrivals("control")? >= 1,
        "the crafted frames reach the gateway"
    );
    assert_eq!(
        lab.inet.arrivals("v4")?,
        0,
        "an IPv4 link-scoped destination was routed"
    );
    assert_eq!(
        lab.inet.arrivals("v6")?,
        0,
        "an IPv6 link-scoped destination was routed"
    );
    Ok(())
}

/// Anti-spoofing on the usual gateway layout: the LAN address sits on a bridge, XDP on its port.
/// The bridge's subnet must count as the port's, and only it.
#[test]
fn a_lan_client_cannot_send_from_a_source_that_is_not_its_lans() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let bridge = format!("b{}", unique_id());
    for args in [
        vec!["ip", "link", "add", &bridge, "type", "bridge"],
        vec!["ip", "link", "set", &lab.gw_lan, "master", &bridge],
        vec!["ip", "addr", "flush", "dev", &lab.gw_lan],
        vec!["ip", "addr", "add", "10.77.0.1/24", "dev", &bridge],
        vec![
            "ip",
            "addr",
            "add",
            "fd00:77::1/64",
            "dev",
            &bridge,
            "nodad",
        ],
        vec!["ip", "link", "set", &bridge, "up"],
        vec!["sysctl", "-q", "-w", "net.ipv4.conf.all.rp_filter=0"],
        vec![
            "sysctl",
            "-q",
            "-w",
            &format!("net.ipv4.conf.{bridge}.rp_filter=0"),
        ],
    ] {
        lab.gw.exec(&args)?;
    }
    lab.inet.count_arrivals(&[
        ("spoofed", "ip saddr 203.0.113.77 tcp dport 443"),
        ("spoofed_v6", "ip6 saddr 2001:db8:77::9 tcp dport 443"),
    ])?;
    let spoof = || -> anyhow::Result<()> {
        lab.client
            .craft(&["syn", "203.0.113.77", WEB_A_V4, "443"])?;
        lab.client
            .craft(&["syn", "2001:db8:77::9", WEB_A_V6, "443"])?;
        Ok(())
    };
    assert!(
        eventually(Duration::from_secs(5), || {
            lab.client.connects(WEB_A_V4, 443, 1) && lab.client.connects(WEB_A_V6, 443, 1)
        }),
        "the bridged lab works without the filter"
    );
    spoof()?;
    let open = (
        lab.inet.settled_arrivals("spoofed")?,
        lab.inet.arrivals("spoofed_v6")?,
    );
    assert_eq!(
        open,
        (1, 1),
        "without the filter spoofed sources are forwarded"
    );

    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &[&lab.gw_lan])?;
    assert!(lab.client.connects(WEB_A_V4, 443, 2), "a LAN client, IPv4");
    assert!(lab.client.connects(WEB_A_V6, 443, 2), "a LAN client, IPv6");
    spoof()?;
    assert_eq!(
        (
            lab.inet.settled_arrivals("spoofed")?,
            lab.inet.arrivals("spoofed_v6")?
        ),
        open,
        "a spoofed source got out"
    );
    daemon.wait_for_event(|l| l.contains("spoofed-source"), Duration::from_secs(5))?;
    Ok(())
}

/// A persistent TUN device in `ns`, up, with `address`.
fn tun_device(ns: &Netns, name: &str, address: &str) -> anyhow::Result<()> {
    ns.exec(&["ip", "tuntap", "add", "dev", name, "mode", "tun"])?;
    ns.exec(&["ip", "addr", "add", address, "dev", name])?;
    ns.exec(&["ip", "link", "set", name, "up"])?;
    Ok(())
}

#[test]
fn a_tun_lan_device_is_filtered_like_an_ethernet_one() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let tun = format!("t{}", unique_id());
    tun_device(&lab.gw, &tun, "10.88.0.1/24")?;
    lab.inet.count_arrivals(&[
        (
            "allowed",
            "ip saddr 10.88.0.2 ip daddr 198.51.100.10 tcp dport 443",
        ),
        (
            "other_port",
            "ip saddr 10.88.0.2 ip daddr 198.51.100.10 tcp dport 8080",
        ),
        ("other_host", "ip saddr 10.88.0.2 ip daddr 198.51.100.20"),
        ("spoofed", "ip saddr 203.0.113.77"),
    ])?;
    let write = |src: &str| {
        lab.gw.craft(&[
            "tun-write",
            &tun,
            src,
            "198.51.100.10:443",
            "198.51.100.10:8080",
            "198.51.100.20:443",
        ])
    };
    // Without the filter everything the VPN client sends is forwarded.
    write("10.88.0.2")?;
    write("203.0.113.77")?;
    let open: Vec<u64> = ["allowed", "other_port", "other_host", "spoofed"]
        .iter()
        .map(|c| lab.inet.settled_arrivals(c))
        .collect::<Result<_, _>>()?;
    assert_eq!(open, [1, 1, 1, 3], "the unfiltered TUN device forwards all");

    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = gateway(&lab, &rules, &[&lab.gw_lan, &tun])?;
    daemon.wait_for_log(
        &format!("XDP attached to {tun} (a layer-3 device"),
        Duration::from_secs(1),
    )?;
    // Each attachment says which mode it runs in and why: the veth natively, the TUN device
    // in generic mode, the only one that sees its packets.
    let (mode, why) = daemon.xdp_mode(&tun)?;
    assert_eq!(mode, "generic", "{why}");
    assert!(why.contains("a layer-3 device"), "{why}");
    let (mode, why) = daemon.xdp_mode(&lab.gw_lan)?;
    assert_eq!(mode, "driver", "{why}");
    assert!(why.contains("the driver runs XDP natively"), "{why}");
    daemon.wait_for_log(
        &format!("XDP on {tun} runs in generic mode: a layer-3 device"),
        Duration::from_secs(1),
    )?;
    write("10.88.0.2")?;
    write("203.0.113.77")?;
    let filtered: Vec<u64> = ["allowed", "other_port", "other_host", "spoofed"]
        .iter()
        .map(|c| lab.inet.settled_arrivals(c))
        .collect::<Result<_, _>>()?;
    assert_eq!(
        filtered,
        [2, 1, 1, 3],
        "through the filter only the allowed SYN arrives (counts: allowed, other port, other \
         host, spoofed source)"
    );
    let event = daemon.wait_for_event(
        |l| l.contains("198.51.100.20") && l.contains("no-service"),
        Duration::from_secs(5),
    )?;
    assert!(event.contains(&format!("\"iface\":\"{tun}\"")), "{event}");
    daemon.wait_for_event(|l| l.contains("spoofed-source"), Duration::from_secs(5))?;
    Ok(())
}

#[test]
fn tc_on_a_tun_uplink_filters_what_the_host_sends() -> anyhow::Result<()> {
    let host = Netns::create(format!("ef-{}-tunhost", unique_id()))?;
    let tun = format!("t{}", unique_id());
    tun_device(&host, &tun, "10.99.0.1/24")?;
    host.exec(&["ip", "route", "add", "198.51.100.0/24", "dev", &tun])?;
    let rules_dir = std::env::temp_dir().join(format!("ef-rules-{}", host.name));
    std::fs::create_dir_all(&rules_dir)?;
    std::fs::write(rules_dir.join("lab.toml"), WEB_A_443)?;
    let pin = format!("/sys/fs/bpf/ef-test-{}", host.name);
    let daemon = Daemon::start(
        &host.name,
        &pin,
        &[
            "--rules",
            rules_dir.to_str().unwrap_or_default(),
            "--tc",
            &tun,
        ],
    )?;
    daemon.wait_for_log(
        &format!("TC egress attached to {tun} (a layer-3 device"),
        Duration::from_secs(1),
    )?;

    // The VPN's other end: whatever the host sends into the TUN device comes out here.
    let mut reader = Command::new("ip")
        .args(["netns", "exec", &host.name, "/usr/bin/python3"])
        .arg(packet_tool())
        .args(["tun-read", &tun, "4"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(reader.stdout.take().expect("piped")).lines();
    let ready = lines.next().transpose()?;
    assert_eq!(ready.as_deref(), Some("ready"));
    // SYNs only: nothing answers on the other side of the TUN device.
    let _allowed = host.connects(WEB_A_V4, 443, 1);
    let _blocked = host.connects(WEB_B_V4, 443, 1);
    let _other_port = host.connects(WEB_A_V4, 8080, 1);
    let seen: Vec<String> = lines.collect::<Result<_, _>>()?;
    let _reaped = reader.wait();
    let _removed = std::fs::remove_dir_all(&rules_dir);
    drop(daemon);
    assert!(
        seen.iter().any(|l| l == "198.51.100.10 443"),
        "the allowed SYN leaves through the TUN device: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|l| l.starts_with("198.51.100.20") || l.ends_with(" 8080")),
        "a blocked SYN left through the TUN device: {seen:?}"
    );
    Ok(())
}
