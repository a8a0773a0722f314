//! Why a packet got its verdict. Every packet is counted under exactly one reason.
//!
//! The numbers are stable: they are array indices in `REASON_STATS` and travel in drop events.
//! Add new reasons at the end.
//!
//! Each reason says whether it lets the packet through ([`Stance`]). Parsing failures are all
//! closed: a frame the parser cannot fully read might hide an IP packet to anywhere, and an egress
//! allow-list that passed what it did not understand would be trivially bypassed (a third VLAN
//! tag, a padded extension-header chain, a truncated header that the next hop's parser reads
//! differently). The few open cases are traffic the network itself needs to function, or traffic
//! that never leaves the link.

/// Whether a reason lets the packet through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stance {
    /// The packet passes (in enforce and in audit mode alike).
    Pass,
    /// The packet is dropped in enforce mode, passed and reported in audit mode.
    Drop,
}

macro_rules! reasons {
    ($( $(#[doc = $doc:literal])* $name:ident = $num:literal, $stance:ident, $label:literal; )*) => {
        /// The reason behind a verdict. See the module docs for the fail-open/closed policy.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason {
            $( $(#[doc = $doc])* $name = $num, )*
        }

        impl Reason {
            /// Every reason, in numeric order.
            pub const ALL: [Reason; Reason::COUNT] = [$(Reason::$name),*];
            /// How many reasons there are (the size of the reason counter array).
            pub const COUNT: usize = [$($num),*].len();

            /// Whether this reason passes or drops the packet.
            #[must_use]
            pub const fn stance(self) -> Stance {
                match self { $(Reason::$name => Stance::$stance,)* }
            }

            /// A stable, lower-case name for logs, events and stats.
            #[must_use]
            pub const fn label(self) -> &'static str {
                match self { $(Reason::$name => $label,)* }
            }

            /// The reason with this number, if there is one.
            #[must_use]
            pub const fn from_u32(value: u32) -> Option<Reason> {
                match value { $($num => Some(Reason::$name),)* _ => None }
            }
        }
    };
}

reasons! {
    /// Some service covers the destination and lists the protocol and destination port.
    Allowed = 0, Pass, "allowed";
    /// A non-first fragment (no transport header) to a destination some service covers. Open:
    /// the first fragment carried the ports and was judged on them; the rest cannot be.
    AllowedFragment = 1, Pass, "allowed-fragment";
    /// An ICMP/ICMPv6 error (unreachable, too big, time exceeded, parameter problem) to a
    /// destination some service covers. Open so that path-MTU discovery and error signalling keep
    /// working towards allowed peers.
    AllowedIcmpError = 2, Pass, "allowed-icmp-error";
    /// ARP. Open: never routed, and without it nothing on the link works.
    Arp = 3, Pass, "arp";
    /// ICMPv6 neighbour discovery with hop limit 255 (RFC 4861) or multicast listener messages
    /// with hop limit 1 (RFC 3810), to a link-local or link-scope multicast destination (fe80::/10,
    /// ff02::/16). Open: IPv6's ARP. The destination is what keeps them on the link: a router
    /// forwards an ND message to a global address like any packet, payload and all.
    NeighborDiscovery = 4, Pass, "neighbor-discovery";
    /// DHCP (UDP 68→67) to the limited broadcast address or DHCPv6 (UDP 546→547) to a link-scope
    /// multicast group. Open: a client needs an address before it can be filtered by one.
    /// Unicast renewals are judged by policy like any other packet.
    Dhcp = 5, Pass, "dhcp";
    /// A destination no router forwards: IPv4 limited broadcast and 224.0.0.0/24 (RFC 5771); IPv6
    /// fe80::/10 and ff02::/16. Open: it cannot leave the link. Not 169.254.0.0/16: Linux routes
    /// it like any address (and clouds serve credentials there). Tunnel protocols (IP-in-IP,
    /// GRE, …) to these destinations, and the filtering host's own link-local addresses, are
    /// judged by policy: a tunnel endpoint or service on the host could carry them further.
    LinkScoped = 6, Pass, "link-scoped";
    /// A frame that carries no IP (LLDP, STP, PPPoE discovery, …). Open: it cannot leave the link
    /// through a router. Encapsulations that do carry IP have their own closed reason.
    NotIp = 7, Pass, "not-ip";
    /// No service covers the destination address.
    NoService = 8, Drop, "no-service";
    /// A service covers the destination and lists the protocol, but not this port.
    PortNotAllowed = 9, Drop, "port-not-allowed";
    /// A service covers the destination but none there lists this protocol (this includes
    /// protocols rules cannot name, such as GRE or ESP, and ICMP that is not an error).
    ProtocolNotAllowed = 10, Drop, "protocol-not-allowed";
    /// The frame ends inside the Ethernet header or a VLAN tag. Closed.
    TruncatedL2 = 11, Drop, "truncated-l2";
    /// More than two VLAN tags. Closed: what follows could be IP the parser never looked at.
    TooManyVlanTags = 12, Drop, "too-many-vlan-tags";
    /// IP inside PPPoE sessions or MPLS, which the parser does not open. Closed: it is routable.
    Encapsulated = 13, Drop, "encapsulated";
    /// The packet ends inside the IPv4 header or its options. Closed.
    TruncatedIpv4 = 14, Drop, "truncated-ipv4";
    /// IPv4 version field is not 4, the header length is below 20 bytes, or the total length is
    /// shorter than the header. Closed.
    MalformedIpv4 = 15, Drop, "malformed-ipv4";
    /// The packet ends inside the fixed IPv6 header. Closed.
    TruncatedIpv6 = 16, Drop, "truncated-ipv6";
    /// IPv6 version field is not 6. Closed.
    MalformedIpv6 = 17, Drop, "malformed-ipv6";
    /// The packet ends inside an IPv6 extension header. Closed.
    TruncatedIpv6Ext = 18, Drop, "truncated-ipv6-ext";
    /// More IPv6 extension headers than the parser follows, or headers that push the transport
    /// header beyond the bytes it reads. Closed: the transport header behind them is unknown.
    HeadersTooLong = 19, Drop, "headers-too-long";
    /// An unfragmented packet or first fragment ends before its TCP, UDP or ICMP header does.
    /// Closed: the ports cannot be checked (and a tiny first fragment is an evasion technique).
    TruncatedL4 = 20, Drop, "truncated-l4";
    /// The destination's prefix names a policy slot that does not exist. The daemon writes a
    /// policy before any prefix points at it, so this means a damaged map. Closed.
    PolicyMissing = 21, Drop, "policy-missing";
    /// An IPv4 packet with a loose or strict source-route option, or an IPv6 packet with a
    /// routing header that still has segments left. Closed: its real destination is not the
    /// one in the header, and a host that honours the route would send it there.
    SourceRouted = 22, Drop, "source-routed";
    /// The source address does not belong on the interface the packet came in on (no route to
    /// it goes out that interface; BCP 38). Closed: a spoofed source is how a LAN client would
    /// forge a DNS answer or hide behind another device. Checked by XDP and by TC ingress on
    /// pods' veths.
    SpoofedSource = 23, Drop, "spoofed-source";
    /// On a layer-3 device (TUN, WireGuard, PPP, IP tunnels) a packet whose version field is
    /// neither 4 nor 6. Closed.
    NotIpOnL3Device = 24, Drop, "not-ip-on-l3-device";
    /// A TCP or UDP packet of a flow whose first packet was allowed, to an address the daemon
    /// has since removed (its TTL and grace ran out, or it left the answers), within
    /// `--established-idle` and `--established-max` (`filter_common::flows`). Open: the
    /// connection was allowed; a new one to the same address is not.
    EstablishedFlow = 25, Pass, "established-flow";
}

impl Reason {
    /// Whether this reason lets the packet through.
    #[must_use]
    pub const fn passes(self) -> bool {
        matches!(self.stance(), Stance::Pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_dense_and_round_trip() {
        for (index, reason) in Reason::ALL.iter().enumerate() {
            assert_eq!(*reason as usize, index, "{reason:?} is out of order");
            assert_eq!(Reason::from_u32(index as u32), Some(*reason));
        }
        assert_eq!(Reason::from_u32(Reason::COUNT as u32), None);
    }

    #[test]
    fn labels_are_unique() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.label(), b.label(), "{a:?} and {b:?} share a label");
            }
        }
    }

    #[test]
    fn readme_documents_every_reason_with_its_verdict() {
        let readme = include_str!("../../README.md");
        for reason in Reason::ALL {
            let verdict = if reason.passes() { "pass" } else { "drop" };
            let row = std::format!("| {} | `{}` | {verdict} |", reason as u32, reason.label());
            assert!(
                readme.contains(&row),
                "README lacks the row starting {row:?}"
            );
        }
    }

    #[test]
    fn parse_failures_fail_closed() {
        for reason in [
            Reason::TruncatedL2,
            Reason::TooManyVlanTags,
            Reason::TruncatedIpv4,
            Reason::MalformedIpv4,
            Reason::TruncatedIpv6,
            Reason::MalformedIpv6,
            Reason::TruncatedIpv6Ext,
            Reason::HeadersTooLong,
            Reason::TruncatedL4,
            Reason::Encapsulated,
            Reason::SourceRouted,
            Reason::SpoofedSource,
            Reason::NotIpOnL3Device,
        ] {
            assert_eq!(reason.stance(), Stance::Drop, "{reason:?} must fail closed");
        }
    }
}
