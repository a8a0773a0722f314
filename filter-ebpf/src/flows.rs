//! Established flows that outlive their address (`filter_common::flows`).
//!
//! The allowed path pays for flows only at their edges: a TCP packet is looked at further only
//! when it carries SYN, FIN or RST (a map update on the first, a delete on the others), so a
//! packet in the middle of a TCP connection costs one test of a byte already parsed. UDP has no
//! edge to see: an allowed datagram looks its flow up and adds it when missing. Everything else
//! happens on the drop path.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, maps::LruHashMap};
use filter_common::{
    flows::{expired_filter_bit, tcp_flags, AddressKey, FlowCounter, FlowKey, FlowState},
    Config, Reason,
};

use crate::{
    maps::{CONFIG, EXPIRED_ADDRS, EXPIRED_FILTER, FLOW_STATS, TCP_FLOWS, UDP_FLOWS},
    parse::{ipproto, Packet},
    verdict::Judgement,
};

const NANOS_PER_SEC: u64 = 1_000_000_000;
/// `BPF_NOEXIST`: add a flow only if it is not there, so a first packet that another CPU
/// recorded a moment ago does not restart it.
const BPF_NOEXIST: u64 = 1;

/// The verdict with flows taken into account: an allowed first packet starts a flow, an allowed
/// FIN or RST ends one, and a packet the policy drops passes if its flow is kept.
///
/// Each protocol has its own copy of the code, naming its own table: the verifier inlines a
/// hash lookup only where the map is known at the call, and a table chosen at run time turned
/// every lookup into a helper call through the map's function table, the largest single cost
/// of a dropped packet.
#[inline(always)]
pub(crate) fn follow(packet: &Packet, judgement: Judgement) -> Judgement {
    match packet.proto {
        ipproto::TCP => follow_in(&TCP_FLOWS, packet, judgement),
        ipproto::UDP => follow_in(&UDP_FLOWS, packet, judgement),
        _ => judgement,
    }
}

#[inline(always)]
fn follow_in(
    table: &LruHashMap<FlowKey, FlowState>,
    packet: &Packet,
    judgement: Judgement,
) -> Judgement {
    match judgement.reason {
        Reason::Allowed => {
            if let Some(service_id) = judgement.service_id {
                on_allowed(table, packet, service_id);
            }
            judgement
        }
        Reason::NoService | Reason::PortNotAllowed | Reason::ProtocolNotAllowed => {
            match kept(table, packet) {
                Some(service_id) => Judgement {
                    reason: Reason::EstablishedFlow,
                    service_id: Some(service_id),
                },
                None => judgement,
            }
        }
        _ => judgement,
    }
}

#[inline(always)]
fn on_allowed(table: &LruHashMap<FlowKey, FlowState>, packet: &Packet, service_id: u16) {
    let edges = tcp_flags::SYN | tcp_flags::FIN | tcp_flags::RST;
    if packet.proto == ipproto::TCP && packet.tcp_flags & edges == 0 {
        return;
    }
    if !keeps_flows() {
        return;
    }
    let key = flow_key(packet);
    if packet.proto == ipproto::TCP {
        if packet.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
            let _gone = table.remove(key);
            return;
        }
        // A SYN with ACK is the answer of a server the client talks to, not a connection the
        // client starts.
        if packet.tcp_flags & tcp_flags::ACK != 0 {
            return;
        }
    }
    // A lookup first: an LRU insert takes a free element (evicting one when none is free) before
    // it finds the key already there, which costs several times a lookup.
    if table.get_ptr(key).is_some() {
        return;
    }
    start(table, &key, service_id);
}

#[inline(always)]
fn start(table: &LruHashMap<FlowKey, FlowState>, key: &FlowKey, service_id: u16) {
    // Safety: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let flow = FlowState {
        started_ns: now,
        last_seen_ns: now,
        service_id,
        kept: 0,
        _pad: [0; 5],
    };
    if table.insert(key, flow, BPF_NOEXIST).is_ok() {
        bump(FlowCounter::Started);
    }
}

/// The service of the flow this packet belongs to, if the flow is kept: in the table, its
/// address marked as removed, within both bounds. Ends the flow when a bound is past, or on FIN
/// or RST (that packet still passes).
#[inline(always)]
fn kept(table: &LruHashMap<FlowKey, FlowState>, packet: &Packet) -> Option<u16> {
    let config = CONFIG.get(0)?;
    if !config.keeps_flows() {
        return None;
    }
    // An address the daemon did not mark was not removed by expiry (or a reload closed its
    // flows): its flows stay in the table but keep nothing open. Asked before the flow, and
    // first of the filter (one inlined array read instead of hashing a key): most drops go to
    // addresses never allowed.
    let bit = expired_filter_bit(packet.dst.hi, packet.dst.lo, packet.family);
    if (*EXPIRED_FILTER.get(bit >> 6)? >> (bit & 63)) & 1 == 0 {
        return None;
    }
    let address = AddressKey {
        addr: packet.dst.octets(),
        family: packet.family,
        _pad: [0; 3],
    };
    // Safety: a value of our own map, read once.
    let removed_at = unsafe { *EXPIRED_ADDRS.get(address)? };
    let key = flow_key(packet);
    let flow = table.get_ptr_mut(key)?;
    // Safety: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Safety: a value of our own map; other CPUs may write the same fields, and a torn race
    // between two packets of one flow costs at most one idle second.
    let flow = unsafe { &mut *flow };
    let service_id = flow.service_id;
    if now.saturating_sub(flow.started_ns) > seconds(config.established_max_secs) {
        end(table, &key, FlowCounter::EndedMax);
        return None;
    }
    let since = if removed_at > flow.last_seen_ns {
        removed_at
    } else {
        flow.last_seen_ns
    };
    if now.saturating_sub(since) > seconds(config.established_idle_secs) {
        end(table, &key, FlowCounter::EndedIdle);
        return None;
    }
    flow.last_seen_ns = now;
    if flow.kept == 0 {
        flow.kept = 1;
        bump(FlowCounter::Kept);
    }
    if packet.proto == ipproto::TCP && packet.tcp_flags & (tcp_flags::FIN | tcp_flags::RST) != 0 {
        end(table, &key, FlowCounter::Closed);
    }
    Some(service_id)
}

#[inline(always)]
fn end(table: &LruHashMap<FlowKey, FlowState>, key: &FlowKey, why: FlowCounter) {
    if table.remove(key).is_ok() {
        bump(why);
    }
}

#[inline(always)]
fn keeps_flows() -> bool {
    CONFIG.get(0).is_some_and(Config::keeps_flows)
}

#[inline(always)]
const fn seconds(secs: u32) -> u64 {
    secs as u64 * NANOS_PER_SEC
}

#[inline(always)]
fn flow_key(packet: &Packet) -> FlowKey {
    FlowKey {
        src: packet.src.octets(),
        dst: packet.dst.octets(),
        sport: packet.sport,
        dport: packet.dport,
        family: packet.family,
        proto: packet.proto,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn bump(counter: FlowCounter) {
    if let Some(value) = FLOW_STATS.get_ptr_mut(counter as u32) {
        // Safety: this CPU's slot of our own per-CPU map; programs run with migration disabled.
        unsafe { *value += 1 };
    }
}
