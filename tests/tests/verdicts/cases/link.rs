//! The link layer: VLAN tags, frames that are not IP, and what a link needs to work (ARP,
//! DHCP, neighbour discovery, link-scoped groups) beside what merely looks like it.

use filter_common::Reason;
use filter_tests::packet::{arp_request, ethernet, Ext, TPID_8021AD, TPID_8021Q};

use super::Case;
use crate::common::{v4, v6, ALLOWED4, ALLOWED6, UNLISTED4, UNLISTED6};

/// Tagged frames: one and two tags pass to the policy, three are refused.
pub(super) fn vlan() -> Vec<Case> {
    use Reason::*;
    vec![
        (
            "802.1Q tagged, allowed",
            v4(ALLOWED4).vlan(TPID_8021Q, 10).build(),
            Allowed,
        ),
        (
            "802.1Q tagged, denied",
            v4(UNLISTED4).vlan(TPID_8021Q, 10).build(),
            NoService,
        ),
        (
            "QinQ tagged, allowed",
            v4(ALLOWED4)
                .vlan(TPID_8021AD, 100)
                .vlan(TPID_8021Q, 10)
                .build(),
            Allowed,
        ),
        (
            "QinQ tagged, denied",
            v4(ALLOWED4)
                .vlan(TPID_8021AD, 100)
                .vlan(TPID_8021Q, 10)
                .tcp(22)
                .build(),
            PortNotAllowed,
        ),
        (
            "QinQ tagged IPv6 with an extension header",
            v6(ALLOWED6)
                .vlan(TPID_8021AD, 100)
                .vlan(TPID_8021Q, 10)
                .ext(Ext::DestinationOptions { units: 0 })
                .build(),
            Allowed,
        ),
        (
            "three tags",
            v4(ALLOWED4)
                .vlan(TPID_8021AD, 1)
                .vlan(TPID_8021Q, 2)
                .vlan(TPID_8021Q, 3)
                .build(),
            TooManyVlanTags,
        ),
    ]
}

/// Frames that are not IP, and link-local needs (passed by reason) beside traffic to the
/// same places that policy judges.
#[expect(
    clippy::too_many_lines,
    reason = "one line per case: the table is the test"
)]
pub(super) fn link_local() -> Vec<Case> {
    use Reason::*;
    vec![
        ("ARP", arp_request(), Arp),
        ("LLDP", ethernet(&[], 0x88cc, &[0; 46]), NotIp),
        (
            "PPPoE session",
            ethernet(&[], 0x8864, &[0x11, 0, 0, 1, 0, 40, 0, 0x21]),
            Encapsulated,
        ),
        ("MPLS", ethernet(&[], 0x8847, &[0; 46]), Encapsulated),
        (
            "DHCP discover to broadcast",
            v4("255.255.255.255").udp(68, 67).build(),
            Dhcp,
        ),
        (
            "DHCP-looking unicast to an unlisted address",
            v4(UNLISTED4).udp(68, 67).build(),
            NoService,
        ),
        (
            "mDNS to 224.0.0.251",
            v4("224.0.0.251").udp(5353, 5353).build(),
            LinkScoped,
        ),
        (
            "v4 169.254/16 is routed like any address: TCP",
            v4("169.254.10.1").tcp(80).build(),
            NoService,
        ),
        (
            "v4 169.254/16: UDP",
            v4("169.254.10.1").udp(1000, 53).build(),
            NoService,
        ),
        (
            "v4 169.254/16: IP-in-IP",
            v4("169.254.7.7").proto(4).build(),
            NoService,
        ),
        (
            "v4 metadata service a rule allows",
            v4("169.254.169.254").tcp(80).build(),
            Allowed,
        ),
        (
            "v4 metadata service, another port",
            v4("169.254.169.254").tcp(443).build(),
            PortNotAllowed,
        ),
        (
            "v4 OSPF to 224.0.0.5",
            v4("224.0.0.5").proto(89).build(),
            LinkScoped,
        ),
        (
            "v4 IP-in-IP to 224.0.0.5",
            v4("224.0.0.5").proto(4).build(),
            NoService,
        ),
        (
            "v4 GRE to the limited broadcast",
            v4("255.255.255.255").proto(47).build(),
            NoService,
        ),
        (
            "DHCPv6 solicit",
            v6("ff02::1:2").udp(546, 547).build(),
            Dhcp,
        ),
        (
            "neighbour solicitation to a solicited-node group",
            v6("ff02::1:ff00:1").icmp(135).hop_limit(255).build(),
            NeighborDiscovery,
        ),
        (
            "neighbour solicitation to a link-local address",
            v6("fe80::2").icmp(135).hop_limit(255).build(),
            NeighborDiscovery,
        ),
        (
            "neighbour advertisement to a link-local address",
            v6("fe80::2").icmp(136).hop_limit(255).build(),
            NeighborDiscovery,
        ),
        (
            "router solicitation to all routers",
            v6("ff02::2").icmp(133).hop_limit(255).build(),
            NeighborDiscovery,
        ),
        (
            "router advertisement to all nodes",
            v6("ff02::1").icmp(134).hop_limit(255).build(),
            NeighborDiscovery,
        ),
        (
            "neighbour solicitation after a hop-by-hop header, to a group",
            v6("ff02::1:ff00:1")
                .ext(Ext::HopByHop { units: 0 })
                .icmp(135)
                .hop_limit(255)
                .build(),
            NeighborDiscovery,
        ),
        (
            "neighbour solicitation to a global address",
            v6(UNLISTED6).icmp(135).hop_limit(255).build(),
            NoService,
        ),
        (
            "neighbour advertisement to a global address",
            v6(UNLISTED6).icmp(136).hop_limit(255).build(),
            NoService,
        ),
        (
            "router solicitation to a global address",
            v6(UNLISTED6).icmp(133).hop_limit(255).build(),
            NoService,
        ),
        (
            "router advertisement to a global address",
            v6(UNLISTED6).icmp(134).hop_limit(255).build(),
            NoService,
        ),
        (
            "redirect to a global address",
            v6(UNLISTED6).icmp(137).hop_limit(255).build(),
            NoService,
        ),
        (
            "neighbour solicitation after a hop-by-hop header, to a global address",
            v6(UNLISTED6)
                .ext(Ext::HopByHop { units: 0 })
                .icmp(135)
                .hop_limit(255)
                .build(),
            NoService,
        ),
        (
            "neighbour solicitation after destination options, to a global address",
            v6(UNLISTED6)
                .ext(Ext::DestinationOptions { units: 1 })
                .icmp(135)
                .hop_limit(255)
                .build(),
            NoService,
        ),
        (
            "neighbour solicitation to a covered address without ICMP",
            v6(ALLOWED6).icmp(135).hop_limit(255).build(),
            ProtocolNotAllowed,
        ),
        (
            "neighbour solicitation to a covered address with ICMP",
            v6("2001:db8:3::1").icmp(135).hop_limit(255).build(),
            Allowed,
        ),
        (
            "MLD report to a global address",
            v6(UNLISTED6).icmp(131).hop_limit(1).build(),
            NoService,
        ),
        (
            "NS-looking ICMPv6 with a routed hop limit",
            v6(UNLISTED6).icmp(135).hop_limit(64).build(),
            NoService,
        ),
        (
            "MLDv2 report",
            v6("ff02::16").icmp(143).hop_limit(1).build(),
            NeighborDiscovery,
        ),
        (
            "ICMPv6 echo to ff02::1",
            v6("ff02::1").icmp(128).build(),
            LinkScoped,
        ),
        (
            "TCP to a neighbour's link-local address",
            v6("fe80::2").tcp(8080).build(),
            LinkScoped,
        ),
        (
            "TCP to the host's own link-local address, failsafe port",
            v6("fe80::1").tcp(22).build(),
            Allowed,
        ),
        (
            "TCP to the host's own link-local address, another port",
            v6("fe80::1").tcp(8080).build(),
            PortNotAllowed,
        ),
        (
            "IPv6-in-IPv6 to a link-local address",
            v6("fe80::2").proto(41).build(),
            NoService,
        ),
        ("GRE to ff02::1", v6("ff02::1").proto(47).build(), NoService),
        // Found by the frame differential: DHCP ports passed as DHCP to every link-scoped
        // destination, so a DHCPv6 message to the host's own link-local address skipped policy.
        (
            "DHCPv6 renewal to the host's own link-local address",
            v6("fe80::1").udp(546, 547).build(),
            ProtocolNotAllowed,
        ),
        (
            "DHCPv6 ports to a neighbour's link-local address",
            v6("fe80::2").udp(546, 547).build(),
            LinkScoped,
        ),
        (
            "DHCP ports to 224.0.0.1",
            v4("224.0.0.1").udp(68, 67).build(),
            LinkScoped,
        ),
        // Found by the frame differential: ENCAP (98) is a tunnel protocol like the others.
        (
            "ENCAP to 224.0.0.1",
            v4("224.0.0.1").proto(98).build(),
            NoService,
        ),
        (
            "ENCAP to a neighbour's link-local address",
            v6("fe80::2").proto(98).build(),
            NoService,
        ),
    ]
}
