//! The policy every verdict test runs against, and the frames its cases are built from.

use filter_common::Reason;
use filter_tests::{harness::Outcome, packet::Pkt};
use filter_user::table::{Grant, PortSpec};

/// The policy every table case runs against.
pub(crate) fn grants() -> Vec<Grant> {
    let g = |prefix: &str, service, ports: &[PortSpec]| Grant {
        prefix: prefix.parse().expect("test prefix"),
        service,
        ports: ports.to_vec(),
        groups: filter_common::groups::ALL_GROUPS,
    };
    vec![
        // Overlapping prefixes with different port sets: both ports reach 17.1.2.3.
        g("17.0.0.0/8", 0, &[PortSpec::Tcp(5223..=5223)]),
        g("17.1.2.3/32", 1, &[PortSpec::Tcp(443..=443)]),
        g(
            "198.51.100.0/24",
            2,
            &[
                PortSpec::Tcp(80..=80),
                PortSpec::Tcp(443..=443),
                PortSpec::Udp(3544..=3544),
                PortSpec::Icmp,
            ],
        ),
        g("203.0.113.0/24", 3, &[PortSpec::Tcp(1000..=2000)]),
        g(
            "2001:db8:1::/48",
            4,
            &[PortSpec::Tcp(443..=443), PortSpec::Udp(5000..=5010)],
        ),
        g("2001:db8:1:2::/64", 5, &[PortSpec::Tcp(8443..=8443)]),
        // A metadata service one host is allowed to reach: 169.254/16 is policy's to decide.
        g("169.254.169.254/32", 6, &[PortSpec::Tcp(80..=80)]),
        // The filtering host's own link-local address, as the daemon lists it with its
        // failsafe ports.
        g("fe80::1/128", 7, &[PortSpec::Tcp(22..=22), PortSpec::Icmp]),
        // A covered IPv6 destination where ICMP is allowed (for ND judged by policy).
        g("2001:db8:3::/48", 8, &[PortSpec::Icmp]),
    ]
}

pub(crate) const CLIENT4: &str = "192.0.2.10";
pub(crate) const CLIENT6: &str = "2001:db8:ff::10";
pub(crate) const ALLOWED4: &str = "198.51.100.7";
pub(crate) const UNLISTED4: &str = "192.0.2.99";
pub(crate) const ALLOWED6: &str = "2001:db8:1::5";
pub(crate) const UNLISTED6: &str = "2001:db8:2::1";

pub(crate) fn v4(dst: &str) -> Pkt {
    Pkt::ip(CLIENT4, dst)
}

pub(crate) fn v6(dst: &str) -> Pkt {
    Pkt::ip(CLIENT6, dst)
}

pub(crate) fn cut(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// What the program must do with a packet counted under `reason`.
pub(crate) fn outcome_of(reason: Reason) -> Outcome {
    if reason.passes() {
        Outcome::Pass
    } else {
        Outcome::Drop
    }
}
