//! egress-filter's kernel side: one object, two hooks, one parser, one policy engine.
//!
//! `egress_xdp` runs on a gateway's LAN-facing interface (every frame the clients send), and
//! `egress_tc` on a host's uplink in the egress direction. Both hand the frame to [`process`],
//! which parses it, judges it, counts it and, when it is dropped, reports it; the hooks only
//! translate the [`Verdict`] into their return codes.
#![no_std]
#![no_main]

mod context;
mod maps;
mod object;
mod parse;
mod report;
mod verdict;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_SHOT, TC_ACT_UNSPEC},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use filter_common::Reason;

use crate::{
    context::PacketContext,
    parse::{Frame, Packet, MAX_L4_OFFSET},
    verdict::Judgement,
};

/// What a hook does with the frame.
enum Verdict {
    Pass,
    Drop,
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros hand the context over by value"
)]
pub fn egress_xdp(ctx: XdpContext) -> u32 {
    match process(&ctx) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// Bytes the TC hook makes sure are linear before parsing: every header the parser may read.
const TC_PULL_LEN: u32 = (MAX_L4_OFFSET + 64) as u32;

#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros hand the context over by value"
)]
pub fn egress_tc(ctx: TcContext) -> i32 {
    // Direct packet access only reaches the linear part of an skb; headers of locally generated
    // packets usually are linear, but GSO and tunnels can leave them in fragments.
    let wanted = ctx.len().min(TC_PULL_LEN);
    if ((ctx.data_end() - ctx.data()) as u32) < wanted {
        // A failed pull leaves the frame as it was; the parser then fails closed on it.
        let _pulled = ctx.pull_data(wanted);
    }
    match process(&ctx) {
        // TC_ACT_UNSPEC (TCX_NEXT) lets programs after ours, such as a CNI's, still run; with
        // none left the packet passes.
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// Parse, judge, count, report: everything both hooks share.
#[inline(always)]
fn process<C: PacketContext>(ctx: &C) -> Verdict {
    let mut packet = Packet::EMPTY;
    let Judgement { reason, service_id } = match parse::parse(ctx, &mut packet) {
        Ok(Frame::Ip) => verdict::judge(&packet),
        Ok(Frame::Arp) => Reason::Arp.into(),
        Ok(Frame::NotIp) => Reason::NotIp.into(),
        Err(reason) => reason.into(),
    };
    report::count(reason, service_id, ctx.packet_len());
    if reason.passes() {
        return Verdict::Pass;
    }
    // An unwritten config is all zeroes: enforce, no events.
    let config = maps::CONFIG.get(0).copied().unwrap_or_default();
    report::report(ctx, &packet, reason, &config);
    if config.is_audit() {
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}
