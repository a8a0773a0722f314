//! The benchmark traffic generator: returns XDP_TX, so a live-frame BPF_PROG_TEST_RUN
//! (BPF_F_TEST_XDP_LIVE_FRAMES) transmits its test frame out of the interface named in the
//! context, as fast as one core can. This kernel has no pktgen. Never attached.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[path = "../object.rs"]
mod object;

#[xdp]
pub(crate) fn tx_generator(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}
