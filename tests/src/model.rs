//! A userspace model of the datapath's verdict, written from the documented behaviour (the
//! README's reason table, ARCHITECTURE.md) and not from the kernel code, for the frame
//! differential (`tests/tests/frames.rs`).
//!
//! Headers are read with `etherparse`, a parser maintained outside this project; what etherparse
//! does not decide (which headers the filter walks, its depth limits, what it does with
//! fragments, non-IP ethertypes and ICMP, which reason wins when a frame is wrong in two ways) is
//! written out here, each rule next to the line of the documentation it comes from. Where the
//! documentation is silent the comment says so and names what was read instead.
//!
//! The model is stateless: it never answers `established-flow` (a flow kept past its address
//! needs an address the daemon marked as expired, and the differential marks none), nor
//! `spoofed-source` (the source check is off in the differential's config), nor
//! `policy-missing` (the table is written by the map writer, never damaged).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use etherparse::{
    err::ipv4::HeaderSliceError as Ipv4Error, err::ipv6::HeaderSliceError as Ipv6Error, EtherType,
    Ethernet2Header, Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, Ipv6FragmentHeaderSlice,
    Ipv6Header, Ipv6HeaderSlice, Ipv6RawExtHeaderSlice, SingleVlanHeader, SingleVlanHeaderSlice,
    UdpHeaderSlice,
};
use filter_common::{Reason, RuleProto};
use filter_user::table::AllowTable;

/// What a frame starts with: the program attached to the interface says it, not the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// An Ethernet header (XDP and TC on Ethernet devices).
    Ethernet,
    /// The IP header itself (the layer-3 programs: TUN, WireGuard, PPP, IP tunnels).
    Ip,
}

/// README: "The parser reads Ethernet, up to two VLAN tags (802.1ad, 802.1Q)".
pub const MAX_VLAN_TAGS: usize = 2;
/// README: "IPv6 with up to eight extension headers".
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// README, `headers-too-long`: "a transport header beyond byte 512" (counted from the frame's
/// first byte).
pub const MAX_TRANSPORT_OFFSET: usize = 512;

/// VLAN tag protocol identifiers: 802.1Q, 802.1ad and the pre-standard QinQ 0x9100. The README
/// names the first two; that 0x9100 counts as a tag too is written in `parse.rs` only (docs
/// silent).
const VLAN_TPIDS: [EtherType; 3] = [
    EtherType::VLAN_TAGGED_FRAME,
    EtherType::PROVIDER_BRIDGING,
    EtherType::VLAN_DOUBLE_TAGGED_FRAME,
];
/// README, `encapsulated`: "IP inside PPPoE sessions or MPLS, which the parser does not open".
const ENCAPSULATING: [EtherType; 3] = [
    EtherType(0x8864), // PPPoE session
    EtherType(0x8847), // MPLS unicast
    EtherType(0x8848), // MPLS multicast
];

/// IPv6 extension headers the parser walks (README: "IPv6 with up to eight extension headers").
/// Which ones is not written in the docs; `parse.rs` walks hop-by-hop, routing, fragment, AH and
/// destination options, and treats any other number (ESP, mobility, HIP, shim6, experimental,
/// no-next-header) as the upper-layer protocol, which rules cannot name: such a packet is judged
/// by its destination only and never allowed (`protocol-not-allowed`).
const WALKED_EXTENSIONS: [IpNumber; 5] = [
    IpNumber::IPV6_HEADER_HOP_BY_HOP,
    IpNumber::IPV6_ROUTE_HEADER,
    IpNumber::IPV6_FRAGMENTATION_HEADER,
    IpNumber::AUTHENTICATION_HEADER,
    IpNumber::IPV6_DESTINATION_OPTIONS,
];

/// README, `link-scoped`: "Not tunnel protocols (IP-in-IP, IPv6-in-IP, GRE, EtherIP, ENCAP,
/// L2TP, MPLS-in-IP), which a tunnel endpoint could unwrap and route".
const TUNNELS: [u8; 7] = [4, 41, 47, 97, 98, 115, 137];

/// README, `source-routed`: "any option byte 131 or 137" (loose and strict source route).
const IPV4_SOURCE_ROUTE_OPTIONS: [u8; 2] = [131, 137];

/// Bytes of a transport header that must be present (README, `truncated-l4`: "ends inside its
/// TCP/UDP/ICMP header"). The TCP header is its fixed 20 bytes: the filter reads ports and flags,
/// which lie there, whatever the data offset claims (docs silent on options; `parse.rs` reads 20).
const TCP_HEADER_LEN: usize = 20;
const ICMP_HEADER_LEN: usize = 8;

/// What the model read of an IP packet: what the verdict needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpPacket {
    pub dst: IpAddr,
    /// The upper-layer protocol number (after IPv6 extension headers).
    pub proto: u8,
    /// IPv4 TTL or IPv6 hop limit.
    pub hop_limit: u8,
    /// A fragment other than the first: it carries no transport header.
    pub non_first_fragment: bool,
    pub transport: Transport,
}

/// The part of the transport header the verdict looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP for IPv4, ICMPv6 for IPv6.
    Icmp {
        kind: u8,
    },
    /// Another protocol, or a non-first fragment: nothing read.
    None,
}

/// What the frame is, as far as the filter reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    Ip(IpPacket),
    Arp,
    NotIp,
}

/// The reason the filter counts `frame` under, `table` being the allow table in its maps.
#[must_use]
pub fn judge(table: &AllowTable, frame: &[u8], link: Link) -> Reason {
    match parse(frame, link) {
        Ok(Parsed::Ip(packet)) => verdict(table, &packet),
        Ok(Parsed::Arp) => Reason::Arp,
        Ok(Parsed::NotIp) => Reason::NotIp,
        Err(reason) => reason,
    }
}

/// Reads `frame` the way the README says the parser does; `Err` is the drop reason of a frame
/// it cannot fully read.
pub fn parse(frame: &[u8], link: Link) -> Result<Parsed, Reason> {
    let (ether_type, l3) = match link {
        Link::Ethernet => link_layer(frame)?,
        // README, `not-ip-on-l3-device`: "a packet that is neither IPv4 nor IPv6"; on these
        // devices the version nibble says which.
        Link::Ip => match frame.first().map(|b| b >> 4) {
            Some(4) => (EtherType::IPV4, 0),
            Some(6) => (EtherType::IPV6, 0),
            _ => return Err(Reason::NotIpOnL3Device),
        },
    };
    match ether_type {
        EtherType::IPV4 => ipv4(frame, l3).map(Parsed::Ip),
        EtherType::IPV6 => ipv6(frame, l3).map(Parsed::Ip),
        // README, `arp`: passes whatever follows: ARP is never routed.
        EtherType::ARP => Ok(Parsed::Arp),
        e if ENCAPSULATING.contains(&e) => Err(Reason::Encapsulated),
        // README, `not-ip`: "LLDP, STP, PPPoE discovery…: cannot leave the link through a router";
        // an 802.3 length in the type field is no IP either.
        _ => Ok(Parsed::NotIp),
    }
}

/// The Ethernet header and its VLAN tags: the inner ethertype and where layer 3 starts.
fn link_layer(frame: &[u8]) -> Result<(EtherType, usize), Reason> {
    // README, `truncated-l2`: "frame ends inside the Ethernet header or a VLAN tag".
    let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| Reason::TruncatedL2)?;
    let mut ether_type = eth.ether_type();
    let mut offset = Ethernet2Header::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if !VLAN_TPIDS.contains(&ether_type) {
            break;
        }
        let tag =
            SingleVlanHeaderSlice::from_slice(&frame[offset..]).map_err(|_| Reason::TruncatedL2)?;
        ether_type = tag.ether_type();
        offset += SingleVlanHeader::LEN;
    }
    // README, `too-many-vlan-tags`: "a third tag: what follows was never looked at".
    if VLAN_TPIDS.contains(&ether_type) {
        return Err(Reason::TooManyVlanTags);
    }
    Ok((ether_type, offset))
}

/// IPv4 and its options, then the transport header.
///
/// Which of two faults wins is not in the README: the fixed header's own contradictions
/// (version, IHL, total length below the header length: `malformed-ipv4`) are judged before the
/// options are known to be all there (`truncated-ipv4`), the order in which a parser meets them.
fn ipv4(frame: &[u8], at: usize) -> Result<IpPacket, Reason> {
    let bytes = &frame[at..];
    let header = match Ipv4HeaderSlice::from_slice(bytes) {
        Ok(header) => header,
        // Shorter than the fixed header: README, `truncated-ipv4`.
        Err(Ipv4Error::Len(_)) if bytes.len() < etherparse::Ipv4Header::MIN_LEN => {
            return Err(Reason::TruncatedIpv4)
        }
        // The fixed header is there, the options are not; the total length is still read.
        Err(Ipv4Error::Len(_)) => {
            let header_len = usize::from(bytes[0] & 0x0f) * 4;
            let total_len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
            return Err(if total_len < header_len {
                Reason::MalformedIpv4
            } else {
                Reason::TruncatedIpv4
            });
        }
        // Version ≠ 4 or IHL < 5: README, `malformed-ipv4`.
        Err(Ipv4Error::Content(_)) => return Err(Reason::MalformedIpv4),
    };
    let header_len = header.slice().len();
    // README, `malformed-ipv4`: "total length < header length". A total length that claims more
    // or fewer bytes than the frame holds is not listed as a fault: only the headers are read.
    if usize::from(header.total_len()) < header_len {
        return Err(Reason::MalformedIpv4);
    }
    if header
        .options()
        .iter()
        .any(|b| IPV4_SOURCE_ROUTE_OPTIONS.contains(b))
    {
        return Err(Reason::SourceRouted);
    }
    // README, `allowed-fragment`: "non-first fragment (no ports)": a non-zero fragment offset.
    let non_first_fragment = header.fragments_offset().value() != 0;
    let proto = header.protocol().0;
    let transport = if non_first_fragment {
        Transport::None
    } else {
        transport(&frame[at + header_len..], proto, IpNumber::ICMP.0)?
    };
    Ok(IpPacket {
        dst: IpAddr::V4(Ipv4Addr::from(header.destination())),
        proto,
        hop_limit: header.ttl(),
        non_first_fragment,
        transport,
    })
}

/// IPv6, its extension headers, then the transport header.
fn ipv6(frame: &[u8], at: usize) -> Result<IpPacket, Reason> {
    // README: `truncated-ipv6` "ends inside the fixed IPv6 header", `malformed-ipv6` "version ≠ 6".
    let header = Ipv6HeaderSlice::from_slice(&frame[at..]).map_err(|e| match e {
        Ipv6Error::Len(_) => Reason::TruncatedIpv6,
        Ipv6Error::Content(_) => Reason::MalformedIpv6,
    })?;
    let (proto, offset, non_first_fragment) =
        extension_chain(frame, at + Ipv6Header::LEN, header.next_header())?;
    let transport = if non_first_fragment {
        Transport::None
    } else {
        transport(&frame[offset..], proto, IpNumber::IPV6_ICMP.0)?
    };
    Ok(IpPacket {
        dst: IpAddr::V6(Ipv6Addr::from(header.destination())),
        proto,
        hop_limit: header.hop_limit(),
        non_first_fragment,
        transport,
    })
}

/// Walks the extension headers from `offset`, `next` naming the first. Returns the upper-layer
/// protocol, where its header starts, and whether a fragment header said this is not the first
/// fragment (README, `allowed-fragment`: no ports follow, so nothing after it is read).
///
/// Which fault wins within one header is not in the README; the model reads a header's fields in
/// the order they come and judges each as soon as it is there: the first four bytes (next header,
/// length, and for a routing header its type and segments left) must be present
/// (`truncated-ipv6-ext`); a routing header with segments left is `source-routed` on that byte
/// alone; a length that puts the next header past byte 512 is `headers-too-long` before the
/// frame is asked whether it holds that many bytes; only then must the whole header be there.
fn extension_chain(
    frame: &[u8],
    mut offset: usize,
    mut next: IpNumber,
) -> Result<(u8, usize, bool), Reason> {
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !WALKED_EXTENSIONS.contains(&next) {
            return Ok((next.0, offset, false));
        }
        let rest = &frame[offset..];
        let Some(&[first_next, length_field, _, segments_left]) = rest.get(..4) else {
            return Err(Reason::TruncatedIpv6Ext);
        };
        // README, `source-routed`: "IPv6 routing header with segments left".
        if next == IpNumber::IPV6_ROUTE_HEADER && segments_left != 0 {
            return Err(Reason::SourceRouted);
        }
        let len = match next {
            IpNumber::IPV6_FRAGMENTATION_HEADER => 8,
            // RFC 4302: AH counts its length in 4-octet units, minus 2.
            IpNumber::AUTHENTICATION_HEADER => (usize::from(length_field) + 2) * 4,
            // RFC 8200: 8-octet units, not counting the first 8 octets.
            _ => (usize::from(length_field) + 1) * 8,
        };
        if offset + len > MAX_TRANSPORT_OFFSET {
            return Err(Reason::HeadersTooLong);
        }
        // The whole header, read by etherparse where it has a reader for the kind (AH it reads
        // only with a non-zero length, which RFC 4302 requires but the filter does not).
        let whole = match next {
            IpNumber::IPV6_FRAGMENTATION_HEADER => {
                let fragment = Ipv6FragmentHeaderSlice::from_slice(rest)
                    .map_err(|_| Reason::TruncatedIpv6Ext)?;
                if fragment.fragment_offset().value() != 0 {
                    return Ok((fragment.next_header().0, offset + len, true));
                }
                true
            }
            IpNumber::AUTHENTICATION_HEADER => rest.len() >= len,
            _ => Ipv6RawExtHeaderSlice::from_slice(rest).is_ok(),
        };
        if !whole {
            return Err(Reason::TruncatedIpv6Ext);
        }
        next = IpNumber(first_next);
        offset += len;
    }
    // README, `headers-too-long`: "more than 8 extension headers".
    if WALKED_EXTENSIONS.contains(&next) {
        return Err(Reason::HeadersTooLong);
    }
    Ok((next.0, offset, false))
}

/// The transport header of an unfragmented packet or first fragment. `icmp` is the ICMP
/// protocol number of the family (1 for IPv4, 58 for IPv6); the other family's number is just
/// another protocol.
fn transport(bytes: &[u8], proto: u8, icmp: u8) -> Result<Transport, Reason> {
    // README, `truncated-l4`: "unfragmented packet or first fragment ends inside its
    // TCP/UDP/ICMP header".
    if proto == IpNumber::TCP.0 {
        let header = bytes.get(..TCP_HEADER_LEN).ok_or(Reason::TruncatedL4)?;
        Ok(Transport::Tcp {
            sport: u16::from_be_bytes([header[0], header[1]]),
            dport: u16::from_be_bytes([header[2], header[3]]),
        })
    } else if proto == IpNumber::UDP.0 {
        let header = UdpHeaderSlice::from_slice(bytes).map_err(|_| Reason::TruncatedL4)?;
        Ok(Transport::Udp {
            sport: header.source_port(),
            dport: header.destination_port(),
        })
    } else if proto == icmp {
        // etherparse's ICMP readers check whole messages (a timestamp must be 20 bytes); the
        // filter needs the 8-byte header and reads its type.
        let header = bytes.get(..ICMP_HEADER_LEN).ok_or(Reason::TruncatedL4)?;
        Ok(Transport::Icmp { kind: header[0] })
    } else {
        Ok(Transport::None)
    }
}

/// README, `link-scoped`: "255.255.255.255, 224.0.0.0/24, fe80::/10, ff02::/16: no router
/// forwards them".
#[must_use]
pub fn is_link_scoped(dst: IpAddr) -> bool {
    match dst {
        IpAddr::V4(a) => a.is_broadcast() || a.octets()[..3] == [224, 0, 0],
        IpAddr::V6(a) => is_link_local_unicast(a) || a.segments()[0] == 0xff02,
    }
}

fn is_link_local_unicast(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// README, `dhcp`: "UDP 68→67 to 255.255.255.255, UDP 546→547 to a link-scope group".
fn is_dhcp(packet: &IpPacket) -> bool {
    match (packet.dst, packet.transport) {
        (IpAddr::V4(a), Transport::Udp { sport, dport }) => {
            a.is_broadcast() && (sport, dport) == (68, 67)
        }
        (IpAddr::V6(a), Transport::Udp { sport, dport }) => {
            a.segments()[0] == 0xff02 && (sport, dport) == (546, 547)
        }
        _ => false,
    }
}

/// README, `neighbor-discovery`: "ICMPv6 ND with hop limit 255, MLD with hop limit 1, to
/// fe80::/10 or ff02::/16". ND is RFC 4861's types 133 to 137; MLD is RFC 2710's 130 to 132 and
/// RFC 3810's report, 143.
fn is_neighbor_discovery(packet: &IpPacket) -> bool {
    match (packet.dst, packet.transport) {
        (IpAddr::V6(_), Transport::Icmp { kind }) => match kind {
            133..=137 => packet.hop_limit == 255,
            130..=132 | 143 => packet.hop_limit == 1,
            _ => false,
        },
        _ => false,
    }
}

/// README, `allowed-icmp-error`: "unreachable, too big, time exceeded, parameter problem".
fn is_icmp_error(packet: &IpPacket) -> bool {
    match (packet.dst, packet.transport) {
        // ICMP: unreachable (3, with "too big" as one of its codes), time exceeded (11),
        // parameter problem (12).
        (IpAddr::V4(_), Transport::Icmp { kind }) => matches!(kind, 3 | 11 | 12),
        // ICMPv6: unreachable (1), too big (2), time exceeded (3), parameter problem (4).
        (IpAddr::V6(_), Transport::Icmp { kind }) => matches!(kind, 1..=4),
        _ => false,
    }
}

/// The reason for an IP packet the parser read in full.
#[must_use]
pub fn verdict(table: &AllowTable, packet: &IpPacket) -> Reason {
    if is_link_scoped(packet.dst) {
        if is_dhcp(packet) {
            return Reason::Dhcp;
        }
        if is_neighbor_discovery(packet) {
            return Reason::NeighborDiscovery;
        }
        // Tunnel protocols are judged by policy (README, `link-scoped`), and so are the filtering
        // host's own link-local addresses: "not the filtering host's own link-local addresses,
        // which get the failsafe ports like its other addresses" (the daemon lists them in the
        // table; a listed fe80::/10 address is such an address).
        let own_link_local = matches!(packet.dst, IpAddr::V6(a) if is_link_local_unicast(a))
            && table.lookup(packet.dst).is_some();
        if !TUNNELS.contains(&packet.proto) && !own_link_local {
            return Reason::LinkScoped;
        }
    }
    // README, `no-service`: "no service covers the destination".
    let Some((_, rules)) = table.lookup(packet.dst) else {
        return Reason::NoService;
    };
    if packet.non_first_fragment {
        return Reason::AllowedFragment;
    }
    if is_icmp_error(packet) {
        return Reason::AllowedIcmpError;
    }
    let (proto, port) = match packet.transport {
        Transport::Tcp { dport, .. } => (RuleProto::Tcp, dport),
        Transport::Udp { dport, .. } => (RuleProto::Udp, dport),
        Transport::Icmp { .. } => (RuleProto::Icmp, 0),
        // README, `protocol-not-allowed`: "covered, protocol not listed (GRE, ESP, …)": rules
        // name TCP, UDP and ICMP only.
        Transport::None => return Reason::ProtocolNotAllowed,
    };
    if rules.find(proto, port).is_some() {
        Reason::Allowed
    } else if rules.rules().iter().any(|r| r.proto == proto as u8) {
        // README, `port-not-allowed`: "covered, protocol listed, port not".
        Reason::PortNotAllowed
    } else {
        Reason::ProtocolNotAllowed
    }
}
