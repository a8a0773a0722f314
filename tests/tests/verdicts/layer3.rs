//! The layer-3 program (XDP on devices without an Ethernet header) on the same cases.

use filter_common::Reason;
use filter_tests::{
    harness::{Filter, Hook, Outcome},
    packet::{ETH_IPV4, ETH_IPV6},
};

use crate::{
    cases::cases,
    common::{grants, v4, ALLOWED4},
};

/// The IP packet inside an untagged Ethernet frame whose ethertype agrees with its version, as a
/// layer-3 device would carry it.
fn as_layer3(frame: &[u8]) -> Option<Vec<u8>> {
    let ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let version = frame.get(14)? >> 4;
    let matches =
        (ether_type == ETH_IPV4 && version == 4) || (ether_type == ETH_IPV6 && version == 6);
    // The kernel's XDP test run refuses frames shorter than an Ethernet header.
    (matches && frame.len() >= 28).then(|| frame[14..].to_vec())
}

#[test]
fn the_layer3_program_gives_every_ip_case_the_same_reason() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let mut failures = Vec::new();
    let mut tried = 0;
    for (name, frame, expected) in cases() {
        let Some(packet) = as_layer3(&frame) else {
            continue;
        };
        tried += 1;
        match filter.judge(Hook::XdpL3, &packet) {
            Ok((_, reason)) if reason == expected => {}
            Ok(got) => failures.push(format!("{name}: expected {expected:?}, got {got:?}")),
            Err(err) => failures.push(format!("{name}: {err:#}")),
        }
    }
    assert!(tried > 80, "only {tried} cases are IP without tags");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // What only a layer-3 device can carry: a version that is neither 4 nor 6.
    let mut not_ip = v4(ALLOWED4).build()[14..].to_vec();
    not_ip[0] = 0x55;
    assert_eq!(
        filter.judge(Hook::XdpL3, &not_ip)?,
        (Outcome::Drop, Reason::NotIpOnL3Device)
    );
    // And an Ethernet frame handed to it is not IP either: its first byte is a MAC address's.
    assert_eq!(
        filter.judge(Hook::XdpL3, &v4(ALLOWED4).build())?,
        (Outcome::Drop, Reason::NotIpOnL3Device)
    );
    Ok(())
}
