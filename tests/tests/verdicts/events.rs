//! What the datapath reports: counters per reason and per service, drop events with the
//! packet's fields, audit mode, and the event budget.

use filter_common::{event::Action, Config, EventCounter, Mode, Reason};
use filter_tests::{
    harness::{pin_to_current_cpu, Filter, Hook, Outcome},
    packet::{Ext, TPID_8021Q},
};

use crate::common::{cut, grants, v4, v6, ALLOWED4, ALLOWED6, UNLISTED4};

#[test]
fn counters_attribute_packets_and_bytes_to_the_allowing_service() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let via_slash8 = v4("17.1.2.3").tcp(5223).build();
    let via_slash32 = v4("17.1.2.3").tcp(443).build();
    for _ in 0..3 {
        assert_eq!(filter.run(Hook::Xdp, &via_slash8)?, Outcome::Pass);
    }
    assert_eq!(filter.run(Hook::Tc, &via_slash32)?, Outcome::Pass);
    let (s0, s1) = (filter.service_count(0)?, filter.service_count(1)?);
    assert_eq!(
        (s0.packets, s0.bytes),
        (3, 3 * via_slash8.len() as u64),
        "5223 belongs to the /8's service"
    );
    assert_eq!(
        (s1.packets, s1.bytes),
        (1, via_slash32.len() as u64),
        "443 belongs to the /32's service"
    );
    let allowed = filter.reason_counts()?[Reason::Allowed as usize];
    assert_eq!(
        (allowed.packets, allowed.bytes),
        (4, 3 * via_slash8.len() as u64 + via_slash32.len() as u64)
    );
    Ok(())
}

#[test]
fn drop_events_carry_the_packet_fields() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let tagged = v4(UNLISTED4).vlan(TPID_8021Q, 42).tcp(8080).build();
    assert_eq!(filter.run(Hook::Xdp, &tagged)?, Outcome::Drop);
    let ipv6 = v6(ALLOWED6)
        .ext(Ext::HopByHop { units: 0 })
        .udp(5353, 9)
        .build();
    assert_eq!(filter.run(Hook::Tc, &ipv6)?, Outcome::Drop);

    let events = filter.drain_events()?;
    assert_eq!(events.len(), 2, "one event per drop: {events:?}");
    let e = &events[0];
    assert_eq!(e.reason, Reason::NoService as u32);
    assert_eq!(
        (e.family, e.proto, e.hook, e.action),
        (4, 6, filter_common::Hook::Xdp as u8, Action::Drop as u8)
    );
    assert_eq!(&e.src_addr[..4], &[192, 0, 2, 10]);
    assert_eq!(&e.dst_addr[..4], &[192, 0, 2, 99]);
    assert!(
        e.dst_addr[4..].iter().all(|b| *b == 0),
        "IPv4 fills only the first four bytes"
    );
    assert_eq!(
        (u16::from_be(e.sport_be), u16::from_be(e.dport_be)),
        (40000, 8080)
    );
    assert_eq!((e.vlan_id, e.packet_len as usize), (42, tagged.len()));
    assert!(e.timestamp_ns > 0, "timestamp is set");

    let e = &events[1];
    assert_eq!(e.reason, Reason::PortNotAllowed as u32);
    assert_eq!(
        (e.family, e.proto, e.hook),
        (6, 17, filter_common::Hook::Tc as u8)
    );
    assert_eq!(
        e.dst_addr,
        "2001:db8:1::5".parse::<std::net::Ipv6Addr>()?.octets()
    );
    assert_eq!(
        (u16::from_be(e.sport_be), u16::from_be(e.dport_be)),
        (5353, 9)
    );
    assert_eq!(filter.event_count(EventCounter::Emitted)?, 2);
    Ok(())
}

#[test]
fn audit_mode_passes_what_enforcement_drops_and_reports_it_as_audit() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    filter.maps.set_config(Config::new(Mode::Audit))?;
    for hook in Hook::BOTH {
        let (outcome, reason) = filter.judge(hook, &v4(UNLISTED4).build())?;
        assert_eq!(
            (outcome, reason),
            (Outcome::Pass, Reason::NoService),
            "{hook:?}"
        );
        let (outcome, reason) = filter.judge(hook, &cut(v4(ALLOWED4).build(), 14 + 24))?;
        assert_eq!(
            (outcome, reason),
            (Outcome::Pass, Reason::TruncatedL4),
            "{hook:?}"
        );
    }
    let events = filter.drain_events()?;
    assert_eq!(events.len(), 4);
    assert!(
        events.iter().all(|e| e.action == Action::Audit as u8),
        "{events:?}"
    );
    Ok(())
}

#[test]
fn unwritten_config_enforces_and_stays_quiet() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    filter.maps.set_config(Config::default())?;
    assert_eq!(
        filter.run(Hook::Xdp, &v4(UNLISTED4).build())?,
        Outcome::Drop,
        "all-zero config enforces"
    );
    assert_eq!(filter.run(Hook::Xdp, &v4(ALLOWED4).build())?, Outcome::Pass);
    assert!(
        filter.drain_events()?.is_empty(),
        "a zero event budget emits nothing"
    );
    assert_eq!(
        filter.event_count(EventCounter::RateLimited)?,
        1,
        "but counts what it withheld"
    );
    Ok(())
}

#[test]
fn events_beyond_the_budget_are_counted_not_sent() -> anyhow::Result<()> {
    // The budget is per CPU: keep every run on one CPU so one bucket is measured.
    pin_to_current_cpu()?;
    let mut filter = Filter::new(&grants())?;
    filter.maps.set_config(Config {
        events_per_sec: 0,
        event_burst: 3,
        ..Config::new(Mode::Enforce)
    })?;
    let frame = v4(UNLISTED4).build();
    for _ in 0..5 {
        assert_eq!(filter.run(Hook::Xdp, &frame)?, Outcome::Drop);
    }
    assert_eq!(filter.drain_events()?.len(), 3, "the burst");
    assert_eq!(filter.event_count(EventCounter::Emitted)?, 3);
    assert_eq!(filter.event_count(EventCounter::RateLimited)?, 2);
    assert_eq!(
        filter.reason_counts()?[Reason::NoService as usize].packets,
        5,
        "all drops are counted"
    );
    Ok(())
}
