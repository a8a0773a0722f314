//! Frames the parser must refuse: malformed headers, and frames cut short at every layer.

use filter_common::Reason;
use filter_tests::packet::{ethernet, Ext, ETH_IPV4, ETH_IPV6, TPID_8021AD, TPID_8021Q};

use super::Case;
use crate::common::{cut, v4, v6, ALLOWED4, ALLOWED6};

/// Headers that contradict themselves.
pub(super) fn malformed() -> Vec<Case> {
    use Reason::*;
    vec![
        (
            "IPv4 ethertype, version 6",
            {
                let mut f = v4(ALLOWED4).build();
                f[14] = 0x65;
                f
            },
            MalformedIpv4,
        ),
        (
            "IPv4 IHL 4",
            {
                let mut f = v4(ALLOWED4).build();
                f[14] = 0x44;
                f
            },
            MalformedIpv4,
        ),
        (
            "IPv4 total length below header length",
            {
                let mut f = v4(ALLOWED4).build();
                f[16] = 0;
                f[17] = 19;
                f
            },
            MalformedIpv4,
        ),
        (
            "IPv6 ethertype, version 4",
            ethernet(&[], ETH_IPV6, &v4(ALLOWED4).build()[14..]),
            MalformedIpv6,
        ),
    ]
}

/// Frames cut inside each layer.
pub(super) fn truncated() -> Vec<Case> {
    use Reason::*;
    vec![
        (
            "cut inside the VLAN tag",
            cut(v4(ALLOWED4).vlan(TPID_8021Q, 5).build(), 16),
            TruncatedL2,
        ),
        (
            "cut inside the second VLAN tag",
            cut(
                v4(ALLOWED4)
                    .vlan(TPID_8021AD, 5)
                    .vlan(TPID_8021Q, 6)
                    .build(),
                20,
            ),
            TruncatedL2,
        ),
        (
            "cut inside the IPv4 header",
            cut(v4(ALLOWED4).build(), 14 + 12),
            TruncatedIpv4,
        ),
        (
            "cut inside the IPv4 options",
            cut(v4(ALLOWED4).ipv4_options(&[1; 8]).build(), 14 + 24),
            TruncatedIpv4,
        ),
        (
            "ethertype IPv4, nothing after",
            ethernet(&[], ETH_IPV4, &[]),
            TruncatedIpv4,
        ),
        (
            "cut inside the TCP header",
            cut(v4(ALLOWED4).build(), 14 + 20 + 10),
            TruncatedL4,
        ),
        (
            "cut inside the UDP header",
            cut(v4(ALLOWED4).udp(1, 3544).build(), 14 + 20 + 4),
            TruncatedL4,
        ),
        (
            "cut inside the ICMP header",
            cut(v4(ALLOWED4).icmp(8).build(), 14 + 20 + 2),
            TruncatedL4,
        ),
        (
            "tiny first fragment",
            cut(v4(ALLOWED4).ipv4_fragment(0, true).build(), 14 + 20 + 8),
            TruncatedL4,
        ),
        (
            "cut inside the IPv6 header",
            cut(v6(ALLOWED6).build(), 14 + 30),
            TruncatedIpv6,
        ),
        (
            "cut inside an extension header",
            cut(
                v6(ALLOWED6).ext(Ext::HopByHop { units: 2 }).build(),
                14 + 40 + 12,
            ),
            TruncatedIpv6Ext,
        ),
        (
            "cut before the extension header",
            cut(
                v6(ALLOWED6)
                    .ext(Ext::Routing {
                        units: 0,
                        routing_type: 4,
                        segments_left: 0,
                    })
                    .build(),
                14 + 40 + 2,
            ),
            TruncatedIpv6Ext,
        ),
        (
            "cut inside TCP after extensions",
            cut(
                v6(ALLOWED6)
                    .ext(Ext::Routing {
                        units: 0,
                        routing_type: 4,
                        segments_left: 0,
                    })
                    .build(),
                14 + 40 + 8 + 6,
            ),
            TruncatedL4,
        ),
        (
            "v6 cut inside the UDP header",
            cut(v6(ALLOWED6).udp(1, 5005).build(), 14 + 40 + 7),
            TruncatedL4,
        ),
    ]
}
