//! What the daemon must know about an interface before attaching to it: whether its frames carry
//! an Ethernet header, and which source addresses belong on it.
//!
//! Both are read from the daemon's own network namespace (an ioctl and `/proc/self/net`), never
//! from `/sys/class/net`, which shows the namespace of whoever mounted sysfs.

use std::{collections::BTreeSet, net::Ipv4Addr, net::Ipv6Addr};

use anyhow::{bail, Context as _};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// The link layer in front of the IP header, which decides the program variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header (veth, physical NICs, bridges, bonds, VLAN devices, macvlan, TAP).
    Ethernet,
    /// None: frames start at the IP header (TUN, WireGuard, PPP, IP-in-IP, GRE, SIT).
    Ip,
}

/// `ARPHRD_*` link types (`linux/if_arp.h`) the programs handle.
mod arphrd {
    pub const ETHER: u16 = 1;
    pub const PPP: u16 = 512;
    pub const RAWIP: u16 = 519;
    pub const TUNNEL: u16 = 768;
    pub const TUNNEL6: u16 = 769;
    pub const SIT: u16 = 776;
    pub const IPGRE: u16 = 778;
    pub const IP6GRE: u16 = 823;
    /// TUN devices and WireGuard.
    pub const NONE: u16 = 0xfffe;
}

impl LinkLayer {
    /// The link layer of the device with `link_type` (an `ARPHRD_*` number), or why the programs
    /// cannot filter it.
    pub fn from_link_type(iface: &str, link_type: u16) -> anyhow::Result<Self> {
        match link_type {
            arphrd::ETHER => Ok(Self::Ethernet),
            arphrd::NONE
            | arphrd::PPP
            | arphrd::RAWIP
            | arphrd::TUNNEL
            | arphrd::TUNNEL6
            | arphrd::SIT
            | arphrd::IPGRE
            | arphrd::IP6GRE => Ok(Self::Ip),
            other => bail!(
                "{iface} has link type {other} (ARPHRD), which egress-filter does not parse; \
                 only Ethernet devices and layer-3 devices (TUN, WireGuard, PPP, IP tunnels) can \
                 be filtered"
            ),
        }
    }

    /// Reads the link layer of `iface` in the daemon's network namespace.
    pub fn of(iface: &str) -> anyhow::Result<Self> {
        Self::from_link_type(iface, link_type(iface)?)
    }
}

/// The `ARPHRD_*` type of `iface`, from `SIOCGIFHWADDR`.
fn link_type(iface: &str) -> anyhow::Result<u16> {
    let name = iface.as_bytes();
    anyhow::ensure!(
        name.len() < libc::IFNAMSIZ,
        "interface name {iface} is too long"
    );
    // Safety: a plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    anyhow::ensure!(
        fd >= 0,
        "cannot open a socket to query {iface}: {}",
        std::io::Error::last_os_error()
    );
    // Safety: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // Safety: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(name) {
        *slot = (*byte).cast_signed();
    }
    // Safety: SIOCGIFHWADDR reads ifr_name and writes ifr_hwaddr inside `request`.
    let result = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SIOCGIFHWADDR,
            &mut request,
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot read the link type of {iface}"));
    }
    // Safety: SIOCGIFHWADDR filled the hwaddr member of the union.
    Ok(unsafe { request.ifr_ifru.ifru_hwaddr.sa_family })
}

/// The source prefixes that belong on `iface`: every route out of it in the main tables (as
/// strict reverse-path filtering would see it), plus what a client sends before it has an
/// address: 0.0.0.0 (DHCP), :: (duplicate address detection) and fe80::/10.
pub fn source_prefixes(iface: &str) -> anyhow::Result<BTreeSet<IpNet>> {
    let v4 = std::fs::read_to_string("/proc/self/net/route")
        .context("cannot read /proc/self/net/route")?;
    // A kernel without IPv6 has no such file: IPv4 sources alone, then.
    let v6 = std::fs::read_to_string("/proc/self/net/ipv6_route").unwrap_or_default();
    let mut prefixes = routes_v4(&v4, iface);
    prefixes.extend(routes_v6(&v6, iface));
    prefixes.insert(IpNet::V4(Ipv4Net::from(Ipv4Addr::UNSPECIFIED)));
    prefixes.insert(IpNet::V6(Ipv6Net::from(Ipv6Addr::UNSPECIFIED)));
    prefixes.insert("fe80::/10".parse().expect("a valid prefix"));
    Ok(prefixes)
}

/// Routes out of `iface` in `/proc/net/route`: columns Iface, Destination, Gateway, Flags,
/// RefCnt, Use, Metric, Mask…, addresses in hex as the kernel holds them (network order read as
/// a little-endian number).
fn routes_v4(table: &str, iface: &str) -> BTreeSet<IpNet> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 || fields[0] != iface {
                return None;
            }
            let destination = u32::from_str_radix(fields[1], 16).ok()?;
            let mask = u32::from_str_radix(fields[7], 16).ok()?;
            let address = Ipv4Addr::from(destination.to_le_bytes());
            let length = u32::from_be_bytes(mask.to_le_bytes()).leading_ones();
            Ipv4Net::new(address, length as u8).ok().map(IpNet::V4)
        })
        .collect()
}

/// Routes out of `iface` in `/proc/net/ipv6_route`: columns destination (32 hex digits), prefix
/// length (hex), source, source length, next hop, metric, refcount, use, flags, device.
fn routes_v6(table: &str, iface: &str) -> BTreeSet<IpNet> {
    table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[9] != iface {
                return None;
            }
            let address = Ipv6Addr::from(u128::from_str_radix(fields[0], 16).ok()?);
            let length = u8::from_str_radix(fields[1], 16).ok()?;
            // Multicast routes (ff00::/8 on every interface) name destinations, never sources.
            if address.is_multicast() {
                return None;
            }
            Ipv6Net::new(address, length)
                .ok()
                .map(|net| IpNet::V6(net.trunc()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_types_pick_the_parser_or_are_refused() {
        assert_eq!(
            LinkLayer::from_link_type("eth0", 1).unwrap(),
            LinkLayer::Ethernet
        );
        for (name, kind) in [
            ("tun0", 0xfffe),
            ("ppp0", 512),
            ("gre1", 778),
            ("sit1", 776),
        ] {
            assert_eq!(
                LinkLayer::from_link_type(name, kind).unwrap(),
                LinkLayer::Ip
            );
        }
        let loopback = LinkLayer::from_link_type("lo", 772)
            .unwrap_err()
            .to_string();
        assert!(loopback.contains("lo has link type 772"), "{loopback}");
    }

    #[test]
    fn ipv4_routes_of_one_interface() {
        let table =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
            wan0\t00000000\t0102000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
            lan0\t0000000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
            lan0\t0000A8C0\t0200000A\t0003\t0\t0\t0\t0000FFFF\t0\t0\t0\n";
        let routes: Vec<String> = routes_v4(table, "lan0")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(routes, ["10.0.0.0/24", "192.168.0.0/16"]);
        let wan: Vec<String> = routes_v4(table, "wan0")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(wan, ["0.0.0.0/0"]);
    }

    #[test]
    fn ipv6_routes_of_one_interface_without_multicast() {
        let table = "20010db8000000010000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     lan0\n\
            fe800000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     lan0\n\
            ff000000000000000000000000000000 08 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     lan0\n\
            20010db8000000020000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     wan0\n";
        let routes: Vec<String> = routes_v6(table, "lan0")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(routes, ["2001:db8:0:1::/64", "fe80::/64"]);
    }
}
