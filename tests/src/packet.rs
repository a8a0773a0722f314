//! Crafted frames for verdict tests: a small builder that writes every header by hand, so tests
//! can also write the malformed and truncated ones no real stack would send.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use filter_common::flows::tcp_flags;

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;

/// An IPv6 extension header, written with the right next-header value by the builder.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop options; `units` extra 8-octet units after the first 8 bytes.
    HopByHop {
        units: u8,
    },
    /// Routing header of `routing_type` (0: RH0, 4: segment routing) with `segments_left`.
    Routing {
        units: u8,
        routing_type: u8,
        segments_left: u8,
    },
    DestinationOptions {
        units: u8,
    },
    /// Fragment header: offset in 8-octet units, more-fragments flag.
    Fragment {
        offset: u16,
        more: bool,
    },
    /// Authentication header; `len_field` is its raw length field (4-octet units minus 2).
    Auth {
        len_field: u8,
    },
}

impl Ext {
    const fn number(self) -> u8 {
        match self {
            Self::HopByHop { .. } => 0,
            Self::Routing { .. } => 43,
            Self::Fragment { .. } => 44,
            Self::Auth { .. } => 51,
            Self::DestinationOptions { .. } => 60,
        }
    }

    fn write(self, next: u8, out: &mut Vec<u8>) {
        match self {
            Self::Routing {
                units,
                routing_type,
                segments_left,
            } => {
                out.extend([next, units, routing_type, segments_left]);
                // Reserved word, then the addresses: zeros are as good as any here.
                out.extend(std::iter::repeat_n(0, 4 + 8 * usize::from(units)));
            }
            Self::HopByHop { units } | Self::DestinationOptions { units } => {
                out.extend([next, units]);
                // PadN option filling the rest: type 1, length.
                let rest = 6 + 8 * usize::from(units);
                out.extend([1, (rest - 2) as u8]);
                out.extend(std::iter::repeat_n(0, rest - 2));
            }
            Self::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(more);
                out.extend([next, 0]);
                out.extend(field.to_be_bytes());
                out.extend([0, 0, 0, 42]);
            }
            Self::Auth { len_field } => {
                out.extend([next, len_field, 0, 0]);
                let total = (usize::from(len_field) + 2) * 4;
                out.extend(std::iter::repeat_n(0, total - 4));
            }
        }
    }
}

/// The transport part of a packet.
#[derive(Clone, Debug)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        /// The flags byte: SYN (0x02) unless told otherwise.
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp {
        kind: u8,
    },
    /// Any other protocol number with an opaque payload.
    Raw {
        proto: u8,
        payload: Vec<u8>,
    },
}

impl L4 {
    fn proto(&self, v6: bool) -> u8 {
        match self {
            Self::Tcp { .. } => 6,
            Self::Udp { .. } => 17,
            Self::Icmp { .. } => {
                if v6 {
                    58
                } else {
                    1
                }
            }
            Self::Raw { proto, .. } => *proto,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        match self {
            Self::Tcp {
                sport,
                dport,
                flags,
            } => {
                let mut h = Vec::with_capacity(20);
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend([0, 0, 0, 1, 0, 0, 0, 0]); // seq, ack
                h.extend([0x50, *flags, 0xff, 0xff]); // data offset 5, flags, window
                h.extend([0, 0, 0, 0]); // checksum, urgent
                h
            }
            Self::Udp { sport, dport } => {
                let mut h = Vec::with_capacity(8);
                h.extend(sport.to_be_bytes());
                h.extend(dport.to_be_bytes());
                h.extend(8u16.to_be_bytes());
                h.extend([0, 0]);
                h
            }
            Self::Icmp { kind } => vec![*kind, 0, 0, 0, 0, 0, 0, 1],
            Self::Raw { payload, .. } => payload.clone(),
        }
    }
}

/// A frame under construction.
#[derive(Clone, Debug)]
pub struct Pkt {
    vlans: Vec<(u16, u16)>,
    src: IpAddr,
    dst: IpAddr,
    l4: L4,
    ipv4_options: Vec<u8>,
    ipv4_fragment_offset: u16,
    ipv4_more_fragments: bool,
    ext: Vec<Ext>,
    hop_limit: u8,
}

impl Pkt {
    /// An IP packet from `src` to `dst` (both v4 or both v6); TCP 40000→443 until told otherwise.
    #[must_use]
    pub fn ip(src: &str, dst: &str) -> Self {
        let src: IpAddr = src.parse().expect("test source address");
        let dst: IpAddr = dst.parse().expect("test destination address");
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed address families");
        Self {
            vlans: Vec::new(),
            src,
            dst,
            l4: L4::Tcp {
                sport: 40000,
                dport: 443,
                flags: tcp_flags::SYN,
            },
            ipv4_options: Vec::new(),
            ipv4_fragment_offset: 0,
            ipv4_more_fragments: false,
            ext: Vec::new(),
            hop_limit: 64,
        }
    }

    #[must_use]
    pub fn tcp(mut self, dport: u16) -> Self {
        self.l4 = L4::Tcp {
            sport: 40000,
            dport,
            flags: tcp_flags::SYN,
        };
        self
    }

    /// TCP from `sport` to `dport` with these header flags (`tcp_flags`).
    #[must_use]
    pub fn tcp_with(mut self, sport: u16, dport: u16, flags: u8) -> Self {
        self.l4 = L4::Tcp {
            sport,
            dport,
            flags,
        };
        self
    }

    #[must_use]
    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = L4::Udp { sport, dport };
        self
    }

    #[must_use]
    pub fn icmp(mut self, kind: u8) -> Self {
        self.l4 = L4::Icmp { kind };
        self
    }

    #[must_use]
    pub fn proto(mut self, proto: u8) -> Self {
        self.l4 = L4::Raw {
            proto,
            payload: vec![0; 8],
        };
        self
    }

    #[must_use]
    pub fn vlan(mut self, tpid: u16, id: u16) -> Self {
        self.vlans.push((tpid, id));
        self
    }

    /// IPv4 options (padded to a multiple of 4 bytes with end-of-options).
    #[must_use]
    pub fn ipv4_options(mut self, options: &[u8]) -> Self {
        self.ipv4_options = options.to_vec();
        while !self.ipv4_options.len().is_multiple_of(4) {
            self.ipv4_options.push(0);
        }
        self
    }

    /// IPv4 fragment: offset in 8-octet units, more-fragments flag.
    #[must_use]
    pub fn ipv4_fragment(mut self, offset: u16, more: bool) -> Self {
        self.ipv4_fragment_offset = offset;
        self.ipv4_more_fragments = more;
        self
    }

    #[must_use]
    pub fn ext(mut self, ext: Ext) -> Self {
        self.ext.push(ext);
        self
    }

    #[must_use]
    pub fn hop_limit(mut self, hop_limit: u8) -> Self {
        self.hop_limit = hop_limit;
        self
    }

    /// The frame's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let (ether_type, l3) = match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => (ETH_IPV4, self.ipv4(src, dst)),
            (IpAddr::V6(src), IpAddr::V6(dst)) => (ETH_IPV6, self.ipv6(src, dst)),
            _ => unreachable!("checked in Pkt::ip"),
        };
        ethernet(&self.vlans, ether_type, &l3)
    }

    fn ipv4(&self, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
        let payload = self.l4.bytes();
        let header_len = 20 + self.ipv4_options.len();
        let total = header_len + payload.len();
        let flags_offset = (u16::from(self.ipv4_more_fragments) << 13) | self.ipv4_fragment_offset;
        let mut h = Vec::with_capacity(total);
        h.push(0x40 | (header_len / 4) as u8);
        h.push(0);
        h.extend((total as u16).to_be_bytes());
        h.extend([0x12, 0x34]);
        h.extend(flags_offset.to_be_bytes());
        h.extend([self.hop_limit, self.l4.proto(false), 0, 0]);
        h.extend(src.octets());
        h.extend(dst.octets());
        h.extend(&self.ipv4_options);
        let checksum = internet_checksum(&h);
        h[10..12].copy_from_slice(&checksum.to_be_bytes());
        h.extend(payload);
        h
    }

    fn ipv6(&self, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
        let upper = self.l4.proto(true);
        let mut chain = Vec::new();
        for (i, ext) in self.ext.iter().enumerate() {
            let next = self.ext.get(i + 1).map_or(upper, |e| e.number());
            ext.write(next, &mut chain);
        }
        let first = self.ext.first().map_or(upper, |e| e.number());
        let payload = self.l4.bytes();
        let mut h = Vec::with_capacity(40 + chain.len() + payload.len());
        h.extend([0x60, 0, 0, 0]);
        h.extend(((chain.len() + payload.len()) as u16).to_be_bytes());
        h.extend([first, self.hop_limit]);
        h.extend(src.octets());
        h.extend(dst.octets());
        h.extend(chain);
        h.extend(payload);
        h
    }
}

/// An Ethernet frame around `payload`, with VLAN tags outermost first.
#[must_use]
pub fn ethernet(vlans: &[(u16, u16)], ether_type: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(14 + 4 * vlans.len() + payload.len());
    f.extend([0x02, 0, 0, 0, 0, 0x02]); // destination MAC
    f.extend([0x02, 0, 0, 0, 0, 0x01]); // source MAC
    for (tpid, id) in vlans {
        f.extend(tpid.to_be_bytes());
        f.extend(id.to_be_bytes());
    }
    f.extend(ether_type.to_be_bytes());
    f.extend(payload);
    f
}

/// An ARP request frame.
#[must_use]
pub fn arp_request() -> Vec<u8> {
    let mut arp = vec![0, 1, 8, 0, 6, 4, 0, 1];
    arp.extend([0x02, 0, 0, 0, 0, 0x01, 192, 0, 2, 1]);
    arp.extend([0, 0, 0, 0, 0, 0, 192, 0, 2, 254]);
    ethernet(&[], ETH_ARP, &arp)
}

fn internet_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_length_and_checksum_are_right() {
        let frame = Pkt::ip("192.0.2.1", "198.51.100.2")
            .ipv4_options(&[1, 1, 1])
            .build();
        let ip = &frame[14..];
        assert_eq!(ip[0], 0x46, "version 4, IHL 6 with one word of options");
        assert_eq!(internet_checksum(&ip[..24]), 0, "header checksums to zero");
        assert_eq!(u16::from_be_bytes([ip[2], ip[3]]) as usize, ip.len());
    }

    #[test]
    fn ipv6_chain_links_next_headers() {
        let frame = Pkt::ip("2001:db8::1", "2001:db8::2")
            .ext(Ext::HopByHop { units: 0 })
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
            })
            .udp(1, 2)
            .build();
        let ip = &frame[14..];
        assert_eq!(ip[6], 0, "first: hop-by-hop");
        assert_eq!(ip[40], 44, "then fragment");
        assert_eq!(ip[48], 17, "then UDP");
    }
}
