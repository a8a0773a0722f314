//! The one policy engine both hooks share: from a parsed [`Packet`] to a [`Reason`].
//!
//! A packet is allowed iff some service covers its destination and lists its protocol and port.
//! The daemon stores, under each prefix, the union of the rules of every prefix that covers it,
//! so one longest-prefix match per packet answers that question exactly (see
//! `filter_common::policy`).

use aya_ebpf::maps::{lpm_trie::Key, Array};
use filter_common::{
    groups::{
        chunk_entry, group_bit, group_copy, group_interface_key, group_window_entry,
        interface_group_copy, run_parts, GroupMask, GroupWindow, DEFAULT_GROUP, GROUP_CHUNK_BITS,
        GROUP_ENTRY_DIRECT, GROUP_INDEX_PER_COPY, GROUP_RANGES_PER_COPY, GROUP_SEARCH_STEPS,
    },
    policy::MAX_RULES_PER_POLICY,
    ranges::{state, TableState, CHUNKS, CHUNK_BITS, SEARCH_STEPS},
    sources::{
        SourceKeyV4, SourceKeyV6, SourceSlot, IFINDEX_BITS, SOURCE_SLOT_INTERFACES,
        SOURCE_SLOT_OVERFLOW,
    },
    Policy, PolicyId, Reason, RuleProto,
};

use crate::{
    ablation::{self, skip},
    maps::{
        ALLOW_V4, ALLOW_V6, GROUP_IFACES, GROUP_INDEX_V4, GROUP_INDEX_V6, GROUP_RANGES_V4,
        GROUP_RANGES_V6, INDEX_V4, INDEX_V6, POLICIES, RANGES_V4, RANGES_V6, SOURCES_V4,
        SOURCES_V6, SOURCE_COPY, SOURCE_SLOTS, TABLE_STATE,
    },
    parse::{ipproto, Packet},
};

/// The reason for a packet's fate, and the service that allowed it when one did.
pub(crate) struct Judgement {
    pub reason: Reason,
    pub service_id: Option<u16>,
}

impl From<Reason> for Judgement {
    #[inline(always)]
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            service_id: None,
        }
    }
}

/// Judges an IP packet from a source in client group `group`, against the tables
/// `table_state` (the value of `TABLE_STATE`, read once for the packet) names.
#[inline(always)]
pub(crate) fn judge<const SKIP: u32>(packet: &Packet, group: u32, table_state: u32) -> Judgement {
    let link_local = link_local_reason(packet);
    if let Some(reason) = link_local {
        if !matches!(reason, Reason::LinkScoped) || !is_link_local_unicast(packet) {
            return reason.into();
        }
    }
    let policy_id = if SKIP & skip::DESTINATION != 0 {
        Some(ablation::CONSTANT_POLICY_ID)
    } else {
        destination_policy(packet, table_state)
    };
    let Some(policy_id) = policy_id else {
        // A link-local unicast address the table does not list is a neighbour's: the packet
        // stays on the link.
        return link_local.unwrap_or(Reason::NoService).into();
    };
    // Listed link-local unicast addresses are the filtering host's own (the daemon adds them
    // with its failsafe ports): a service there could relay further, so policy decides.
    if SKIP & skip::RULES != 0 {
        return Judgement {
            reason: Reason::Allowed,
            service_id: Some(0),
        };
    }
    let Some(policy) = POLICIES.get(policy_id) else {
        return Reason::PolicyMissing.into();
    };
    let group = group_bit(group);
    // Fragments after the first and ICMP errors carry no ports: they pass to a destination
    // some service lets the source's group reach (the first fragment, or the flow the error
    // is about, was judged in full).
    let portless = if packet.non_first_fragment {
        Some(Reason::AllowedFragment)
    } else if packet.rule_proto == RuleProto::Icmp as u8 && is_icmp_error(packet) {
        Some(Reason::AllowedIcmpError)
    } else {
        None
    };
    if let Some(reason) = portless {
        let reason = if serves_group(policy, group) {
            reason
        } else {
            Reason::NoService
        };
        return reason.into();
    }
    match_rules(policy, packet.rule_proto, packet.dport, group)
}

/// The policy of the destination's longest matching prefix: from the range index, or from the
/// trie when the table outgrew the index (see `filter_common::ranges`).
#[inline(always)]
fn destination_policy(packet: &Packet, table_state: u32) -> Option<PolicyId> {
    if packet.family == 4 {
        if table_state & state::V4_TRIE != 0 {
            return ALLOW_V4
                .get(Key::new(32, packet.dst.v4().to_be_bytes()))
                .copied();
        }
        let copy = (table_state & state::V4_COPY_1 != 0) as u32;
        range_value(find_range_v4(packet.dst.v4(), copy)?)
    } else {
        if table_state & state::V6_TRIE != 0 {
            return ALLOW_V6.get(Key::new(128, packet.dst.octets())).copied();
        }
        let copy = (table_state & state::V6_COPY_1 != 0) as u32;
        range_value(find_range_v6(packet.dst.hi, packet.dst.lo, copy)?)
    }
}

/// A range's value as a policy id: 0 is no policy.
#[inline(always)]
fn range_value(value: u32) -> Option<PolicyId> {
    value.checked_sub(1)
}

/// The run of ranges `copy`'s index names for a destination whose top bits are `chunk`.
#[inline(always)]
fn run_of(index: &Array<u64>, copy: u32, chunk: u32) -> Option<(u32, u32)> {
    let entry = *index.get(copy * CHUNKS + chunk)?;
    Some((entry as u32, (entry >> 32) as u32))
}

/// The value of the last IPv4 range starting at or below `dst`.
#[inline(always)]
fn find_range_v4(dst: u32, copy: u32) -> Option<u32> {
    let (mut first, mut count) = run_of(&INDEX_V4, copy, dst >> (32 - CHUNK_BITS))?;
    if count == 0 {
        return None;
    }
    // Invariant: the range at `first` starts at or below `dst`; the answer is in the `count`
    // ranges from there.
    for _ in 0..SEARCH_STEPS {
        if count <= 1 {
            break;
        }
        let half = count / 2;
        let middle = first + half;
        if (*RANGES_V4.get(middle)? >> 32) as u32 <= dst {
            first = middle;
        }
        count -= half;
    }
    Some(*RANGES_V4.get(first)? as u32)
}

/// The value of the last IPv6 range starting at or below the destination (`hi`, `lo`).
#[inline(always)]
fn find_range_v6(hi: u64, lo: u64, copy: u32) -> Option<u32> {
    let (mut first, mut count) = run_of(&INDEX_V6, copy, (hi >> (64 - CHUNK_BITS)) as u32)?;
    if count == 0 {
        return None;
    }
    for _ in 0..SEARCH_STEPS {
        if count <= 1 {
            break;
        }
        let half = count / 2;
        let middle = first + half;
        let range = RANGES_V6.get(middle)?;
        if range.start_hi < hi || (range.start_hi == hi && range.start_lo <= lo) {
            first = middle;
        }
        count -= half;
    }
    Some(RANGES_V6.get(first)?.value)
}

/// The value of `TABLE_STATE`: which copies of the destination index and of the group ranges
/// a packet reads, and where the group chunks lie. Read once per packet, so that the packet
/// meets one reload's tables. `None` cannot happen (the array has its one entry), and reads as
/// all zero: nothing allowed, every source in the default group.
#[inline(always)]
pub(crate) fn table_state() -> Option<&'static TableState> {
    TABLE_STATE.get(0)
}

/// The bits of `state` ([`filter_common::ranges::state`]), all zero when there is none.
#[inline(always)]
pub(crate) fn state_bits(state: Option<&TableState>) -> u32 {
    state.map_or(0, |state| state.bits)
}

/// The client group of the packet (`filter_common::groups`): the group of the interface it
/// arrived on when some group names that interface, otherwise the group of its source.
#[inline(always)]
pub(crate) fn client_group(
    packet: &Packet,
    arrival_ifindex: u32,
    table_state: Option<&TableState>,
) -> u32 {
    if let Some(copy) = interface_group_copy(state_bits(table_state)) {
        let group = interface_group(group_interface_key(copy, arrival_ifindex));
        if group != NO_INTERFACE_GROUP {
            return group;
        }
    }
    source_group(packet, table_state)
}

/// What [`interface_group`] answers for an interface no group names.
const NO_INTERFACE_GROUP: u32 = u32::MAX;

/// The group `GROUP_IFACES` holds under `key`. Out of line: rules without interface groups
/// never call it, and should not pay for its instructions.
#[inline(never)]
fn interface_group(key: u32) -> u32 {
    // Safety: the value is a plain u32 the daemon wrote; it is copied out at once.
    unsafe { GROUP_IFACES.get(key) }
        .copied()
        .unwrap_or(NO_INTERFACE_GROUP)
}

/// The client group of the packet's source (`filter_common::groups`): the value of the last
/// range starting at or below it in the copy `table_state` names; [`DEFAULT_GROUP`] when that
/// copy holds no ranges (rules without groups), which costs no read: the copy's window, whose
/// count says so, is part of the state the packet has read.
#[inline(always)]
pub(crate) fn source_group(packet: &Packet, table_state: Option<&TableState>) -> u32 {
    let Some(table_state) = table_state else {
        return DEFAULT_GROUP;
    };
    let copy = group_copy(table_state.bits, packet.family);
    // The index is below 4 by construction; the verifier wants it bounded all the same.
    // The entry is below 4 by construction; the mask tells the compiler, so no bounds check.
    let window = &table_state.group_windows
        [group_window_entry(packet.family, copy) as usize % table_state.group_windows.len()];
    if window.count == 0 {
        return DEFAULT_GROUP;
    }
    let direct = if packet.family == 4 {
        chunk_group_v4(packet.src.v4(), copy, window)
    } else {
        chunk_group_v6(packet.src.hi, packet.src.lo, copy, window)
    };
    if direct != NOT_DIRECT {
        return direct;
    }
    let found = if packet.family == 4 {
        find_group_v4(packet.src.v4(), copy, window)
    } else {
        find_group_v6(packet.src.hi, packet.src.lo, copy, window)
    };
    // A damaged table reads as the default group, whose rules the rules define like any other.
    found.unwrap_or(DEFAULT_GROUP)
}

/// What [`chunk_group_v4`] and [`chunk_group_v6`] answer for a source they leave to the search:
/// no group (they are below `MAX_GROUPS`). A plain number rather than an `Option`, which the
/// compiler kept in memory.
const NOT_DIRECT: u32 = u32::MAX;

/// The group of an IPv4 source inside the window whose chunk lies inside one group: most
/// sources, answered inline with one read (the chunk's entry) and no call. [`NOT_DIRECT`] sends
/// the source to [`find_group_v4`], which answers every source.
#[inline(always)]
fn chunk_group_v4(src: u32, copy: u32, window: &GroupWindow) -> u32 {
    // Inside: the source's first `shift` bits are the window's.
    if (src ^ window.base_lo as u32) & window.mask_lo as u32 != 0 {
        return NOT_DIRECT;
    }
    let chunk = src.wrapping_shl(window.shift) >> (32 - GROUP_CHUNK_BITS);
    chunk_direct(chunk_entry_of(&GROUP_INDEX_V4, copy, chunk))
}

/// The group of an IPv6 source (`hi`, `lo`) inside the window whose chunk lies inside one
/// group; as [`chunk_group_v4`], with [`find_group_v6`] for the rest.
#[inline(always)]
fn chunk_group_v6(hi: u64, lo: u64, copy: u32, window: &GroupWindow) -> u32 {
    if (hi ^ window.base_hi) & window.mask_hi | (lo ^ window.base_lo) & window.mask_lo != 0 {
        return NOT_DIRECT;
    }
    let shift = window.shift;
    // The window's prefix ends in the high half or the low one: a branch on the rules, not on
    // the source. `(lo >> 1) >> (63 - shift)` is `lo >> (64 - shift)` without a shift by 64.
    let top = if shift < 64 {
        hi.wrapping_shl(shift) | (lo >> 1).wrapping_shr(63 - shift)
    } else {
        lo.wrapping_shl(shift - 64)
    };
    let chunk = (top >> (64 - GROUP_CHUNK_BITS)) as u32;
    chunk_direct(chunk_entry_of(&GROUP_INDEX_V6, copy, chunk))
}

/// The group a chunk's entry holds, or [`NOT_DIRECT`] when it holds a run (or was not read).
#[inline(always)]
fn chunk_direct(entry: Option<u32>) -> u32 {
    match entry {
        Some(entry) if entry & GROUP_ENTRY_DIRECT != 0 => entry & !GROUP_ENTRY_DIRECT,
        _ => NOT_DIRECT,
    }
}

/// The entry `copy`'s index holds for `chunk`: its group, or its run of ranges.
#[inline(always)]
fn chunk_entry_of(index: &Array<u64>, copy: u32, chunk: u32) -> Option<u32> {
    Some(chunk_entry(
        *index.get(copy * GROUP_INDEX_PER_COPY + (chunk >> 1))?,
        chunk,
    ))
}

/// The group a chunk's entry holds, for a source inside the window (`outside` 0) whose chunk
/// lies inside one group: most sources, so the branch is predictable.
#[inline(always)]
fn direct_group(entry: u32, outside: u32) -> Option<u32> {
    (outside == 0 && entry & GROUP_ENTRY_DIRECT != 0).then_some(entry & !GROUP_ENTRY_DIRECT)
}

/// The run of group ranges a chunk's run `entry` names, or for a source outside the window
/// (`below` or `above` it, each 0 or 1) the one range that holds it: range 0 below, the last
/// of the copy's `count` above. Chosen by arithmetic, not by a branch: whether a source is
/// inside depends on the source.
#[inline(always)]
fn group_run_of(entry: u32, copy: u32, below: u32, above: u32, count: u32) -> (u32, u32) {
    let (first, run) = run_parts(entry);
    let outside = below | above;
    let inside = outside ^ 1;
    let outside_first = copy * GROUP_RANGES_PER_COPY + above * (count - 1);
    (
        first * inside + outside_first * outside,
        run * inside + outside,
    )
}

/// The group of an IPv4 source among the ranges of `copy`, whose window is `window`: its
/// chunk's group, or the last range of the chunk's run starting at or below it. Right for every
/// source; called for those [`chunk_group_v4`] leaves (outside the window, or in a chunk a
/// range boundary falls inside). Out of line:
/// inlined, code that rules without groups never run still cost every packet (see
/// ARCHITECTURE.md). The search has no data-dependent branch: sources are as random as clients
/// are, so a branch on each comparison would mispredict half the time.
#[inline(never)]
fn find_group_v4(src: u32, copy: u32, window: &GroupWindow) -> Option<u32> {
    let count = window.count.min(GROUP_RANGES_PER_COPY);
    // The window's prefix off the top, its next 16 bits the chunk (a shift of at most 16).
    let chunk = src.wrapping_shl(window.shift) >> (32 - GROUP_CHUNK_BITS);
    let below_window = below(u64::from(src), window.base_lo) as u32;
    let above_window = below(window.end_lo, u64::from(src)) as u32;
    let entry = chunk_entry_of(&GROUP_INDEX_V4, copy, chunk)?;
    if let Some(group) = direct_group(entry, below_window | above_window) {
        return Some(group);
    }
    let (mut first, mut count) = group_run_of(entry, copy, below_window, above_window, count);
    // Invariant: the range at `first` starts at or below `src`; the answer is in the `count`
    // ranges from there.
    for _ in 0..GROUP_SEARCH_STEPS {
        if count <= 1 {
            break;
        }
        let half = count / 2;
        let start = *GROUP_RANGES_V4.get(first + half)? >> 32;
        // 1 when the range starts at or below the source: the subtraction borrows otherwise.
        let at_or_below = (u64::from(src).wrapping_sub(start) >> 63) ^ 1;
        first += half * at_or_below as u32;
        count -= half;
    }
    Some(*GROUP_RANGES_V4.get(first)? as u32)
}

/// The group of an IPv6 source (`hi`, `lo`) among the ranges of `copy`; as
/// [`find_group_v4`].
#[inline(never)]
fn find_group_v6(hi: u64, lo: u64, copy: u32, window: &GroupWindow) -> Option<u32> {
    let count = window.count.min(GROUP_RANGES_PER_COPY);
    let shift = window.shift;
    // The window's 16 bits start in the high half or the low one. A branch on the rules, not
    // on the source: every packet takes the same way. `(lo >> 1) >> (63 - shift)` is
    // `lo >> (64 - shift)` without a shift by 64 when `shift` is 0.
    let top = if shift < 64 {
        hi.wrapping_shl(shift) | (lo >> 1).wrapping_shr(63 - shift)
    } else {
        lo.wrapping_shl(shift - 64)
    };
    let chunk = (top >> (64 - GROUP_CHUNK_BITS)) as u32;
    let below_window = before(hi, lo, window.base_hi, window.base_lo) as u32;
    let above_window = before(window.end_hi, window.end_lo, hi, lo) as u32;
    let entry = chunk_entry_of(&GROUP_INDEX_V6, copy, chunk)?;
    if let Some(group) = direct_group(entry, below_window | above_window) {
        return Some(group);
    }
    let (mut first, mut count) = group_run_of(entry, copy, below_window, above_window, count);
    for _ in 0..GROUP_SEARCH_STEPS {
        if count <= 1 {
            break;
        }
        let half = count / 2;
        let range = GROUP_RANGES_V6.get(first + half)?;
        let at_or_below = before(hi, lo, range.start_hi, range.start_lo) ^ 1;
        first += half * at_or_below as u32;
        count -= half;
    }
    Some(GROUP_RANGES_V6.get(first)?.value)
}

/// 1 when the 128-bit address (`a_hi`, `a_lo`) is below (`b_hi`, `b_lo`), 0 otherwise,
/// without a branch.
#[inline(always)]
fn before(a_hi: u64, a_lo: u64, b_hi: u64, b_lo: u64) -> u64 {
    below(a_hi, b_hi) | (equal(a_hi, b_hi) & below(a_lo, b_lo))
}

/// 1 when `a < b`, 0 otherwise: the borrow out of `a - b`, computed without a branch.
#[inline(always)]
fn below(a: u64, b: u64) -> u64 {
    ((!a & b) | (!(a ^ b) & a.wrapping_sub(b))) >> 63
}

/// 1 when `a == b`, 0 otherwise, without a branch.
#[inline(always)]
fn equal(a: u64, b: u64) -> u64 {
    let differ = a ^ b;
    ((differ | differ.wrapping_neg()) >> 63) ^ 1
}

/// Whether the packet's source belongs on `ifindex`: some prefix routed out of that interface
/// covers it (see `filter_common::sources`).
#[inline(always)]
pub(crate) fn source_belongs(ifindex: u32, packet: &Packet) -> bool {
    if ifindex < SOURCE_SLOT_INTERFACES {
        let copy = SOURCE_COPY.get(0).copied().unwrap_or(0) & 1;
        if let Some(slot) = SOURCE_SLOTS.get(copy * SOURCE_SLOT_INTERFACES + ifindex) {
            if let Some(belongs) = slot_holds(slot, packet) {
                return belongs;
            }
        }
    }
    source_in_trie(ifindex, packet)
}

/// Whether the interface's slot holds a prefix covering the source; `None` when the slot
/// overflowed and the trie must answer.
#[inline(always)]
fn slot_holds(slot: &SourceSlot, packet: &Packet) -> Option<bool> {
    if packet.family == 4 {
        let count = slot.v4_count;
        if count == SOURCE_SLOT_OVERFLOW {
            return None;
        }
        let src = packet.src.v4();
        for (index, prefix) in slot.v4.iter().enumerate() {
            if index as u32 >= count {
                break;
            }
            if src & prefix.mask == prefix.network {
                return Some(true);
            }
        }
    } else {
        let count = slot.v6_count;
        if count == SOURCE_SLOT_OVERFLOW {
            return None;
        }
        let (hi, lo) = (packet.src.hi, packet.src.lo);
        for (index, prefix) in slot.v6.iter().enumerate() {
            if index as u32 >= count {
                break;
            }
            if hi & prefix.mask_hi == prefix.network_hi && lo & prefix.mask_lo == prefix.network_lo
            {
                return Some(true);
            }
        }
    }
    Some(false)
}

/// The source check in the tries: for interfaces without a slot or with too many prefixes.
#[inline(always)]
fn source_in_trie(ifindex: u32, packet: &Packet) -> bool {
    let index = ifindex.to_be_bytes();
    if packet.family == 4 {
        let src = packet.src.v4().to_be_bytes();
        let key: SourceKeyV4 = [
            index[0], index[1], index[2], index[3], src[0], src[1], src[2], src[3],
        ];
        SOURCES_V4.get(Key::new(IFINDEX_BITS + 32, key)).is_some()
    } else {
        let mut key: SourceKeyV6 = [0; 20];
        key[..4].copy_from_slice(&index);
        key[4..].copy_from_slice(&packet.src.octets());
        SOURCES_V6.get(Key::new(IFINDEX_BITS + 128, key)).is_some()
    }
}
/// Whether some rule of the policy applies to `group`.
#[inline(always)]
fn serves_group(policy: &Policy, group: GroupMask) -> bool {
    for index in 0..MAX_RULES_PER_POLICY {
        if index as u32 >= policy.rule_count {
            break;
        }
        if policy.rules[index].groups & group != 0 {
            return true;
        }
    }
    false
}

/// Scans a policy's rules for one that allows `rule_proto` to `port` for `group`. Rules of
/// other groups are not there for this packet: a destination only they cover is no service's.
#[inline(always)]
fn match_rules(policy: &Policy, rule_proto: u8, port: u16, group: GroupMask) -> Judgement {
    // One flag in the loop: each one more doubles what the verifier walks through.
    let mut protocol_listed = false;
    for index in 0..MAX_RULES_PER_POLICY {
        if index as u32 >= policy.rule_count {
            break;
        }
        let rule = &policy.rules[index];
        if rule.proto == rule_proto && rule.groups & group != 0 {
            protocol_listed = true;
            if rule.allows(rule_proto, port) {
                return Judgement {
                    reason: Reason::Allowed,
                    service_id: Some(rule.service_id),
                };
            }
        }
    }
    if protocol_listed && rule_proto != 0 {
        Reason::PortNotAllowed.into()
    } else if serves_group(policy, group) {
        Reason::ProtocolNotAllowed.into()
    } else {
        Reason::NoService.into()
    }
}

/// Traffic that never leaves the link and that the network needs: DHCP, neighbour discovery,
/// link-scoped destinations. `None` when the packet must be judged by policy.
///
/// Each pass here is judged by where the packet can go, not by what it claims to be: every case
/// requires a destination no router forwards (a Linux router forwards an ND message or a TCP
/// segment to 169.254.169.254 like any other packet).
#[inline(always)]
fn link_local_reason(packet: &Packet) -> Option<Reason> {
    // DHCP passes only to the destinations a client without a lease or a server address sends
    // to: the limited broadcast, and for DHCPv6 the link-scope groups. A message to a unicast
    // address, the gateway's own link-local ones included, is a renewal: policy judges it.
    let (link_scoped, dhcp_destination, dhcp_ports) = if packet.family == 4 {
        let dst = packet.dst.v4();
        let limited_broadcast = dst == 0xffff_ffff;
        // 224.0.0.0/24, local network control (RFC 5771): multicast routers never forward it.
        let local_multicast = dst >> 8 == 0x00e0_0000;
        (
            limited_broadcast || local_multicast,
            limited_broadcast,
            (68, 67),
        )
    } else {
        // ff02::/16, link-local scope multicast.
        let multicast_link = packet.dst.hi >> 48 == 0xff02;
        (
            multicast_link || is_link_local_unicast(packet),
            multicast_link,
            (546, 547),
        )
    };
    if !link_scoped {
        return None;
    }
    if dhcp_destination
        && packet.rule_proto == RuleProto::Udp as u8
        && (packet.sport, packet.dport) == dhcp_ports
    {
        return Some(Reason::Dhcp);
    }
    if packet.family == 6 && packet.proto == ipproto::ICMPV6 && is_neighbor_discovery(packet) {
        return Some(Reason::NeighborDiscovery);
    }
    // A tunnel endpoint on the receiving host could unwrap the inner packet and route it on.
    (!is_tunnel(packet.proto)).then_some(Reason::LinkScoped)
}

/// fe80::/10, link-local unicast.
#[inline(always)]
fn is_link_local_unicast(packet: &Packet) -> bool {
    packet.family == 6 && packet.dst.hi >> 54 == 0xfe80 >> 6
}

/// IP protocols that carry another packet: IP-in-IP, IPv6-in-IP, GRE, EtherIP, ENCAP, L2TPv3,
/// MPLS-in-IP.
#[inline(always)]
const fn is_tunnel(proto: u8) -> bool {
    matches!(proto, 4 | 41 | 47 | 97 | 98 | 115 | 137)
}

/// RFC 4861 ND messages must arrive with hop limit 255 and RFC 3810 MLD messages with hop limit
/// 1. Only called for link-scoped destinations, which with those hop limits stay on the link.
#[inline(always)]
fn is_neighbor_discovery(packet: &Packet) -> bool {
    match packet.icmp_type {
        // Router/neighbour solicitation and advertisement, redirect.
        133..=137 => packet.hop_limit == 255,
        // MLD query, report, done; MLDv2 report.
        130..=132 | 143 => packet.hop_limit == 1,
        _ => false,
    }
}

#[inline(always)]
fn is_icmp_error(packet: &Packet) -> bool {
    if packet.family == 4 {
        // Destination unreachable, time exceeded, parameter problem.
        matches!(packet.icmp_type, 3 | 11 | 12)
    } else {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(packet.icmp_type, 1..=4)
    }
}
