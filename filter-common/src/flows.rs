//! Established flows that outlive their address: the flow table's key and value, the marks the
//! daemon leaves on addresses it removed, and the flow counters.
//!
//! The programs put a flow in `TCP_FLOWS` or `UDP_FLOWS` when its first packet is allowed (a TCP SYN without ACK,
//! a UDP datagram of a flow not yet in the table) and take it out on FIN or RST. They read the
//! table only when the policy drops a packet: a TCP or UDP packet whose 5-tuple is there, to an
//! address the daemon marked in `EXPIRED_ADDRS` (it removed the address, not a reload without
//! `--keep-flows-on-reload`), passes as `established-flow` while the flow is younger than
//! [`crate::Config::established_max_secs`] and has not been idle for
//! [`crate::Config::established_idle_secs`] (idle time counts from the later of its last packet
//! seen on this path and the address's removal: allowed packets are never looked up).

/// A flow as the client sends it: addresses in network order (IPv4 in the first four bytes),
/// ports in host order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub sport: u16,
    pub dport: u16,
    /// 4 or 6.
    pub family: u8,
    /// IP protocol number: 6 (TCP) or 17 (UDP).
    pub proto: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// What the programs know of a flow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// When its first packet was allowed (`bpf_ktime_get_coarse_ns`, CLOCK_MONOTONIC).
    pub started_ns: u64,
    /// When a packet last passed on the flow alone; its start until then.
    pub last_seen_ns: u64,
    /// The service that allowed its first packet (counted for the packets it keeps passing).
    pub service_id: u16,
    /// 1 once a packet passed on the flow alone.
    pub kept: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(size_of::<FlowState>() == 24);

/// An address in `EXPIRED_ADDRS`, as [`FlowKey::dst`] and [`FlowKey::family`] spell it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AddressKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<AddressKey>() == 20);

/// Address bits of `EXPIRED_FILTER`: 2^20 bits, 128 KiB.
pub const EXPIRED_FILTER_BITS: u32 = 20;
/// `u64` words of `EXPIRED_FILTER`.
pub const EXPIRED_FILTER_WORDS: u32 = 1 << (EXPIRED_FILTER_BITS - 6);

/// The bit of `EXPIRED_FILTER` an address sets, from the address as a 128-bit number in two
/// halves ([`address_halves`]): a multiplicative hash of its IPv4 address, or of an IPv6
/// address's last 64 bits (the interface identifier, where addresses in one prefix differ).
/// Every address marked in `EXPIRED_ADDRS` has its bit set, so a clear bit says the address is
/// not marked without the hash lookup; a set bit may be another address's (with the capacity of
/// `EXPIRED_ADDRS` marked, about 3% of the bits are set), and the lookup decides. An attacker
/// who finds colliding addresses gains nothing: their drops take the lookup every drop took
/// before the filter.
#[inline(always)]
#[must_use]
pub const fn expired_filter_bit(hi: u64, lo: u64, family: u8) -> u32 {
    let word = if family == 4 { hi >> 32 } else { lo };
    (word.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - EXPIRED_FILTER_BITS)) as u32
}

/// An address as keys spell it (network order, IPv4 in the first four bytes) read as a 128-bit
/// big-endian number, in halves: what the programs hold a packet's addresses as.
#[inline(always)]
#[must_use]
pub const fn address_halves(addr: &[u8; 16]) -> (u64, u64) {
    let number = u128::from_be_bytes(*addr);
    ((number >> 64) as u64, number as u64)
}

/// Indices of the `FLOW_STATS` counters (per CPU).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlowCounter {
    /// Flows put in the table by an allowed first packet.
    Started = 0,
    /// Flows whose packets passed after their address was removed (counted once per flow).
    Kept = 1,
    /// Kept flows ended by `--established-idle`.
    EndedIdle = 2,
    /// Kept flows ended by `--established-max`.
    EndedMax = 3,
    /// Flows ended by FIN or RST after their address was removed.
    Closed = 4,
    /// Flows the daemon closed because a reload removed what allowed them (written by the
    /// daemon, on the first CPU's slot).
    ClosedByReload = 5,
}

impl FlowCounter {
    pub const COUNT: u32 = 6;
    pub const ALL: [FlowCounter; 6] = [
        Self::Started,
        Self::Kept,
        Self::EndedIdle,
        Self::EndedMax,
        Self::Closed,
        Self::ClosedByReload,
    ];

    /// A stable, lower-case name for `stats` and the metrics.
    #[must_use]
    pub const fn label(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Kept => "kept",
            Self::EndedIdle => "ended_idle",
            Self::EndedMax => "ended_max",
            Self::Closed => "closed",
            Self::ClosedByReload => "closed_by_reload",
        }
    }
}

/// TCP header flags the programs act on.
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_bit_reads_the_ipv4_address_or_the_ipv6_interface_identifier() {
        let mut v4 = [0_u8; 16];
        v4[..4].copy_from_slice(&[198, 51, 100, 10]);
        let (hi, lo) = address_halves(&v4);
        assert_eq!((hi, lo), (0xc633_640a_u64 << 32, 0));
        let bit = expired_filter_bit(hi, lo, 4);
        assert!(bit < EXPIRED_FILTER_WORDS * 64);
        // Another IPv4 address lands elsewhere (a multiplicative hash spreads neighbours).
        let (next_hi, _) = address_halves(&{
            let mut a = v4;
            a[3] = 11;
            a
        });
        assert_ne!(expired_filter_bit(next_hi, 0, 4), bit);

        let v6: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01,
        ];
        let (hi, lo) = address_halves(&v6);
        assert_eq!((hi, lo), (0x2001_0db8_0000_0000, 1));
        // Only the last 64 bits count for IPv6: addresses in one prefix still differ there.
        assert_eq!(
            expired_filter_bit(hi, lo, 6),
            expired_filter_bit(hi ^ 0xffff, lo, 6)
        );
        assert_ne!(
            expired_filter_bit(hi, lo, 6),
            expired_filter_bit(hi, lo + 1, 6)
        );
    }

    #[test]
    fn the_filter_bits_of_many_addresses_spread_over_the_filter() {
        // 32,768 consecutive IPv4 addresses (a CDN's /17) set nearly as many distinct bits: the
        // filter answers "not marked" for most other addresses.
        let bits: std::collections::BTreeSet<u32> = (0..32_768_u64)
            .map(|n| expired_filter_bit((0xc000_0000 + n) << 32, 0, 4))
            .collect();
        assert!(bits.len() > 31_000, "{} distinct bits", bits.len());
    }
}
