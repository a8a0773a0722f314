//! The per-packet cost breakdown: `egress_xdp` with one part left out at a time, so the bench can
//! time each variant beside the full program on the same frames and attribute the difference to
//! the part removed. The variants are in the object but never loaded by the daemon (it loads the
//! four programs of `filter_common::maps::ALL_PROGRAMS` by name); only the bench loads them.
//!
//! A variant's verdict is not the filter's: the parts left out decide packets.

use aya_ebpf::{macros::xdp, maps::Array, programs::XdpContext};
use filter_common::{
    groups::{group_copy, GROUP_INDEX_PER_COPY},
    Config, PolicyId,
};

use crate::{
    maps::{GROUP_INDEX_V4, GROUP_INDEX_V6},
    parse::Packet,
    process, xdp_verdict,
};

/// Bits of `process`'s `SKIP` parameter: the parts a variant leaves out.
pub(crate) mod skip {
    /// The real programs.
    pub(crate) const NOTHING: u32 = 0;
    /// The per-CPU reason and service counter updates.
    pub(crate) const COUNT: u32 = 1 << 0;
    /// The `CONFIG` array read: [`super::CONSTANT_CONFIG`] instead.
    pub(crate) const CONFIG: u32 = 1 << 1;
    /// The destination lookup: every packet takes [`super::CONSTANT_POLICY_ID`].
    pub(crate) const DESTINATION: u32 = 1 << 2;
    /// The policy-slot lookup and the rule scan: a covered destination is allowed.
    pub(crate) const RULES: u32 = 1 << 3;
    /// Everything after the parser: the program parses and returns.
    pub(crate) const ALL_BUT_PARSE: u32 = 1 << 4;
    /// The kernel log lines (aya-log) on the damaged-map and unknown-config paths.
    pub(crate) const KERNEL_LOG: u32 = 1 << 5;
    /// The flow table: flows neither started, ended nor kept.
    pub(crate) const FLOWS: u32 = 1 << 6;
    /// The source's client-group lookup: every source is in the default group.
    pub(crate) const GROUPS: u32 = 1 << 7;
    /// With [`GROUPS`]: the group from one inlined array read instead
    /// ([`super::group_from_one_read`]).
    pub(crate) const GROUP_FROM_ONE_READ: u32 = 1 << 8;
}

/// The yardstick groups are held to, "one extra array-speed lookup": one inlined array read
/// keyed by the source, as any group table answering in one read must be. It reads the group
/// index entry of 16 bits of the source (IPv4's first, IPv6's after the first 16) in the copy
/// `table_state` names (a table of the real one's size, so the read meets the same caches). No entry is all ones (a chunk's
/// entry is a group below `MAX_GROUPS` or a run of at most 2 * `GROUP_RANGES_PER_COPY`
/// ranges), so the group is always the default one and the verdicts stay those of
/// `abl_no_groups`; the compiler cannot know that, so the read and the group's use stay in.
#[inline(always)]
pub(crate) fn group_from_one_read(packet: &Packet, table_state: u32) -> u32 {
    let copy = group_copy(table_state, packet.family);
    // One read site per family, each with its own map, as the real lookup has: a read whose map
    // is chosen at run time is not inlined by the verifier (a helper call, several times the
    // cost), and would make the yardstick dearer than what it measures.
    let entry = if packet.family == 4 {
        let chunk = (packet.src.hi >> 48) as u32;
        one_read(&GROUP_INDEX_V4, copy, chunk)
    } else {
        // The 16 bits after an IPv6 site's /16, where the bench's group prefixes differ.
        let chunk = (packet.src.hi >> 32) as u32 & 0xffff;
        one_read(&GROUP_INDEX_V6, copy, chunk)
    };
    u32::from(entry == u64::MAX)
}

/// The group index entry of `chunk` in `copy`, 0 when out of range.
#[inline(always)]
fn one_read(index: &Array<u64>, copy: u32, chunk: u32) -> u64 {
    index
        .get(copy * GROUP_INDEX_PER_COPY + (chunk >> 1))
        .copied()
        .unwrap_or(0)
}

/// The config a variant without the config read assumes: enforce, sources checked, no events.
pub(crate) const CONSTANT_CONFIG: Config = Config {
    mode: 0,
    events_per_sec: 0,
    event_burst: 0,
    flags: Config::CHECK_SOURCES,
    established_idle_secs: 0,
    established_max_secs: 0,
};

/// The policy slot a variant without the destination lookup uses for every packet.
pub(crate) const CONSTANT_POLICY_ID: PolicyId = 0;

macro_rules! variants {
    ($($(#[doc = $doc:literal])* $name:ident = $skip:expr;)*) => {$(
        $(#[doc = $doc])*
        #[xdp]
        pub(crate) fn $name(ctx: XdpContext) -> u32 {
            xdp_verdict(process::<_, true, { $skip }>(&ctx))
        }
    )*};
}

variants! {
    /// Without the counter updates.
    abl_no_count = skip::COUNT;
    /// Without the config read.
    abl_no_config = skip::CONFIG;
    /// Without the destination lookup.
    abl_no_dest = skip::DESTINATION;
    /// Without the policy slot and rule scan.
    abl_no_rules = skip::RULES;
    /// The parser alone.
    abl_parse_only = skip::ALL_BUT_PARSE;
    /// Without the kernel log lines.
    abl_no_log = skip::KERNEL_LOG;
    /// Without the flow table.
    abl_no_flows = skip::FLOWS;
    /// Without the client-group lookup.
    abl_no_groups = skip::GROUPS;
    /// The client-group lookup replaced by one array read.
    abl_group_one_read = skip::GROUPS | skip::GROUP_FROM_ONE_READ;
}
