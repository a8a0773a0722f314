//! Which source addresses belong on which interface: the anti-spoofing table XDP consults when
//! [`crate::Config::CHECK_SOURCES`] is set.
//!
//! ```text
//!  SOURCES_V4 key (struct bpf_lpm_trie_key_u8)
//! +----------------+----------------------+---------------------------+
//! | prefix_len u32 | ifindex [u8; 4]      | addr [u8; 4]              |
//! | (host order)   | network order        | network order             |
//! +----------------+----------------------+---------------------------+
//! ```
//!
//! The interface index leads the matched bits, so one longest-prefix lookup answers "is this
//! source routed out of the interface it arrived on?" A prefix of length `n` for interface `i` is
//! stored with `prefix_len = 32 + n`. The value is reserved (written as 0).

/// Interfaces with an index below this have a [`SourceSlot`]; others are checked in the tries.
pub const SOURCE_SLOT_INTERFACES: u32 = 1024;
/// Prefixes per family a slot holds; an interface with more is checked in the tries.
pub const SOURCE_SLOT_PREFIXES: usize = 8;
/// A slot count meaning "more than a slot holds: ask the trie".
pub const SOURCE_SLOT_OVERFLOW: u32 = u32::MAX;

/// The source prefixes of one interface, scanned by XDP before (and instead of) the tries:
/// `SOURCE_SLOTS[copy * SOURCE_SLOT_INTERFACES + ifindex]`, with `copy` the value of
/// `SOURCE_COPY[0]`. Two copies so that the daemon writes the one packets do not read, then
/// switches (as for the destination index, `crate::ranges`). The tries stay the complete
/// table; a slot is a copy of an interface's share of it that fits.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SourceSlot {
    /// IPv4 prefixes in use, or [`SOURCE_SLOT_OVERFLOW`].
    pub v4_count: u32,
    /// IPv6 prefixes in use, or [`SOURCE_SLOT_OVERFLOW`].
    pub v6_count: u32,
    pub v4: [SourcePrefixV4; SOURCE_SLOT_PREFIXES],
    pub v6: [SourcePrefixV6; SOURCE_SLOT_PREFIXES],
}
const _: () = assert!(size_of::<SourceSlot>() == 8 + 8 * 8 + 32 * 8);

/// An IPv4 source prefix: an address belongs when `address & mask == network`. Host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourcePrefixV4 {
    pub network: u32,
    pub mask: u32,
}

/// An IPv6 source prefix, as two 64-bit halves in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourcePrefixV6 {
    pub network_hi: u64,
    pub network_lo: u64,
    pub mask_hi: u64,
    pub mask_lo: u64,
}

impl SourceSlot {
    pub const EMPTY: Self = Self {
        v4_count: 0,
        v6_count: 0,
        v4: [SourcePrefixV4 {
            network: 0,
            mask: 0,
        }; SOURCE_SLOT_PREFIXES],
        v6: [SourcePrefixV6 {
            network_hi: 0,
            network_lo: 0,
            mask_hi: 0,
            mask_lo: 0,
        }; SOURCE_SLOT_PREFIXES],
    };
}

/// Address part of a `SOURCES_V4` key: interface index then IPv4 address, both network order.
pub type SourceKeyV4 = [u8; 8];
/// Address part of a `SOURCES_V6` key: interface index then IPv6 address, both network order.
pub type SourceKeyV6 = [u8; 20];
/// Bits of a source key taken by the interface index.
pub const IFINDEX_BITS: u32 = 32;

/// The key bytes for `addr` (an IPv4 or IPv6 address in network order) on interface `ifindex`.
#[inline(always)]
#[must_use]
pub fn source_key<const N: usize, const A: usize>(ifindex: u32, addr: &[u8; A]) -> [u8; N] {
    let mut key = [0u8; N];
    let index = ifindex.to_be_bytes();
    let mut i = 0;
    while i < 4 {
        key[i] = index[i];
        i += 1;
    }
    while i < N && i - 4 < A {
        key[i] = addr[i - 4];
        i += 1;
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_leads_the_address() {
        let key: SourceKeyV4 = source_key(0x0102_0304, &[192, 0, 2, 1]);
        assert_eq!(key, [1, 2, 3, 4, 192, 0, 2, 1]);
        let key: SourceKeyV6 = source_key(7, &[0xfe; 16]);
        assert_eq!(&key[..4], &[0, 0, 0, 7]);
        assert_eq!(&key[4..], &[0xfe; 16]);
    }
}
