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
