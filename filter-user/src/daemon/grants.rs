//! From what the daemon knows to what the allow table holds: the rules' own grants, host routes
//! for resolved and learned addresses, and the allowances; as a whole table, or as the host
//! routes a change adds and removes.

use std::net::IpAddr;

use ipnet::IpNet;

use super::{allowances::Allowances, hosts::Change, hosts::HostTable, policy::Update};
use crate::{
    compile,
    dns::{learned::LearnedKey, LearnedTable},
    rules::{HostPattern, Rules, Service},
    table::{AllowTable, Grant},
};

/// The whole table: rules with their resolved hostnames, learned addresses, allowances.
pub fn build_table(
    rules: &Rules,
    hosts: &HostTable,
    learned: &LearnedTable,
    allowances: &Allowances,
) -> anyhow::Result<AllowTable> {
    let mut grants = compile::grants(rules, &hosts.resolved());
    grants.extend(learned.keys().filter_map(|(address, service)| {
        Some(host_grant(service_named(rules, service)?, address))
    }));
    grants.extend(allowances.grants());
    Ok(AllowTable::build(&grants)?)
}

/// The host routes that resolved (`hosts`) and learned addresses add and remove.
#[must_use]
pub fn changes(
    rules: &Rules,
    hosts: &[Change],
    learned_added: &[LearnedKey],
    learned_removed: &[LearnedKey],
) -> Update {
    let (mut add, mut remove) = (Vec::new(), Vec::new());
    for change in hosts {
        let pattern = HostPattern::Exact(change.name.clone());
        for service in rules.services.iter().filter(|s| s.hosts.contains(&pattern)) {
            let grant = host_grant(service, change.address);
            if change.added {
                add.push(grant);
            } else {
                remove.push(grant);
            }
        }
    }
    for (keys, grants) in [(learned_added, &mut add), (learned_removed, &mut remove)] {
        grants.extend(keys.iter().filter_map(|(address, service)| {
            Some(host_grant(service_named(rules, service)?, *address))
        }));
    }
    if add.is_empty() && remove.is_empty() {
        Update::None
    } else {
        Update::Grants {
            add,
            remove,
            hosts_changed: !hosts.is_empty(),
        }
    }
}

/// A host route to `address` with `service`'s ports.
fn host_grant(service: &Service, address: IpAddr) -> Grant {
    Grant {
        prefix: IpNet::from(address),
        service: service.id,
        ports: service.ports.clone(),
        groups: service.group_mask,
    }
}

fn service_named<'a>(rules: &'a Rules, name: &str) -> Option<&'a Service> {
    rules.services.iter().find(|s| s.name == name)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn rules() -> Rules {
        Rules::parse_sources(&[(
            Path::new("t.toml"),
            "[[service]]\nname = \"a\"\nhosts = [\"api.example\"]\ntcp = [443]\n\
             [[service]]\nname = \"b\"\nhosts = [\"api.example\", \"*.cdn.example\"]\nudp = [3478]\n",
        )])
        .expect("valid rules")
    }

    fn described(update: &Update) -> (Vec<String>, Vec<String>, bool) {
        let text = |grants: &[Grant]| {
            grants
                .iter()
                .map(|g| format!("{} s{} {}", g.prefix, g.service, g.ports[0]))
                .collect()
        };
        match update {
            Update::Grants {
                add,
                remove,
                hosts_changed,
            } => (text(add), text(remove), *hosts_changed),
            other => panic!("expected grants, got {other:?}"),
        }
    }

    #[test]
    fn a_resolved_address_becomes_a_host_route_for_every_service_listing_the_name() {
        let change = |address: &str, added| Change {
            name: "api.example".into(),
            address: address.parse().expect("test address"),
            added,
        };
        let update = changes(
            &rules(),
            &[change("192.0.2.1", true), change("192.0.2.9", false)],
            &[],
            &[],
        );
        assert_eq!(
            described(&update),
            (
                vec![
                    "192.0.2.1/32 s0 tcp/443".into(),
                    "192.0.2.1/32 s1 udp/3478".into()
                ],
                vec![
                    "192.0.2.9/32 s0 tcp/443".into(),
                    "192.0.2.9/32 s1 udp/3478".into()
                ],
                true
            )
        );
    }

    #[test]
    fn a_learned_address_opens_its_own_service_only_and_unknown_services_nothing() {
        let key = |address: &str, service: &str| {
            (address.parse().expect("test address"), service.to_owned())
        };
        let update = changes(
            &rules(),
            &[],
            &[key("2001:db8::7", "b"), key("2001:db8::8", "gone")],
            &[key("2001:db8::6", "b")],
        );
        assert_eq!(
            described(&update),
            (
                vec!["2001:db8::7/128 s1 udp/3478".into()],
                vec!["2001:db8::6/128 s1 udp/3478".into()],
                false
            )
        );
        assert!(matches!(changes(&rules(), &[], &[], &[]), Update::None));
    }
}
