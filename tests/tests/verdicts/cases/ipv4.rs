//! IPv4 policy: ports, port ranges, overlapping prefixes, protocols, ICMP, options and
//! fragments.

use filter_common::Reason;

use super::Case;
use crate::common::{v4, ALLOWED4, UNLISTED4};

/// IPv4 destinations judged by the policy.
#[expect(
    clippy::too_many_lines,
    reason = "one line per case: the table is the test"
)]
pub(super) fn ipv4_policy() -> Vec<Case> {
    use Reason::*;
    vec![
        (
            "v4 tcp/443 to a listed /24",
            v4(ALLOWED4).tcp(443).build(),
            Allowed,
        ),
        (
            "v4 tcp/22 to a listed /24",
            v4(ALLOWED4).tcp(22).build(),
            PortNotAllowed,
        ),
        (
            "v4 tcp/443 to an unlisted address",
            v4(UNLISTED4).tcp(443).build(),
            NoService,
        ),
        (
            "v4 udp/3544 listed",
            v4(ALLOWED4).udp(40000, 3544).build(),
            Allowed,
        ),
        (
            "v4 udp/53 not listed",
            v4(ALLOWED4).udp(40000, 53).build(),
            PortNotAllowed,
        ),
        (
            "v4 port range low end",
            v4("203.0.113.1").tcp(1000).build(),
            Allowed,
        ),
        (
            "v4 port range middle",
            v4("203.0.113.1").tcp(1500).build(),
            Allowed,
        ),
        (
            "v4 port range high end",
            v4("203.0.113.1").tcp(2000).build(),
            Allowed,
        ),
        (
            "v4 below the port range",
            v4("203.0.113.1").tcp(999).build(),
            PortNotAllowed,
        ),
        (
            "v4 above the port range",
            v4("203.0.113.1").tcp(2001).build(),
            PortNotAllowed,
        ),
        (
            "overlap: /32's own port",
            v4("17.1.2.3").tcp(443).build(),
            Allowed,
        ),
        (
            "overlap: /8's port at the /32",
            v4("17.1.2.3").tcp(5223).build(),
            Allowed,
        ),
        (
            "overlap: /32's port elsewhere in the /8",
            v4("17.9.9.9").tcp(443).build(),
            PortNotAllowed,
        ),
        (
            "overlap: /8's port elsewhere in the /8",
            v4("17.9.9.9").tcp(5223).build(),
            Allowed,
        ),
        (
            "v4 udp where only tcp is listed",
            v4("17.1.2.3").udp(1, 443).build(),
            ProtocolNotAllowed,
        ),
        (
            "v4 GRE to a listed address",
            v4(ALLOWED4).proto(47).build(),
            ProtocolNotAllowed,
        ),
        (
            "v4 ICMP echo where ICMP is listed",
            v4(ALLOWED4).icmp(8).build(),
            Allowed,
        ),
        (
            "v4 ICMP echo where it is not",
            v4("17.1.2.3").icmp(8).build(),
            ProtocolNotAllowed,
        ),
        (
            "v4 ICMP unreachable to a listed address",
            v4("17.1.2.3").icmp(3).build(),
            AllowedIcmpError,
        ),
        (
            "v4 ICMP unreachable to an unlisted one",
            v4(UNLISTED4).icmp(3).build(),
            NoService,
        ),
        (
            "v4 with one word of options",
            v4(ALLOWED4).ipv4_options(&[1, 1, 1, 1]).build(),
            Allowed,
        ),
        (
            "v4 with 40 bytes of options, denied port",
            v4(ALLOWED4).ipv4_options(&[1; 40]).tcp(23).build(),
            PortNotAllowed,
        ),
        (
            "v4 with 40 bytes of options, allowed",
            v4(ALLOWED4).ipv4_options(&[1; 40]).build(),
            Allowed,
        ),
        (
            "v4 first fragment, allowed port",
            v4(ALLOWED4).ipv4_fragment(0, true).build(),
            Allowed,
        ),
        (
            "v4 first fragment, denied port",
            v4(ALLOWED4).ipv4_fragment(0, true).tcp(25).build(),
            PortNotAllowed,
        ),
        (
            "v4 non-first fragment to a listed address",
            v4(ALLOWED4).ipv4_fragment(185, false).proto(6).build(),
            AllowedFragment,
        ),
        (
            "v4 non-first fragment to an unlisted one",
            v4(UNLISTED4).ipv4_fragment(185, true).proto(6).build(),
            NoService,
        ),
    ]
}
