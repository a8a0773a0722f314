//! Client groups: the same destination and port are allowed for one group and not for another,
//! the longest source prefix picks the group, sources in no group get only what `default` is
//! given, and a group never reaches what only other groups may, whatever the packet looks like.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter_common::{groups::DEFAULT_GROUP, Config, Mode, Reason};
use filter_tests::{
    harness::{test_run_interface_groups, Filter, Hook, Outcome, TEST_RUN_IFINDEX},
    packet::Pkt,
};
use filter_user::{
    compile::Resolved,
    maps::InterfaceGroups,
    rules::{groups::group_of, Group, Location},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Laptops and phones share a LAN; a lab range sits inside the phones' prefix; `default` gets
/// plain web to one network only.
const RULES: &str = r#"
[[group]]
name = "laptops"
sources = ["192.0.2.0/25", "2001:db8:ff::/64"]

[[group]]
name = "phones"
sources = ["192.0.2.128/25"]

[[group]]
name = "lab"
sources = ["192.0.2.200/29"]

[[service]]
name = "mdm"
cidrs = ["198.51.100.0/24", "2001:db8:1::/48"]
tcp = [443]

[[service]]
name = "push"
cidrs = ["17.0.0.0/8"]
tcp = [5223]
groups = ["phones"]

[[service]]
name = "laptop-updates"
cidrs = ["203.0.113.0/24", "2001:db8:2::/48"]
tcp = [443]
udp = [443]
groups = ["laptops"]

[[service]]
name = "guest-web"
cidrs = ["198.51.100.0/24"]
tcp = [80]
groups = ["default"]
"#;

const LAPTOP: &str = "192.0.2.10";
const LAPTOP6: &str = "2001:db8:ff::10";
const PHONE: &str = "192.0.2.130";
const LAB: &str = "192.0.2.201";
const GUEST: &str = "10.9.8.7";
const GUEST6: &str = "2001:db8:77::1";

fn tcp(src: &str, dst: &str, port: u16) -> Vec<u8> {
    Pkt::ip(src, dst).tcp(port).build()
}

#[test]
fn each_group_reaches_its_own_services_and_no_other_groups() -> anyhow::Result<()> {
    let (mut filter, _) = Filter::from_rules(RULES)?;
    let cases: [(&str, &str, u16, Reason); 17] = [
        // A service without `groups` applies to every group the rules define...
        (LAPTOP, "198.51.100.7", 443, Reason::Allowed),
        (PHONE, "198.51.100.7", 443, Reason::Allowed),
        (LAB, "198.51.100.7", 443, Reason::Allowed),
        (LAPTOP6, "2001:db8:1::5", 443, Reason::Allowed),
        // ...but not to `default`, which the rules did not define: its sources get only what
        // names `default`, here port 80 to the same network.
        (GUEST, "198.51.100.7", 443, Reason::PortNotAllowed),
        (GUEST, "198.51.100.7", 80, Reason::Allowed),
        (GUEST6, "2001:db8:1::5", 443, Reason::NoService),
        (LAPTOP, "198.51.100.7", 80, Reason::PortNotAllowed),
        // Services with `groups` reach only those groups: another group's destination is no
        // service's, not a wrong port.
        (PHONE, "17.1.2.3", 5223, Reason::Allowed),
        (LAPTOP, "17.1.2.3", 5223, Reason::NoService),
        (GUEST, "17.1.2.3", 5223, Reason::NoService),
        (LAPTOP, "203.0.113.5", 443, Reason::Allowed),
        (LAPTOP6, "2001:db8:2::9", 443, Reason::Allowed),
        (PHONE, "203.0.113.5", 443, Reason::NoService),
        (GUEST6, "2001:db8:2::9", 443, Reason::NoService),
        // The lab's /29 inside the phones' /25 is the lab's: longest match, no inheritance.
        (LAB, "17.1.2.3", 5223, Reason::NoService),
        ("192.0.2.199", "17.1.2.3", 5223, Reason::Allowed),
    ];
    for hook in [Hook::Xdp, Hook::Tc] {
        for (src, dst, port, reason) in cases {
            let outcome = if reason.passes() {
                Outcome::Pass
            } else {
                Outcome::Drop
            };
            assert_eq!(
                filter.judge(hook, &tcp(src, dst, port))?,
                (outcome, reason),
                "{hook:?} {src} -> {dst}:{port}"
            );
        }
    }
    Ok(())
}

#[test]
fn portless_packets_pass_only_where_the_group_has_a_service() -> anyhow::Result<()> {
    let (mut filter, _) = Filter::from_rules(RULES)?;
    for hook in [Hook::Xdp, Hook::Tc] {
        // A later fragment carries no ports: it passes to a destination the group reaches,
        // and to another group's destination it is no service's.
        let fragment = |src: &str| {
            Pkt::ip(src, "203.0.113.5")
                .tcp(443)
                .ipv4_fragment(64, false)
                .build()
        };
        assert_eq!(
            filter.judge(hook, &fragment(LAPTOP))?,
            (Outcome::Pass, Reason::AllowedFragment)
        );
        assert_eq!(
            filter.judge(hook, &fragment(PHONE))?,
            (Outcome::Drop, Reason::NoService)
        );
        // The same for an ICMP error (destination unreachable), which also names no port.
        let unreachable = |src: &str| Pkt::ip(src, "203.0.113.5").icmp(3).build();
        assert_eq!(
            filter.judge(hook, &unreachable(LAPTOP))?,
            (Outcome::Pass, Reason::AllowedIcmpError)
        );
        assert_eq!(
            filter.judge(hook, &unreachable(PHONE))?,
            (Outcome::Drop, Reason::NoService)
        );
    }
    Ok(())
}

#[test]
fn drop_events_name_the_source_group() -> anyhow::Result<()> {
    let (mut filter, rules) = Filter::from_rules(RULES)?;
    let id = |name: &str| {
        rules
            .groups
            .iter()
            .find(|g| g.name == name)
            .map(|g| g.id)
            .expect("defined group")
    };
    filter.drain_events()?;
    for src in [PHONE, LAB, GUEST] {
        filter.judge(Hook::Xdp, &tcp(src, "203.0.113.5", 443))?;
    }
    let groups: Vec<u8> = filter.drain_events()?.iter().map(|e| e.group).collect();
    let expected = [id("phones"), id("lab"), DEFAULT_GROUP];
    assert_eq!(
        groups,
        expected.map(|g| u8::try_from(g).expect("group fits a byte"))
    );
    assert!(
        expected[0] != expected[1] && expected[1] != 0,
        "distinct numbers"
    );
    Ok(())
}

#[test]
fn rules_without_groups_give_every_source_every_service() -> anyhow::Result<()> {
    let (mut filter, rules) = Filter::from_rules(
        "[[service]]\nname = \"mdm\"\ncidrs = [\"198.51.100.0/24\"]\ntcp = [443]\n",
    )?;
    assert!(rules.groups.is_empty());
    for hook in [Hook::Xdp, Hook::Tc] {
        for src in [LAPTOP, PHONE, GUEST] {
            assert_eq!(
                filter.judge(hook, &tcp(src, "198.51.100.7", 443))?,
                (Outcome::Pass, Reason::Allowed),
                "{hook:?} {src}"
            );
        }
    }
    Ok(())
}

#[test]
fn new_groups_take_effect_and_removed_ones_fall_back_to_default() -> anyhow::Result<()> {
    let (mut filter, mut old) = Filter::from_rules(RULES)?;
    assert_eq!(
        filter.judge(Hook::Xdp, &tcp(PHONE, "17.1.2.3", 5223))?,
        (Outcome::Pass, Reason::Allowed)
    );
    // The phones' group is gone and a new one takes part of its prefix; the daemon keeps the
    // numbers of the names that stay and gives the new name one no group had.
    let changed = RULES
        .replace(
            "name = \"phones\"\nsources = [\"192.0.2.128/25\"]",
            "name = \"tablets\"\nsources = [\"192.0.2.192/26\"]",
        )
        .replace("groups = [\"phones\"]", "groups = [\"tablets\"]");
    let mut new = filter_user::rules::Rules::parse_sources(&[(
        std::path::Path::new("changed.toml"),
        changed.as_str(),
    )])?;
    new.keep_group_ids(&old.group_ids());
    let number = |rules: &filter_user::rules::Rules, name: &str| {
        rules.groups.iter().find(|g| g.name == name).map(|g| g.id)
    };
    assert_eq!(number(&new, "laptops"), number(&old, "laptops"));
    assert_eq!(number(&new, "lab"), number(&old, "lab"));
    assert!(
        old.groups
            .iter()
            .all(|g| Some(g.id) != number(&new, "tablets")),
        "a new group takes a number no previous group had"
    );
    filter
        .maps
        .set_groups(&new.groups, test_run_interface_groups(&new.groups));
    filter
        .maps
        .apply(&filter_user::compile::compile(&new, &Resolved::new())?)?;
    old = new;
    assert!(number(&old, "phones").is_none());
    for hook in [Hook::Xdp, Hook::Tc] {
        assert_eq!(
            filter.judge(hook, &tcp(PHONE, "17.1.2.3", 5223))?,
            (Outcome::Drop, Reason::NoService),
            "a former phone is in default now"
        );
        assert_eq!(
            filter.judge(hook, &tcp("192.0.2.195", "17.1.2.3", 5223))?,
            (Outcome::Pass, Reason::Allowed),
            "a tablet"
        );
        assert_eq!(
            filter.judge(hook, &tcp(LAB, "17.1.2.3", 5223))?,
            (Outcome::Drop, Reason::NoService),
            "the lab inside the tablets' prefix stays the lab"
        );
    }
    Ok(())
}

/// The kernel's group search (out of line, without data-dependent branches) against the slow
/// definition, `group_of`, over many nested and disjoint group prefixes of both families: the
/// group of each source is read back from its drop event.
#[test]
fn the_kernel_finds_the_group_the_longest_source_prefix_gives() -> anyhow::Result<()> {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut groups: Vec<Group> = (1..=40)
        .map(|id| Group {
            id,
            name: format!("g{id}"),
            description: String::new(),
            sources: Vec::new(),
            interfaces: Vec::new(),
            file: "random.toml".into(),
            location: Location { line: 1, column: 1 },
        })
        .collect();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..300 {
        // Prefixes inside 10.0.0.0/8 and fd00::/16, lengths 9-32 and 17-128: nested and
        // disjoint ones both occur.
        let v4 = Ipv4Net::new(
            Ipv4Addr::from(0x0a00_0000 | (next() as u32 & 0x00ff_ffff)),
            9 + (next() % 24) as u8,
        )?
        .trunc();
        let v6 = Ipv6Net::new(
            Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(next()) << 48),
            17 + (next() % 112) as u8,
        )?
        .trunc();
        for net in [IpNet::V4(v4), IpNet::V6(v6)] {
            if seen.insert(net) {
                groups[(next() % 40) as usize].sources.push(net);
            }
        }
    }
    let mut filter = Filter::new(&[])?;
    filter.maps.set_config(Config {
        events_per_sec: 1_000_000,
        event_burst: 1_000_000,
        ..Config::new(Mode::Enforce)
    })?;
    filter.maps.set_groups(&groups, InterfaceGroups::new());
    filter
        .maps
        .apply(&filter_user::table::AllowTable::build(&[])?)?;
    filter.drain_events()?;
    let mut sources: Vec<IpAddr> = Vec::new();
    for net in groups.iter().flat_map(|g| &g.sources) {
        // Each prefix's first and last address, and one inside it.
        sources.push(net.network());
        sources.push(net.broadcast());
        sources.push(match net {
            IpNet::V4(n) => {
                Ipv4Addr::from(u32::from(n.network()) | (next() as u32 & !u32::from(n.netmask())))
                    .into()
            }
            IpNet::V6(n) => Ipv6Addr::from(
                u128::from(n.network()) | (u128::from(next()) & !u128::from(n.netmask())),
            )
            .into(),
        });
    }
    sources.extend(
        ["9.255.255.255", "11.0.0.0", "fcff::1", "fd01::1"]
            .map(|a| a.parse::<IpAddr>().expect("address")),
    );
    let mut checked = 0;
    for chunk in sources.chunks(100) {
        for source in chunk {
            let destination = if source.is_ipv4() {
                "198.51.100.1"
            } else {
                "2001:db8:9::1"
            };
            filter.judge(Hook::Xdp, &tcp(&source.to_string(), destination, 443))?;
        }
        let events = filter.drain_events()?;
        assert_eq!(events.len(), chunk.len(), "one event per dropped packet");
        for (source, event) in chunk.iter().zip(events) {
            assert_eq!(
                u32::from(event.group),
                group_of(&groups, *source),
                "source {source}"
            );
            checked += 1;
        }
    }
    assert!(checked > 1_500, "{checked} sources checked");
    Ok(())
}

/// A group by interface: the "wired" group names the loopback device, where the test run's
/// frames arrive, and reaches the push service only; the lab names a source prefix.
const INTERFACE_RULES: &str = r#"
[[group]]
name = "lab"
sources = ["192.0.2.0/24"]

[[group]]
name = "wired"
interfaces = ["lo"]

[[service]]
name = "lab-web"
cidrs = ["203.0.113.0/24"]
tcp = [443]
groups = ["lab"]

[[service]]
name = "push"
cidrs = ["17.0.0.0/8"]
tcp = [5223]
groups = ["wired"]
"#;

#[test]
fn the_interface_a_packet_arrives_on_decides_before_its_source() -> anyhow::Result<()> {
    let (mut filter, rules) = Filter::from_rules(INTERFACE_RULES)?;
    // XDP's test run says the frame arrived on the loopback device: "wired", whatever source it
    // claims, the lab's included. A client cannot take another group's services by forging
    // an address of theirs.
    for (src, dst, port, reason) in [
        ("192.0.2.10", "17.1.2.3", 5223, Reason::Allowed),
        ("192.0.2.10", "203.0.113.5", 443, Reason::NoService),
        (GUEST, "17.1.2.3", 5223, Reason::Allowed),
    ] {
        assert_eq!(
            filter.judge(Hook::Xdp, &tcp(src, dst, port))?.1,
            reason,
            "XDP {src} -> {dst}:{port}"
        );
    }
    // TC's test run leaves the arrival interface unset (0, as for a packet the host sends
    // itself): the source decides.
    for (src, dst, port, reason) in [
        ("192.0.2.10", "203.0.113.5", 443, Reason::Allowed),
        ("192.0.2.10", "17.1.2.3", 5223, Reason::NoService),
        (GUEST, "17.1.2.3", 5223, Reason::NoService),
    ] {
        assert_eq!(
            filter.judge(Hook::Tc, &tcp(src, dst, port))?.1,
            reason,
            "TC {src} -> {dst}:{port}"
        );
    }

    // An interface that appears between reloads joins its group in place; one that vanishes
    // leaves it, and its packets are grouped by source again.
    filter
        .maps
        .set_groups(&rules.groups, InterfaceGroups::new());
    filter
        .maps
        .apply(&filter_user::compile::compile(&rules, &Resolved::new())?)?;
    let lab_to_push = tcp("192.0.2.10", "17.1.2.3", 5223);
    assert_eq!(filter.judge(Hook::Xdp, &lab_to_push)?.1, Reason::NoService);
    let wired = rules
        .groups
        .iter()
        .find(|g| g.name == "wired")
        .map(|g| g.id);
    filter
        .maps
        .follow_interface_groups([(TEST_RUN_IFINDEX, wired.expect("wired"))].into())?;
    assert_eq!(filter.judge(Hook::Xdp, &lab_to_push)?.1, Reason::Allowed);
    filter
        .maps
        .follow_interface_groups(InterfaceGroups::new())?;
    assert_eq!(filter.judge(Hook::Xdp, &lab_to_push)?.1, Reason::NoService);
    Ok(())
}
