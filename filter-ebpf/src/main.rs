//! egress-filter's kernel side: one object, two hooks, one parser, one policy engine.
//!
//! `egress_xdp` runs on a gateway's LAN-facing interface (every frame the clients send), and
//! `egress_tc` on a host's uplink in the egress direction. Both hand the frame to [`process`],
//! which parses it, checks its source (XDP), judges it, counts it and, when it is dropped,
//! reports it; the hooks only translate the [`Verdict`] into their return codes.
//!
//! Layer-3 devices (TUN, WireGuard, PPP, IP tunnels) have no Ethernet header: `egress_xdp_l3`
//! and `egress_tc_l3` are the same two hooks with the parser told so at compile time. The
//! daemon picks the variant from the device's link type.
#![no_std]
#![no_main]

mod ablation;
mod context;
mod flows;
mod kernel_log;
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
use filter_common::{groups::DEFAULT_GROUP, Config, Reason};

use crate::{
    ablation::skip,
    context::{PacketContext, SkbContext},
    parse::{Frame, Packet, MAX_L4_OFFSET},
    verdict::Judgement,
};

/// What a hook does with the frame.
#[derive(Clone, Copy)]
enum Verdict {
    Pass,
    Drop,
}

#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros hand the context over by value"
)]
pub(crate) fn egress_xdp(ctx: XdpContext) -> u32 {
    xdp_verdict(process::<_, true, { skip::NOTHING }>(&ctx))
}

/// `egress_xdp` loaded for multi-buffer frames (`BPF_F_XDP_HAS_FRAGS`), which a driver needs
/// before it runs XDP natively on a link whose MTU exceeds a page (jumbo frames). The parser reads
/// only the first buffer: where a driver keeps the headers there, frames are judged as by
/// `egress_xdp`; where it does not, they fail closed as truncated. That is why the daemon attaches
/// this variant only when driver mode was asked for and the plain program was refused.
#[xdp(frags)]
pub(crate) fn egress_xdp_mb(ctx: XdpContext) -> u32 {
    xdp_verdict(process::<_, true, { skip::NOTHING }>(
        &context::MultiBuffer(ctx),
    ))
}

/// XDP on a layer-3 device (TUN, WireGuard, PPP, IP tunnels; generic mode): no link header.
#[xdp]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros hand the context over by value"
)]
pub(crate) fn egress_xdp_l3(ctx: XdpContext) -> u32 {
    xdp_verdict(process::<_, false, { skip::NOTHING }>(&ctx))
}

#[inline(always)]
fn xdp_verdict(verdict: Verdict) -> u32 {
    match verdict {
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
pub(crate) fn egress_tc(ctx: TcContext) -> i32 {
    tc_verdict::<_, true>(&ctx)
}

/// TC ingress on the host side of a pod's veth: what comes in is what the pod sends, and its
/// source is checked like a LAN client's at XDP.
#[classifier]
pub(crate) fn egress_tc_in(ctx: TcContext) -> i32 {
    tc_verdict::<_, true>(&context::PodVeth(ctx))
}

/// TC on a layer-3 device: the skb starts at the IP header.
#[classifier]
#[expect(
    clippy::needless_pass_by_value,
    reason = "aya's macros hand the context over by value"
)]
pub(crate) fn egress_tc_l3(ctx: TcContext) -> i32 {
    tc_verdict::<_, false>(&ctx)
}

#[inline(always)]
fn tc_verdict<C: SkbContext, const ETHERNET: bool>(ctx: &C) -> i32 {
    // Direct packet access only reaches the linear part of an skb; headers of locally generated
    // packets usually are linear, but GSO and tunnels can leave them in fragments.
    let skb = ctx.skb();
    let wanted = skb.len().min(TC_PULL_LEN);
    if ((skb.data_end() - skb.data()) as u32) < wanted {
        // A failed pull leaves the frame as it was; the parser then fails closed on it.
        let _pulled = skb.pull_data(wanted);
    }
    match process::<_, ETHERNET, { skip::NOTHING }>(ctx) {
        // TC_ACT_UNSPEC (TCX_NEXT) lets programs after ours, such as a CNI's, still run; with
        // none left the packet passes.
        Verdict::Pass => TC_ACT_UNSPEC,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

/// Parse, check the source, judge, count, report: everything the hooks share. `SKIP` leaves
/// parts out for the bench's cost breakdown (see [`ablation`]); the hooks pass
/// [`skip::NOTHING`], which compiles every part in.
#[inline(always)]
fn process<C: PacketContext, const ETHERNET: bool, const SKIP: u32>(ctx: &C) -> Verdict {
    let mut packet = Packet::EMPTY;
    // Only a hook that checks sources needs the config before the verdict, and only its flag;
    // the drop path reads the rest.
    let checks_sources = C::CHECKS_SOURCES
        && if SKIP & skip::CONFIG != 0 {
            ablation::CONSTANT_CONFIG.checks_sources()
        } else {
            maps::CONFIG.get(0).is_some_and(Config::checks_sources)
        };
    let parsed = parse::parse::<C, ETHERNET>(ctx, &mut packet);
    if SKIP & skip::ALL_BUT_PARSE != 0 {
        return if parsed.is_ok() {
            Verdict::Pass
        } else {
            Verdict::Drop
        };
    }
    let mut group = DEFAULT_GROUP;
    let Judgement { reason, service_id } = match parsed {
        Ok(Frame::Ip) => {
            let spoofed = checks_sources && !verdict::source_belongs(ctx.ifindex(), &packet);
            if spoofed {
                Reason::SpoofedSource.into()
            } else {
                let table_state = verdict::table_state();
                let state_bits = verdict::state_bits(table_state);
                if SKIP & skip::GROUPS == 0 {
                    group = verdict::client_group(&packet, ctx.arrival_ifindex(), table_state);
                } else if SKIP & skip::GROUP_FROM_ONE_READ != 0 {
                    group = ablation::group_from_one_read(&packet, state_bits);
                }
                let judgement = verdict::judge::<SKIP>(&packet, group, state_bits);
                if SKIP & skip::FLOWS != 0 {
                    judgement
                } else {
                    flows::follow(&packet, judgement)
                }
            }
        }
        Ok(Frame::Arp) => Reason::Arp.into(),
        Ok(Frame::NotIp) => Reason::NotIp.into(),
        Err(reason) => reason.into(),
    };
    if SKIP & skip::COUNT == 0 {
        report::count(ctx, reason, service_id);
    }
    if SKIP & skip::KERNEL_LOG == 0 && matches!(reason, Reason::PolicyMissing) {
        kernel_log::policy_missing(ctx);
    }
    if reason.passes() {
        return Verdict::Pass;
    }
    if SKIP & skip::COUNT == 0 {
        report::count_group_drop(ctx, group);
    }
    let config = if SKIP & skip::CONFIG != 0 {
        ablation::CONSTANT_CONFIG
    } else {
        read_config()
    };
    if SKIP & skip::KERNEL_LOG == 0 && !config.is_understood() {
        kernel_log::unknown_config(ctx, config.mode, config.flags);
    }
    report::report(ctx, &packet, group, reason, &config);
    if config.is_audit() {
        Verdict::Pass
    } else {
        Verdict::Drop
    }
}

/// An unwritten config is all zeroes: enforce, no events, no source check.
#[inline(always)]
fn read_config() -> Config {
    maps::CONFIG.get(0).copied().unwrap_or_default()
}
