//! What the daemon opens on top of the rules, so that nobody locks themselves out and no more:
//! the host's own addresses on the failsafe ports (a gateway stays reachable from the LAN it
//! filters, but a proxy or relay on it cannot carry clients further), and, with TC on an uplink,
//! the resolvers the daemon asks (it must not cut off its own lookups). Each gets a service id of
//! its own after the rules' services, so `stats` can name what it let through.

use std::net::IpAddr;

use anyhow::Context as _;
use ipnet::IpNet;

use super::RunOptions;
use crate::{
    pins::HookKind,
    table::{Grant, PortSpec},
};

/// The allowances, as read at start and every address check since.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowances {
    own: Vec<IpAddr>,
    /// What stays open to `own`: the failsafe ports and the forwarder's.
    own_ports: Vec<PortSpec>,
    resolvers: Vec<IpAddr>,
    own_service: u16,
    resolver_service: u16,
}

/// The names `stats` gives the allowances' service ids, after the rules' own.
pub const SERVICE_NAMES: [&str; 2] = ["(this host)", "(resolver)"];

impl Allowances {
    /// Reads the host's addresses and resolvers. `services` is how many the rules define.
    pub fn read(opts: &RunOptions, services: usize) -> anyhow::Result<Self> {
        let own = if opts.allow_self {
            host_addresses()?
        } else {
            Vec::new()
        };
        Self::new(opts, services, own, system_resolvers())
    }

    /// The allowances for these addresses of the host and resolvers of the system.
    pub fn new(
        opts: &RunOptions,
        services: usize,
        mut own: Vec<IpAddr>,
        system_resolvers: Vec<IpAddr>,
    ) -> anyhow::Result<Self> {
        own.sort();
        own.dedup();
        let mut own_ports = opts.self_ports.clone();
        for listen in opts.dns.iter().flat_map(|dns| &dns.listen) {
            let port = listen.port();
            own_ports.extend([PortSpec::Udp(port..=port), PortSpec::Tcp(port..=port)]);
        }
        // Only TC on an uplink sees the daemon's own lookups; on an XDP gateway this would
        // merely open the resolver to the LAN.
        let mut resolvers = match (!opts.uses(HookKind::Tc), opts.resolver) {
            (true, _) => Vec::new(),
            (false, Some(server)) => vec![server.ip()],
            (false, None) => system_resolvers,
        };
        if let (false, Some(dns)) = (!opts.uses(HookKind::Tc), &opts.dns) {
            resolvers.push(dns.upstream.ip());
        }
        resolvers.sort();
        resolvers.dedup();
        let own_service = u16::try_from(services).context("too many services")?;
        Ok(Self {
            own,
            own_ports,
            resolvers,
            own_service,
            resolver_service: own_service + 1,
        })
    }

    /// The host routes the allowances add to the table.
    pub fn grants(&self) -> impl Iterator<Item = Grant> + '_ {
        let own = self.own.iter().map(move |a| Grant {
            prefix: IpNet::from(*a),
            service: self.own_service,
            ports: self.own_ports.clone(),
            groups: filter_common::groups::ALL_GROUPS,
        });
        let dns = self.resolvers.iter().map(|a| Grant {
            prefix: IpNet::from(*a),
            service: self.resolver_service,
            ports: vec![PortSpec::Udp(53..=53), PortSpec::Tcp(53..=53)],
            groups: filter_common::groups::ALL_GROUPS,
        });
        own.chain(dns)
    }
}

/// Every address of every interface of the host (its link-local ones included: a service on
/// the gateway is as reachable there).
fn host_addresses() -> anyhow::Result<Vec<IpAddr>> {
    let mut own = Vec::new();
    for ifaddr in nix::ifaddrs::getifaddrs().context("cannot list the host's addresses")? {
        let Some(addr) = ifaddr.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            own.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            own.push(IpAddr::V6(v6.ip()));
        }
    }
    Ok(own)
}

fn system_resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(argv: &[&str]) -> RunOptions {
        crate::cmd::run::parsed(argv).expect("valid options")
    }

    fn addresses(list: &[&str]) -> Vec<IpAddr> {
        list.iter()
            .map(|a| a.parse().expect("test address"))
            .collect()
    }

    fn granted(allowances: &Allowances) -> Vec<(String, u16, Vec<String>)> {
        allowances
            .grants()
            .map(|g| {
                let ports = g.ports.iter().map(ToString::to_string).collect();
                (g.prefix.to_string(), g.service, ports)
            })
            .collect()
    }

    #[test]
    fn a_gateway_opens_its_own_addresses_on_the_failsafe_and_forwarder_ports_only() {
        let opts = opts(&[
            "--xdp",
            "lan0",
            "--self-ports",
            "tcp/22,icmp",
            "--dns-listen",
            "10.0.0.1:5353",
            "--dns-upstream",
            "192.0.2.53:53",
        ]);
        let own = addresses(&["10.0.0.1", "fe80::1", "10.0.0.1"]);
        let allowances = Allowances::new(&opts, 3, own, addresses(&["192.0.2.1"])).expect("valid");
        let ports = ["tcp/22", "icmp", "udp/5353", "tcp/5353"]
            .map(str::to_owned)
            .to_vec();
        assert_eq!(
            granted(&allowances),
            [
                ("10.0.0.1/32".to_owned(), 3, ports.clone()),
                ("fe80::1/128".to_owned(), 3, ports),
            ],
            "each own address once, no resolver: XDP does not see the daemon's lookups"
        );
    }

    #[test]
    fn a_host_with_tc_opens_its_resolvers_on_port_53() {
        let opts = opts(&[
            "--tc",
            "eth0",
            "--no-self-allow",
            "--dns-listen",
            "127.0.0.1:53",
            "--dns-upstream",
            "192.0.2.53:53",
        ]);
        let allowances =
            Allowances::new(&opts, 5, Vec::new(), addresses(&["198.51.100.1"])).expect("valid");
        let dns = ["udp/53", "tcp/53"].map(str::to_owned).to_vec();
        assert_eq!(
            granted(&allowances),
            [
                ("192.0.2.53/32".to_owned(), 6, dns.clone()),
                ("198.51.100.1/32".to_owned(), 6, dns),
            ]
        );
        let named = opts_with_resolver();
        let allowances =
            Allowances::new(&named, 5, Vec::new(), addresses(&["198.51.100.1"])).expect("valid");
        assert_eq!(
            granted(&allowances)
                .into_iter()
                .map(|(p, ..)| p)
                .collect::<Vec<_>>(),
            ["203.0.113.53/32"],
            "--resolver replaces the system's"
        );
    }

    fn opts_with_resolver() -> RunOptions {
        opts(&["--tc", "eth0", "--resolver", "203.0.113.53:53"])
    }
}
