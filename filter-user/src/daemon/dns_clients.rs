//! Where the forwarder may listen and whom it answers, from the interfaces the filter guards.
//!
//! A gateway's forwarder listening on a wildcard or on its WAN address is an open resolver on
//! the internet (amplification, cache probing). So `--dns-listen` takes only loopback or an
//! address of a guarded interface (one attached to, by `--xdp`, `--tc` or `--tc-ingress`, with
//! its bridges and VLANs) unless `--dns-listen-any` says otherwise, and whatever it listens on,
//! the forwarder answers only sources on the guarded interfaces' connected subnets, the host's
//! own addresses and `--dns-allow-from` (see `dns::clients`). The set is read at start, when the
//! attachments or the routes change (a LAN's addresses bring its connected routes, often a moment
//! after the link) and every 30 s, so a LAN that appears or an address added to one is served
//! without a restart.

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use anyhow::bail;
use ipnet::IpNet;
use tokio::sync::watch;

use super::{
    interfaces::{self, InterfaceAddress},
    RunOptions,
};
use crate::dns::ServedClients;

/// The addresses of the guarded interfaces and every address of the host, as read now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GuardedAddresses {
    /// On a guarded interface (or its bridge, bond or VLANs).
    guarded: Vec<InterfaceAddress>,
    /// Every address of the host, on any interface.
    host: Vec<IpAddr>,
}

impl GuardedAddresses {
    /// Reads them over rtnetlink for the interfaces attached to (`indices`).
    pub async fn read(indices: &[u32]) -> anyhow::Result<Self> {
        let (links, addresses) = interfaces::read_links_and_addresses().await?;
        Ok(Self::new(indices, &links, addresses))
    }

    /// The addresses of `indices` (and the links related to them) among `addresses`.
    #[must_use]
    pub fn new(
        indices: &[u32],
        links: &[interfaces::Link],
        addresses: Vec<InterfaceAddress>,
    ) -> Self {
        let related = interfaces::guarded_links(indices, links);
        let host = addresses.iter().map(|a| a.address).collect();
        let guarded = addresses
            .into_iter()
            .filter(|a| related.contains(&a.index))
            .collect();
        Self { guarded, host }
    }

    /// Whom the forwarder answers: the guarded interfaces' connected subnets, the host's own
    /// addresses (and loopback), and `allow_from`. Link-local subnets are left out: fe80::/64
    /// is the same prefix on every link, the WAN's included.
    #[must_use]
    pub fn served_clients(&self, allow_from: &[IpNet]) -> ServedClients {
        let subnets = self
            .guarded
            .iter()
            .map(|a| a.subnet)
            .filter(|subnet| !is_link_local(subnet.addr()));
        let own = self.host.iter().map(|a| IpNet::from(*a));
        ServedClients::new(subnets.chain(own).chain(allow_from.iter().copied()))
    }

    /// Refuses a listen address that is neither loopback nor an address of a guarded
    /// interface, naming it and the way to insist.
    pub fn check_listen(&self, listen: &[SocketAddr]) -> anyhow::Result<()> {
        for address in listen {
            let ip = address.ip().to_canonical();
            if ip.is_loopback() || self.guarded.iter().any(|a| a.address == ip) {
                continue;
            }
            bail!(
                "--dns-listen {address}: {ip} is not an address of an interface the filter \
                 guards ({}) nor loopback; a forwarder listening there answers whoever reaches \
                 it, e.g. from the WAN. Give the guarded network's address, or add \
                 --dns-listen-any if this is really meant",
                self.describe_guarded()
            );
        }
        Ok(())
    }

    fn describe_guarded(&self) -> String {
        if self.guarded.is_empty() {
            return "they have no addresses".to_owned();
        }
        let addresses: Vec<String> = self.guarded.iter().map(|a| a.address.to_string()).collect();
        format!("theirs: {}", addresses.join(", "))
    }
}

/// Whom the forwarder answers under `opts` with the interfaces `guarded` attached to, as read
/// now (nobody without the forwarder).
pub async fn read_served(opts: &RunOptions, guarded: &[u32]) -> anyhow::Result<ServedClients> {
    match &opts.dns {
        Some(dns) => Ok(GuardedAddresses::read(guarded)
            .await?
            .served_clients(&dns.allow_from)),
        None => Ok(ServedClients::default()),
    }
}

/// Reads whom to answer again (the attached interfaces, `guarded`, may have come and gone) and
/// hands the forwarder what changed. On failure the forwarder keeps answering whom it answered.
pub async fn reread(
    served: &watch::Sender<Arc<ServedClients>>,
    opts: &RunOptions,
    guarded: &[u32],
) {
    if opts.dns.is_none() {
        return;
    }
    match read_served(opts, guarded).await {
        Ok(now) if **served.borrow() != now => {
            tracing::info!("answering DNS clients from {} now", describe(&now));
            served.send_replace(Arc::new(now));
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(
                "cannot read the guarded subnets, DNS clients stay as they were: {err:#}"
            );
        }
    }
}

/// The served prefixes, for the log.
#[must_use]
pub fn describe(served: &ServedClients) -> String {
    let prefixes: Vec<String> = served.prefixes().iter().map(ToString::to_string).collect();
    prefixes.join(", ")
}

/// Refuses wildcard listen addresses (0.0.0.0, ::), which listen on every interface, the WAN's
/// included, unless `listen_any`. Needs no I/O, so the command line refuses them at once.
pub fn refuse_wildcards(listen: &[SocketAddr], listen_any: bool) -> anyhow::Result<()> {
    if listen_any {
        return Ok(());
    }
    if let Some(address) = listen.iter().find(|a| a.ip().is_unspecified()) {
        bail!(
            "--dns-listen {address} listens on every address of the host, the WAN's included, \
             which makes the forwarder an open resolver; give the guarded network's address \
             (e.g. the gateway's LAN address), or add --dns-listen-any if this is really meant"
        );
    }
    Ok(())
}

fn is_link_local(address: IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => v6.is_unicast_link_local(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::interfaces::Link;

    fn address(index: u32, address: &str, subnet: &str) -> InterfaceAddress {
        InterfaceAddress {
            index,
            address: address.parse().expect("test address"),
            subnet: subnet.parse().expect("test prefix"),
        }
    }

    /// A gateway: LAN 2 (a port of bridge 4, which holds the LAN's addresses), WAN 3, lo 1.
    fn gateway() -> GuardedAddresses {
        let links = [
            Link {
                index: 1,
                ..Link::default()
            },
            Link {
                index: 2,
                master: Some(4),
                parent: None,
            },
            Link {
                index: 3,
                ..Link::default()
            },
            Link {
                index: 4,
                ..Link::default()
            },
        ];
        GuardedAddresses::new(
            &[2],
            &links,
            vec![
                address(1, "127.0.0.1", "127.0.0.0/8"),
                address(4, "10.77.0.1", "10.77.0.0/24"),
                address(4, "fd00:77::1", "fd00:77::/64"),
                address(4, "fe80::1", "fe80::/64"),
                address(3, "192.0.2.1", "192.0.2.0/24"),
            ],
        )
    }

    fn ip(address: &str) -> IpAddr {
        address.parse().expect("test address")
    }

    #[test]
    fn the_guarded_subnets_the_host_and_allowed_prefixes_are_served_and_the_wan_is_not() {
        let allow_from = ["10.99.0.0/16".parse().expect("test prefix")];
        let served = gateway().served_clients(&allow_from);
        for yes in [
            "10.77.0.2",
            "fd00:77::2",
            "10.99.3.4",
            "192.0.2.1",
            "127.0.0.1",
            "::1",
        ] {
            assert!(served.serves(ip(yes)), "{yes}");
        }
        for no in ["192.0.2.2", "203.0.113.7", "fe80::2", "2001:db8::1"] {
            assert!(!served.serves(ip(no)), "{no}");
        }
    }

    #[test]
    fn listening_is_allowed_on_loopback_and_the_guarded_addresses_only() {
        let guarded = gateway();
        let ok = |a: &str| guarded.check_listen(&[a.parse().expect("test socket address")]);
        ok("10.77.0.1:53").expect("the LAN address");
        ok("[fd00:77::1]:53").expect("the LAN's IPv6 address");
        ok("127.0.0.1:53").expect("loopback");
        ok("[::1]:5353").expect("loopback");
        let err = ok("192.0.2.1:53").expect_err("the WAN address").to_string();
        assert!(
            err.contains("--dns-listen 192.0.2.1:53") && err.contains("--dns-listen-any"),
            "{err}"
        );
        assert!(err.contains("10.77.0.1"), "names what would do: {err}");
        ok("198.51.100.1:53").expect_err("not the host's at all");
    }

    #[test]
    fn wildcards_are_refused_unless_asked_for() {
        for wildcard in ["0.0.0.0:53", "[::]:53"] {
            let listen = [wildcard.parse().expect("test socket address")];
            let err = refuse_wildcards(&listen, false)
                .expect_err(wildcard)
                .to_string();
            assert!(
                err.contains(wildcard) && err.contains("open resolver"),
                "{err}"
            );
            refuse_wildcards(&listen, true).expect("--dns-listen-any");
        }
        refuse_wildcards(&["10.77.0.1:53".parse().expect("address")], false).expect("specific");
    }
}
