//! IPv6 policy and the extension headers the parser walks before it finds the ports.

use filter_common::Reason;
use filter_tests::packet::Ext;

use super::Case;
use crate::common::{v6, ALLOWED6, UNLISTED6};

/// IPv6 destinations judged by the policy, behind every kind of extension header.
#[expect(
    clippy::too_many_lines,
    reason = "one line per case: the table is the test"
)]
pub(super) fn ipv6_policy() -> Vec<Case> {
    use Reason::*;
    let long_ext = Ext::HopByHop { units: 80 };
    vec![
        ("v6 tcp/443 listed", v6(ALLOWED6).tcp(443).build(), Allowed),
        (
            "v6 udp in range",
            v6(ALLOWED6).udp(1, 5005).build(),
            Allowed,
        ),
        (
            "v6 udp beyond range",
            v6(ALLOWED6).udp(1, 5011).build(),
            PortNotAllowed,
        ),
        ("v6 tcp/22", v6(ALLOWED6).tcp(22).build(), PortNotAllowed),
        ("v6 unlisted", v6(UNLISTED6).tcp(443).build(), NoService),
        (
            "v6 overlap: /64's own port",
            v6("2001:db8:1:2::9").tcp(8443).build(),
            Allowed,
        ),
        (
            "v6 overlap: /48's port inside the /64",
            v6("2001:db8:1:2::9").tcp(443).build(),
            Allowed,
        ),
        (
            "v6 overlap: /64's port outside it",
            v6("2001:db8:1:3::9").tcp(8443).build(),
            PortNotAllowed,
        ),
        (
            "v6 ICMPv6 echo, not listed",
            v6(ALLOWED6).icmp(128).build(),
            ProtocolNotAllowed,
        ),
        (
            "v6 packet too big to a listed address",
            v6(ALLOWED6).icmp(2).build(),
            AllowedIcmpError,
        ),
        (
            "hop-by-hop",
            v6(ALLOWED6).ext(Ext::HopByHop { units: 1 }).build(),
            Allowed,
        ),
        (
            "routing",
            v6(ALLOWED6)
                .ext(Ext::Routing {
                    units: 2,
                    routing_type: 0,
                    segments_left: 0,
                })
                .build(),
            Allowed,
        ),
        (
            "destination options, denied port",
            v6(ALLOWED6)
                .ext(Ext::DestinationOptions { units: 0 })
                .tcp(22)
                .build(),
            PortNotAllowed,
        ),
        (
            "authentication header",
            v6(ALLOWED6).ext(Ext::Auth { len_field: 4 }).build(),
            Allowed,
        ),
        (
            "first fragment",
            v6(ALLOWED6)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .build(),
            Allowed,
        ),
        (
            "first fragment, denied port",
            v6(ALLOWED6)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .tcp(23)
                .build(),
            PortNotAllowed,
        ),
        (
            "non-first fragment to a listed address",
            v6(ALLOWED6)
                .ext(Ext::Fragment {
                    offset: 100,
                    more: true,
                })
                .proto(6)
                .build(),
            AllowedFragment,
        ),
        (
            "non-first fragment to an unlisted one",
            v6(UNLISTED6)
                .ext(Ext::Fragment {
                    offset: 100,
                    more: false,
                })
                .proto(6)
                .build(),
            NoService,
        ),
        (
            "chain of five",
            v6(ALLOWED6)
                .ext(Ext::HopByHop { units: 0 })
                .ext(Ext::DestinationOptions { units: 1 })
                .ext(Ext::Routing {
                    units: 0,
                    routing_type: 4,
                    segments_left: 0,
                })
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .ext(Ext::DestinationOptions { units: 0 })
                .build(),
            Allowed,
        ),
        (
            "chain of nine",
            (0..9)
                .fold(v6(ALLOWED6), |p, _| {
                    p.ext(Ext::DestinationOptions { units: 0 })
                })
                .build(),
            HeadersTooLong,
        ),
        (
            "one 648-byte extension header",
            v6(ALLOWED6).ext(long_ext).build(),
            HeadersTooLong,
        ),
    ]
}
