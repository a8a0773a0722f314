//! Source routing: IPv4 route options and IPv6 routing headers that still have segments left.

use filter_common::Reason;
use filter_tests::packet::Ext;

use super::Case;
use crate::common::{v4, v6, ALLOWED4, ALLOWED6, UNLISTED4, UNLISTED6};

/// Source-routed packets, and options that only look like it.
pub(super) fn source_routing() -> Vec<Case> {
    use Reason::*;
    vec![
        (
            "v4 loose source route",
            v4(ALLOWED4)
                .ipv4_options(&[131, 7, 4, 192, 0, 2, 99, 0])
                .build(),
            SourceRouted,
        ),
        (
            "v4 strict source route",
            v4(ALLOWED4)
                .ipv4_options(&[137, 7, 4, 192, 0, 2, 99, 0])
                .build(),
            SourceRouted,
        ),
        (
            "v4 loose source route after NOPs",
            v4(UNLISTED4)
                .ipv4_options(&[1, 1, 1, 131, 7, 4, 203, 0, 113, 9, 0, 0])
                .build(),
            SourceRouted,
        ),
        (
            "v4 loose source route, non-first fragment",
            v4(ALLOWED4)
                .ipv4_options(&[131, 7, 4, 192, 0, 2, 99, 0])
                .ipv4_fragment(100, false)
                .proto(6)
                .build(),
            SourceRouted,
        ),
        (
            "v4 record route (zero-filled) is no source route",
            v4(ALLOWED4)
                .ipv4_options(&[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .build(),
            Allowed,
        ),
        (
            "v4 router alert",
            v4(ALLOWED4).ipv4_options(&[148, 4, 0, 0]).build(),
            Allowed,
        ),
        (
            "RH0 with a segment left",
            v6(ALLOWED6)
                .ext(Ext::Routing {
                    units: 2,
                    routing_type: 0,
                    segments_left: 1,
                })
                .build(),
            SourceRouted,
        ),
        (
            "segment routing header with a segment left",
            v6(ALLOWED6)
                .ext(Ext::Routing {
                    units: 2,
                    routing_type: 4,
                    segments_left: 1,
                })
                .build(),
            SourceRouted,
        ),
        (
            "segment routing header, no segment left",
            v6(ALLOWED6)
                .ext(Ext::Routing {
                    units: 2,
                    routing_type: 4,
                    segments_left: 0,
                })
                .build(),
            Allowed,
        ),
        (
            "routing header after hop-by-hop, to an unlisted address",
            v6(UNLISTED6)
                .ext(Ext::HopByHop { units: 0 })
                .ext(Ext::Routing {
                    units: 4,
                    routing_type: 4,
                    segments_left: 2,
                })
                .build(),
            SourceRouted,
        ),
    ]
}
