//! From validated services, plus the addresses their hostnames resolve to now, to the allow
//! table the kernel maps hold. A pure function: the same input always gives the same table.

use std::{collections::BTreeMap, net::IpAddr};

use ipnet::IpNet;

use crate::{
    rules::{HostPattern, Rules},
    table::{AllowTable, Grant, TableError},
};

/// Addresses each exact hostname currently resolves to.
pub type Resolved = BTreeMap<String, Vec<IpAddr>>;

/// Every grant the services make: their CIDRs, and a host route per resolved address.
#[must_use]
pub fn grants(rules: &Rules, resolved: &Resolved) -> Vec<Grant> {
    let mut grants = Vec::new();
    for service in &rules.services {
        let addresses = service.hosts.iter().filter_map(|host| match host {
            HostPattern::Exact(name) => resolved.get(name),
            HostPattern::Wildcard(_) => None,
        });
        let prefixes = service
            .cidrs
            .iter()
            .copied()
            .chain(addresses.flatten().map(|addr| IpNet::from(*addr)));
        grants.extend(prefixes.map(|prefix| Grant {
            prefix,
            service: service.id,
            ports: service.ports.clone(),
            groups: service.group_mask,
        }));
    }
    grants
}

/// Compiles services and resolved addresses into the allow table.
pub fn compile(rules: &Rules, resolved: &Resolved) -> Result<AllowTable, TableError> {
    AllowTable::build(&grants(rules, resolved))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use filter_common::RuleProto;

    use super::*;

    #[test]
    fn resolved_hosts_become_host_routes_with_their_services_ports() {
        let rules = Rules::parse_sources(&[(
            Path::new("t.toml"),
            "[[service]]\nname = \"mdm\"\nhosts = [\"mdm.example.com\", \"*.cdn.example.com\"]\ntcp = [443]\n\
             [[service]]\nname = \"net\"\ncidrs = [\"198.51.100.0/24\"]\nudp = [123]\n",
        )])
        .unwrap();
        let mut resolved = Resolved::new();
        resolved.insert(
            "mdm.example.com".into(),
            vec![
                "198.51.100.7".parse().unwrap(),
                "2001:db8::7".parse().unwrap(),
            ],
        );
        let table = compile(&rules, &resolved).unwrap();
        let (prefix, set) = table.lookup("198.51.100.7".parse().unwrap()).unwrap();
        assert_eq!(prefix, "198.51.100.7/32".parse::<IpNet>().unwrap());
        assert!(
            set.find(RuleProto::Tcp, 443).is_some() && set.find(RuleProto::Udp, 123).is_some(),
            "{set}"
        );
        assert!(table.lookup("2001:db8::7".parse().unwrap()).is_some());
        assert_eq!(table.prefix_count(), 3, "wildcards add nothing by polling");
    }
}
