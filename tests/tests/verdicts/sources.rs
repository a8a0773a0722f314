//! XDP's source check: a source prefix belongs on the interface it arrives on, or the packet is
//! spoofed.

use filter_common::{Config, Mode, Reason};
use filter_tests::{
    harness::{Filter, Hook, Outcome, TEST_RUN_IFINDEX},
    packet::Pkt,
};

use crate::common::{grants, outcome_of, v4, v6, ALLOWED4, ALLOWED6};

/// Writes `sources` and turns the check on, enforcing.
fn check_sources(
    filter: &mut Filter,
    sources: &std::collections::BTreeSet<(u32, ipnet::IpNet)>,
) -> anyhow::Result<()> {
    filter.sources.set(sources)?;
    filter.maps.set_config(Config {
        flags: Config::CHECK_SOURCES,
        ..Config::new(Mode::Enforce)
    })?;
    Ok(())
}

#[test]
fn xdp_drops_sources_that_do_not_belong_on_the_interface() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let foreign = Pkt::ip("203.0.113.9", ALLOWED4).build();
    let own_lan = v4(ALLOWED4).build();
    // Off (an unwritten flag): no source is checked.
    assert_eq!(
        filter.judge(Hook::Xdp, &foreign)?,
        (Outcome::Pass, Reason::Allowed)
    );

    let sources: std::collections::BTreeSet<_> = [
        "192.0.2.0/24",
        "2001:db8:ff::/64",
        "0.0.0.0/32",
        "::/128",
        "fe80::/10",
    ]
    .iter()
    .map(|p| (TEST_RUN_IFINDEX, p.parse().expect("test prefix")))
    .collect();
    check_sources(&mut filter, &sources)?;
    for (name, frame, want) in [
        ("a LAN client", own_lan.clone(), Reason::Allowed),
        (
            "a source from elsewhere",
            foreign.clone(),
            Reason::SpoofedSource,
        ),
        (
            "a forged DNS answer from an upstream's address",
            Pkt::ip("198.51.100.53", ALLOWED4).udp(53, 40000).build(),
            Reason::SpoofedSource,
        ),
        (
            "DHCP discover from 0.0.0.0",
            Pkt::ip("0.0.0.0", "255.255.255.255").udp(68, 67).build(),
            Reason::Dhcp,
        ),
        ("an IPv6 LAN client", v6(ALLOWED6).build(), Reason::Allowed),
        (
            "an IPv6 source from elsewhere",
            Pkt::ip("2001:db8:2::9", ALLOWED6).build(),
            Reason::SpoofedSource,
        ),
        (
            "duplicate address detection from ::",
            Pkt::ip("::", "ff02::1:ff00:1")
                .icmp(135)
                .hop_limit(255)
                .build(),
            Reason::NeighborDiscovery,
        ),
        (
            "a link-local source",
            Pkt::ip("fe80::9", "ff02::2")
                .icmp(133)
                .hop_limit(255)
                .build(),
            Reason::NeighborDiscovery,
        ),
    ] {
        assert_eq!(
            filter.judge(Hook::Xdp, &frame)?,
            (outcome_of(want), want),
            "{name}"
        );
    }
    // TC egress sees what the host itself sends and does not check sources.
    assert_eq!(
        filter.judge(Hook::Tc, &foreign)?,
        (Outcome::Pass, Reason::Allowed)
    );

    // The same prefixes on another interface do not count here.
    let elsewhere = sources
        .iter()
        .map(|(_, p)| (TEST_RUN_IFINDEX + 1, *p))
        .collect();
    filter.sources.set(&elsewhere)?;
    assert_eq!(
        filter.judge(Hook::Xdp, &own_lan)?,
        (Outcome::Drop, Reason::SpoofedSource)
    );
    Ok(())
}

/// TC ingress on a pod's veth checks sources as XDP does: a pod sending with its neighbour's
/// address (to take the neighbour's client group, say) is refused. A veth with no route of its
/// own is written with every source and refuses none.
#[test]
fn a_pods_veth_refuses_its_neighbours_address() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let own: std::collections::BTreeSet<_> = ["10.244.1.5/32", "0.0.0.0/32", "::/128", "fe80::/10"]
        .iter()
        .map(|p| (TEST_RUN_IFINDEX, p.parse().expect("test prefix")))
        .collect();
    check_sources(&mut filter, &own)?;
    let pod = Pkt::ip("10.244.1.5", ALLOWED4).build();
    let neighbour = Pkt::ip("10.244.1.6", ALLOWED4).build();
    assert_eq!(
        filter.judge(Hook::TcIngress, &pod)?,
        (Outcome::Pass, Reason::Allowed)
    );
    assert_eq!(
        filter.judge(Hook::TcIngress, &neighbour)?,
        (Outcome::Drop, Reason::SpoofedSource)
    );
    assert_eq!(
        filter.judge(Hook::Tc, &neighbour)?,
        (Outcome::Pass, Reason::Allowed),
        "TC egress does not check sources"
    );
    let every: std::collections::BTreeSet<_> = ["0.0.0.0/0", "::/0"]
        .iter()
        .map(|p| (TEST_RUN_IFINDEX, p.parse().expect("test prefix")))
        .collect();
    filter.sources.set(&every)?;
    for frame in [&neighbour, &v6(ALLOWED6).build()] {
        assert_eq!(
            filter.judge(Hook::TcIngress, frame)?,
            (Outcome::Pass, Reason::Allowed)
        );
    }
    Ok(())
}

/// An interface with more source prefixes than its slot holds is checked in the tries: the
/// answers stay the same.
#[test]
fn sources_beyond_a_slot_are_checked_in_the_tries() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let many = filter_common::sources::SOURCE_SLOT_PREFIXES + 2;
    let sources: std::collections::BTreeSet<_> = (0..many)
        .map(|i| format!("10.{i}.0.0/16"))
        .chain(["192.0.2.0/24".to_owned()])
        .map(|p| (TEST_RUN_IFINDEX, p.parse().expect("test prefix")))
        .collect();
    check_sources(&mut filter, &sources)?;
    for (name, src, want) in [
        ("a LAN client", "192.0.2.10", Reason::Allowed),
        ("the last of many prefixes", "10.9.1.1", Reason::Allowed),
        (
            "a source from elsewhere",
            "203.0.113.9",
            Reason::SpoofedSource,
        ),
    ] {
        let frame = Pkt::ip(src, ALLOWED4).tcp(443).build();
        assert_eq!(
            filter.judge(Hook::Xdp, &frame)?,
            (outcome_of(want), want),
            "{name}"
        );
    }
    Ok(())
}
