//! Synthetic prefix sets with a realistic spread of lengths, and addresses inside (hits) and
//! outside (misses) them. Deterministic: the same seed gives the same set on every run.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use filter_user::table::{AllowTable, Grant, PortSpec};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// xorshift64*: small, fast, reproducible; no crate needed for benchmark inputs.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// IPv4 lengths shaped like a routing table: mostly /24, some shorter, some host routes (the
/// daemon's resolved addresses).
fn v4_len(rng: &mut Rng) -> u8 {
    match rng.below(100) {
        0..=9 => 16 + rng.below(6) as u8,   // /16-/21
        10..=29 => 22 + rng.below(2) as u8, // /22-/23
        30..=79 => 24,
        80..=89 => 25 + rng.below(7) as u8, // /25-/31
        _ => 32,
    }
}

/// IPv6 lengths: allocations (/32-/48), sites (/48-/56), subnets (/64) and hosts (/128).
fn v6_len(rng: &mut Rng) -> u8 {
    match rng.below(100) {
        0..=14 => 32 + rng.below(16) as u8,
        15..=54 => 48,
        55..=69 => 56,
        70..=89 => 64,
        _ => 128,
    }
}

/// `count` distinct IPv4 prefixes across the unicast space (1.0.0.0-223.255.255.255).
pub(crate) fn v4_prefixes(count: usize, rng: &mut Rng) -> Vec<Ipv4Net> {
    let mut out = std::collections::BTreeSet::new();
    while out.len() < count {
        let addr =
            Ipv4Addr::from((1 + rng.below(222) as u32) << 24 | (rng.next() as u32 & 0x00ff_ffff));
        if let Ok(net) = Ipv4Net::new(addr, v4_len(rng)) {
            out.insert(net.trunc());
        }
    }
    out.into_iter().collect()
}

/// `count` distinct IPv6 prefixes inside 2000::/3.
pub(crate) fn v6_prefixes(count: usize, rng: &mut Rng) -> Vec<Ipv6Net> {
    let mut out = std::collections::BTreeSet::new();
    while out.len() < count {
        let high = (0x2000_u128 | u128::from(rng.next() as u16 & 0x1fff)) << 112;
        let addr =
            Ipv6Addr::from(high | (u128::from(rng.next()) << 48) | u128::from(rng.next() as u32));
        if let Ok(net) = Ipv6Net::new(addr, v6_len(rng)) {
            out.insert(net.trunc());
        }
    }
    out.into_iter().collect()
}

/// Grants allowing TCP 443 to every prefix, one service.
pub(crate) fn grants(v4: &[Ipv4Net], v6: &[Ipv6Net]) -> Vec<Grant> {
    v4.iter()
        .map(|n| IpNet::V4(*n))
        .chain(v6.iter().map(|n| IpNet::V6(*n)))
        .map(|prefix| Grant {
            prefix,
            service: 0,
            ports: vec![PortSpec::Tcp(443..=443)],
            groups: filter_common::groups::ALL_GROUPS,
        })
        .collect()
}

/// An address inside a randomly chosen prefix of the table.
pub(crate) fn hit(table: &AllowTable, v6: bool, rng: &mut Rng) -> IpAddr {
    if v6 {
        let nets: Vec<&Ipv6Net> = table.v6.keys().collect();
        let net = nets[rng.below(nets.len() as u64) as usize];
        let host_bits = 128 - u32::from(net.prefix_len());
        let offset = if host_bits == 0 {
            0
        } else {
            u128::from(rng.next()) & (u128::MAX >> (128 - host_bits.min(64)))
        };
        IpAddr::V6(Ipv6Addr::from(u128::from(net.network()) | offset))
    } else {
        let nets: Vec<&Ipv4Net> = table.v4.keys().collect();
        let net = nets[rng.below(nets.len() as u64) as usize];
        let host_bits = 32 - u32::from(net.prefix_len());
        let offset = if host_bits == 0 {
            0
        } else {
            (rng.next() as u32) & (u32::MAX >> (32 - host_bits))
        };
        IpAddr::V4(Ipv4Addr::from(u32::from(net.network()) | offset))
    }
}

/// A unicast address no prefix of the table covers (a miss still walks the trie).
pub(crate) fn miss(table: &AllowTable, v6: bool, rng: &mut Rng) -> IpAddr {
    loop {
        let addr = if v6 {
            let high = (0x2000_u128 | u128::from(rng.next() as u16 & 0x1fff)) << 112;
            IpAddr::V6(Ipv6Addr::from(high | (u128::from(rng.next()) << 32)))
        } else {
            IpAddr::V4(Ipv4Addr::from(
                (1 + rng.below(222) as u32) << 24 | (rng.next() as u32 & 0x00ff_ffff),
            ))
        };
        if table.lookup(addr).is_none() {
            return addr;
        }
    }
}
