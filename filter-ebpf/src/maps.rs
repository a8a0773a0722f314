//! The maps, declared once. Names, key and value types come from `filter_common`; see
//! `filter_common::maps` for who writes and who reads each.

use aya_ebpf::bindings::BPF_F_MMAPABLE;
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use filter_common::{
    counters,
    event::RateLimitState,
    flows::{AddressKey, FlowCounter, FlowKey, FlowState, EXPIRED_FILTER_WORDS},
    groups::{GROUP_INDEX_PER_COPY, GROUP_RANGES_PER_COPY, MAX_GROUPS, MAX_GROUP_INTERFACES},
    maps as names,
    ranges::{RangeV6, TableState, CHUNKS, RANGES_PER_COPY},
    sources::{SourceKeyV4, SourceKeyV6, SourceSlot, SOURCE_SLOT_INTERFACES},
    Config, EventCounter, Ipv4KeyBytes, Ipv6KeyBytes, PacketCount, Policy, PolicyId,
};

/// Two copies of the IPv4 destination index (`filter_common::ranges`); the daemon writes them
/// through a memory mapping.
#[map(name = "INDEX_V4")]
pub(crate) static INDEX_V4: Array<u64> = Array::with_max_entries(2 * CHUNKS, BPF_F_MMAPABLE);

/// Two copies of the IPv4 ranges.
#[map(name = "RANGES_V4")]
pub(crate) static RANGES_V4: Array<u64> =
    Array::with_max_entries(2 * RANGES_PER_COPY, BPF_F_MMAPABLE);

/// Two copies of the IPv6 destination index.
#[map(name = "INDEX_V6")]
pub(crate) static INDEX_V6: Array<u64> = Array::with_max_entries(2 * CHUNKS, BPF_F_MMAPABLE);

/// Two copies of the IPv6 ranges.
#[map(name = "RANGES_V6")]
pub(crate) static RANGES_V6: Array<RangeV6> =
    Array::with_max_entries(2 * RANGES_PER_COPY, BPF_F_MMAPABLE);

/// Index 0: which copy each family reads, or its trie, and where the group chunks lie
/// (`filter_common::ranges::TableState`).
#[map(name = "TABLE_STATE")]
pub(crate) static TABLE_STATE: Array<TableState> = Array::with_max_entries(1, 0);

/// IPv4 destination prefix → policy, when the table outgrows the range index. LPM tries must be `BPF_F_NO_PREALLOC` (aya adds it).
#[map(name = "ALLOW_V4")]
pub(crate) static ALLOW_V4: LpmTrie<Ipv4KeyBytes, PolicyId> =
    LpmTrie::with_max_entries(names::MAX_PREFIXES, 0);

/// IPv6 destination prefix → policy, when the table outgrows the range index.
#[map(name = "ALLOW_V6")]
pub(crate) static ALLOW_V6: LpmTrie<Ipv6KeyBytes, PolicyId> =
    LpmTrie::with_max_entries(names::MAX_PREFIXES, 0);

/// (interface, IPv4 source prefix) → reserved: the sources that belong on each XDP interface.
#[map(name = "SOURCES_V4")]
pub(crate) static SOURCES_V4: LpmTrie<SourceKeyV4, u32> =
    LpmTrie::with_max_entries(names::MAX_SOURCE_PREFIXES, 0);

/// (interface, IPv6 source prefix) → reserved.
#[map(name = "SOURCES_V6")]
pub(crate) static SOURCES_V6: LpmTrie<SourceKeyV6, u32> =
    LpmTrie::with_max_entries(names::MAX_SOURCE_PREFIXES, 0);

/// Two copies of each interface's source prefixes, scanned before the source tries.
#[map(name = "SOURCE_SLOTS")]
pub(crate) static SOURCE_SLOTS: Array<SourceSlot> =
    Array::with_max_entries(2 * SOURCE_SLOT_INTERFACES, BPF_F_MMAPABLE);

/// Index 0: which copy of `SOURCE_SLOTS` XDP reads.
#[map(name = "SOURCE_COPY")]
pub(crate) static SOURCE_COPY: Array<u32> = Array::with_max_entries(1, 0);

/// Two copies of the IPv4 source ranges and their client groups (`filter_common::groups`).
#[map(name = "GROUP_RANGES_V4")]
pub(crate) static GROUP_RANGES_V4: Array<u64> =
    Array::with_max_entries(2 * GROUP_RANGES_PER_COPY, 0);

/// Two copies of the IPv6 source ranges and their client groups.
#[map(name = "GROUP_RANGES_V6")]
pub(crate) static GROUP_RANGES_V6: Array<RangeV6> =
    Array::with_max_entries(2 * GROUP_RANGES_PER_COPY, 0);

/// Two copies of the interfaces some client group names, each with its group.
#[map(name = "GROUP_IFACES")]
pub(crate) static GROUP_IFACES: HashMap<u32, u32> =
    HashMap::with_max_entries(2 * MAX_GROUP_INTERFACES, 0);

/// Two copies of the IPv4 group index: which run of group ranges each chunk of the window
/// reads; the daemon writes them through a memory mapping.
#[map(name = "GROUP_INDEX_V4")]
pub(crate) static GROUP_INDEX_V4: Array<u64> =
    Array::with_max_entries(2 * GROUP_INDEX_PER_COPY, BPF_F_MMAPABLE);

/// Two copies of the IPv6 group index.
#[map(name = "GROUP_INDEX_V6")]
pub(crate) static GROUP_INDEX_V6: Array<u64> =
    Array::with_max_entries(2 * GROUP_INDEX_PER_COPY, BPF_F_MMAPABLE);

/// Policy id → the rules allowed under every prefix that names it.
#[map(name = "POLICIES")]
pub(crate) static POLICIES: Array<Policy> = Array::with_max_entries(names::MAX_POLICIES, 0);

/// Index 0: the runtime [`Config`]. All-zero (never written) means enforce with no events.
#[map(name = "CONFIG")]
pub(crate) static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// (Interface slot, hook, reason) → packets and bytes, per CPU (`filter_common::counters`).
#[map(name = "REASON_STATS")]
pub(crate) static REASON_STATS: PerCpuArray<PacketCount> =
    PerCpuArray::with_max_entries(counters::REASON_COUNTERS, 0);

/// Interface index → its slot in `REASON_STATS`.
#[map(name = "COUNTER_SLOTS")]
pub(crate) static COUNTER_SLOTS: Array<u32> =
    Array::with_max_entries(counters::COUNTER_SLOT_IFINDEX_LIMIT, 0);

/// Service id → allowed packets and bytes, per CPU.
#[map(name = "SERVICE_STATS")]
pub(crate) static SERVICE_STATS: PerCpuArray<PacketCount> =
    PerCpuArray::with_max_entries(names::MAX_SERVICES, 0);

/// Client group → its dropped packets and bytes, per CPU.
#[map(name = "GROUP_DROPS")]
pub(crate) static GROUP_DROPS: PerCpuArray<PacketCount> =
    PerCpuArray::with_max_entries(MAX_GROUPS as u32, 0);

/// Event counter → count, per CPU.
#[map(name = "EVENT_STATS")]
pub(crate) static EVENT_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(EventCounter::COUNT, 0);

/// Index 0: this CPU's drop-event token bucket.
#[map(name = "EVENT_BUDGET")]
pub(crate) static EVENT_BUDGET: PerCpuArray<RateLimitState> = PerCpuArray::with_max_entries(1, 0);

/// Index 0: when this CPU last wrote a kernel log line (`kernel_log`), in coarse nanoseconds.
#[map(name = "LOG_BUDGET")]
pub(crate) static LOG_BUDGET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Drop events for the daemon.
#[map(name = "EVENTS")]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(names::EVENTS_RING_BYTES, 0);

/// TCP flows started while allowed (`filter_common::flows`).
#[map(name = "TCP_FLOWS")]
pub(crate) static TCP_FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(names::MAX_TCP_FLOWS, 0);

/// UDP flows started while allowed.
#[map(name = "UDP_FLOWS")]
pub(crate) static UDP_FLOWS: LruHashMap<FlowKey, FlowState> =
    LruHashMap::with_max_entries(names::MAX_UDP_FLOWS, 0);

/// Addresses the daemon removed → when (CLOCK_MONOTONIC nanoseconds): their flows may go on.
#[map(name = "EXPIRED_ADDRS")]
pub(crate) static EXPIRED_ADDRS: LruHashMap<AddressKey, u64> =
    LruHashMap::with_max_entries(names::MAX_EXPIRED_ADDRS, 0);

/// A bit per address hash, set for every address in `EXPIRED_ADDRS`
/// (`filter_common::flows::expired_filter_bit`); the daemon writes it through a memory mapping.
#[map(name = "EXPIRED_FILTER")]
pub(crate) static EXPIRED_FILTER: Array<u64> =
    Array::with_max_entries(EXPIRED_FILTER_WORDS, BPF_F_MMAPABLE);

/// Flow counter → count, per CPU.
#[map(name = "FLOW_STATS")]
pub(crate) static FLOW_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(FlowCounter::COUNT, 0);
