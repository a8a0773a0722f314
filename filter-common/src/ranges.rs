//! The destination index: what answers "which policy covers this destination?" per packet.
//!
//! The allow table (one policy per prefix, overlaps already unioned, so the longest matching
//! prefix answers) is a piecewise-constant function over the address space. The daemon writes
//! it as sorted *ranges*: each range starts at an address and holds the policy of every address
//! up to the next range's start (DXR, Zec et al. 2012). The packet's top [`CHUNK_BITS`] bits pick
//! a chunk of the index; the chunk names a run of ranges, whose first one starts at the chunk's
//! first address; a binary search in that run finds the last range starting at or below the
//! destination. Every read is a `BPF_MAP_TYPE_ARRAY` lookup, which the verifier inlines: no
//! helper call, no pointer chase through trie nodes.
//!
//! ```text
//!  INDEX_Vx[copy * CHUNKS + (dst >> (W - 16))]  →  u64: first range (low 32 bits), count (high)
//!  RANGES_V4[first ..first + count]             →  u64: start address (high 32) | value (low 32)
//!  RANGES_V6[first ..first + count]             →  RangeV6 { start_hi, start_lo, value }
//! ```
//!
//! A value is `policy id + 1`, 0 where no prefix covers the range.
//!
//! Updates never touch what packets read: each family has two copies of its index and ranges
//! (copy 0 at the front of each array, copy 1 behind it). The daemon writes the copy not in use,
//! then switches [`TABLE_STATE`](crate::maps::TABLE_STATE) (one changed byte, [`TableState`]), and waits
//! for a grace period (every program that may have read the old copy has returned) before it
//! writes that copy again. A packet reads the state once and then only one copy: it is judged by
//! the old table or the new one, never a mix.
//!
//! A table with more ranges than a copy holds goes to the LPM tries instead (`ALLOW_V4`,
//! `ALLOW_V6`), and the state says so per family.

/// Bits of the destination that pick a chunk.
pub const CHUNK_BITS: u32 = 16;
/// Chunks per copy of an index.
pub const CHUNKS: u32 = 1 << CHUNK_BITS;
/// Ranges one copy holds, per family: a prefix adds at most two range starts, a chunk one, so
/// a million prefixes fit.
pub const RANGES_PER_COPY: u32 = 1 << 21;
/// Binary-search steps that find any range in a run of up to [`RANGES_PER_COPY`].
pub const SEARCH_STEPS: usize = 22;
const _: () = assert!(1 << (SEARCH_STEPS - 1) >= RANGES_PER_COPY);

/// An IPv6 range start and its value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeV6 {
    /// Address bits 0-63 of the start (the most significant), host order.
    pub start_hi: u64,
    /// Address bits 64-127 of the start, host order.
    pub start_lo: u64,
    /// Policy id + 1, or 0 where nothing is allowed.
    pub value: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<RangeV6>() == 24);

/// The value at index 0 of `TABLE_STATE`: what a packet reads once, before any table, so that
/// it meets one reload's tables.
///
/// A switch rewrites the value with only [`TableState::bits`] changed, and every bit a switch
/// flips lies in its first byte ([`state`]), so a packet reading while the value is rewritten
/// sees the old bits or the new, never a mix. The group windows of the copies not in use are
/// written (in an update of their own) before the switch that names them; the windows in use
/// are rewritten only with the bytes they already hold.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableState {
    /// Which copy each family's destination index and group ranges read, whether a family
    /// reads its trie instead, and the interface groups' copy ([`state`]). All zero (never
    /// written): copy 0, which is empty, so nothing is allowed.
    pub bits: u32,
    pub _pad: u32,
    /// Where each copy of the group chunks lies, and how many group ranges it holds, at
    /// [`crate::groups::group_window_entry`]: read in the same lookup as the bits, so a
    /// source's group costs one more array read (its chunk), not two.
    pub group_windows: [crate::groups::GroupWindow; crate::groups::GROUP_WINDOW_ENTRIES as usize],
}
const _: () = assert!(size_of::<TableState>() == 232);

/// The bits of [`TableState::bits`].
pub mod state {
    /// IPv4 reads copy 1 of its index and ranges.
    pub const V4_COPY_1: u32 = 1 << 0;
    /// IPv6 reads copy 1.
    pub const V6_COPY_1: u32 = 1 << 1;
    /// IPv4 reads the `ALLOW_V4` trie: the table outgrew a copy.
    pub const V4_TRIE: u32 = 1 << 2;
    /// IPv6 reads the `ALLOW_V6` trie.
    pub const V6_TRIE: u32 = 1 << 3;
    /// IPv4 sources find their client group in copy 1 of the group ranges
    /// (`crate::groups`): switched with the destination copies, in one store.
    pub const GROUPS_V4_COPY_1: u32 = 1 << 4;
    /// IPv6 sources find their client group in copy 1.
    pub const GROUPS_V6_COPY_1: u32 = 1 << 5;
    /// The client-group bits of the source ranges.
    pub const GROUPS: u32 = GROUPS_V4_COPY_1 | GROUPS_V6_COPY_1;
    /// Packets find the group of the interface they arrived on in copy 1 of
    /// `GROUP_IFACES` (`crate::groups::group_interface_key`).
    pub const INTERFACE_GROUPS_COPY_1: u32 = 1 << 6;
    /// The rules group some interface: packets look up the one they arrived on.
    pub const INTERFACE_GROUPS_ON: u32 = 1 << 7;
    /// The bits of the interface groups.
    pub const INTERFACE_GROUPS: u32 = INTERFACE_GROUPS_COPY_1 | INTERFACE_GROUPS_ON;
    // Every bit lies in the first byte: a switch changes one byte of the state.
    const _: () = assert!(
        (V4_COPY_1 | V6_COPY_1 | V4_TRIE | V6_TRIE | GROUPS | INTERFACE_GROUPS) & !0xff == 0
    );
}

/// An index entry: `count` ranges from `first`.
#[inline(always)]
#[must_use]
pub const fn index_entry(first: u32, count: u32) -> u64 {
    (count as u64) << 32 | first as u64
}

/// An IPv4 range entry.
#[inline(always)]
#[must_use]
pub const fn range_v4(start: u32, value: u32) -> u64 {
    (start as u64) << 32 | value as u64
}
