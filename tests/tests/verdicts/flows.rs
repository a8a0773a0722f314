//! Connections that outlive their address: a flow whose first packet was allowed keeps passing
//! as `established-flow` once the daemon has removed its address (and marked it), within its
//! bounds; nothing else opens, whatever a client sends.

use std::net::IpAddr;

use filter_common::{
    flows::{FlowCounter, FlowState},
    Config, Mode, Reason, RuleProto,
};
use filter_tests::{
    harness::{Filter, Hook, Outcome},
    packet::{tcp_flags, Pkt},
};
use filter_user::{
    maps::flows::{flow_key, monotonic_ns},
    table::{AllowTable, Grant, PortSpec},
};

use crate::common::CLIENT4;

/// A learned address (a host route) next to a prefix that stays.
const LEARNED4: &str = "198.51.100.10";
const LEARNED6: &str = "2001:db8:5::10";
const STAYS4: &str = "203.0.113.0/24";
const NEVER4: &str = "192.0.2.200";
const CLIENT6: &str = "2001:db8:ff::10";

const SYN: u8 = tcp_flags::SYN;
const ACK: u8 = tcp_flags::ACK;
const PSH_ACK: u8 = 0x08 | tcp_flags::ACK;
const FIN_ACK: u8 = tcp_flags::FIN | tcp_flags::ACK;
const RST: u8 = tcp_flags::RST;
const SECOND: u64 = 1_000_000_000;

fn grants(with_learned: bool) -> Vec<Grant> {
    let g = |prefix: &str, service, ports: Vec<PortSpec>| Grant {
        prefix: prefix.parse().expect("test prefix"),
        service,
        ports,
        groups: filter_common::groups::ALL_GROUPS,
    };
    let mut grants = vec![g(STAYS4, 0, vec![PortSpec::Tcp(22..=22)])];
    if with_learned {
        let ports = vec![PortSpec::Tcp(443..=443), PortSpec::Udp(443..=443)];
        grants.push(g(&format!("{LEARNED4}/32"), 1, ports.clone()));
        grants.push(g(&format!("{LEARNED6}/128"), 1, ports));
    }
    grants
}

/// A filter that keeps flows for `idle` seconds without a packet and `max` seconds in all.
fn keeping(idle: u32, max: u32) -> anyhow::Result<Filter> {
    let mut filter = Filter::new(&grants(true))?;
    filter.maps.set_config(Config {
        established_idle_secs: idle,
        established_max_secs: max,
        ..Config::new(Mode::Enforce)
    })?;
    Ok(filter)
}

/// The monotonic clock (which the programs read too), once it has passed `floor`: a flow
/// dated `floor` back needs a clock that far from boot, which a machine that just booted has
/// not reached yet. Waits at most `floor`.
fn monotonic_ns_at_least(floor: u64) -> u64 {
    let now = monotonic_ns();
    if now < floor {
        std::thread::sleep(std::time::Duration::from_nanos(floor - now));
    }
    monotonic_ns()
}

/// What the daemon does when the learned addresses expire: mark them, then remove them.
fn expire_learned(filter: &mut Filter) -> anyhow::Result<()> {
    let learned: [IpAddr; 2] = [LEARNED4.parse()?, LEARNED6.parse()?];
    filter.flows.mark_expired(learned, monotonic_ns())?;
    filter.maps.apply(&AllowTable::build(&grants(false))?)?;
    Ok(())
}

fn tcp4(dst: &str, sport: u16, flags: u8) -> Vec<u8> {
    Pkt::ip(CLIENT4, dst).tcp_with(sport, 443, flags).build()
}

fn flow_counter(filter: &Filter, counter: FlowCounter) -> anyhow::Result<u64> {
    filter.counters()?.flow(counter)
}

fn tcp_key(dst: &str, sport: u16) -> anyhow::Result<filter_common::flows::FlowKey> {
    Ok(flow_key(
        RuleProto::Tcp,
        CLIENT4.parse()?,
        sport,
        dst.parse()?,
        443,
    ))
}

#[test]
fn a_connection_started_while_allowed_outlives_its_address() -> anyhow::Result<()> {
    for (hook, sport) in [(Hook::Xdp, 41000), (Hook::Tc, 41001)] {
        let mut filter = keeping(60, 3600)?;
        assert_eq!(
            filter.judge(hook, &tcp4(LEARNED4, sport, SYN))?,
            (Outcome::Pass, Reason::Allowed)
        );
        assert_eq!(flow_counter(&filter, FlowCounter::Started)?, 1);
        expire_learned(&mut filter)?;
        for flags in [ACK, PSH_ACK, ACK] {
            assert_eq!(
                filter.judge(hook, &tcp4(LEARNED4, sport, flags))?,
                (Outcome::Pass, Reason::EstablishedFlow),
                "{hook:?} flags {flags:#x}"
            );
        }
        assert_eq!(flow_counter(&filter, FlowCounter::Kept)?, 1, "counted once");
        assert_eq!(filter.service_count(1)?.packets, 4, "SYN and three kept");
    }
    Ok(())
}

#[test]
fn the_expired_filter_decides_first_and_a_rebuild_clears_only_forgotten_marks() -> anyhow::Result<()>
{
    let mut filter = keeping(60, 3600)?;
    let (v4, v6): (IpAddr, IpAddr) = (LEARNED4.parse()?, LEARNED6.parse()?);
    filter.run(Hook::Xdp, &tcp4(LEARNED4, 45000, SYN))?;
    assert_eq!(
        filter.flows.filter_has(v4)?,
        Some(false),
        "nothing marked yet"
    );
    expire_learned(&mut filter)?;
    assert_eq!(filter.flows.filter_has(v4)?, Some(true));
    let kept = (Outcome::Pass, Reason::EstablishedFlow);
    let dropped = (Outcome::Drop, Reason::NoService);
    assert_eq!(filter.judge(Hook::Xdp, &tcp4(LEARNED4, 45000, ACK))?, kept);
    // The LRU evicts the mark: the flow is no longer kept, and the bit stays until a rebuild.
    assert!(filter.flows.forget_mark(v4));
    assert_eq!(
        filter.judge(Hook::Xdp, &tcp4(LEARNED4, 45000, ACK))?,
        dropped
    );
    assert_eq!(filter.flows.filter_has(v4)?, Some(true));
    filter.flows.rebuild_filter()?;
    assert_eq!(
        filter.flows.filter_has(v4)?,
        Some(false),
        "a forgotten mark's bit"
    );
    assert_eq!(
        filter.flows.filter_has(v6)?,
        Some(true),
        "a mark still there"
    );
    // A mark whose bit is clear keeps nothing: the programs ask the filter first.
    filter.mark_behind_the_filter(v4, monotonic_ns())?;
    assert_eq!(
        filter.judge(Hook::Xdp, &tcp4(LEARNED4, 45000, ACK))?,
        dropped
    );
    assert_eq!(
        filter.judge(Hook::Tc, &tcp4(LEARNED4, 45000, ACK))?,
        dropped
    );
    // A rebuild (what every start does) sets the bits of the marks it finds.
    filter.flows.rebuild_filter()?;
    assert_eq!(filter.judge(Hook::Xdp, &tcp4(LEARNED4, 45000, ACK))?, kept);
    Ok(())
}

#[test]
fn a_new_connection_to_the_expired_address_is_dropped() -> anyhow::Result<()> {
    let mut filter = keeping(60, 3600)?;
    filter.run(Hook::Xdp, &tcp4(LEARNED4, 41000, SYN))?;
    expire_learned(&mut filter)?;
    for (sport, flags) in [(41002, SYN), (41003, ACK), (41000, SYN | ACK)] {
        let (outcome, reason) = filter.judge(Hook::Xdp, &tcp4(LEARNED4, sport, flags))?;
        let kept = sport == 41000;
        // The same 5-tuple is the kept flow whatever its flags; any other is new.
        assert_eq!(
            (outcome, reason),
            if kept {
                (Outcome::Pass, Reason::EstablishedFlow)
            } else {
                (Outcome::Drop, Reason::NoService)
            },
            "sport {sport} flags {flags:#x}"
        );
    }
    // The kept flow opens no other port on the address.
    let other_port = Pkt::ip(CLIENT4, LEARNED4).tcp_with(41000, 22, ACK).build();
    assert_eq!(
        filter.judge(Hook::Xdp, &other_port)?,
        (Outcome::Drop, Reason::NoService)
    );
    Ok(())
}

#[test]
fn udp_flows_outlive_their_address_and_new_ones_do_not() -> anyhow::Result<()> {
    let mut filter = keeping(60, 3600)?;
    let datagram = |sport| Pkt::ip(CLIENT4, LEARNED4).udp(sport, 443).build();
    assert_eq!(
        filter.judge(Hook::Xdp, &datagram(50000))?,
        (Outcome::Pass, Reason::Allowed)
    );
    filter.run(Hook::Xdp, &datagram(50000))?;
    assert_eq!(flow_counter(&filter, FlowCounter::Started)?, 1, "one flow");
    expire_learned(&mut filter)?;
    assert_eq!(
        filter.judge(Hook::Tc, &datagram(50000))?,
        (Outcome::Pass, Reason::EstablishedFlow)
    );
    assert_eq!(
        filter.judge(Hook::Tc, &datagram(50001))?,
        (Outcome::Drop, Reason::NoService)
    );
    Ok(())
}

#[test]
fn ipv6_flows_outlive_their_address() -> anyhow::Result<()> {
    let mut filter = keeping(60, 3600)?;
    let segment = |flags| {
        Pkt::ip(CLIENT6, LEARNED6)
            .tcp_with(42000, 443, flags)
            .build()
    };
    filter.run(Hook::Xdp, &segment(SYN))?;
    expire_learned(&mut filter)?;
    assert_eq!(
        filter.judge(Hook::Xdp, &segment(ACK))?,
        (Outcome::Pass, Reason::EstablishedFlow)
    );
    let other = Pkt::ip(CLIENT6, LEARNED6).tcp_with(42001, 443, ACK).build();
    assert_eq!(
        filter.judge(Hook::Xdp, &other)?,
        (Outcome::Drop, Reason::NoService)
    );
    Ok(())
}

#[test]
fn an_address_removed_unmarked_keeps_nothing_open() -> anyhow::Result<()> {
    // A reload that closes flows removes the address without marking it.
    let mut filter = keeping(60, 3600)?;
    filter.run(Hook::Xdp, &tcp4(LEARNED4, 41000, SYN))?;
    filter.maps.apply(&AllowTable::build(&grants(false))?)?;
    assert_eq!(
        filter.judge(Hook::Xdp, &tcp4(LEARNED4, 41000, ACK))?,
        (Outcome::Drop, Reason::NoService)
    );
    assert_eq!(flow_counter(&filter, FlowCounter::Kept)?, 0);
    Ok(())
}

#[test]
fn idle_and_old_flows_end() -> anyhow::Result<()> {
    let mut filter = keeping(20, 120)?;
    // The flows below started up to 200 s ago on the monotonic clock, which starts at boot.
    let now = monotonic_ns_at_least(200 * SECOND);
    let flow = |started_ns, last_seen_ns| FlowState {
        started_ns,
        last_seen_ns,
        service_id: 1,
        ..FlowState::default()
    };
    // Idle: nothing seen for a minute, the address removed as long ago.
    filter.flows.insert(
        tcp_key(LEARNED4, 43000)?,
        flow(now - 100 * SECOND, now - 60 * SECOND),
    )?;
    // Old: busy a second ago, but started 200 s ago.
    filter.flows.insert(
        tcp_key(LEARNED4, 43001)?,
        flow(now - 200 * SECOND, now - SECOND),
    )?;
    // Idle before the removal, but the removal was a moment ago: the idle time counts from
    // there (the programs never see allowed packets).
    filter.flows.insert(
        tcp_key(LEARNED4, 43002)?,
        flow(now - 100 * SECOND, now - 90 * SECOND),
    )?;
    filter
        .flows
        .mark_expired([LEARNED4.parse()?], now - 60 * SECOND)?;
    filter.maps.apply(&AllowTable::build(&grants(false))?)?;
    for sport in [43000, 43001] {
        assert_eq!(
            filter.judge(Hook::Xdp, &tcp4(LEARNED4, sport, ACK))?,
            (Outcome::Drop, Reason::NoService),
            "sport {sport}"
        );
        assert!(
            filter.flows.get(&tcp_key(LEARNED4, sport)?).is_none(),
            "ended"
        );
    }
    assert_eq!(flow_counter(&filter, FlowCounter::EndedIdle)?, 1);
    assert_eq!(flow_counter(&filter, FlowCounter::EndedMax)?, 1);
    // 43002: 60 s since the removal, past the 20 s bound too.
    assert_eq!(
        filter.judge(Hook::Xdp, &tcp4(LEARNED4, 43002, ACK))?,
        (Outcome::Drop, Reason::NoService)
    );
    // A fresh mark gives the same kind of flow its idle window.
    filter.flows.insert(
        tcp_key(LEARNED4, 43003)?,
        flow(now - 100 * SECOND, now - 90 * SECOND),
    )?;
    filter
        .flows
        .mark_expired([LEARNED4.parse()?], monotonic_ns())?;
    assert_eq!(
        filter.judge(Hook::Xdp, &tcp4(LEARNED4, 43003, ACK))?,
        (Outcome::Pass, Reason::EstablishedFlow)
    );
    Ok(())
}

#[test]
fn fin_and_rst_end_flows() -> anyhow::Result<()> {
    let mut filter = keeping(60, 3600)?;
    for sport in [44000, 44001, 44002] {
        filter.run(Hook::Xdp, &tcp4(LEARNED4, sport, SYN))?;
    }
    // Closed while allowed: gone at once.
    filter.run(Hook::Xdp, &tcp4(LEARNED4, 44002, FIN_ACK))?;
    assert!(filter.flows.get(&tcp_key(LEARNED4, 44002)?).is_none());
    expire_learned(&mut filter)?;
    // Closed while kept: the FIN or RST itself passes, nothing after it.
    for (sport, flags) in [(44000, FIN_ACK), (44001, RST)] {
        assert_eq!(
            filter.judge(Hook::Xdp, &tcp4(LEARNED4, sport, flags))?,
            (Outcome::Pass, Reason::EstablishedFlow)
        );
        assert_eq!(
            filter.judge(Hook::Xdp, &tcp4(LEARNED4, sport, ACK))?,
            (Outcome::Drop, Reason::NoService),
            "sport {sport} after {flags:#x}"
        );
    }
    assert_eq!(flow_counter(&filter, FlowCounter::Closed)?, 2);
    assert_eq!(
        filter.judge(Hook::Xdp, &tcp4(LEARNED4, 44002, ACK))?,
        (Outcome::Drop, Reason::NoService)
    );
    Ok(())
}

#[test]
fn nothing_a_client_sends_opens_a_flow_it_was_not_allowed() -> anyhow::Result<()> {
    let mut filter = keeping(60, 3600)?;
    // To an address never allowed, even one marked as expired: bare ACKs, SYNs, SYN-ACKs, RSTs
    // and datagrams are dropped and record nothing.
    filter
        .flows
        .mark_expired([NEVER4.parse()?], monotonic_ns())?;
    for flags in [ACK, SYN, SYN | ACK, RST, PSH_ACK] {
        for _ in 0..2 {
            assert_eq!(
                filter.judge(Hook::Xdp, &tcp4(NEVER4, 45000, flags))?,
                (Outcome::Drop, Reason::NoService),
                "flags {flags:#x}"
            );
        }
    }
    let datagram = Pkt::ip(CLIENT4, NEVER4).udp(45000, 443).build();
    for _ in 0..2 {
        assert_eq!(
            filter.judge(Hook::Xdp, &datagram)?,
            (Outcome::Drop, Reason::NoService)
        );
    }
    // To an allowed address, on an allowed port: only a SYN without ACK starts a flow. A bare
    // ACK, a SYN-ACK or a port the address does not allow record nothing, so once the address
    // expires they stay dropped.
    filter.run(Hook::Xdp, &tcp4(LEARNED4, 45001, ACK))?;
    filter.run(Hook::Xdp, &tcp4(LEARNED4, 45002, SYN | ACK))?;
    let wrong_port = Pkt::ip(CLIENT4, LEARNED4).tcp_with(45003, 22, SYN).build();
    assert_eq!(
        filter.judge(Hook::Xdp, &wrong_port)?,
        (Outcome::Drop, Reason::PortNotAllowed)
    );
    assert!(
        filter.flows.flows().is_empty(),
        "{:?}",
        filter.flows.flows()
    );
    assert_eq!(flow_counter(&filter, FlowCounter::Started)?, 0);
    expire_learned(&mut filter)?;
    for sport in [45001, 45002] {
        assert_eq!(
            filter.judge(Hook::Xdp, &tcp4(LEARNED4, sport, ACK))?,
            (Outcome::Drop, Reason::NoService)
        );
    }
    let wrong_port = Pkt::ip(CLIENT4, LEARNED4).tcp_with(45003, 22, ACK).build();
    assert_eq!(
        filter.judge(Hook::Xdp, &wrong_port)?,
        (Outcome::Drop, Reason::NoService)
    );
    Ok(())
}

#[test]
fn flows_are_off_in_an_unwritten_config() -> anyhow::Result<()> {
    // The harness writes Config::new: no bounds, so no flow is recorded or kept.
    let mut filter = Filter::new(&grants(true))?;
    filter.run(Hook::Xdp, &tcp4(LEARNED4, 46000, SYN))?;
    assert!(filter.flows.flows().is_empty());
    filter.flows.insert(
        tcp_key(LEARNED4, 46000)?,
        FlowState {
            started_ns: monotonic_ns(),
            last_seen_ns: monotonic_ns(),
            ..FlowState::default()
        },
    )?;
    expire_learned(&mut filter)?;
    assert_eq!(
        filter.judge(Hook::Xdp, &tcp4(LEARNED4, 46000, ACK))?,
        (Outcome::Drop, Reason::NoService)
    );
    Ok(())
}
