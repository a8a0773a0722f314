//! The one parser both hooks share.
//!
//! Contract: `parse` reads the frame from its first byte through one bounds-checked `ptr_at`,
//! never past [`MAX_L4_OFFSET`] plus a transport header, and never trusts a length field without
//! checking the bytes are there. It fills a [`Packet`] as far as it gets — a drop event for a
//! truncated TCP header still names the addresses — and returns either what kind of frame it
//! read or the closed [`Reason`] that stopped it. Layers:
//!
//! ```text
//! Ethernet → ≤ MAX_VLAN_TAGS tags (802.1ad/802.1Q) ─┐
//! (layer-3 devices: no link header, version nibble) ┴→ IPv4 (options: source routes refused)
//!                                                   → IPv6 → ≤ MAX_IPV6_EXT_HEADERS extension headers
//!                                                          (routing headers with segments left refused)
//!                                                   → TCP / UDP ports, ICMP / ICMPv6 type
//! ```
//!
//! Which link layer a frame has is the program's, not the frame's, to say: `ETHERNET` is a
//! compile-time parameter, so each program verifies and runs only its own path.

use filter_common::{flows::address_halves, Reason, RuleProto};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

use crate::context::PacketContext;

/// VLAN tags followed before giving up; QinQ (an 802.1ad outer and an 802.1Q inner tag) is the
/// deepest stacking seen on real access networks.
pub(crate) const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers followed before giving up. Real traffic carries one or two; eight
/// leaves room for every header type once while keeping the loop short for the verifier.
pub(crate) const MAX_IPV6_EXT_HEADERS: usize = 8;
/// Furthest offset at which a transport header may start. Bounds every variable offset so the
/// verifier can prove packet reads safe, and caps the work an adversarial chain can demand.
pub(crate) const MAX_L4_OFFSET: usize = 512;

mod ethertype {
    pub(super) const IPV4: u16 = 0x0800;
    pub(super) const ARP: u16 = 0x0806;
    pub(super) const VLAN_8021Q: u16 = 0x8100;
    pub(super) const VLAN_8021AD: u16 = 0x88a8;
    /// Pre-standard QinQ outer tag, still emitted by some switches.
    pub(super) const VLAN_9100: u16 = 0x9100;
    pub(super) const IPV6: u16 = 0x86dd;
    pub(super) const PPPOE_SESSION: u16 = 0x8864;
    pub(super) const MPLS_UNICAST: u16 = 0x8847;
    pub(super) const MPLS_MULTICAST: u16 = 0x8848;
}

pub(crate) mod ipproto {
    pub(crate) const HOPOPTS: u8 = 0;
    pub(crate) const ICMP: u8 = 1;
    pub(crate) const TCP: u8 = 6;
    pub(crate) const UDP: u8 = 17;
    pub(crate) const ROUTING: u8 = 43;
    pub(crate) const FRAGMENT: u8 = 44;
    pub(crate) const AH: u8 = 51;
    pub(crate) const ICMPV6: u8 = 58;
    pub(crate) const DSTOPTS: u8 = 60;
}

/// Minimum transport header lengths: the bytes that must be present before ports or types count.
const TCP_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
const ICMP_HDR_LEN: usize = 8;
const VLAN_TAG_LEN: usize = 4;

/// What the parser learned. Zero where it did not get that far.
pub(crate) struct Packet {
    /// 4 or 6; 0 for frames that are not IP.
    pub family: u8,
    /// IP protocol number after any IPv6 extension headers.
    pub proto: u8,
    /// The [`RuleProto`] number rules match against, 0 when rules cannot name the protocol.
    pub rule_proto: u8,
    /// IPv6 hop limit / IPv4 TTL.
    pub hop_limit: u8,
    /// VLAN id of the outermost tag, 0 when untagged.
    pub vlan_id: u16,
    /// A non-first fragment: no transport header, judged by address only.
    pub non_first_fragment: bool,
    /// ICMP/ICMPv6 type, when `rule_proto` is ICMP.
    pub icmp_type: u8,
    /// Source and destination.
    pub src: Address,
    pub dst: Address,
    /// Transport ports in host order, 0 when absent.
    pub sport: u16,
    pub dport: u16,
    /// TCP header flags (`filter_common::flows::tcp_flags`), 0 for other protocols.
    pub tcp_flags: u8,
}

impl Packet {
    pub(crate) const EMPTY: Self = Self {
        family: 0,
        proto: 0,
        rule_proto: 0,
        hop_limit: 0,
        vlan_id: 0,
        non_first_fragment: false,
        icmp_type: 0,
        src: Address::ZERO,
        dst: Address::ZERO,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
    };
}

/// An IP address as a 128-bit number (network order read as big-endian) in two halves; an IPv4
/// address is the top 32 bits of `hi`, the rest 0. Two registers, where sixteen bytes became
/// sixteen stack slots that every use put back together: the verifier's 512 bytes of stack
/// and the instructions per packet both went to them.
#[derive(Clone, Copy)]
pub(crate) struct Address {
    pub hi: u64,
    pub lo: u64,
}

impl Address {
    pub(crate) const ZERO: Self = Self { hi: 0, lo: 0 };

    #[inline(always)]
    const fn v4_from(octets: [u8; 4]) -> Self {
        Self {
            hi: (u32::from_be_bytes(octets) as u64) << 32,
            lo: 0,
        }
    }

    #[inline(always)]
    const fn v6_from(octets: &[u8; 16]) -> Self {
        let (hi, lo) = address_halves(octets);
        Self { hi, lo }
    }

    /// The IPv4 address, for a packet of family 4.
    #[inline(always)]
    pub(crate) const fn v4(self) -> u32 {
        (self.hi >> 32) as u32
    }

    /// The address in network order, IPv4 in the first four bytes: as keys and events spell it.
    #[inline(always)]
    pub(crate) const fn octets(self) -> [u8; 16] {
        ((self.hi as u128) << 64 | self.lo as u128).to_be_bytes()
    }
}

/// What kind of frame was parsed.
pub(crate) enum Frame {
    /// An IPv4 or IPv6 packet; [`Packet`] holds its fields.
    Ip,
    Arp,
    /// Anything else that does not carry IP.
    NotIp,
}

/// IPv4 option types that name other hops than the destination (RFC 791): loose and strict
/// source route.
const IPV4_OPT_LSRR: u8 = 131;
const IPV4_OPT_SSRR: u8 = 137;
/// The most option bytes an IPv4 header holds (IHL 15).
const IPV4_MAX_OPTION_BYTES: usize = 40;

/// Bounds-checked view of the frame. Every read goes through [`Cursor::ptr_at`].
struct Cursor {
    start: usize,
    end: usize,
}

impl Cursor {
    /// A pointer to a `T` at `offset`, if all of it lies inside the frame.
    #[inline(always)]
    fn ptr_at<T>(&self, offset: usize) -> Option<*const T> {
        // The explicit cap gives the verifier an upper bound on every variable offset.
        if offset > MAX_L4_OFFSET + TCP_HDR_LEN {
            return None;
        }
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        Some(at as *const T)
    }

    /// The byte at `offset`, if it lies inside the frame. A one-byte bounds check would compile to
    /// `at >= end`, from which the verifier learns no readable range; keeping the `+ 1` opaque
    /// keeps the `at + 1 > end` form it understands.
    #[inline(always)]
    fn byte_at(&self, offset: usize) -> Option<u8> {
        if offset > MAX_L4_OFFSET + TCP_HDR_LEN {
            return None;
        }
        let at = self.start + offset;
        if at + core::hint::black_box(1) > self.end {
            return None;
        }
        // Safety: checked just above that the byte lies inside the frame.
        Some(unsafe { *(at as *const u8) })
    }

    /// Whether the frame holds at least `len` bytes.
    #[inline(always)]
    fn holds(&self, len: usize) -> bool {
        self.start + len <= self.end
    }
}

/// Parses the frame in `ctx` into `packet`. See the module docs for the contract. `ETHERNET` is
/// false for layer-3 devices, whose frames start at the IP header.
#[inline(always)]
pub(crate) fn parse<C: PacketContext, const ETHERNET: bool>(
    ctx: &C,
    packet: &mut Packet,
) -> Result<Frame, Reason> {
    let cursor = Cursor {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let (ether_type, l3_offset) = if ETHERNET {
        parse_l2(&cursor, packet)?
    } else {
        (l3_ether_type(&cursor)?, 0)
    };
    let (proto, l4_offset) = match ether_type {
        ethertype::IPV4 => parse_ipv4(&cursor, l3_offset, packet)?,
        ethertype::IPV6 => parse_ipv6(&cursor, l3_offset, packet)?,
        ethertype::ARP => return Ok(Frame::Arp),
        ethertype::PPPOE_SESSION | ethertype::MPLS_UNICAST | ethertype::MPLS_MULTICAST => {
            return Err(Reason::Encapsulated)
        }
        _ => return Ok(Frame::NotIp),
    };
    packet.proto = proto;
    packet.rule_proto = match (packet.family, proto) {
        (4, ipproto::ICMP) | (6, ipproto::ICMPV6) => RuleProto::Icmp as u8,
        (_, ipproto::TCP) => RuleProto::Tcp as u8,
        (_, ipproto::UDP) => RuleProto::Udp as u8,
        _ => 0,
    };
    if !packet.non_first_fragment {
        parse_l4(&cursor, l4_offset, packet)?;
    }
    Ok(Frame::Ip)
}

/// Ethernet and up to [`MAX_VLAN_TAGS`] tags. Returns the inner ethertype and where L3 starts.
#[inline(always)]
fn parse_l2(cursor: &Cursor, packet: &mut Packet) -> Result<(u16, usize), Reason> {
    let eth: *const EthHdr = cursor.ptr_at(0).ok_or(Reason::TruncatedL2)?;
    // Safety: `ptr_at` checked that a whole EthHdr lies inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !is_vlan(ether_type) {
            break;
        }
        // A tag is the 16-bit TCI followed by the next ethertype.
        let tag: *const [u8; VLAN_TAG_LEN] = cursor.ptr_at(offset).ok_or(Reason::TruncatedL2)?;
        // Safety: `ptr_at` checked the four tag bytes.
        let tag = unsafe { *tag };
        if packet.vlan_id == 0 {
            packet.vlan_id = u16::from_be_bytes([tag[0], tag[1]]) & 0x0fff;
        }
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        offset += VLAN_TAG_LEN;
    }
    if is_vlan(ether_type) {
        return Err(Reason::TooManyVlanTags);
    }
    Ok((ether_type, offset))
}

/// The ethertype a layer-3 device's frame stands for, from the IP version nibble: these devices
/// carry IPv4 and IPv6 only (a TUN device without packet information, WireGuard, PPP's IP, IP
/// tunnels), so anything else is refused rather than passed as not-IP.
#[inline(always)]
fn l3_ether_type(cursor: &Cursor) -> Result<u16, Reason> {
    match cursor.byte_at(0).ok_or(Reason::NotIpOnL3Device)? >> 4 {
        4 => Ok(ethertype::IPV4),
        6 => Ok(ethertype::IPV6),
        _ => Err(Reason::NotIpOnL3Device),
    }
}

#[inline(always)]
const fn is_vlan(ether_type: u16) -> bool {
    matches!(
        ether_type,
        ethertype::VLAN_8021Q | ethertype::VLAN_8021AD | ethertype::VLAN_9100
    )
}

/// IPv4 with options. Returns the protocol and where the transport header starts.
#[inline(always)]
fn parse_ipv4(cursor: &Cursor, offset: usize, packet: &mut Packet) -> Result<(u8, usize), Reason> {
    let ip: *const Ipv4Hdr = cursor.ptr_at(offset).ok_or(Reason::TruncatedIpv4)?;
    // Safety: `ptr_at` checked that the fixed 20-byte header lies inside the frame.
    let ip = unsafe { &*ip };
    if ip.vihl >> 4 != 4 {
        return Err(Reason::MalformedIpv4);
    }
    let header_len = (ip.vihl & 0x0f) as usize * 4;
    if header_len < Ipv4Hdr::LEN || (u16::from_be_bytes(ip.tot_len) as usize) < header_len {
        return Err(Reason::MalformedIpv4);
    }
    packet.family = 4;
    packet.hop_limit = ip.ttl;
    packet.src = Address::v4_from(ip.src_addr);
    packet.dst = Address::v4_from(ip.dst_addr);
    if !cursor.holds(offset + header_len) {
        return Err(Reason::TruncatedIpv4);
    }
    if header_len > Ipv4Hdr::LEN {
        check_ipv4_options(cursor, offset + Ipv4Hdr::LEN, offset + header_len)?;
    }
    // Fragment offset is the low 13 bits of the flags/offset field.
    packet.non_first_fragment = u16::from_be_bytes(ip.frags) & 0x1fff != 0;
    Ok((ip.proto, offset + header_len))
}

/// Refuses a packet whose options (between `start` and `end`, both inside the frame) hold a
/// source route: it names the hops the packet is to visit after its destination, so the
/// destination field is not where it goes.
///
/// Every option byte is compared, not only the bytes where an option starts. Following the
/// option lengths is exact but costs the verifier one state per combination of lengths (it ran
/// out of its million instructions); the scan is linear. It cannot miss a source route, and it
/// drops only crafted packets besides: the options clients really send (router alert, record
/// route, timestamp) start out zero-filled, and Linux discards malformed options itself.
#[inline(always)]
fn check_ipv4_options(cursor: &Cursor, start: usize, end: usize) -> Result<(), Reason> {
    // The caller checked that the frame holds `end` bytes, so the compiler would drop the bounds
    // checks below as redundant; the verifier cannot follow that reasoning and needs them.
    let options_len = core::hint::black_box(end - start);
    for position in 0..IPV4_MAX_OPTION_BYTES {
        if position >= options_len {
            break;
        }
        let kind = cursor
            .byte_at(start + position)
            .ok_or(Reason::TruncatedIpv4)?;
        if kind == IPV4_OPT_LSRR || kind == IPV4_OPT_SSRR {
            return Err(Reason::SourceRouted);
        }
    }
    Ok(())
}

/// IPv6 and its extension-header chain. Returns the upper-layer protocol and where its header
/// starts. A fragment header with a non-zero offset ends the walk: nothing after it is parsable.
#[inline(always)]
fn parse_ipv6(cursor: &Cursor, offset: usize, packet: &mut Packet) -> Result<(u8, usize), Reason> {
    let ip: *const Ipv6Hdr = cursor.ptr_at(offset).ok_or(Reason::TruncatedIpv6)?;
    // Safety: `ptr_at` checked that the fixed 40-byte header lies inside the frame.
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Reason::MalformedIpv6);
    }
    packet.family = 6;
    packet.hop_limit = ip.hop_limit;
    packet.src = Address::v6_from(&ip.src_addr);
    packet.dst = Address::v6_from(&ip.dst_addr);

    let mut next = ip.next_hdr;
    let mut offset = offset + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_ipv6_extension(next) {
            return Ok((next, offset));
        }
        // Every extension header starts with (next header, length); the fragment header's
        // offset field follows in bytes 2..4.
        let ext: *const [u8; 4] = cursor.ptr_at(offset).ok_or(Reason::TruncatedIpv6Ext)?;
        // Safety: `ptr_at` checked the four bytes.
        let ext = unsafe { *ext };
        let ext_len = match next {
            // RFC 8200 4.4: segments left (byte 3) counts the hops still to visit. Any left means
            // the destination field is only the next stop; RH0 and SRH alike are refused.
            ipproto::ROUTING if ext[3] != 0 => return Err(Reason::SourceRouted),
            ipproto::FRAGMENT => {
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    packet.non_first_fragment = true;
                }
                8
            }
            // RFC 4302: AH counts its length in 4-octet units, minus 2.
            ipproto::AH => (ext[1] as usize + 2) * 4,
            // RFC 8200: 8-octet units, not counting the first 8 octets.
            _ => (ext[1] as usize + 1) * 8,
        };
        next = ext[0];
        offset += ext_len;
        if offset > MAX_L4_OFFSET {
            return Err(Reason::HeadersTooLong);
        }
        if !cursor.holds(offset) {
            return Err(Reason::TruncatedIpv6Ext);
        }
        if packet.non_first_fragment {
            return Ok((next, offset));
        }
    }
    if is_ipv6_extension(next) {
        return Err(Reason::HeadersTooLong);
    }
    Ok((next, offset))
}

#[inline(always)]
const fn is_ipv6_extension(next: u8) -> bool {
    matches!(
        next,
        ipproto::HOPOPTS | ipproto::ROUTING | ipproto::FRAGMENT | ipproto::AH | ipproto::DSTOPTS
    )
}

/// The transport header of an unfragmented packet or first fragment: ports for TCP/UDP, the type
/// for ICMP. Other protocols have nothing the rules look at.
#[inline(always)]
fn parse_l4(cursor: &Cursor, offset: usize, packet: &mut Packet) -> Result<(), Reason> {
    let rule_proto = packet.rule_proto;
    if rule_proto == RuleProto::Tcp as u8 {
        let header: *const [u8; TCP_HDR_LEN] = cursor.ptr_at(offset).ok_or(Reason::TruncatedL4)?;
        // Safety: `ptr_at` checked the whole minimal TCP header.
        let header = unsafe { &*header };
        packet.sport = u16::from_be_bytes([header[0], header[1]]);
        packet.dport = u16::from_be_bytes([header[2], header[3]]);
        packet.tcp_flags = header[13];
    } else if rule_proto == RuleProto::Udp as u8 {
        let header: *const [u8; UDP_HDR_LEN] = cursor.ptr_at(offset).ok_or(Reason::TruncatedL4)?;
        // Safety: `ptr_at` checked the whole UDP header.
        let header = unsafe { &*header };
        packet.sport = u16::from_be_bytes([header[0], header[1]]);
        packet.dport = u16::from_be_bytes([header[2], header[3]]);
    } else if rule_proto == RuleProto::Icmp as u8 {
        let header: *const [u8; ICMP_HDR_LEN] = cursor.ptr_at(offset).ok_or(Reason::TruncatedL4)?;
        // Safety: `ptr_at` checked the whole ICMP header.
        packet.icmp_type = unsafe { (*header)[0] };
    }
    Ok(())
}
