//! The benchmark baseline: an XDP program that only returns XDP_PASS. Per-packet costs are
//! reported as a ratio to this, measured in the same run. Never attached by the daemon.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[path = "../object.rs"]
mod object;

#[xdp]
pub(crate) fn baseline_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
