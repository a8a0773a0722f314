//! Verdict tests: crafted frames through both programs with `BPF_PROG_TEST_RUN`. Needs root.
//!
//! Every case names the reason it expects, and the harness checks that exactly that reason's
//! counter moved, so a case that passes for the wrong reason fails. Note: the kernel's test run
//! refuses frames shorter than an Ethernet header (EINVAL), so truncation inside the first 14
//! bytes cannot be exercised here; the parser checks it like every other layer.

use filter_common::{event::Action, Config, EventCounter, Mode, Reason};
use filter_tests::{
    harness::{pin_to_current_cpu, Filter, Hook, Outcome},
    packet::{arp_request, ethernet, Ext, Pkt, ETH_IPV4, ETH_IPV6, TPID_8021AD, TPID_8021Q},
};
use filter_user::table::{Grant, PortSpec};

/// The policy every table case runs against.
fn grants() -> Vec<Grant> {
    let g = |prefix: &str, service, ports: &[PortSpec]| Grant {
        prefix: prefix.parse().expect("test prefix"),
        service,
        ports: ports.to_vec(),
    };
    vec![
        // Overlapping prefixes with different port sets: both ports reach 17.1.2.3.
        g("17.0.0.0/8", 0, &[PortSpec::Tcp(5223..=5223)]),
        g("17.1.2.3/32", 1, &[PortSpec::Tcp(443..=443)]),
        g(
            "198.51.100.0/24",
            2,
            &[
                PortSpec::Tcp(80..=80),
                PortSpec::Tcp(443..=443),
                PortSpec::Udp(3544..=3544),
                PortSpec::Icmp,
            ],
        ),
        g("203.0.113.0/24", 3, &[PortSpec::Tcp(1000..=2000)]),
        g(
            "2001:db8:1::/48",
            4,
            &[PortSpec::Tcp(443..=443), PortSpec::Udp(5000..=5010)],
        ),
        g("2001:db8:1:2::/64", 5, &[PortSpec::Tcp(8443..=8443)]),
        // A metadata service one host is allowed to reach: 169.254/16 is policy's to decide.
        g("169.254.169.254/32", 6, &[PortSpec::Tcp(80..=80)]),
        // The filtering host's own link-local address, as the daemon lists it with its
        // failsafe ports.
        g("fe80::1/128", 7, &[PortSpec::Tcp(22..=22), PortSpec::Icmp]),
        // A covered IPv6 destination where ICMP is allowed (for ND judged by policy).
        g("2001:db8:3::/48", 8, &[PortSpec::Icmp]),
    ]
}

const CLIENT4: &str = "192.0.2.10";
const CLIENT6: &str = "2001:db8:ff::10";
const ALLOWED4: &str = "198.51.100.7";
const UNLISTED4: &str = "192.0.2.99";
const ALLOWED6: &str = "2001:db8:1::5";
const UNLISTED6: &str = "2001:db8:2::1";

fn v4(dst: &str) -> Pkt {
    Pkt::ip(CLIENT4, dst)
}

fn v6(dst: &str) -> Pkt {
    Pkt::ip(CLIENT6, dst)
}

fn cut(mut frame: Vec<u8>, len: usize) -> Vec<u8> {
    frame.truncate(len);
    frame
}

/// (what the case is, the frame, the reason it must be counted under)
#[expect(
    clippy::too_many_lines,
    reason = "one line per case: the table is the test"
)]
fn cases() -> Vec<(&'static str, Vec<u8>, Reason)> {
    use Reason::*;
    let long_ext = Ext::HopByHop { units: 80 };
    vec![
        // --- IPv4 policy --------------------------------------------------------------------
        (
            "v4 tcp/443 to a listed /24",
            v4(ALLOWED4).tcp(443).build(),
            Allowed,
        ),
        (
            "v4 tcp/22 to a listed /24",
            v4(ALLOWED4).tcp(22).build(),
            PortNotAllowed,
        ),
        (
            "v4 tcp/443 to an unlisted address",
            v4(UNLISTED4).tcp(443).build(),
            NoService,
        ),
        (
            "v4 udp/3544 listed",
            v4(ALLOWED4).udp(40000, 3544).build(),
            Allowed,
        ),
        (
            "v4 udp/53 not listed",
            v4(ALLOWED4).udp(40000, 53).build(),
            PortNotAllowed,
        ),
        (
            "v4 port range low end",
            v4("203.0.113.1").tcp(1000).build(),
            Allowed,
        ),
        (
            "v4 port range middle",
            v4("203.0.113.1").tcp(1500).build(),
            Allowed,
        ),
        (
            "v4 port range high end",
            v4("203.0.113.1").tcp(2000).build(),
            Allowed,
        ),
        (
            "v4 below the port range",
            v4("203.0.113.1").tcp(999).build(),
            PortNotAllowed,
        ),
        (
            "v4 above the port range",
            v4("203.0.113.1").tcp(2001).build(),
            PortNotAllowed,
        ),
        (
            "overlap: /32's own port",
            v4("17.1.2.3").tcp(443).build(),
            Allowed,
        ),
        (
            "overlap: /8's port at the /32",
            v4("17.1.2.3").tcp(5223).build(),
            Allowed,
        ),
        (
            "overlap: /32's port elsewhere in the /8",
            v4("17.9.9.9").tcp(443).build(),
            PortNotAllowed,
        ),
        (
            "overlap: /8's port elsewhere in the /8",
            v4("17.9.9.9").tcp(5223).build(),
            Allowed,
        ),
        (
            "v4 udp where only tcp is listed",
            v4("17.1.2.3").udp(1, 443).build(),
            ProtocolNotAllowed,
        ),
        (
            "v4 GRE to a listed address",
            v4(ALLOWED4).proto(47).build(),
            ProtocolNotAllowed,
        ),
        (
            "v4 ICMP echo where ICMP is listed",
            v4(ALLOWED4).icmp(8).build(),
            Allowed,
        ),
        (
            "v4 ICMP echo where it is not",
            v4("17.1.2.3").icmp(8).build(),
            ProtocolNotAllowed,
        ),
        (
            "v4 ICMP unreachable to a listed address",
            v4("17.1.2.3").icmp(3).build(),
            AllowedIcmpError,
        ),
        (
            "v4 ICMP unreachable to an unlisted one",
            v4(UNLISTED4).icmp(3).build(),
            NoService,
        ),
        (
            "v4 with one word of options",
            v4(ALLOWED4).ipv4_options(&[1, 1, 1, 1]).build(),
            Allowed,
        ),
        (
            "v4 with 40 bytes of options, denied port",
            v4(ALLOWED4).ipv4_options(&[1; 40]).tcp(23).build(),
            PortNotAllowed,
        ),
        (
            "v4 with 40 bytes of options, allowed",
            v4(ALLOWED4).ipv4_options(&[1; 40]).build(),
            Allowed,
        ),
        (
            "v4 first fragment, allowed port",
            v4(ALLOWED4).ipv4_fragment(0, true).build(),
            Allowed,
        ),
        (
            "v4 first fragment, denied port",
            v4(ALLOWED4).ipv4_fragment(0, true).tcp(25).build(),
            PortNotAllowed,
        ),
        (
            "v4 non-first fragment to a listed address",
            v4(ALLOWED4).ipv4_fragment(185, false).proto(6).build(),
            AllowedFragment,
        ),
        (
            "v4 non-first fragment to an unlisted one",
            v4(UNLISTED4).ipv4_fragment(185, true).proto(6).build(),
            NoService,
        ),
        // --- VLAN ---------------------------------------------------------------------------
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
        // --- not IP, and link-local needs -----------------------------------------------------
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
        // --- source routing ---------------------------------------------------------------------
        (
            "v4 loose source route",
            v4(ALLOWED4)
                .ipv4_options(&[131, 7, 4, 192, 0, 2, 99, 0])
                .build(),
            SourceRouted,
        ),
        (
            "v4 strict source route",
            v4(ALLOWED4)
                .ipv4_options(&[137, 7, 4, 192, 0, 2, 99, 0])
                .build(),
            SourceRouted,
        ),
        (
            "v4 loose source route after NOPs",
            v4(UNLISTED4)
                .ipv4_options(&[1, 1, 1, 131, 7, 4, 203, 0, 113, 9, 0, 0])
                .build(),
            SourceRouted,
        ),
        (
            "v4 loose source route, non-first fragment",
            v4(ALLOWED4)
                .ipv4_options(&[131, 7, 4, 192, 0, 2, 99, 0])
                .ipv4_fragment(100, false)
                .proto(6)
                .build(),
            SourceRouted,
        ),
        (
            "v4 record route (zero-filled) is no source route",
            v4(ALLOWED4)
                .ipv4_options(&[7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0])
                .build(),
            Allowed,
        ),
        (
            "v4 router alert",
            v4(ALLOWED4).ipv4_options(&[148, 4, 0, 0]).build(),
            Allowed,
        ),
        (
            "RH0 with a segment left",
            v6(ALLOWED6)
                .ext(Ext::Routing {
                    units: 2,
                    routing_type: 0,
                    segments_left: 1,
                })
                .build(),
            SourceRouted,
        ),
        (
            "segment routing header with a segment left",
            v6(ALLOWED6)
                .ext(Ext::Routing {
                    units: 2,
                    routing_type: 4,
                    segments_left: 1,
                })
                .build(),
            SourceRouted,
        ),
        (
            "segment routing header, no segment left",
            v6(ALLOWED6)
                .ext(Ext::Routing {
                    units: 2,
                    routing_type: 4,
                    segments_left: 0,
                })
                .build(),
            Allowed,
        ),
        (
            "routing header after hop-by-hop, to an unlisted address",
            v6(UNLISTED6)
                .ext(Ext::HopByHop { units: 0 })
                .ext(Ext::Routing {
                    units: 4,
                    routing_type: 4,
                    segments_left: 2,
                })
                .build(),
            SourceRouted,
        ),
        // --- IPv6 policy and extension headers -----------------------------------------------
        ("v6 tcp/443 listed", v6(ALLOWED6).tcp(443).build(), Allowed),
        (
            "v6 udp in range",
            v6(ALLOWED6).udp(1, 5005).build(),
            Allowed,
        ),
        (
            "v6 udp beyond range",
            v6(ALLOWED6).udp(1, 5011).build(),
            PortNotAllowed,
        ),
        ("v6 tcp/22", v6(ALLOWED6).tcp(22).build(), PortNotAllowed),
        ("v6 unlisted", v6(UNLISTED6).tcp(443).build(), NoService),
        (
            "v6 overlap: /64's own port",
            v6("2001:db8:1:2::9").tcp(8443).build(),
            Allowed,
        ),
        (
            "v6 overlap: /48's port inside the /64",
            v6("2001:db8:1:2::9").tcp(443).build(),
            Allowed,
        ),
        (
            "v6 overlap: /64's port outside it",
            v6("2001:db8:1:3::9").tcp(8443).build(),
            PortNotAllowed,
        ),
        (
            "v6 ICMPv6 echo, not listed",
            v6(ALLOWED6).icmp(128).build(),
            ProtocolNotAllowed,
        ),
        (
            "v6 packet too big to a listed address",
            v6(ALLOWED6).icmp(2).build(),
            AllowedIcmpError,
        ),
        (
            "hop-by-hop",
            v6(ALLOWED6).ext(Ext::HopByHop { units: 1 }).build(),
            Allowed,
        ),
        (
            "routing",
            v6(ALLOWED6)
                .ext(Ext::Routing {
                    units: 2,
                    routing_type: 0,
                    segments_left: 0,
                })
                .build(),
            Allowed,
        ),
        (
            "destination options, denied port",
            v6(ALLOWED6)
                .ext(Ext::DestinationOptions { units: 0 })
                .tcp(22)
                .build(),
            PortNotAllowed,
        ),
        (
            "authentication header",
            v6(ALLOWED6).ext(Ext::Auth { len_field: 4 }).build(),
            Allowed,
        ),
        (
            "first fragment",
            v6(ALLOWED6)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .build(),
            Allowed,
        ),
        (
            "first fragment, denied port",
            v6(ALLOWED6)
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .tcp(23)
                .build(),
            PortNotAllowed,
        ),
        (
            "non-first fragment to a listed address",
            v6(ALLOWED6)
                .ext(Ext::Fragment {
                    offset: 100,
                    more: true,
                })
                .proto(6)
                .build(),
            AllowedFragment,
        ),
        (
            "non-first fragment to an unlisted one",
            v6(UNLISTED6)
                .ext(Ext::Fragment {
                    offset: 100,
                    more: false,
                })
                .proto(6)
                .build(),
            NoService,
        ),
        (
            "chain of five",
            v6(ALLOWED6)
                .ext(Ext::HopByHop { units: 0 })
                .ext(Ext::DestinationOptions { units: 1 })
                .ext(Ext::Routing {
                    units: 0,
                    routing_type: 4,
                    segments_left: 0,
                })
                .ext(Ext::Fragment {
                    offset: 0,
                    more: true,
                })
                .ext(Ext::DestinationOptions { units: 0 })
                .build(),
            Allowed,
        ),
        (
            "chain of nine",
            (0..9)
                .fold(v6(ALLOWED6), |p, _| {
                    p.ext(Ext::DestinationOptions { units: 0 })
                })
                .build(),
            HeadersTooLong,
        ),
        (
            "one 648-byte extension header",
            v6(ALLOWED6).ext(long_ext).build(),
            HeadersTooLong,
        ),
        // --- malformed -------------------------------------------------------------------------
        (
            "IPv4 ethertype, version 6",
            {
                let mut f = v4(ALLOWED4).build();
                f[14] = 0x65;
                f
            },
            MalformedIpv4,
        ),
        (
            "IPv4 IHL 4",
            {
                let mut f = v4(ALLOWED4).build();
                f[14] = 0x44;
                f
            },
            MalformedIpv4,
        ),
        (
            "IPv4 total length below header length",
            {
                let mut f = v4(ALLOWED4).build();
                f[16] = 0;
                f[17] = 19;
                f
            },
            MalformedIpv4,
        ),
        (
            "IPv6 ethertype, version 4",
            ethernet(&[], ETH_IPV6, &v4(ALLOWED4).build()[14..]),
            MalformedIpv6,
        ),
        // --- truncated at every layer ----------------------------------------------------------
        (
            "cut inside the VLAN tag",
            cut(v4(ALLOWED4).vlan(TPID_8021Q, 5).build(), 16),
            TruncatedL2,
        ),
        (
            "cut inside the second VLAN tag",
            cut(
                v4(ALLOWED4)
                    .vlan(TPID_8021AD, 5)
                    .vlan(TPID_8021Q, 6)
                    .build(),
                20,
            ),
            TruncatedL2,
        ),
        (
            "cut inside the IPv4 header",
            cut(v4(ALLOWED4).build(), 14 + 12),
            TruncatedIpv4,
        ),
        (
            "cut inside the IPv4 options",
            cut(v4(ALLOWED4).ipv4_options(&[1; 8]).build(), 14 + 24),
            TruncatedIpv4,
        ),
        (
            "ethertype IPv4, nothing after",
            ethernet(&[], ETH_IPV4, &[]),
            TruncatedIpv4,
        ),
        (
            "cut inside the TCP header",
            cut(v4(ALLOWED4).build(), 14 + 20 + 10),
            TruncatedL4,
        ),
        (
            "cut inside the UDP header",
            cut(v4(ALLOWED4).udp(1, 3544).build(), 14 + 20 + 4),
            TruncatedL4,
        ),
        (
            "cut inside the ICMP header",
            cut(v4(ALLOWED4).icmp(8).build(), 14 + 20 + 2),
            TruncatedL4,
        ),
        (
            "tiny first fragment",
            cut(v4(ALLOWED4).ipv4_fragment(0, true).build(), 14 + 20 + 8),
            TruncatedL4,
        ),
        (
            "cut inside the IPv6 header",
            cut(v6(ALLOWED6).build(), 14 + 30),
            TruncatedIpv6,
        ),
        (
            "cut inside an extension header",
            cut(
                v6(ALLOWED6).ext(Ext::HopByHop { units: 2 }).build(),
                14 + 40 + 12,
            ),
            TruncatedIpv6Ext,
        ),
        (
            "cut before the extension header",
            cut(
                v6(ALLOWED6)
                    .ext(Ext::Routing {
                        units: 0,
                        routing_type: 4,
                        segments_left: 0,
                    })
                    .build(),
                14 + 40 + 2,
            ),
            TruncatedIpv6Ext,
        ),
        (
            "cut inside TCP after extensions",
            cut(
                v6(ALLOWED6)
                    .ext(Ext::Routing {
                        units: 0,
                        routing_type: 4,
                        segments_left: 0,
                    })
                    .build(),
                14 + 40 + 8 + 6,
            ),
            TruncatedL4,
        ),
        (
            "v6 cut inside the UDP header",
            cut(v6(ALLOWED6).udp(1, 5005).build(), 14 + 40 + 7),
            TruncatedL4,
        ),
    ]
}

/// Cases the kernel's skb test run refuses with EINVAL (it pulls a whole IPv4/IPv6 header for
/// frames of those ethertypes before running the program), so TC sees them only through XDP's
/// identical parser. The test checks the refusal too, so this list cannot hide anything else.
const SKB_TEST_RUN_REFUSES: [&str; 3] = [
    "cut inside the IPv4 header",
    "ethertype IPv4, nothing after",
    "cut inside the IPv6 header",
];

#[test]
fn every_case_gets_its_reason_and_verdict_on_both_hooks() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let mut failures = Vec::new();
    let cases = cases();
    for hook in Hook::BOTH {
        for (name, frame, expected) in &cases {
            if hook == Hook::Tc && SKB_TEST_RUN_REFUSES.contains(name) {
                if filter.run(hook, frame).is_ok() {
                    failures.push(format!(
                        "Tc {name}: expected the kernel to refuse the frame"
                    ));
                }
                continue;
            }
            let want = if expected.passes() {
                Outcome::Pass
            } else {
                Outcome::Drop
            };
            match filter.judge(hook, frame) {
                Ok((outcome, reason)) if outcome == want && reason == *expected => {}
                Ok(got) => failures.push(format!(
                    "{hook:?} {name}: expected {want:?}/{expected:?}, got {got:?}"
                )),
                Err(err) => failures.push(format!("{hook:?} {name}: {err:#}")),
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        2 * cases.len(),
        failures.join("\n")
    );
    // Every reason the datapath can reach from a frame has a case. PolicyMissing needs a damaged
    // map, SpoofedSource the source check and NotIpOnL3Device the layer-3 program: each has its
    // own test below.
    for reason in Reason::ALL {
        if ![
            Reason::PolicyMissing,
            Reason::SpoofedSource,
            Reason::NotIpOnL3Device,
        ]
        .contains(&reason)
        {
            assert!(
                cases.iter().any(|(_, _, r)| *r == reason),
                "no case for {reason:?}"
            );
        }
    }
    Ok(())
}

/// The IP packet inside an untagged Ethernet frame whose ethertype agrees with its version, as a
/// layer-3 device would carry it.
fn as_layer3(frame: &[u8]) -> Option<Vec<u8>> {
    let ether_type = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let version = frame.get(14)? >> 4;
    let matches =
        (ether_type == ETH_IPV4 && version == 4) || (ether_type == ETH_IPV6 && version == 6);
    // The kernel's XDP test run refuses frames shorter than an Ethernet header.
    (matches && frame.len() >= 28).then(|| frame[14..].to_vec())
}

#[test]
fn the_layer3_program_gives_every_ip_case_the_same_reason() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let mut failures = Vec::new();
    let mut tried = 0;
    for (name, frame, expected) in cases() {
        let Some(packet) = as_layer3(&frame) else {
            continue;
        };
        tried += 1;
        match filter.judge(Hook::XdpL3, &packet) {
            Ok((_, reason)) if reason == expected => {}
            Ok(got) => failures.push(format!("{name}: expected {expected:?}, got {got:?}")),
            Err(err) => failures.push(format!("{name}: {err:#}")),
        }
    }
    assert!(tried > 80, "only {tried} cases are IP without tags");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // What only a layer-3 device can carry: a version that is neither 4 nor 6.
    let mut not_ip = v4(ALLOWED4).build()[14..].to_vec();
    not_ip[0] = 0x55;
    assert_eq!(
        filter.judge(Hook::XdpL3, &not_ip)?,
        (Outcome::Drop, Reason::NotIpOnL3Device)
    );
    // And an Ethernet frame handed to it is not IP either: its first byte is a MAC address's.
    assert_eq!(
        filter.judge(Hook::XdpL3, &v4(ALLOWED4).build())?,
        (Outcome::Drop, Reason::NotIpOnL3Device)
    );
    Ok(())
}

/// The interface the kernel's XDP test run says a frame came in on: the loopback device.
const TEST_RUN_IFINDEX: u32 = 1;

#[test]
fn xdp_drops_sources_that_do_not_belong_on_the_interface() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let foreign = Pkt::ip("203.0.113.9", ALLOWED4).build();
    let own_lan = v4(ALLOWED4).build();
    // Off (an unwritten flag): no source is checked.
    assert_eq!(
        filter.judge(Hook::Xdp, &foreign)?,
        (Outcome::Pass, Reason::Allowed)
    );

    let sources: std::collections::BTreeSet<_> = [
        "192.0.2.0/24",
        "2001:db8:ff::/64",
        "0.0.0.0/32",
        "::/128",
        "fe80::/10",
    ]
    .iter()
    .map(|p| (TEST_RUN_IFINDEX, p.parse().expect("test prefix")))
    .collect();
    filter.sources.set(&sources)?;
    filter.maps.set_config(Config {
        flags: Config::CHECK_SOURCES,
        ..Config::new(Mode::Enforce)
    })?;
    for (name, frame, want) in [
        ("a LAN client", own_lan.clone(), Reason::Allowed),
        (
            "a source from elsewhere",
            foreign.clone(),
            Reason::SpoofedSource,
        ),
        (
            "a forged DNS answer from an upstream's address",
            Pkt::ip("198.51.100.53", ALLOWED4).udp(53, 40000).build(),
            Reason::SpoofedSource,
        ),
        (
            "DHCP discover from 0.0.0.0",
            Pkt::ip("0.0.0.0", "255.255.255.255").udp(68, 67).build(),
            Reason::Dhcp,
        ),
        ("an IPv6 LAN client", v6(ALLOWED6).build(), Reason::Allowed),
        (
            "an IPv6 source from elsewhere",
            Pkt::ip("2001:db8:2::9", ALLOWED6).build(),
            Reason::SpoofedSource,
        ),
        (
            "duplicate address detection from ::",
            Pkt::ip("::", "ff02::1:ff00:1")
                .icmp(135)
                .hop_limit(255)
                .build(),
            Reason::NeighborDiscovery,
        ),
        (
            "a link-local source",
            Pkt::ip("fe80::9", "ff02::2")
                .icmp(133)
                .hop_limit(255)
                .build(),
            Reason::NeighborDiscovery,
        ),
    ] {
        let want_outcome = if want.passes() {
            Outcome::Pass
        } else {
            Outcome::Drop
        };
        assert_eq!(
            filter.judge(Hook::Xdp, &frame)?,
            (want_outcome, want),
            "{name}"
        );
    }
    // TC egress sees what the host itself sends and does not check sources.
    assert_eq!(
        filter.judge(Hook::Tc, &foreign)?,
        (Outcome::Pass, Reason::Allowed)
    );

    // The same prefixes on another interface do not count here.
    let elsewhere = sources
        .iter()
        .map(|(_, p)| (TEST_RUN_IFINDEX + 1, *p))
        .collect();
    filter.sources.set(&elsewhere)?;
    assert_eq!(
        filter.judge(Hook::Xdp, &own_lan)?,
        (Outcome::Drop, Reason::SpoofedSource)
    );
    Ok(())
}

/// An interface with more source prefixes than its slot holds is checked in the tries: the
/// answers stay the same.
#[test]
fn sources_beyond_a_slot_are_checked_in_the_tries() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let many = filter_common::sources::SOURCE_SLOT_PREFIXES + 2;
    let sources: std::collections::BTreeSet<_> = (0..many)
        .map(|i| format!("10.{i}.0.0/16"))
        .chain(["192.0.2.0/24".to_owned()])
        .map(|p| (TEST_RUN_IFINDEX, p.parse().expect("test prefix")))
        .collect();
    filter.sources.set(&sources)?;
    filter.maps.set_config(Config {
        flags: Config::CHECK_SOURCES,
        ..Config::new(Mode::Enforce)
    })?;
    for (name, src, want) in [
        ("a LAN client", "192.0.2.10", Reason::Allowed),
        ("the last of many prefixes", "10.9.1.1", Reason::Allowed),
        (
            "a source from elsewhere",
            "203.0.113.9",
            Reason::SpoofedSource,
        ),
    ] {
        let frame = Pkt::ip(src, ALLOWED4).tcp(443).build();
        let want_outcome = if want.passes() {
            Outcome::Pass
        } else {
            Outcome::Drop
        };
        assert_eq!(
            filter.judge(Hook::Xdp, &frame)?,
            (want_outcome, want),
            "{name}"
        );
    }
    Ok(())
}

#[test]
fn counters_attribute_packets_and_bytes_to_the_allowing_service() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let via_slash8 = v4("17.1.2.3").tcp(5223).build();
    let via_slash32 = v4("17.1.2.3").tcp(443).build();
    for _ in 0..3 {
        assert_eq!(filter.run(Hook::Xdp, &via_slash8)?, Outcome::Pass);
    }
    assert_eq!(filter.run(Hook::Tc, &via_slash32)?, Outcome::Pass);
    let (s0, s1) = (filter.service_count(0)?, filter.service_count(1)?);
    assert_eq!(
        (s0.packets, s0.bytes),
        (3, 3 * via_slash8.len() as u64),
        "5223 belongs to the /8's service"
    );
    assert_eq!(
        (s1.packets, s1.bytes),
        (1, via_slash32.len() as u64),
        "443 belongs to the /32's service"
    );
    let allowed = filter.reason_counts()?[Reason::Allowed as usize];
    assert_eq!(
        (allowed.packets, allowed.bytes),
        (4, 3 * via_slash8.len() as u64 + via_slash32.len() as u64)
    );
    Ok(())
}

#[test]
fn drop_events_carry_the_packet_fields() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let tagged = v4(UNLISTED4).vlan(TPID_8021Q, 42).tcp(8080).build();
    assert_eq!(filter.run(Hook::Xdp, &tagged)?, Outcome::Drop);
    let ipv6 = v6(ALLOWED6)
        .ext(Ext::HopByHop { units: 0 })
        .udp(5353, 9)
        .build();
    assert_eq!(filter.run(Hook::Tc, &ipv6)?, Outcome::Drop);

    let events = filter.drain_events()?;
    assert_eq!(events.len(), 2, "one event per drop: {events:?}");
    let e = &events[0];
    assert_eq!(e.reason, Reason::NoService as u32);
    assert_eq!(
        (e.family, e.proto, e.hook, e.action),
        (4, 6, filter_common::Hook::Xdp as u8, Action::Drop as u8)
    );
    assert_eq!(&e.src_addr[..4], &[192, 0, 2, 10]);
    assert_eq!(&e.dst_addr[..4], &[192, 0, 2, 99]);
    assert!(
        e.dst_addr[4..].iter().all(|b| *b == 0),
        "IPv4 fills only the first four bytes"
    );
    assert_eq!(
        (u16::from_be(e.sport_be), u16::from_be(e.dport_be)),
        (40000, 8080)
    );
    assert_eq!((e.vlan_id, e.packet_len as usize), (42, tagged.len()));
    assert!(e.timestamp_ns > 0, "timestamp is set");

    let e = &events[1];
    assert_eq!(e.reason, Reason::PortNotAllowed as u32);
    assert_eq!(
        (e.family, e.proto, e.hook),
        (6, 17, filter_common::Hook::Tc as u8)
    );
    assert_eq!(
        e.dst_addr,
        "2001:db8:1::5".parse::<std::net::Ipv6Addr>()?.octets()
    );
    assert_eq!(
        (u16::from_be(e.sport_be), u16::from_be(e.dport_be)),
        (5353, 9)
    );
    assert_eq!(filter.event_count(EventCounter::Emitted)?, 2);
    Ok(())
}

#[test]
fn audit_mode_passes_what_enforcement_drops_and_reports_it_as_audit() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    filter.maps.set_config(Config::new(Mode::Audit))?;
    for hook in Hook::BOTH {
        let (outcome, reason) = filter.judge(hook, &v4(UNLISTED4).build())?;
        assert_eq!(
            (outcome, reason),
            (Outcome::Pass, Reason::NoService),
            "{hook:?}"
        );
        let (outcome, reason) = filter.judge(hook, &cut(v4(ALLOWED4).build(), 14 + 24))?;
        assert_eq!(
            (outcome, reason),
            (Outcome::Pass, Reason::TruncatedL4),
            "{hook:?}"
        );
    }
    let events = filter.drain_events()?;
    assert_eq!(events.len(), 4);
    assert!(
        events.iter().all(|e| e.action == Action::Audit as u8),
        "{events:?}"
    );
    Ok(())
}

#[test]
fn unwritten_config_enforces_and_stays_quiet() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    filter.maps.set_config(Config::default())?;
    assert_eq!(
        filter.run(Hook::Xdp, &v4(UNLISTED4).build())?,
        Outcome::Drop,
        "all-zero config enforces"
    );
    assert_eq!(filter.run(Hook::Xdp, &v4(ALLOWED4).build())?, Outcome::Pass);
    assert!(
        filter.drain_events()?.is_empty(),
        "a zero event budget emits nothing"
    );
    assert_eq!(
        filter.event_count(EventCounter::RateLimited)?,
        1,
        "but counts what it withheld"
    );
    Ok(())
}

#[test]
fn events_beyond_the_budget_are_counted_not_sent() -> anyhow::Result<()> {
    // The budget is per CPU: keep every run on one CPU so one bucket is measured.
    pin_to_current_cpu()?;
    let mut filter = Filter::new(&grants())?;
    filter.maps.set_config(Config {
        events_per_sec: 0,
        event_burst: 3,
        ..Config::new(Mode::Enforce)
    })?;
    let frame = v4(UNLISTED4).build();
    for _ in 0..5 {
        assert_eq!(filter.run(Hook::Xdp, &frame)?, Outcome::Drop);
    }
    assert_eq!(filter.drain_events()?.len(), 3, "the burst");
    assert_eq!(filter.event_count(EventCounter::Emitted)?, 3);
    assert_eq!(filter.event_count(EventCounter::RateLimited)?, 2);
    assert_eq!(
        filter.reason_counts()?[Reason::NoService as usize].packets,
        5,
        "all drops are counted"
    );
    Ok(())
}

#[test]
fn incremental_update_changes_verdicts_and_only_what_differs() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    let mut next = grants();
    next.retain(|g| g.service != 3); // 203.0.113.0/24 goes
    next.push(Grant {
        prefix: "192.0.2.99/32".parse()?,
        service: 6,
        ports: vec![PortSpec::Tcp(443..=443)],
    });
    let stats = filter
        .maps
        .apply(&filter_user::table::AllowTable::build(&next)?)?;
    assert_eq!(
        (stats.prefixes_written, stats.prefixes_deleted),
        (1, 1),
        "{stats:?}"
    );
    assert_eq!(
        filter.judge(Hook::Xdp, &v4(UNLISTED4).build())?,
        (Outcome::Pass, Reason::Allowed)
    );
    assert_eq!(
        filter.judge(Hook::Xdp, &v4("203.0.113.1").tcp(1500).build())?,
        (Outcome::Drop, Reason::NoService)
    );
    let again = filter
        .maps
        .apply(&filter_user::table::AllowTable::build(&next)?)?;
    assert_eq!(
        again,
        filter_user::maps::ApplyStats::default(),
        "re-applying the same table writes nothing"
    );
    Ok(())
}

/// Kernel log lines, as aya-log hands them over: "LEVEL message".
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for CapturedLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(format!("{} {}", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

impl CapturedLog {
    fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

#[test]
fn a_damaged_policy_map_is_logged_by_the_kernel_once_per_interval_not_per_packet(
) -> anyhow::Result<()> {
    // The rate limit is per CPU: keep every run on one.
    pin_to_current_cpu()?;
    let mut filter = Filter::new(&grants())?;
    let captured = CapturedLog::default();
    let mut logger = filter.kernel_log(captured.clone())?;
    filter.point_prefix_at(
        "192.0.2.0/24".parse()?,
        filter_common::maps::MAX_POLICIES + 7,
    )?;
    for _ in 0..50 {
        assert_eq!(
            filter.judge(Hook::Xdp, &v4(UNLISTED4).build())?,
            (Outcome::Drop, Reason::PolicyMissing)
        );
    }
    logger.flush();
    let lines = captured.lines();
    assert_eq!(lines.len(), 1, "one line for 50 packets: {lines:?}");
    assert!(
        lines[0].starts_with("ERROR") && lines[0].contains("policy-missing"),
        "{lines:?}"
    );
    Ok(())
}

#[test]
fn a_config_the_program_does_not_understand_is_logged_and_enforced() -> anyhow::Result<()> {
    pin_to_current_cpu()?;
    let mut filter = Filter::new(&grants())?;
    let captured = CapturedLog::default();
    let mut logger = filter.kernel_log(captured.clone())?;
    // A healthy filter's drops log nothing.
    for _ in 0..10 {
        filter.judge(Hook::Tc, &v4(UNLISTED4).build())?;
    }
    logger.flush();
    assert_eq!(captured.lines(), Vec::<String>::new());
    filter.maps.set_config(Config {
        mode: 7,
        flags: 0x10,
        ..Config::new(Mode::Enforce)
    })?;
    // Dropped: an unknown mode enforces.
    assert_eq!(
        filter.judge(Hook::Tc, &v4(UNLISTED4).build())?,
        (Outcome::Drop, Reason::NoService)
    );
    logger.flush();
    let lines = captured.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("WARN") && lines[0].contains("mode 7, flags 10"),
        "{lines:?}"
    );
    Ok(())
}

#[test]
fn a_prefix_pointing_at_no_policy_fails_closed() -> anyhow::Result<()> {
    let mut filter = Filter::new(&grants())?;
    filter.point_prefix_at(
        "192.0.2.0/24".parse()?,
        filter_common::maps::MAX_POLICIES + 7,
    )?;
    for hook in Hook::BOTH {
        assert_eq!(
            filter.judge(hook, &v4(UNLISTED4).build())?,
            (Outcome::Drop, Reason::PolicyMissing),
            "{hook:?}"
        );
    }
    Ok(())
}
