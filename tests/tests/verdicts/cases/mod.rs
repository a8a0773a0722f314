//! The table of cases: every frame with the reason it must be counted under, on both hooks. One
//! module a subject; [`cases`] puts them together in one table, which `table.rs` runs and the
//! frame differential (`tests/frames.rs`) mutates.

use filter_common::Reason;

mod damaged;
mod ipv4;
mod ipv6;
mod link;
mod source_routing;

/// (what the case is, the frame, the reason it must be counted under)
pub(crate) type Case = (&'static str, Vec<u8>, Reason);

/// Every case of every subject.
pub(crate) fn cases() -> Vec<Case> {
    [
        ipv4::ipv4_policy(),
        link::vlan(),
        link::link_local(),
        source_routing::source_routing(),
        ipv6::ipv6_policy(),
        damaged::malformed(),
        damaged::truncated(),
    ]
    .concat()
}
