//! Map and program names, the one place both sides take them from.
//!
//! BPF object names are truncated by the kernel at 15 bytes (`BPF_OBJ_NAME_LEN` - 1); every name
//! here fits, which the assertions below check.

/// LPM trie, IPv4 destination prefix → [`crate::PolicyId`]: read instead of the range index only
/// when the table outgrows it (`filter_common::ranges`). Written by the daemon, read by the
/// programs.
pub const ALLOW_V4: &str = "ALLOW_V4";
/// LPM trie, IPv6 destination prefix → [`crate::PolicyId`]. Written by the daemon, read by the
/// programs.
pub const ALLOW_V6: &str = "ALLOW_V6";
/// LPM trie, (interface, IPv4 source prefix) → reserved `u32`: the sources that belong on each
/// XDP interface (see `filter_common::sources`). Written by the daemon, read by XDP.
pub const SOURCES_V4: &str = "SOURCES_V4";
/// LPM trie, (interface, IPv6 source prefix) → reserved `u32`. Written by the daemon, read by XDP.
pub const SOURCES_V6: &str = "SOURCES_V6";
/// Array, two copies of a [`crate::sources::SourceSlot`] per interface: what XDP scans before
/// the source tries. Memory-mapped and written by the daemon, read by XDP.
pub const SOURCE_SLOTS: &str = "SOURCE_SLOTS";
/// Array with one `u32` at index 0: which copy of the source slots XDP reads (0 or 1).
pub const SOURCE_COPY: &str = "SOURCE_COPY";
/// Array, two copies of [`crate::ranges::CHUNKS`] index entries for IPv4 destinations
/// (`filter_common::ranges`). Memory-mapped and written by the daemon, read by the programs.
pub const INDEX_V4: &str = "INDEX_V4";
/// Array, two copies of the IPv4 range starts and their policies.
pub const RANGES_V4: &str = "RANGES_V4";
/// Array, two copies of the IPv6 destination index.
pub const INDEX_V6: &str = "INDEX_V6";
/// Array, two copies of the IPv6 range starts ([`crate::ranges::RangeV6`]).
pub const RANGES_V6: &str = "RANGES_V6";
/// Array with one [`crate::ranges::TableState`] at index 0: which copy of the index and of the
/// group tables each family reads, or its trie, and where the group chunks lie. Written by the
/// daemon, read by the programs.
pub const TABLE_STATE: &str = "TABLE_STATE";
/// Array, two copies of the IPv4 source ranges and their client groups
/// (`filter_common::groups`). Written by the daemon, read by the programs.
pub const GROUP_RANGES_V4: &str = "GROUP_RANGES_V4";
/// Array, two copies of the IPv6 source ranges ([`crate::ranges::RangeV6`], the group as value).
pub const GROUP_RANGES_V6: &str = "GROUP_RANGES_V6";
/// Hash, copy and interface index ([`crate::groups::group_interface_key`]) → the client group
/// of packets arriving on that interface. Written by the daemon, read by the programs.
pub const GROUP_IFACES: &str = "GROUP_IFACES";
/// Array, two copies of the IPv4 group index: each `u64` the runs of two chunks
/// (`filter_common::groups`). Memory-mapped and written by the daemon, read by the programs.
pub const GROUP_INDEX_V4: &str = "GROUP_INDEX_V4";
/// Array, two copies of the IPv6 group index.
pub const GROUP_INDEX_V6: &str = "GROUP_INDEX_V6";
/// Array, [`crate::PolicyId`] → [`crate::Policy`] (the protocols and ports allowed). Written by
/// the daemon, read by the programs.
pub const POLICIES: &str = "POLICIES";
/// Array with one [`crate::Config`] at index 0. Written by the daemon, read by the programs.
pub const CONFIG: &str = "CONFIG";
/// Per-CPU array, (interface slot, hook, [`crate::Reason`]) → [`crate::PacketCount`]
/// ([`crate::counters::reason_counter`]). Written by the programs, read by the daemon.
pub const REASON_STATS: &str = "REASON_STATS";
/// Array, interface index → its slot in [`REASON_STATS`] (0: not numbered). Written by the
/// daemon, read by the programs.
pub const COUNTER_SLOTS: &str = "COUNTER_SLOTS";
/// Per-CPU array, service id → [`crate::PacketCount`] of allowed packets. Written by the
/// programs, read by the daemon.
pub const SERVICE_STATS: &str = "SERVICE_STATS";
/// Per-CPU array, client group (`filter_common::groups`) → [`crate::PacketCount`] of the
/// packets its sources sent that were dropped (or, in audit mode, would have been). Written by
/// the programs, read by the daemon.
pub const GROUP_DROPS: &str = "GROUP_DROPS";
/// Per-CPU array, [`crate::EventCounter`] → count. Written by the programs, read by the daemon.
pub const EVENT_STATS: &str = "EVENT_STATS";
/// Per-CPU array with one token bucket for drop events at index 0. Kernel-private state.
pub const EVENT_BUDGET: &str = "EVENT_BUDGET";
/// Per-CPU array with the time of this CPU's last kernel log line at index 0. Kernel-private.
pub const LOG_BUDGET: &str = "LOG_BUDGET";
/// LRU hash, [`crate::flows::FlowKey`] → [`crate::flows::FlowState`]: TCP flows started while
/// allowed, kept past their address's removal (`filter_common::flows`). Written by the
/// programs; read, and pruned on reloads, by the daemon.
pub const TCP_FLOWS: &str = "TCP_FLOWS";
/// The same for UDP flows: a table of its own, so that a stream of one-datagram flows (DNS
/// queries from random ports) cannot push long-lived TCP connections out of theirs.
pub const UDP_FLOWS: &str = "UDP_FLOWS";
/// LRU hash, [`crate::flows::AddressKey`] → when the daemon removed the address
/// (CLOCK_MONOTONIC nanoseconds): the addresses whose flows may go on. Written by the daemon,
/// read by the programs.
pub const EXPIRED_ADDRS: &str = "EXPIRED_ADDRS";
/// Array of [`crate::flows::EXPIRED_FILTER_WORDS`] `u64`, memory-mapped: a bit per address
/// hash ([`crate::flows::expired_filter_bit`]), set for every address in [`EXPIRED_ADDRS`]
/// before it is marked there, so that a drop to an address never marked skips the hash lookup.
/// Written by the daemon, read by the programs.
pub const EXPIRED_FILTER: &str = "EXPIRED_FILTER";
/// Per-CPU array, [`crate::flows::FlowCounter`] → count. Written by the programs (and the
/// daemon, for reloads), read by the daemon.
pub const FLOW_STATS: &str = "FLOW_STATS";
/// Ring buffer of [`crate::DropEvent`]. Written by the programs, read by the daemon.
pub const EVENTS: &str = "EVENTS";

/// The XDP program, for a gateway's LAN-facing interface.
pub const PROG_XDP: &str = "egress_xdp";
/// The TC classifier, for a host's uplink (egress direction).
pub const PROG_TC: &str = "egress_tc";
/// The XDP program for layer-3 devices (TUN, WireGuard, PPP, IP tunnels): frames start at the IP
/// header. Runs in generic mode.
pub const PROG_XDP_L3: &str = "egress_xdp_l3";
/// `egress_xdp` loaded for multi-buffer frames (`xdp.frags`): what a driver needs to run XDP
/// natively on a link whose MTU exceeds a page. Needs kernel 5.18; attached only where the plain
/// program is refused and driver mode was asked for.
pub const PROG_XDP_FRAGS: &str = "egress_xdp_mb";
/// The TC classifier for layer-3 devices.
pub const PROG_TC_L3: &str = "egress_tc_l3";
/// The TC classifier for the host side of a pod's or container's veth (ingress direction):
/// [`PROG_TC`] with XDP's source check, since what arrives there is what the pod chose to send.
pub const PROG_TC_INGRESS: &str = "egress_tc_in";

/// Every map the object must contain.
pub const ALL_MAPS: [&str; 31] = [
    ALLOW_V4,
    ALLOW_V6,
    INDEX_V4,
    RANGES_V4,
    INDEX_V6,
    RANGES_V6,
    TABLE_STATE,
    SOURCES_V4,
    SOURCES_V6,
    SOURCE_SLOTS,
    SOURCE_COPY,
    GROUP_RANGES_V4,
    GROUP_RANGES_V6,
    GROUP_IFACES,
    GROUP_INDEX_V4,
    GROUP_INDEX_V6,
    POLICIES,
    CONFIG,
    REASON_STATS,
    COUNTER_SLOTS,
    SERVICE_STATS,
    GROUP_DROPS,
    EVENT_STATS,
    EVENT_BUDGET,
    LOG_BUDGET,
    EVENTS,
    TCP_FLOWS,
    UDP_FLOWS,
    EXPIRED_ADDRS,
    EXPIRED_FILTER,
    FLOW_STATS,
];
/// Every program the object must contain.
pub const ALL_PROGRAMS: [&str; 6] = [
    PROG_XDP,
    PROG_TC,
    PROG_XDP_L3,
    PROG_TC_L3,
    PROG_TC_INGRESS,
    PROG_XDP_FRAGS,
];

/// Capacity of each LPM trie. Tries are `BPF_F_NO_PREALLOC` (the kernel requires it), so an
/// unused entry costs no memory.
pub const MAX_PREFIXES: u32 = 1 << 21;
/// Capacity of each source trie: prefixes routed out of the XDP interfaces, all together.
pub const MAX_SOURCE_PREFIXES: u32 = 1 << 16;
/// Capacity of [`POLICIES`]: the number of distinct port sets after deduplication.
pub const MAX_POLICIES: u32 = 4096;
/// Capacity of [`SERVICE_STATS`]: service ids run from 0 to this minus one.
pub const MAX_SERVICES: u32 = 1024;
/// Capacity of [`TCP_FLOWS`]: past it the least recently used flow goes (the LRU's choice).
/// LRU hashes are preallocated: 65,536 flows take 8.4 MB of kernel memory (`memlock`), sized to
/// keep every map within the 160 MB goal.
pub const MAX_TCP_FLOWS: u32 = 1 << 16;
/// Capacity of [`UDP_FLOWS`] (4.2 MB).
pub const MAX_UDP_FLOWS: u32 = 1 << 15;
/// Capacity of [`EXPIRED_ADDRS`] (3.1 MB): past it the oldest mark goes, and with it what it
/// kept open.
pub const MAX_EXPIRED_ADDRS: u32 = 1 << 15;
/// Size of the [`EVENTS`] ring buffer in bytes (a power of two and a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

const fn fits_obj_name(names: &[&str]) -> bool {
    let mut i = 0;
    while i < names.len() {
        if names[i].len() > 15 {
            return false;
        }
        i += 1;
    }
    true
}
const _: () = assert!(fits_obj_name(&ALL_MAPS) && fits_obj_name(&ALL_PROGRAMS));
