//! The allow table: prefixes with the rules that apply under them, in the exact shape the kernel
//! maps need.
//!
//! Input is a flat list of grants, "this service allows these protocols and ports to this
//! prefix". The verdict contract is that a packet is allowed iff *some* grant covers its
//! destination and lists its protocol and port. The kernel does one longest-prefix match, so the
//! table gives every prefix the union of its own grants and those of every shorter prefix that
//! covers it ([`AllowTable::build`]). With that, the longest match carries everything that
//! applies, whatever the prefix lengths: `17.0.0.0/8` allowing 5223 and `17.1.2.3/32` allowing
//! 443 compile to `17.1.2.3/32 → {443, 5223}`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use filter_common::{
    groups::GroupMask,
    maps::{MAX_POLICIES, MAX_PREFIXES},
    policy::MAX_RULES_PER_POLICY,
    PortRule, RuleProto,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use crate::protocols::{PortSpec, ServiceId};

/// What one service allows to one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub prefix: IpNet,
    pub service: ServiceId,
    pub ports: Vec<PortSpec>,
    /// The client groups it is made to (`filter_common::groups`): the service's.
    pub groups: GroupMask,
}

/// The kernel's rules for a grant's port specs.
fn rules_of(grant: &Grant) -> impl Iterator<Item = PortRule> + '_ {
    grant
        .ports
        .iter()
        .map(|spec| to_rule(spec, grant.service).for_groups(grant.groups))
}

/// The kernel's rule for one of a service's port specs.
fn to_rule(spec: &PortSpec, service: ServiceId) -> PortRule {
    match spec {
        PortSpec::Tcp(ports) => {
            PortRule::new(RuleProto::Tcp, *ports.start(), *ports.end(), service)
        }
        PortSpec::Udp(ports) => {
            PortRule::new(RuleProto::Udp, *ports.start(), *ports.end(), service)
        }
        PortSpec::Icmp => PortRule::new(RuleProto::Icmp, 0, u16::MAX, service),
    }
}

/// The complete, normalised rules under one prefix: sorted, with overlapping and adjacent port
/// ranges of the same service and protocol merged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleSet(Vec<PortRule>);

impl RuleSet {
    fn from_rules(rules: impl IntoIterator<Item = PortRule>) -> Self {
        let mut rules: Vec<PortRule> = rules.into_iter().collect();
        rules.sort_by_key(|r| (r.proto, r.service_id, r.groups, r.port_lo, r.port_hi));
        let mut merged: Vec<PortRule> = Vec::with_capacity(rules.len());
        for rule in rules {
            match merged.last_mut() {
                Some(last)
                    if last.proto == rule.proto
                        && last.service_id == rule.service_id
                        && last.groups == rule.groups
                        && u32::from(rule.port_lo) <= u32::from(last.port_hi) + 1 =>
                {
                    last.port_hi = last.port_hi.max(rule.port_hi);
                }
                _ => merged.push(rule),
            }
        }
        Self(merged)
    }

    /// The rules a kernel policy value holds.
    #[must_use]
    pub fn from_policy(policy: &filter_common::Policy) -> Self {
        Self::from_rules(policy.active_rules().iter().copied())
    }

    fn union(&self, other: &Self) -> Self {
        Self::from_rules(self.0.iter().chain(&other.0).copied())
    }

    #[must_use]
    pub fn rules(&self) -> &[PortRule] {
        &self.0
    }

    /// The rule that allows `proto` to `port`, the way the kernel looks for it: the first match.
    #[must_use]
    pub fn find(&self, proto: RuleProto, port: u16) -> Option<&PortRule> {
        self.0.iter().find(|rule| rule.allows(proto as u8, port))
    }

    /// The rules that apply to client group `group` (`filter_common::groups`).
    pub fn for_group(&self, group: u32) -> impl Iterator<Item = &PortRule> {
        let bit = filter_common::groups::group_bit(group);
        self.0.iter().filter(move |rule| rule.groups & bit != 0)
    }

    /// The rule that allows `proto` to `port` for a source in `group`.
    #[must_use]
    pub fn find_for(&self, group: u32, proto: RuleProto, port: u16) -> Option<&PortRule> {
        self.for_group(group)
            .find(|rule| rule.allows(proto as u8, port))
    }
}

impl fmt::Display for RuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, rule) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let proto = match RuleProto::from_ip_proto(rule.proto) {
                Some(RuleProto::Tcp) => "tcp",
                Some(RuleProto::Udp) => "udp",
                Some(RuleProto::Icmp) => {
                    write!(f, "icmp(s{})", rule.service_id)?;
                    continue;
                }
                None => "?",
            };
            if rule.port_lo == rule.port_hi {
                write!(f, "{proto}/{}(s{})", rule.port_lo, rule.service_id)?;
            } else {
                write!(
                    f,
                    "{proto}/{}-{}(s{})",
                    rule.port_lo, rule.port_hi, rule.service_id
                )?;
            }
        }
        Ok(())
    }
}

/// Why a set of grants cannot be compiled into the kernel maps.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    #[error(
        "{prefix} would need {needed} port rules, more than the {MAX_RULES_PER_POLICY} a kernel \
         policy holds; merge port lists or split overlapping services"
    )]
    TooManyRules { prefix: IpNet, needed: usize },
    #[error(
        "the rules need {needed} distinct port sets, more than the {MAX_POLICIES} the kernel \
         policy array holds"
    )]
    TooManyPolicies { needed: usize },
    #[error("{family} needs {needed} prefixes, more than the {MAX_PREFIXES} its trie holds")]
    TooManyPrefixes { family: &'static str, needed: usize },
    #[error("{0} is not a host route; only /32 and /128 grants can change in place")]
    NotAHostRoute(IpNet),
}

/// The compiled table: per family, every prefix with the complete rules that apply under it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowTable {
    pub v4: BTreeMap<Ipv4Net, RuleSet>,
    pub v6: BTreeMap<Ipv6Net, RuleSet>,
    /// The grants of every host route (/32, /128), counted, so that resolved addresses can
    /// come and go without recompiling the table ([`AllowTable::update_hosts`]).
    host_grants: BTreeMap<IpNet, BTreeMap<PortRule, u32>>,
}

impl AllowTable {
    /// Compiles grants into the table: groups them by (normalised) prefix, then gives every
    /// prefix the union with all prefixes that cover it, and checks kernel capacities.
    pub fn build(grants: &[Grant]) -> Result<Self, TableError> {
        // Flat vectors sorted once, and maps built from sorted runs in bulk: a million grants
        // inserted one by one into ordered maps cost most of a large table's compile time.
        let mut v4: Vec<(Ipv4Net, PortRule)> = Vec::new();
        let mut v6: Vec<(Ipv6Net, PortRule)> = Vec::new();
        let mut hosts: Vec<(IpNet, PortRule)> = Vec::new();
        for grant in grants {
            let prefix = grant.prefix.trunc();
            for rule in rules_of(grant) {
                if is_host_route(prefix) {
                    hosts.push((prefix, rule));
                }
                match prefix {
                    IpNet::V4(net) => v4.push((net, rule)),
                    IpNet::V6(net) => v6.push((net, rule)),
                }
            }
        }
        hosts.sort_unstable();
        let host_grants = runs(&hosts)
            .map(|(prefix, rules)| {
                let mut counts: Vec<(PortRule, u32)> = Vec::new();
                for (_, rule) in rules {
                    match counts.last_mut() {
                        Some((last, count)) if last == rule => *count += 1,
                        _ => counts.push((*rule, 1)),
                    }
                }
                (prefix, counts.into_iter().collect())
            })
            .collect();
        v4.sort_unstable();
        v6.sort_unstable();
        let table = Self {
            v4: inherit_covering(runs(&v4), |net| IpNet::V4(*net))?,
            v6: inherit_covering(runs(&v6), |net| IpNet::V6(*net))?,
            host_grants,
        };
        for (family, len) in [("IPv4", table.v4.len()), ("IPv6", table.v6.len())] {
            if len > MAX_PREFIXES as usize {
                return Err(TableError::TooManyPrefixes {
                    family,
                    needed: len,
                });
            }
        }
        let distinct = table.distinct_rule_sets().len();
        if distinct > MAX_POLICIES as usize {
            return Err(TableError::TooManyPolicies { needed: distinct });
        }
        Ok(table)
    }

    /// Adds and removes host-route grants (resolved addresses) in place, recomputing only the
    /// host routes they touch: a host route covers nothing below it, so its entry is its own
    /// grants united with the entry of the longest prefix above it. Gives the same table as
    /// [`AllowTable::build`] over the changed grants (a property test checks), in time
    /// proportional to the change, not to the table. Returns the host routes whose entry changed.
    pub fn update_hosts(
        &mut self,
        add: &[Grant],
        remove: &[Grant],
    ) -> Result<Vec<IpNet>, TableError> {
        let mut touched = BTreeSet::new();
        for (grant, adding) in add
            .iter()
            .map(|g| (g, true))
            .chain(remove.iter().map(|g| (g, false)))
        {
            if !is_host_route(grant.prefix) {
                return Err(TableError::NotAHostRoute(grant.prefix));
            }
            let prefix = grant.prefix.trunc();
            let counts = self.host_grants.entry(prefix).or_default();
            for rule in rules_of(grant) {
                let count = counts.entry(rule).or_default();
                *count = if adding {
                    *count + 1
                } else {
                    count.saturating_sub(1)
                };
                if *count == 0 {
                    counts.remove(&rule);
                }
            }
            if counts.is_empty() {
                self.host_grants.remove(&prefix);
            }
            touched.insert(prefix);
        }
        let mut changed = Vec::new();
        for prefix in touched {
            let entry = match self.host_grants.get(&prefix) {
                None => None,
                Some(own) => {
                    let own = RuleSet::from_rules(own.keys().copied());
                    let entry = match self.covering_entry(prefix) {
                        Some(inherited) => inherited.union(&own),
                        None => own,
                    };
                    if entry.0.len() > MAX_RULES_PER_POLICY {
                        return Err(TableError::TooManyRules {
                            prefix,
                            needed: entry.0.len(),
                        });
                    }
                    Some(entry)
                }
            };
            if self.entry(prefix) == entry.as_ref() {
                continue;
            }
            match (prefix, entry) {
                (IpNet::V4(net), Some(entry)) => {
                    self.v4.insert(net, entry);
                }
                (IpNet::V6(net), Some(entry)) => {
                    self.v6.insert(net, entry);
                }
                (IpNet::V4(net), None) => {
                    self.v4.remove(&net);
                }
                (IpNet::V6(net), None) => {
                    self.v6.remove(&net);
                }
            }
            changed.push(prefix);
        }
        Ok(changed)
    }

    /// The entry of the longest prefix strictly above `host`.
    fn covering_entry(&self, host: IpNet) -> Option<&RuleSet> {
        match host {
            IpNet::V4(net) => (0..net.prefix_len())
                .rev()
                .find_map(|len| self.v4.get(&Ipv4Net::new(net.network(), len).ok()?.trunc())),
            IpNet::V6(net) => (0..net.prefix_len())
                .rev()
                .find_map(|len| self.v6.get(&Ipv6Net::new(net.network(), len).ok()?.trunc())),
        }
    }

    /// The entry for exactly `prefix`, if the table has one.
    #[must_use]
    pub fn entry(&self, prefix: IpNet) -> Option<&RuleSet> {
        match prefix {
            IpNet::V4(net) => self.v4.get(&net),
            IpNet::V6(net) => self.v6.get(&net),
        }
    }

    /// Every distinct rule set in the table, each once.
    #[must_use]
    pub fn distinct_rule_sets(&self) -> BTreeSet<&RuleSet> {
        self.v4.values().chain(self.v6.values()).collect()
    }

    /// The rules the kernel finds for `addr`: those of the longest prefix containing it.
    #[must_use]
    pub fn lookup(&self, addr: IpAddr) -> Option<(IpNet, &RuleSet)> {
        match addr {
            IpAddr::V4(addr) => longest_match_v4(&self.v4, addr).map(|(n, r)| (IpNet::V4(n), r)),
            IpAddr::V6(addr) => longest_match_v6(&self.v6, addr).map(|(n, r)| (IpNet::V6(n), r)),
        }
    }

    #[must_use]
    pub fn prefix_count(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
}

/// A /32 or /128: nothing lies below it, so its entry can change without touching others.
fn is_host_route(prefix: IpNet) -> bool {
    prefix.prefix_len() == prefix.max_prefix_len()
}

/// Prefix types the table handles, both families alike.
trait Prefix: Ord + Copy {
    fn contains_prefix(&self, other: &Self) -> bool;
}

impl Prefix for Ipv4Net {
    fn contains_prefix(&self, other: &Self) -> bool {
        self.contains(other)
    }
}

impl Prefix for Ipv6Net {
    fn contains_prefix(&self, other: &Self) -> bool {
        self.contains(other)
    }
}

/// Gives every prefix the union of its own rules and those of each prefix that covers it.
///
/// Prefixes sort by (network address, length), so a covering prefix always comes before the
/// prefixes it covers, and the ones covering the current prefix form a stack: one pass, no
/// per-prefix search of all shorter lengths.
fn inherit_covering<'a, N: Prefix + 'a>(
    own: impl Iterator<Item = (N, &'a [(N, PortRule)])>,
    to_ipnet: impl Fn(&N) -> IpNet,
) -> Result<BTreeMap<N, RuleSet>, TableError> {
    let mut out = Vec::new();
    let mut covering: Vec<(N, RuleSet)> = Vec::new();
    for (prefix, rules) in own {
        let rules = rules.iter().map(|(_, rule)| *rule);
        while covering
            .last()
            .is_some_and(|(open, _)| !open.contains_prefix(&prefix))
        {
            covering.pop();
        }
        let own = RuleSet::from_rules(rules);
        let effective = match covering.last() {
            Some((_, inherited)) => inherited.union(&own),
            None => own,
        };
        if effective.0.len() > MAX_RULES_PER_POLICY {
            return Err(TableError::TooManyRules {
                prefix: to_ipnet(&prefix),
                needed: effective.0.len(),
            });
        }
        covering.push((prefix, effective.clone()));
        out.push((prefix, effective));
    }
    // Sorted and distinct already: the map is built in bulk.
    Ok(out.into_iter().collect())
}

/// The runs of equal keys in a sorted slice of (key, value) pairs: each key once, with its
/// pairs.
fn runs<K: Copy + PartialEq, V>(sorted: &[(K, V)]) -> impl Iterator<Item = (K, &[(K, V)])> {
    sorted
        .chunk_by(|a, b| a.0 == b.0)
        .map(|run| (run[0].0, run))
}

fn longest_match_v4(
    table: &BTreeMap<Ipv4Net, RuleSet>,
    addr: Ipv4Addr,
) -> Option<(Ipv4Net, &RuleSet)> {
    (0..=32).rev().find_map(|len| {
        let net = Ipv4Net::new(addr, len).ok()?.trunc();
        table.get(&net).map(|rules| (net, rules))
    })
}

fn longest_match_v6(
    table: &BTreeMap<Ipv6Net, RuleSet>,
    addr: Ipv6Addr,
) -> Option<(Ipv6Net, &RuleSet)> {
    (0..=128).rev().find_map(|len| {
        let net = Ipv6Net::new(addr, len).ok()?.trunc();
        table.get(&net).map(|rules| (net, rules))
    })
}

#[cfg(test)]
#[path = "table_tests.rs"]
mod tests;
