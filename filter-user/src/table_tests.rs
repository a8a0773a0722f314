//! Tests of the allow table: overlap unions against the naive definition, deduplication,
//! capacity, in-place host updates.

use proptest::prelude::*;

use super::*;

fn grant(prefix: &str, service: ServiceId, ports: &[PortSpec]) -> Grant {
    Grant {
        prefix: prefix.parse().expect("test prefix"),
        service,
        ports: ports.to_vec(),
        groups: filter_common::groups::ALL_GROUPS,
    }
}

fn allows(table: &AllowTable, addr: &str, proto: RuleProto, port: u16) -> bool {
    let addr: IpAddr = addr.parse().expect("test address");
    table
        .lookup(addr)
        .is_some_and(|(_, rules)| rules.find(proto, port).is_some())
}

#[test]
fn longer_prefix_inherits_the_ports_of_a_shorter_one() {
    let table = AllowTable::build(&[
        grant("17.0.0.0/8", 0, &[PortSpec::Tcp(5223..=5223)]),
        grant("17.1.2.3/32", 1, &[PortSpec::Tcp(443..=443)]),
    ])
    .expect("compiles");
    assert!(allows(&table, "17.1.2.3", RuleProto::Tcp, 443), "own port");
    assert!(
        allows(&table, "17.1.2.3", RuleProto::Tcp, 5223),
        "inherited port"
    );
    assert!(
        !allows(&table, "17.1.2.4", RuleProto::Tcp, 443),
        "443 is only for the /32"
    );
    assert!(allows(&table, "17.1.2.4", RuleProto::Tcp, 5223));
    let rules = &table.v4[&"17.1.2.3/32".parse().unwrap()];
    assert_eq!(
        rules.find(RuleProto::Tcp, 5223).unwrap().service_id,
        0,
        "counted for its service"
    );
}

#[test]
fn inheritance_skips_siblings_and_reaches_through_levels() {
    let table = AllowTable::build(&[
        grant("10.0.0.0/8", 0, &[PortSpec::Udp(53..=53)]),
        grant("10.1.0.0/16", 1, &[PortSpec::Tcp(22..=22)]),
        grant("10.1.2.0/24", 2, &[PortSpec::Icmp]),
        grant("10.2.0.0/16", 3, &[PortSpec::Tcp(80..=80)]),
    ])
    .unwrap();
    let leaf = &table.v4[&"10.1.2.0/24".parse().unwrap()];
    assert_eq!(leaf.rules().len(), 3, "udp/53 + tcp/22 + icmp, got {leaf}");
    let sibling = &table.v4[&"10.2.0.0/16".parse().unwrap()];
    assert!(
        sibling.find(RuleProto::Tcp, 22).is_none(),
        "sibling must not inherit: {sibling}"
    );
}

#[test]
fn ranges_merge_per_service_and_protocol() {
    let table = AllowTable::build(&[grant(
        "2001:db8::/32",
        4,
        &[
            PortSpec::Tcp(5228..=5229),
            PortSpec::Tcp(5230..=5230),
            PortSpec::Tcp(443..=443),
            PortSpec::Udp(443..=443),
        ],
    )])
    .unwrap();
    let rules = table.v6.values().next().unwrap();
    assert_eq!(
        rules.to_string(),
        "tcp/443(s4) tcp/5228-5230(s4) udp/443(s4)"
    );
}

#[test]
fn host_bits_are_cleared_and_duplicates_collapse() {
    let table = AllowTable::build(&[
        grant("192.0.2.7/24", 0, &[PortSpec::Tcp(443..=443)]),
        grant("192.0.2.0/24", 0, &[PortSpec::Tcp(443..=443)]),
    ])
    .unwrap();
    assert_eq!(table.v4.len(), 1);
    assert_eq!(table.distinct_rule_sets().len(), 1);
}

#[test]
fn port_only_rule_covers_every_address() {
    let table = AllowTable::build(&[
        grant("0.0.0.0/0", 0, &[PortSpec::Tcp(5228..=5230)]),
        grant("198.51.100.0/24", 1, &[PortSpec::Tcp(443..=443)]),
    ])
    .unwrap();
    assert!(allows(&table, "203.0.113.9", RuleProto::Tcp, 5229));
    assert!(
        allows(&table, "198.51.100.1", RuleProto::Tcp, 5229),
        "inherits the /0"
    );
    assert!(!allows(&table, "203.0.113.9", RuleProto::Tcp, 443));
}

#[test]
fn too_many_rules_under_one_prefix_is_an_error_naming_it() {
    let ports: Vec<PortSpec> = (0..=MAX_RULES_PER_POLICY as u16)
        .map(|p| PortSpec::Tcp(p * 2 + 1..=p * 2 + 1))
        .collect();
    let err = AllowTable::build(&[grant("192.0.2.0/24", 0, &ports)]).unwrap_err();
    assert_eq!(
        err,
        TableError::TooManyRules {
            prefix: "192.0.2.0/24".parse().unwrap(),
            needed: MAX_RULES_PER_POLICY + 1
        }
    );
    assert!(err.to_string().contains("192.0.2.0/24"), "{err}");
}

// --- property: the compiled longest match equals the naive definition ---------------------

fn arb_spec() -> impl Strategy<Value = PortSpec> {
    prop_oneof![
        (1u16..40, 0u16..4).prop_map(|(lo, len)| PortSpec::Tcp(lo..=lo + len)),
        (1u16..40, 0u16..4).prop_map(|(lo, len)| PortSpec::Udp(lo..=lo + len)),
        Just(PortSpec::Icmp),
    ]
}

/// Prefixes inside 10.0.0.0/8 so random ones overlap often.
fn arb_grant_v4() -> impl Strategy<Value = Grant> {
    (
        any::<u32>(),
        0u8..=32,
        0u16..4,
        prop::collection::vec(arb_spec(), 1..4),
    )
        .prop_map(|(bits, len, service, ports)| {
            let addr = Ipv4Addr::from(0x0a00_0000 | (bits & 0x0000_f0ff));
            Grant {
                prefix: IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc()),
                service,
                ports,
                groups: filter_common::groups::ALL_GROUPS,
            }
        })
}

fn naive_allows(grants: &[Grant], addr: IpAddr, proto: RuleProto, port: u16) -> bool {
    grants.iter().any(|g| {
        g.prefix.contains(&addr)
            && g.ports.iter().any(|spec| match (spec, proto) {
                (PortSpec::Tcp(r), RuleProto::Tcp) | (PortSpec::Udp(r), RuleProto::Udp) => {
                    r.contains(&port)
                }
                (PortSpec::Icmp, RuleProto::Icmp) => true,
                _ => false,
            })
    })
}

fn host_grant(bits: u32, service: u16, port: u16) -> Grant {
    let addr = Ipv4Addr::from(0x0a00_0000 | (bits & 0x0000_f0ff));
    Grant {
        prefix: IpNet::V4(Ipv4Net::new(addr, 32).unwrap()),
        service,
        ports: vec![PortSpec::Tcp(port..=port)],
        groups: filter_common::groups::ALL_GROUPS,
    }
}

proptest! {
    #[test]
    fn host_updates_in_place_equal_a_full_rebuild(
        base in prop::collection::vec(arb_grant_v4(), 0..10),
        first in prop::collection::vec((any::<u32>(), 0u16..3, 1u16..4), 0..20),
        churn in prop::collection::vec((any::<u32>(), 0u16..3, 1u16..4, any::<bool>()), 0..20),
    ) {
        let first: Vec<Grant> = first.iter().map(|(b, s, p)| host_grant(*b, *s, *p)).collect();
        let mut current: Vec<Grant> = base.iter().cloned().chain(first.iter().cloned()).collect();
        let mut table = AllowTable::build(&current).unwrap();
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for (bits, service, port, adding) in churn {
            let grant = host_grant(bits, service, port);
            if adding {
                current.push(grant.clone());
                add.push(grant);
            } else if let Some(i) = current.iter().position(|g| *g == grant && !base.contains(g)) {
                current.remove(i);
                remove.push(grant);
            }
        }
        let changed = table.update_hosts(&add, &remove).unwrap();
        let rebuilt = AllowTable::build(&current).unwrap();
        prop_assert_eq!(&table.v4, &rebuilt.v4);
        for prefix in changed {
            prop_assert!(add.iter().chain(&remove).any(|g| g.prefix == prefix), "{} changed untouched", prefix);
        }
    }

    #[test]
    fn compiled_lookup_matches_naive_definition(
        grants in prop::collection::vec(arb_grant_v4(), 1..12),
        probes in prop::collection::vec((any::<u32>(), 0u8..3, 0u16..48), 64),
    ) {
        let table = AllowTable::build(&grants).unwrap();
        for (bits, proto, port) in probes {
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (bits & 0x0000_f0ff)));
            let proto = [RuleProto::Tcp, RuleProto::Udp, RuleProto::Icmp][proto as usize];
            let compiled = table.lookup(addr).is_some_and(|(_, r)| r.find(proto, port).is_some());
            prop_assert_eq!(compiled, naive_allows(&grants, addr, proto, port),
                "{} {:?}/{}", addr, proto, port);
        }
    }
}
