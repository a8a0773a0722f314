//! Client groups: which allow-list a packet's source gets.
//!
//! Rules may name groups of clients by source prefix or by the interface their packets arrive
//! on, and say which services apply to which group. In the kernel a group is a number: 0 is the `default` group (every source no group's
//! prefix covers), the rules' named groups take the others. Each port rule of a policy carries
//! the set of groups it applies to ([`crate::PortRule::groups`]), so a policy answers for every
//! group at once and groups add no policies: a service's rules carry the same set under every
//! prefix.
//!
//! The source's group comes from sorted ranges, the way the destination index works
//! (`crate::ranges`) but without its chunk index, since group prefixes are few: a binary search
//! over at most [`GROUP_RANGES_PER_COPY`] ranges, every read an inlined array lookup.
//!
//! ```text
//!  TABLE_STATE[0]                  GROUPS_V4_COPY_1, GROUPS_V6_COPY_1: the copy each family reads
//!  GROUP_STATE[2 * family + copy]  ranges in use in that copy (family 0: IPv4, 1: IPv6)
//!  GROUP_RANGES_V4[copy * GROUP_RANGES_PER_COPY + i]  u64: start address (high 32) | group (low 32)
//!  GROUP_RANGES_V6[copy * GROUP_RANGES_PER_COPY + i]  RangeV6 { start_hi, start_lo, value: group }
//! ```
//!
//! A copy in use starts with a range at address 0, so every source finds its range. A copy with
//! no ranges (never written, or rules without groups) puts every source in group 0. The daemon
//! writes the copy not in use and its count, then flips the copy bits in the same store of
//! `TABLE_STATE` that switches the destination index: a packet read the state once, so it meets
//! the groups and the policies of one reload, never the groups of one and the policies of the
//! other.

/// Interfaces one copy of `GROUP_IFACES` holds: every interface some group's pattern
/// matches, across all groups.
pub const MAX_GROUP_INTERFACES: u32 = 4096;

/// The `GROUP_IFACES` key of the interface `ifindex` in `copy`.
///
/// ```text
///  GROUP_IFACES[copy << 31 | ifindex]  u32: the group of packets that arrive on ifindex
/// ```
///
/// A packet that arrives on an interface a group names is in that group, whatever its source
/// address: the interface cannot be spoofed, a source address can. Other packets are grouped by
/// source prefix. The daemon writes the copy packets do not read (a reload) and switches it
/// with [`crate::ranges::state::INTERFACE_GROUPS_COPY_1`], in the store that switches the rest;
/// an interface that appears or vanishes between reloads is written into the copy in use, one
/// entry at a time, each atomic.
#[inline(always)]
#[must_use]
pub const fn group_interface_key(copy: u32, ifindex: u32) -> u32 {
    (copy & 1) << 31 | (ifindex & !(1 << 31))
}

/// The copy of `GROUP_IFACES` that `table_state` names, or `None` when its rules group no
/// interface (and packets skip the lookup).
#[inline(always)]
#[must_use]
pub const fn interface_group_copy(table_state: u32) -> Option<u32> {
    use crate::ranges::state;
    if table_state & state::INTERFACE_GROUPS_ON == 0 {
        None
    } else {
        Some((table_state & state::INTERFACE_GROUPS_COPY_1 != 0) as u32)
    }
}

/// The group of sources no group's prefix covers.
pub const DEFAULT_GROUP: u32 = 0;
/// Groups the kernel can tell apart, `default` included: the width of [`GroupMask`].
pub const MAX_GROUPS: usize = 64;
/// A set of groups, bit `g` for group `g`.
pub type GroupMask = u64;
/// Every group: the set of a rule that applies to all of them.
pub const ALL_GROUPS: GroupMask = u64::MAX;
/// Source prefixes per family all groups together may name.
pub const MAX_GROUP_PREFIXES: usize = 1024;
/// Ranges one copy holds: a prefix adds at most two range starts, plus the one at address 0.
pub const GROUP_RANGES_PER_COPY: u32 = 4096;
/// Binary-search steps that find any range in [`GROUP_RANGES_PER_COPY`].
pub const GROUP_SEARCH_STEPS: usize = 12;
const _: () = assert!(1 << GROUP_SEARCH_STEPS >= GROUP_RANGES_PER_COPY);
const _: () = assert!(2 * MAX_GROUP_PREFIXES < GROUP_RANGES_PER_COPY as usize);

/// Entries of `GROUP_STATE`: a count per family and copy.
pub const GROUP_STATE_ENTRIES: u32 = 4;

/// The `GROUP_STATE` entry holding the count of ranges of `family` (4 or 6) in `copy`.
#[inline(always)]
#[must_use]
pub const fn group_count_entry(family: u8, copy: u32) -> u32 {
    2 * (family == 6) as u32 + (copy & 1)
}

/// The copy of `family`'s group ranges that `table_state` (the value of `TABLE_STATE`) names.
#[inline(always)]
#[must_use]
pub const fn group_copy(table_state: u32, family: u8) -> u32 {
    let bit = if family == 6 {
        crate::ranges::state::GROUPS_V6_COPY_1
    } else {
        crate::ranges::state::GROUPS_V4_COPY_1
    };
    (table_state & bit != 0) as u32
}

/// The mask of one group.
#[inline(always)]
#[must_use]
pub const fn group_bit(group: u32) -> GroupMask {
    1 << (group & (MAX_GROUPS as u32 - 1))
}
