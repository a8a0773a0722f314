//! What the daemon must know about interfaces: which exist (and when that changes), whether an
//! interface's frames carry an Ethernet header, and which source addresses belong on it.
//!
//! Both are read from the daemon's own network namespace (an ioctl and rtnetlink), never from
//! `/sys/class/net`, which shows the namespace of whoever mounted sysfs.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use anyhow::{bail, Context as _};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::attachments::NamedLink;

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
    pub(super) const ETHER: u16 = 1;
    pub(super) const PPP: u16 = 512;
    pub(super) const RAWIP: u16 = 519;
    pub(super) const TUNNEL: u16 = 768;
    pub(super) const TUNNEL6: u16 = 769;
    pub(super) const SIT: u16 = 776;
    pub(super) const IPGRE: u16 = 778;
    pub(super) const IP6GRE: u16 = 823;
    /// TUN devices and WireGuard.
    pub(super) const NONE: u16 = 0xfffe;
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
            // The request's C type is the libc's (glibc and musl differ): `Ioctl` names it.
            libc::SIOCGIFHWADDR as libc::Ioctl,
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

/// One interface as the source check sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    /// The bridge or bond it is a port of (`IFLA_MASTER`).
    pub master: Option<u32>,
    /// The device it is stacked on in this namespace (`IFLA_LINK`: a VLAN's or macvlan's parent).
    pub parent: Option<u32>,
}

/// One unicast route: its destination and the interfaces it leaves through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub destination: IpNet,
    pub out: Vec<u32>,
}

/// What every client sends from before it has an address, on any link: 0.0.0.0 (DHCP), ::
/// (duplicate address detection) and fe80::/10.
fn unaddressed_sources() -> [IpNet; 3] {
    [
        IpNet::V4(Ipv4Net::from(Ipv4Addr::UNSPECIFIED)),
        IpNet::V6(Ipv6Net::from(Ipv6Addr::UNSPECIFIED)),
        IpNet::V6(Ipv6Net::new(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10).expect("/10")),
    ]
}

/// The interfaces whose clients' sources are checked, by index.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckedInterfaces {
    /// XDP's LANs.
    pub lans: Vec<u32>,
    /// The host sides of pods' veths (`--tc-ingress`).
    pub pods: Vec<u32>,
}

/// The source prefixes that belong on each checked interface, as strict reverse-path filtering
/// would see them.
///
/// A LAN's are every unicast route (in any table) out of the interface, out of the bridge or
/// bond it is a port of (a LAN's addresses usually sit on the bridge), or out of a VLAN or
/// macvlan stacked on it (XDP on a trunk sees every VLAN's clients); plus
/// `unaddressed_sources`.
///
/// A pod's veth's are the routes out of the veth itself (the pod's own address, as Calico,
/// Cilium with endpoint routes and plain routed setups write it), plus `unaddressed_sources`: a
/// pod that sends with another pod's address is refused, and cannot take that pod's client
/// group. A veth the host routes nothing to (a port of a bridge that holds every pod's subnet)
/// has no address of its own to check against, and takes every source, as before the check.
#[must_use]
pub fn sources_of(
    checked: &CheckedInterfaces,
    links: &[Link],
    routes: &[Route],
) -> BTreeSet<(u32, IpNet)> {
    let mut sources = BTreeSet::new();
    for &index in &checked.pods {
        let own: Vec<IpNet> = routes
            .iter()
            .filter(|route| route.out.contains(&index))
            .map(|route| route.destination)
            .collect();
        if own.is_empty() {
            sources.extend(
                [IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())]
                    .map(|every| (index, every)),
            );
        } else {
            sources.extend(own.into_iter().map(|prefix| (index, prefix)));
            sources.extend(unaddressed_sources().map(|prefix| (index, prefix)));
        }
    }
    for &index in &checked.lans {
        let related = related_links(index, links);
        for route in routes {
            if route.out.iter().any(|out| related.contains(out)) {
                sources.insert((index, route.destination));
            }
        }
        sources.extend(unaddressed_sources().map(|prefix| (index, prefix)));
    }
    sources
}

/// `index`, its masters up the chain, and the devices stacked on it (and their masters).
fn related_links(index: u32, links: &[Link]) -> BTreeSet<u32> {
    let master_of = |i: u32| links.iter().find(|l| l.index == i).and_then(|l| l.master);
    let mut related = BTreeSet::new();
    let mut pending = vec![index];
    while let Some(link) = pending.pop() {
        if !related.insert(link) {
            continue;
        }
        pending.extend(master_of(link));
        if link == index {
            pending.extend(
                links
                    .iter()
                    .filter(|l| l.parent == Some(index))
                    .map(|l| l.index),
            );
        }
    }
    related
}

/// `indices` and every link related to one of them as [`sources_of`] relates them (their
/// bridges and bonds, the VLANs stacked on them): where a guarded network's addresses sit.
#[must_use]
pub fn guarded_links(indices: &[u32], links: &[Link]) -> BTreeSet<u32> {
    indices
        .iter()
        .flat_map(|&index| related_links(index, links))
        .collect()
}

/// One address of an interface, with the subnet it makes directly reachable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InterfaceAddress {
    pub index: u32,
    /// The host's own address.
    pub address: IpAddr,
    /// The connected subnet (the peer's prefix on a point-to-point link).
    pub subnet: IpNet,
}

/// Runs `read` on a fresh rtnetlink connection of the daemon's namespace.
async fn with_rtnetlink<T, F>(read: impl FnOnce(rtnetlink::Handle) -> F) -> anyhow::Result<T>
where
    F: std::future::Future<Output = Result<T, rtnetlink::Error>>,
{
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    let connection = tokio::spawn(connection);
    let result = read(handle).await;
    connection.abort();
    Ok(result?)
}

async fn dump_links(handle: &rtnetlink::Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::link::LinkAttribute;

    let mut links = Vec::new();
    let mut dump = handle.link().get().execute();
    while let Some(message) = dump.try_next().await? {
        let mut link = Link {
            index: message.header.index,
            ..Link::default()
        };
        // A peer in another namespace (a veth's) is not stacked on anything here.
        let elsewhere = message
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::LinkNetNsId(_)));
        for attribute in &message.attributes {
            match attribute {
                LinkAttribute::Controller(master) => link.master = Some(*master),
                LinkAttribute::Link(parent) if !elsewhere => link.parent = Some(*parent),
                _ => {}
            }
        }
        links.push(link);
    }
    Ok(links)
}

/// Reads the links and every address of the daemon's namespace over rtnetlink.
pub async fn read_links_and_addresses() -> anyhow::Result<(Vec<Link>, Vec<InterfaceAddress>)> {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::address::AddressAttribute;

    with_rtnetlink(|handle| async move {
        let links = dump_links(&handle).await?;
        let mut addresses = Vec::new();
        let mut dump = handle.address().get().execute();
        while let Some(message) = dump.try_next().await? {
            let (mut local, mut peer) = (None, None);
            for attribute in &message.attributes {
                match attribute {
                    AddressAttribute::Local(a) => local = Some(*a),
                    AddressAttribute::Address(a) => peer = Some(*a),
                    _ => {}
                }
            }
            // IFA_LOCAL is the host's end where it differs from IFA_ADDRESS (point-to-point).
            let Some(address) = local.or(peer) else {
                continue;
            };
            let Ok(subnet) = IpNet::new(peer.unwrap_or(address), message.header.prefix_len) else {
                continue;
            };
            addresses.push(InterfaceAddress {
                index: message.header.index,
                address,
                subnet: subnet.trunc(),
            });
        }
        Ok((links, addresses))
    })
    .await
    .context("cannot read links and addresses over rtnetlink")
}

/// Reads the links and the unicast routes of the daemon's namespace over rtnetlink.
pub async fn read_links_and_routes() -> anyhow::Result<(Vec<Link>, Vec<Route>)> {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};

    with_rtnetlink(|handle| async move {
        let links = dump_links(&handle).await?;
        let mut routes = Vec::new();
        for query in [
            rtnetlink::RouteMessageBuilder::<Ipv4Addr>::new().build(),
            rtnetlink::RouteMessageBuilder::<Ipv6Addr>::new().build(),
        ] {
            let mut dump = handle.route().get(query).execute();
            while let Some(message) = dump.try_next().await? {
                if message.header.kind != RouteType::Unicast {
                    continue;
                }
                let length = message.header.destination_prefix_length;
                let mut destination = None;
                let mut out = Vec::new();
                for attribute in &message.attributes {
                    match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => {
                            destination = Ipv4Net::new(*a, length).ok().map(IpNet::V4);
                        }
                        RouteAttribute::Destination(RouteAddress::Inet6(a)) => {
                            destination = Ipv6Net::new(*a, length).ok().map(IpNet::V6);
                        }
                        RouteAttribute::Oif(index) => out.push(*index),
                        RouteAttribute::MultiPath(hops) => {
                            out.extend(hops.iter().map(|hop| hop.interface_index));
                        }
                        _ => {}
                    }
                }
                // No destination attribute: the default route of its family.
                let destination = destination.unwrap_or(match message.header.address_family {
                    rtnetlink::packet_route::AddressFamily::Inet6 => IpNet::V6(Ipv6Net::default()),
                    _ => IpNet::V4(Ipv4Net::default()),
                });
                if !destination.addr().is_multicast() {
                    routes.push(Route {
                        destination: destination.trunc(),
                        out,
                    });
                }
            }
        }
        Ok((links, routes))
    })
    .await
    .context("cannot read links and routes over rtnetlink")
}

/// Reads every link of the daemon's namespace with its name and link type, over rtnetlink.
pub async fn read_named_links() -> anyhow::Result<Vec<NamedLink>> {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::link::LinkAttribute;

    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    let connection = tokio::spawn(connection);
    let result = async {
        let mut links = Vec::new();
        let mut dump = handle.link().get().execute();
        while let Some(message) = dump.try_next().await? {
            let name = message.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(name) => Some(name.clone()),
                _ => None,
            });
            if let Some(name) = name {
                links.push(NamedLink {
                    index: message.header.index,
                    name,
                    link_type: u16::from(message.header.link_layer_type),
                });
            }
        }
        Ok::<_, rtnetlink::Error>(links)
    }
    .await;
    connection.abort();
    result.context("cannot read the links over rtnetlink")
}

/// The mode the kernel reports an XDP program running in on the link with index `index`
/// (`driver`, `generic`, `offload`; `multiple` if several are attached), or `None` when none is.
pub async fn xdp_mode(index: u32) -> anyhow::Result<Option<&'static str>> {
    use futures::TryStreamExt as _;
    use rtnetlink::packet_route::link::{LinkAttribute, LinkXdp, XdpAttached};

    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
    let connection = tokio::spawn(connection);
    let result = async {
        let mut reply = handle.link().get().match_index(index).execute();
        let mut mode = None;
        while let Some(message) = reply.try_next().await? {
            let attached = message.attributes.iter().find_map(|a| match a {
                LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
                    LinkXdp::Attached(attached) => Some(*attached),
                    _ => None,
                }),
                _ => None,
            });
            mode = match attached {
                Some(XdpAttached::Driver) => Some("driver"),
                Some(XdpAttached::SocketBuffer) => Some("generic"),
                Some(XdpAttached::Hardware) => Some("offload"),
                Some(XdpAttached::Multiple) => Some("multiple"),
                _ => None,
            };
        }
        Ok::<_, rtnetlink::Error>(mode)
    }
    .await;
    connection.abort();
    result.with_context(|| format!("cannot read the XDP mode of link {index} over rtnetlink"))
}

/// The kernel's link and route notifications: a link was created, changed (renamed, up, down)
/// or deleted; a route came or went (an address added to a new interface brings its prefix
/// route). Each only says that something changed; the daemon then reads the links or routes
/// whole, so a lost notification costs nothing but time, and the periodic check catches it.
pub struct LinkWatch {
    messages: futures::channel::mpsc::UnboundedReceiver<(
        rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
        rtnetlink::sys::SocketAddr,
    )>,
    connection: tokio::task::JoinHandle<()>,
    /// False once the subscription ended (its socket failed).
    alive: bool,
}

impl LinkWatch {
    /// Subscribes; links read after this returns miss no later change.
    pub fn subscribe() -> anyhow::Result<Self> {
        use rtnetlink::sys::AsyncSocket as _;

        let (mut connection, _, messages) =
            rtnetlink::new_connection().context("cannot open an rtnetlink socket")?;
        connection
            .socket_mut()
            .socket_mut()
            .bind(&rtnetlink::sys::SocketAddr::new(
                0,
                rtnetlink::constants::RTMGRP_LINK
                    | rtnetlink::constants::RTMGRP_IPV4_ROUTE
                    | rtnetlink::constants::RTMGRP_IPV6_ROUTE,
            ))
            .context("cannot subscribe to link and route notifications")?;
        Ok(Self {
            messages,
            connection: tokio::spawn(connection),
            alive: true,
        })
    }

    /// Whether notifications still arrive.
    #[must_use]
    pub fn is_alive(&self) -> bool {
        self.alive
    }

    /// Waits for the next notification, then takes every one already queued with it: one
    /// reading of the links (or routes) answers them all. Once the subscription ended, waits
    /// forever.
    pub async fn changed(&mut self) -> NetworkChange {
        use futures::StreamExt as _;

        loop {
            let Some((message, _)) = self.messages.next().await else {
                if self.alive {
                    tracing::error!("link notifications stopped; subscribing again shortly");
                }
                self.alive = false;
                return std::future::pending().await;
            };
            let mut change = NetworkChange::of(&message.payload);
            if change == NetworkChange::default() {
                continue;
            }
            while let Ok((message, _)) = self.messages.try_recv() {
                change.add(NetworkChange::of(&message.payload));
            }
            return change;
        }
    }
}

/// What a batch of notifications changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetworkChange {
    pub links: bool,
    pub routes: bool,
}

impl NetworkChange {
    fn of(
        payload: &rtnetlink::packet_core::NetlinkPayload<
            rtnetlink::packet_route::RouteNetlinkMessage,
        >,
    ) -> Self {
        use rtnetlink::{packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage as M};
        match payload {
            NetlinkPayload::InnerMessage(M::NewLink(_) | M::DelLink(_)) => Self {
                links: true,
                routes: false,
            },
            NetlinkPayload::InnerMessage(M::NewRoute(_) | M::DelRoute(_)) => Self {
                links: false,
                routes: true,
            },
            _ => Self::default(),
        }
    }

    fn add(&mut self, other: Self) {
        self.links |= other.links;
        self.routes |= other.routes;
    }
}

impl Drop for LinkWatch {
    fn drop(&mut self) {
        self.connection.abort();
    }
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

    fn route(destination: &str, out: &[u32]) -> Route {
        Route {
            destination: destination.parse().expect("test prefix"),
            out: out.to_vec(),
        }
    }

    fn prefixes(sources: &BTreeSet<(u32, IpNet)>, index: u32) -> Vec<String> {
        sources
            .iter()
            .filter(|(i, _)| *i == index)
            .map(|(_, p)| p.to_string())
            .collect()
    }

    fn lans(indices: &[u32]) -> CheckedInterfaces {
        CheckedInterfaces {
            lans: indices.to_vec(),
            pods: Vec::new(),
        }
    }

    #[test]
    fn a_pods_veth_takes_its_own_routes_or_every_source_when_it_has_none() {
        let links = [
            Link {
                index: 8,
                ..Link::default()
            },
            Link {
                index: 9,
                master: Some(10),
                parent: None,
            },
            Link {
                index: 10,
                ..Link::default()
            },
        ];
        let routes = [route("10.244.1.5/32", &[8]), route("10.244.1.0/24", &[10])];
        let checked = CheckedInterfaces {
            lans: Vec::new(),
            pods: vec![8, 9],
        };
        let sources = sources_of(&checked, &links, &routes);
        assert_eq!(
            prefixes(&sources, 8),
            ["0.0.0.0/32", "10.244.1.5/32", "::/128", "fe80::/10"],
            "a routed veth: the pod's own address, not its neighbours'"
        );
        assert_eq!(
            prefixes(&sources, 9),
            ["0.0.0.0/0", "::/0"],
            "a bridge port: nothing of its own, so nothing is refused"
        );
    }

    #[test]
    fn sources_are_the_routes_out_of_the_interface() {
        let links = [
            Link {
                index: 2,
                ..Link::default()
            },
            Link {
                index: 3,
                ..Link::default()
            },
        ];
        let routes = [
            route("10.0.0.0/24", &[2]),
            route("192.168.0.0/16", &[2]),
            route("0.0.0.0/0", &[3]),
            route("2001:db8:0:1::/64", &[2]),
            route("2001:db8:0:2::/64", &[3]),
        ];
        assert_eq!(
            prefixes(&sources_of(&lans(&[2]), &links, &routes), 2),
            [
                "0.0.0.0/32",
                "10.0.0.0/24",
                "192.168.0.0/16",
                "::/128",
                "2001:db8:0:1::/64",
                "fe80::/10"
            ]
        );
    }

    #[test]
    fn a_bridge_port_takes_the_bridge_routes_and_a_trunk_its_vlans() {
        let links = [
            // 2: a bridge port of bridge 4; 5: VLAN on trunk 6; 7: an unrelated device.
            Link {
                index: 2,
                master: Some(4),
                parent: None,
            },
            Link {
                index: 4,
                ..Link::default()
            },
            Link {
                index: 5,
                master: None,
                parent: Some(6),
            },
            Link {
                index: 6,
                ..Link::default()
            },
            Link {
                index: 7,
                ..Link::default()
            },
        ];
        let routes = [
            route("10.1.0.0/24", &[4]),
            route("10.2.0.0/24", &[5]),
            route("10.3.0.0/24", &[7]),
            route("10.4.0.0/24", &[7, 6]),
        ];
        let sources = sources_of(&lans(&[2, 6]), &links, &routes);
        assert!(prefixes(&sources, 2).contains(&"10.1.0.0/24".to_owned()));
        assert!(!prefixes(&sources, 2).contains(&"10.2.0.0/24".to_owned()));
        let trunk = prefixes(&sources, 6);
        assert!(trunk.contains(&"10.2.0.0/24".to_owned()), "{trunk:?}");
        assert!(
            trunk.contains(&"10.4.0.0/24".to_owned()),
            "multipath: {trunk:?}"
        );
        assert!(!trunk.contains(&"10.3.0.0/24".to_owned()), "{trunk:?}");
    }
}
