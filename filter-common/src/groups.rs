//! Client groups: which allow-list a packet's source gets.
//!
//! Rules may name groups of clients by source prefix or by the interface their packets arrive
//! on, and say which services apply to which group. In the kernel a group is a number: 0 is the `default` group (every source no group's
//! prefix covers), the rules' named groups take the others. Each port rule of a policy carries
//! the set of groups it applies to ([`crate::PortRule::groups`]), so a policy answers for every
//! group at once and groups add no policies: a service's rules carry the same set under every
//! prefix.
//!
//! The source's group comes from sorted ranges, each starting at an address and holding the
//! group of every address up to the next range's start (as the destination index, `crate::ranges`),
//! found through a chunk index over a *window*: the smallest aligned block of addresses that
//! holds every range start but the first (`base..=end`, a /`shift` prefix, `shift` at most the
//! family's width less 16). The 16 address bits after the block's prefix pick one of
//! [`GROUP_CHUNKS`] chunks; the chunk names the run of ranges that cover it, whose first one
//! starts at or below the chunk's first address. Group prefixes usually sit in a few site
//! prefixes (a LAN's /16, a site's /48), so the window spends its 16 bits where the ranges are,
//! not on the top bits they all share: a chunk then lies inside one group, and its entry holds
//! that group, so the answer is one inlined array lookup (the chunk) beyond the `TABLE_STATE`
//! read every packet makes anyway, which carries the windows with their counts
//! ([`crate::ranges::TableState`]). A chunk some range starts inside holds the run of ranges that cover
//! it, searched in at most [`GROUP_SEARCH_STEPS`] steps. A source outside the window is below
//! every range start but the first (range 0 holds it) or above the last (the last range holds
//! it): one range read.
//!
//! ```text
//!  TABLE_STATE[0].bits             GROUPS_V4_COPY_1, GROUPS_V6_COPY_1: the copy each family reads
//!  TABLE_STATE[0].group_windows[2 * family + copy]
//!                                  GroupWindow { base, end, mask, shift, count }: where the
//!                                  chunks lie, and how many ranges the copy holds (family 0:
//!                                  IPv4, 1: IPv6); count 0: none
//!  GROUP_INDEX_Vx[copy * GROUP_INDEX_PER_COPY + chunk / 2]
//!                                  u64: two chunks' entries, the even chunk in the low 32 bits;
//!                                  an entry is u32: 1 << 31 | group when the whole chunk is in
//!                                  one group, else a run: first range (low 16 bits), count
//!                                  (bits 16-30)
//!  GROUP_RANGES_V4[copy * GROUP_RANGES_PER_COPY + i]  u64: start address (high 32) | group (low 32)
//!  GROUP_RANGES_V6[copy * GROUP_RANGES_PER_COPY + i]  RangeV6 { start_hi, start_lo, value: group }
//!
//!  chunk = (source << shift) >> (width - 16)     for base <= source <= end
//! ```
//!
//! Memory per copy: the chunk index 256 KiB per family, the ranges 32 KiB (IPv4) and 96 KiB
//! (IPv6), the windows 56 bytes each (inside `TABLE_STATE`); 1.25 MiB for both copies of both families, whatever the
//! rules hold.
//!
//! A copy in use starts with a range at address 0, so every source finds its range. A copy with
//! no ranges (never written, or rules without groups) puts every source in group 0, with no read
//! beyond `TABLE_STATE`'s. The daemon writes the copy not in use (ranges, index, then the window
//! with its count into `TABLE_STATE`), then flips the copy bits in the same update of
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

/// Group windows `TABLE_STATE` holds: one per family and copy.
pub const GROUP_WINDOW_ENTRIES: u32 = 4;

/// Address bits after the window's prefix that pick a chunk.
pub const GROUP_CHUNK_BITS: u32 = 16;
/// Chunks per copy of a family's group index.
pub const GROUP_CHUNKS: u32 = 1 << GROUP_CHUNK_BITS;
/// `u64` entries per copy of a family's group index: each holds the runs of two chunks (a
/// `BPF_MAP_TYPE_ARRAY` rounds every element up to 8 bytes, so two `u32` runs share one).
pub const GROUP_INDEX_PER_COPY: u32 = GROUP_CHUNKS / 2;
// A run's first range (absolute, in either copy) and its count fit 16 bits each.
const _: () = assert!(2 * GROUP_RANGES_PER_COPY <= 1 << 16);

/// Where a copy's chunks lie: the block `base..=end` of addresses, whose first `shift` bits all
/// its addresses share; and how many ranges the copy holds, in the same read (for rules without
/// groups, all a packet asks). Part of [`crate::ranges::TableState`]. IPv4 uses the low halves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupWindow {
    /// Address bits 0-63 of the block's first address, host order.
    pub base_hi: u64,
    /// Address bits 64-127 of the block's first address (IPv4: the address).
    pub base_lo: u64,
    /// Address bits 0-63 of the block's last address.
    pub end_hi: u64,
    /// Address bits 64-127 of the block's last address (IPv4: the address).
    pub end_lo: u64,
    /// The block's prefix as a mask, bits 0-63 (its first `shift` bits set): a source is inside
    /// when it differs from `base` in none of them.
    pub mask_hi: u64,
    /// The mask's bits 64-127 (IPv4: the prefix mask, in the low 32 bits).
    pub mask_lo: u64,
    /// The block's prefix length: at most the family's width less [`GROUP_CHUNK_BITS`].
    pub shift: u32,
    /// Ranges the copy holds; 0 when the rules group no source (every source is in
    /// [`DEFAULT_GROUP`]).
    pub count: u32,
}
const _: () = assert!(size_of::<GroupWindow>() == 56);

/// A chunk's entry when its run is longer than one range: `count` ranges from range `first`
/// (counted from the start of the array, so copy 1's runs start at [`GROUP_RANGES_PER_COPY`] or
/// later).
#[inline(always)]
#[must_use]
pub const fn group_run(first: u32, count: u32) -> u32 {
    count << 16 | (first & 0xffff)
}

/// Marks a chunk entry that holds a group instead of a run: every address of the chunk is in
/// that one group. Most are, as group prefixes are wider than a chunk, and then the chunk's
/// entry answers without a range read.
pub const GROUP_ENTRY_DIRECT: u32 = 1 << 31;

/// A chunk's entry when every address of the chunk is in `group`.
#[inline(always)]
#[must_use]
pub const fn group_direct(group: u32) -> u32 {
    GROUP_ENTRY_DIRECT | (group & 0xffff)
}

/// The entry of `chunk` in a `u64` of the group index that holds it.
#[inline(always)]
#[must_use]
pub const fn chunk_entry(pair: u64, chunk: u32) -> u32 {
    (pair >> ((chunk & 1) * 32)) as u32
}

/// A run entry's first range and count (for a direct entry, meaningless).
#[inline(always)]
#[must_use]
pub const fn run_parts(entry: u32) -> (u32, u32) {
    (entry & 0xffff, (entry >> 16) & 0x7fff)
}

/// The entry of [`crate::ranges::TableState::group_windows`] of `family` (4 or 6) in `copy`.
#[inline(always)]
#[must_use]
pub const fn group_window_entry(family: u8, copy: u32) -> u32 {
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
