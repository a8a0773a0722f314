//! Counters and drop events.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use filter_common::{
    counters::{reason_counter, COUNTER_SLOT_IFINDEX_LIMIT},
    event::{Action, RateLimitState},
    groups::MAX_GROUPS,
    Config, DropEvent, EventCounter, PacketCount, Reason,
};

use crate::{
    context::PacketContext,
    maps::{
        COUNTER_SLOTS, EVENTS, EVENT_BUDGET, EVENT_STATS, GROUP_DROPS, REASON_STATS, SERVICE_STATS,
    },
    parse::Packet,
};

const NANOS_PER_SEC: u64 = 1_000_000_000;
/// Longest idle time credited to a token bucket; keeps the refill arithmetic far from overflow.
const MAX_REFILL_NANOS: u64 = 10 * NANOS_PER_SEC;

/// Counts a packet under its interface, hook and reason and, when a service allowed it, under
/// that service.
#[inline(always)]
pub(crate) fn count<C: PacketContext>(ctx: &C, reason: Reason, service_id: Option<u16>) {
    let bytes = ctx.packet_len();
    let ifindex = ctx.ifindex();
    // An interface the daemon did not number (or beyond the slot table) counts in slot 0.
    let slot = if ifindex < COUNTER_SLOT_IFINDEX_LIMIT {
        COUNTER_SLOTS.get(ifindex).copied().unwrap_or(0)
    } else {
        0
    };
    add(&REASON_STATS, reason_counter(slot, C::HOOK, reason), bytes);
    if let Some(service_id) = service_id {
        add(&SERVICE_STATS, service_id as u32, bytes);
    }
}

/// Counts a dropped packet against its source's client group: on the drop path only, so the
/// allowed path pays nothing for it.
#[inline(always)]
pub(crate) fn count_group_drop<C: PacketContext>(ctx: &C, group: u32) {
    add(
        &GROUP_DROPS,
        group & (MAX_GROUPS as u32 - 1),
        ctx.packet_len(),
    );
}

#[inline(always)]
fn add(map: &aya_ebpf::maps::PerCpuArray<PacketCount>, index: u32, bytes: u32) {
    if let Some(counter) = map.get_ptr_mut(index) {
        // Safety: a per-CPU slot of our own map; programs run with migration disabled, so
        // nothing else writes this CPU's slot concurrently.
        unsafe {
            (*counter).packets += 1;
            (*counter).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
fn bump(counter: EventCounter) {
    if let Some(value) = EVENT_STATS.get_ptr_mut(counter as u32) {
        // Safety: as in `add`.
        unsafe { *value += 1 };
    }
}

/// Reports a packet that enforcement drops, if the event budget allows.
#[inline(always)]
pub(crate) fn report<C: PacketContext>(
    ctx: &C,
    packet: &Packet,
    group: u32,
    reason: Reason,
    config: &Config,
) {
    if !take_event_token(config) {
        bump(EventCounter::RateLimited);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        bump(EventCounter::RingFull);
        return;
    };
    let event = DropEvent {
        // Safety: bpf_ktime_get_ns has no preconditions.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        ifindex: ctx.ifindex(),
        reason: reason as u32,
        src_addr: packet.src.octets(),
        dst_addr: packet.dst.octets(),
        sport_be: packet.sport.to_be(),
        dport_be: packet.dport.to_be(),
        packet_len: ctx.packet_len(),
        vlan_id: packet.vlan_id,
        family: packet.family,
        proto: packet.proto,
        hook: C::HOOK as u8,
        action: if config.is_audit() {
            Action::Audit as u8
        } else {
            Action::Drop as u8
        },
        group: group as u8,
        _pad: 0,
    };
    entry.write(event);
    entry.submit(0);
    bump(EventCounter::Emitted);
}

/// Token bucket per CPU: `event_burst` events back to back, then `events_per_sec`. Per CPU so
/// that no lock or atomic sits in the drop path; the daemon documents the limit as per CPU.
#[inline(always)]
fn take_event_token(config: &Config) -> bool {
    // No burst, no token ever: skip the clock and the bucket (the bench and quiet setups run so).
    if config.event_burst == 0 {
        return false;
    }
    let Some(state) = EVENT_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // Safety: this CPU's slot of our own per-CPU map (see `add`).
    let state: &mut RateLimitState = unsafe { &mut *state };
    let burst = config.event_burst as u64;
    let rate = config.events_per_sec as u64;
    // The coarse clock (one tick's resolution) costs a fraction of the precise one, and the
    // bucket carries fractions of a token over, so a rate of events per second stays exact.
    // Safety: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if state.last_refill_ns == 0 {
        state.tokens = burst;
        state.last_refill_ns = now;
    } else if rate > 0 {
        let elapsed = now.saturating_sub(state.last_refill_ns);
        let earned = elapsed.min(MAX_REFILL_NANOS) * rate / NANOS_PER_SEC;
        if elapsed >= MAX_REFILL_NANOS || state.tokens + earned >= burst {
            state.tokens = burst;
            state.last_refill_ns = now;
        } else if earned > 0 {
            state.tokens += earned;
            // Advance by what the earned tokens cost, so fractions of a token carry over.
            state.last_refill_ns += earned * NANOS_PER_SEC / rate;
        }
    }
    if state.tokens == 0 {
        return false;
    }
    state.tokens -= 1;
    true
}
