//! `egress-filter show`: the compiled allow table, for a person or a program.

use std::{collections::BTreeMap, fmt::Write as _, net::SocketAddr, path::PathBuf};

use filter_common::RuleProto;
use ipnet::IpNet;
use serde::Serialize;

use crate::{
    compile::{compile, Resolved},
    dns::LearnedView,
    resolve::{Lookups, Resolver},
    rules::{HostPattern, Rules},
    table::{AllowTable, RuleSet},
};

/// What `show` reports, also its JSON form.
#[derive(Serialize)]
pub struct Report {
    /// Every table entry, IPv4 first, in address order.
    pub prefixes: Vec<PrefixReport>,
    /// Exact hostnames, with what they resolved to (when asked to resolve).
    pub hosts: Vec<HostReport>,
    /// Wildcard names: served by vendor CIDRs and DNS awareness, never by polling.
    pub wildcards: Vec<WildcardReport>,
    /// What a running daemon's DNS forwarder learned (with `--resolve`, when one runs).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub learned: Vec<LearnedView>,
    /// The client groups, `default` first, with the services each gets; absent when the rules
    /// define none (every source gets every service).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupReport>,
}

/// One client group and its policy.
#[derive(Serialize)]
pub struct GroupReport {
    pub group: String,
    /// Its source prefixes; empty for `default` (every source no group covers).
    pub sources: Vec<IpNet>,
    /// The interfaces (names or patterns) whose arriving packets are its, whatever their
    /// source.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// The services its clients may reach.
    pub services: Vec<String>,
}

#[derive(Serialize)]
pub struct PrefixReport {
    pub prefix: IpNet,
    pub rules: Vec<RuleReport>,
}

#[derive(Debug, Serialize)]
pub struct RuleReport {
    pub service: String,
    pub proto: &'static str,
    /// "443", "5228-5230", or "any"; absent for ICMP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
}

#[derive(Serialize)]
pub struct HostReport {
    pub host: String,
    pub services: Vec<String>,
    pub addresses: Vec<std::net::IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize)]
pub struct WildcardReport {
    pub pattern: String,
    pub services: Vec<String>,
}

/// Loads the rules, resolves their hostnames if asked, and builds the report.
pub async fn run(
    paths: &[PathBuf],
    resolve: bool,
    resolver: Option<SocketAddr>,
) -> anyhow::Result<Report> {
    let rules = Rules::load(paths)?;
    let answers = if resolve {
        let resolver = Resolver::new(resolver)?;
        resolver.resolve_all(&rules.exact_hosts()).await
    } else {
        BTreeMap::new()
    };
    let addresses_by_host: Resolved = answers
        .iter()
        .filter_map(|(name, answer)| Some((name.clone(), answer.as_ref().ok()?.addresses.clone())))
        .collect();
    let table = compile(&rules, &addresses_by_host)?;
    Ok(report(&rules, &table, resolve.then_some(&answers)))
}

fn report(rules: &Rules, table: &AllowTable, answers: Option<&Lookups>) -> Report {
    let names: Vec<&str> = rules.services.iter().map(|s| s.name.as_str()).collect();
    let prefixes = table
        .v4
        .iter()
        .map(|(n, r)| (IpNet::V4(*n), r))
        .chain(table.v6.iter().map(|(n, r)| (IpNet::V6(*n), r)))
        .map(|(prefix, rules)| PrefixReport {
            prefix,
            rules: rule_reports(rules, &names),
        })
        .collect();
    let mut exact: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut wildcards: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for service in &rules.services {
        for host in &service.hosts {
            match host {
                HostPattern::Exact(name) => {
                    exact.entry(name).or_default().push(service.name.clone());
                }
                HostPattern::Wildcard(_) => {
                    wildcards
                        .entry(host.to_string())
                        .or_default()
                        .push(service.name.clone());
                }
            }
        }
    }
    let hosts = exact
        .into_iter()
        .map(|(host, services)| {
            let answer = answers.and_then(|a| a.get(host));
            HostReport {
                host: host.to_owned(),
                services,
                addresses: answer
                    .and_then(|a| a.as_ref().ok())
                    .map(|a| a.addresses.clone())
                    .unwrap_or_default(),
                ttl_secs: answer
                    .and_then(|a| a.as_ref().ok())
                    .map(|a| a.ttl.as_secs()),
                error: answer
                    .and_then(|a| a.as_ref().err())
                    .map(ToString::to_string),
            }
        })
        .collect();
    let wildcards = wildcards
        .into_iter()
        .map(|(pattern, services)| WildcardReport { pattern, services })
        .collect();
    Report {
        prefixes,
        hosts,
        wildcards,
        learned: Vec::new(),
        groups: group_reports(rules),
    }
}

/// Each client group with its sources and services, when the rules define groups.
fn group_reports(rules: &Rules) -> Vec<GroupReport> {
    if rules.groups.is_empty() {
        return Vec::new();
    }
    rules
        .every_group()
        .into_iter()
        .map(|(id, name)| {
            let defined = rules.groups.iter().find(|g| g.id == id);
            GroupReport {
                sources: defined.map(|g| g.sources.clone()).unwrap_or_default(),
                interfaces: defined.map(|g| g.interfaces.clone()).unwrap_or_default(),
                services: rules
                    .services
                    .iter()
                    .filter(|s| s.group_mask & filter_common::groups::group_bit(id) != 0)
                    .map(|s| s.name.clone())
                    .collect(),
                group: name,
            }
        })
        .collect()
}

pub(crate) fn rule_reports(rules: &RuleSet, names: &[&str]) -> Vec<RuleReport> {
    rules
        .rules()
        .iter()
        .map(|rule| {
            let service = names
                .get(usize::from(rule.service_id))
                .map_or_else(|| format!("#{}", rule.service_id), |n| (*n).to_owned());
            let (proto, ports) = match RuleProto::from_ip_proto(rule.proto) {
                Some(RuleProto::Icmp) => ("icmp", None),
                Some(RuleProto::Udp) => ("udp", Some(port_text(rule.port_lo, rule.port_hi))),
                _ => ("tcp", Some(port_text(rule.port_lo, rule.port_hi))),
            };
            RuleReport {
                service,
                proto,
                ports,
            }
        })
        .collect()
}

fn port_text(lo: u16, hi: u16) -> String {
    match (lo, hi) {
        (0, u16::MAX) => "any".into(),
        (lo, hi) if lo == hi => lo.to_string(),
        (lo, hi) => format!("{lo}-{hi}"),
    }
}

impl Report {
    /// The client groups, each with its sources and services.
    fn groups_text(&self, out: &mut String) {
        if !self.groups.is_empty() {
            let _ = writeln!(out, "\n{} client groups:", self.groups.len());
            for group in &self.groups {
                let sources = if group.sources.is_empty() && group.interfaces.is_empty() {
                    "(every source no other group covers)".to_owned()
                } else {
                    // Interfaces first: they decide before the source address does.
                    group
                        .interfaces
                        .iter()
                        .map(|i| format!("via {i}"))
                        .chain(group.sources.iter().map(ToString::to_string))
                        .collect::<Vec<_>>()
                        .join(" ")
                };
                let services = if group.services.is_empty() {
                    "nothing".to_owned()
                } else {
                    group.services.join(", ")
                };
                let _ = writeln!(out, "  {}  {sources}  [{services}]", group.group);
            }
        }
    }

    /// The table as aligned text.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let width = self
            .prefixes
            .iter()
            .map(|p| p.prefix.to_string().len())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(out, "{:width$}  ALLOWED", "PREFIX");
        for entry in &self.prefixes {
            // One group per service: "apple-push tcp/443,5223 udp/any".
            let mut by_service: Vec<(&str, Vec<String>)> = Vec::new();
            for rule in &entry.rules {
                let item = match &rule.ports {
                    Some(ports) => format!("{}/{ports}", rule.proto),
                    None => rule.proto.to_owned(),
                };
                match by_service.iter_mut().find(|(s, _)| *s == rule.service) {
                    Some((_, items)) => items.push(item),
                    None => by_service.push((&rule.service, vec![item])),
                }
            }
            by_service.sort_by(|a, b| a.0.cmp(b.0));
            let allowed: Vec<String> = by_service
                .iter()
                .map(|(s, items)| format!("{s} {}", items.join(" ")))
                .collect();
            let _ = writeln!(
                out,
                "{:width$}  {}",
                entry.prefix.to_string(),
                allowed.join(" | ")
            );
        }
        let resolved = self
            .hosts
            .iter()
            .filter(|h| !h.addresses.is_empty())
            .count();
        let _ = writeln!(
            out,
            "\n{} hostnames ({resolved} resolved):",
            self.hosts.len()
        );
        for host in &self.hosts {
            let state = match (&host.error, host.addresses.is_empty(), host.ttl_secs) {
                (Some(error), _, _) => format!("unresolved: {error}"),
                (None, false, ttl) => format!(
                    "{} (ttl {}s)",
                    host.addresses
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" "),
                    ttl.unwrap_or(0)
                ),
                (None, true, _) => "not resolved (use --resolve)".into(),
            };
            let _ = writeln!(
                out,
                "  {}  [{}]  {state}",
                host.host,
                host.services.join(", ")
            );
        }
        let _ = writeln!(
            out,
            "\n{} wildcard names (served by vendor CIDRs and DNS awareness, not by polling):",
            self.wildcards.len()
        );
        for wildcard in &self.wildcards {
            let _ = writeln!(
                out,
                "  {}  [{}]",
                wildcard.pattern,
                wildcard.services.join(", ")
            );
        }
        self.groups_text(&mut out);
        if !self.learned.is_empty() {
            out.push('\n');
            out.push_str(&super::learned::to_text(&self.learned));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn sample() -> Report {
        let rules = Rules::parse_sources(&[(
            Path::new("t.toml"),
            "[[service]]\nname = \"apns\"\nhosts = [\"*.push.apple.com\", \"a.example.com\"]\ncidrs = [\"17.0.0.0/8\"]\ntcp = [5223]\n\
             [[service]]\nname = \"web\"\ncidrs = [\"17.1.2.3\"]\ntcp = [443, \"8000-8080\"]\nudp = [\"any\"]\nicmp = true\n",
        )])
        .unwrap();
        let table = compile(&rules, &Resolved::default()).unwrap();
        report(&rules, &table, None)
    }

    #[test]
    fn text_groups_rules_by_service_per_prefix() {
        let text = sample().to_text();
        assert!(
            text.contains("17.1.2.3/32  apns tcp/5223 | web icmp tcp/443 tcp/8000-8080 udp/any"),
            "{text}"
        );
        assert!(
            text.contains("a.example.com  [apns]  not resolved (use --resolve)"),
            "{text}"
        );
        assert!(text.contains("*.push.apple.com  [apns]"), "{text}");
    }

    #[test]
    fn json_is_machine_readable() {
        let json = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["prefixes"][1]["prefix"], "17.1.2.3/32");
        assert_eq!(
            json["prefixes"][1]["rules"][0],
            serde_json::json!({"service": "web", "proto": "icmp"})
        );
        assert_eq!(
            json["prefixes"][1]["rules"][1],
            serde_json::json!({"service": "apns", "proto": "tcp", "ports": "5223"})
        );
        assert_eq!(json["wildcards"][0]["pattern"], "*.push.apple.com");
    }
}
