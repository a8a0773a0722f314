//! `egress-filter explain DST [tcp/PORT | udp/PORT | icmp]`: why a packet to DST passes or is
//! dropped, and where every address that covers DST comes from.
//!
//! With a filter running at `--pin-path` the verdict is read from its maps (the policy the
//! programs find for DST now) and the origins from its state file (the addresses its hostnames
//! resolved to, what its DNS forwarder learned); without one, from the rules alone (`--resolve`
//! resolves their hostnames now).
//!
//! Example: `egress-filter explain 198.51.100.7 tcp/443 --rules rules/`

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use filter_common::{groups::DEFAULT_GROUP, Reason, RuleProto};
use ipnet::IpNet;
use serde::Serialize;

use super::show::{rule_reports, RuleReport};
use crate::{
    compile::Resolved,
    kernel_view::PinnedPolicy,
    pins::{PinDir, DEFAULT_PIN_PATH},
    protocols::PortSpec,
    resolve::Resolver,
    rules::{groups::group_of, HostPattern, Rules, Service},
    state::State,
    table::RuleSet,
};

/// `explain`: the verdict for a packet to DST, and what covers DST.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The destination address.
    pub destination: IpAddr,
    /// The packet: tcp/PORT, udp/PORT or icmp (an echo request). Without it, everything DST
    /// allows is listed.
    pub packet: Option<PortSpec>,
    /// A rules file, or a directory whose *.toml files are loaded. Repeatable.
    #[arg(long = "rules", required = true, value_name = "PATH")]
    pub rules: Vec<PathBuf>,
    /// Where a running filter is pinned; its maps and state answer when it is there.
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
    pub pin_path: PathBuf,
    /// With no filter running: resolve the rules' hostnames now.
    #[arg(long)]
    pub resolve: bool,
    /// The DNS server to ask, instead of the system's (/etc/resolv.conf).
    #[arg(long, value_name = "IP:PORT", requires = "resolve")]
    pub resolver: Option<SocketAddr>,
    /// The client's address: the packet is judged for the client group it is in. Without it,
    /// rules that define groups are judged for every group.
    #[arg(long, value_name = "ADDRESS")]
    pub from: Option<IpAddr>,
    /// The interface the client's packets arrive on: a group that names it decides before
    /// `--from` does, as in the kernel.
    #[arg(long, value_name = "IFACE")]
    pub via: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The answer, also its JSON form.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub destination: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packet: Option<String>,
    /// `pass` or `drop`, for the packet; absent without one (then only `reason` no-service
    /// or `covered` is known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'static str>,
    /// A reason label, or `covered` (a policy covers DST; the verdict depends on the packet).
    pub reason: &'static str,
    /// The service whose rule allows the packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_by: Option<String>,
    /// The client group judged (`--via`'s, else `--from`'s, else `default`), when the rules
    /// define groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Without `--from` and `--via`, when the rules define groups: the answer for each group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub by_group: Vec<GroupVerdict>,
    /// Where the answer comes from: `running filter at DIR` or `rules`.
    pub answered_from: String,
    /// What the policy covering DST allows, every service's rules merged (from the kernel when a
    /// filter runs).
    pub policy: Vec<RuleReport>,
    /// Every grant covering DST, with its origin.
    pub covered_by: Vec<Covering>,
    /// Connections to DST in the running filter's flow tables (for the packet's protocol and
    /// port, when one is given): those marked `kept` pass as `established-flow` while the
    /// policy drops new ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<FlowReport>,
    /// Caveats: a link-scoped destination, rules on disk that differ from the running policy.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The answer for the clients of one group.
#[derive(Debug, Serialize)]
pub struct GroupVerdict {
    pub group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verdict: Option<&'static str>,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed_by: Option<String>,
}

/// A connection to DST the running filter recorded.
#[derive(Debug, Serialize)]
pub struct FlowReport {
    pub proto: &'static str,
    pub source: SocketAddr,
    pub dport: u16,
    pub service: String,
    /// `kept` (its packets passed after DST expired), `expired` (DST is marked as expired, no
    /// packet since) or `recorded` (DST has not expired).
    pub state: &'static str,
    pub age_secs: u64,
    /// Since its last packet after DST expired, or since DST expired, whichever is later.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_secs: Option<u64>,
}

/// One service's grant covering DST.
#[derive(Debug, Serialize)]
pub struct Covering {
    pub prefix: IpNet,
    pub service: String,
    pub ports: Vec<String>,
    pub origin: Origin,
}

/// Where a grant's address comes from.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Origin {
    /// A CIDR in a rules file, at this line.
    Cidr { file: PathBuf, line: Option<usize> },
    /// An exact hostname of the rules, resolved.
    Host {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
    },
    /// A DNS answer the forwarder learned from.
    Learned {
        name: String,
        question: String,
        expires_in_secs: u64,
    },
}

/// Builds the explanation, from the running filter when one is pinned at `--pin-path`.
pub async fn run(args: &Args) -> anyhow::Result<Explanation> {
    let mut rules = Rules::load(&args.rules)?;
    let pins = PinDir::new(&args.pin_path);
    let running = pins.has_pinned_maps();
    let mut covered_by = Vec::new();
    let mut notes = Vec::new();
    let (policy, names, answered_from) = if running {
        running_view(&mut rules, &pins, args.destination, &mut covered_by)?
    } else {
        let answers = if args.resolve {
            Resolver::new(args.resolver)?
                .resolve_all(&rules.exact_hosts())
                .await
        } else {
            notes.push(
                "no filter runs at the pin path and --resolve was not given: hostnames are \
                 not resolved"
                    .into(),
            );
            crate::resolve::Lookups::default()
        };
        let hosts: Resolved = answers
            .iter()
            .filter_map(|(n, a)| Some((n.clone(), a.as_ref().ok()?.addresses.clone())))
            .collect();
        let ttl = |name: &str| Some(answers.get(name)?.as_ref().ok()?.ttl.as_secs());
        covered_by.extend(host_grants(&rules, &hosts, args.destination, &ttl));
        let table = crate::compile::compile(&rules, &hosts)?;
        let names = rules.services.iter().map(|s| s.name.clone()).collect();
        let set = table.lookup(args.destination).map(|(_, set)| set.clone());
        (
            set,
            names,
            "the rules (no filter runs at the pin path)".to_owned(),
        )
    };
    covered_by.splice(0..0, cidr_grants(&rules, args.destination));
    let judge_for = |group: u32| {
        judge(
            args.destination,
            args.packet.as_ref(),
            policy.as_ref(),
            &names,
            group,
        )
    };
    let by_interface = args.via.as_deref().and_then(|name| {
        crate::rules::interface_groups(&rules.groups, [(0, name)])
            .0
            .get(&0)
            .copied()
    });
    let group = by_interface.unwrap_or_else(|| {
        args.from
            .map_or(DEFAULT_GROUP, |source| group_of(&rules.groups, source))
    });
    let (verdict, reason, allowed_by) = judge_for(group);
    let by_group = if args.from.is_some() || args.via.is_some() {
        Vec::new()
    } else {
        group_answers(&rules, judge_for)
    };
    if reason == Reason::LinkScoped.label() {
        notes.push(
            "a link-scoped destination passes without a policy lookup (it cannot leave the \
             link); tunnel protocols to it are judged by policy"
                .into(),
        );
    }
    let flows = if running {
        flow_reports(&pins, args.destination, args.packet.as_ref(), &names).unwrap_or_default()
    } else {
        Vec::new()
    };
    if verdict == Some("drop") && flows.iter().any(|f| f.state != "recorded") {
        notes.push(format!(
            "new connections are dropped; the connections listed, started while {} was \
             allowed, pass as {} within --established-idle and --established-max",
            args.destination,
            Reason::EstablishedFlow.label()
        ));
    }
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    Ok(Explanation {
        destination: args.destination,
        packet: args.packet.as_ref().map(ToString::to_string),
        verdict,
        reason,
        allowed_by,
        group: (!rules.groups.is_empty()).then(|| rules.group_name(group)),
        by_group,
        answered_from,
        policy: policy.map_or_else(Vec::new, |set| rule_reports(&set, &name_refs)),
        covered_by,
        flows,
        notes,
    })
}

/// What the filter running at `pins` says about `destination`: its policy there, the service
/// names, where the answer comes from; the grants covering it go to `covered_by`.
fn running_view(
    rules: &mut Rules,
    pins: &PinDir,
    destination: IpAddr,
    covered_by: &mut Vec<Covering>,
) -> anyhow::Result<(Option<RuleSet>, Vec<String>, String)> {
    let state = State::load(&pins.state_file())?;
    if let Some(state) = &state {
        // The kernel's policies number the groups as the daemon did.
        rules.keep_group_ids(&state.groups);
    }
    let kernel = PinnedPolicy::open(pins)?.lookup(destination)?;
    let names = state.as_ref().map_or_else(Vec::new, |s| s.services.clone());
    let hosts = state
        .as_ref()
        .map_or_else(Resolved::new, |s| s.hosts.clone());
    covered_by.extend(host_grants(rules, &hosts, destination, &|_| None));
    for learned in super::learned::read(pins).unwrap_or_default() {
        if learned.address == destination {
            covered_by.push(Covering {
                prefix: IpNet::from(learned.address),
                service: learned.service.clone(),
                ports: service_ports(rules, &learned.service),
                origin: Origin::Learned {
                    name: learned.name,
                    question: learned.question,
                    expires_in_secs: learned.expires_in_secs,
                },
            });
        }
    }
    let from = format!("the filter running at {}", pins.root().display());
    Ok((kernel.map(|(_, set)| set), names, from))
}

/// The answer for each client group, when the rules define groups.
fn group_answers(
    rules: &Rules,
    judge_for: impl Fn(u32) -> (Option<&'static str>, &'static str, Option<String>),
) -> Vec<GroupVerdict> {
    if rules.groups.is_empty() {
        return Vec::new();
    }
    rules
        .every_group()
        .into_iter()
        .map(|(id, name)| {
            let (verdict, reason, allowed_by) = judge_for(id);
            GroupVerdict {
                group: name,
                verdict,
                reason,
                allowed_by,
            }
        })
        .collect()
}

/// The connections to `destination` in the flow tables of the filter pinned at `pins`.
fn flow_reports(
    pins: &PinDir,
    destination: IpAddr,
    packet: Option<&PortSpec>,
    names: &[String],
) -> anyhow::Result<Vec<FlowReport>> {
    use crate::maps::{
        flows::{flow_addresses, monotonic_ns},
        FlowMaps,
    };
    let maps = FlowMaps::pinned(pins)?;
    let now = monotonic_ns();
    let expired_at = maps.expired_at(destination);
    let secs = |since: u64| now.saturating_sub(since) / 1_000_000_000;
    let mut reports: Vec<FlowReport> = maps
        .flows()
        .into_iter()
        .filter_map(|(key, state)| {
            let (source, dst) = flow_addresses(&key);
            let proto = RuleProto::from_ip_proto(key.proto)?;
            let wanted = match packet {
                None => true,
                Some(PortSpec::Tcp(ports)) => proto == RuleProto::Tcp && ports.contains(&key.dport),
                Some(PortSpec::Udp(ports)) => proto == RuleProto::Udp && ports.contains(&key.dport),
                Some(PortSpec::Icmp) => false,
            };
            (dst == destination && wanted).then(|| FlowReport {
                proto: if proto == RuleProto::Tcp {
                    "tcp"
                } else {
                    "udp"
                },
                source: SocketAddr::new(source, key.sport),
                dport: key.dport,
                service: names
                    .get(usize::from(state.service_id))
                    .cloned()
                    .unwrap_or_else(|| format!("#{}", state.service_id)),
                state: match (state.kept, expired_at) {
                    (0, None) => "recorded",
                    (0, Some(_)) => "expired",
                    _ => "kept",
                },
                age_secs: secs(state.started_ns),
                idle_secs: expired_at.map(|at| secs(at.max(state.last_seen_ns))),
            })
        })
        .collect();
    reports.sort_by_key(|f| (f.proto, f.source, f.dport));
    Ok(reports)
}

/// The verdict for a client in `group`, its reason label, and the allowing service.
fn judge(
    destination: IpAddr,
    packet: Option<&PortSpec>,
    policy: Option<&RuleSet>,
    names: &[String],
    group: u32,
) -> (Option<&'static str>, &'static str, Option<String>) {
    let verdict_of = |reason: Reason| Some(if reason.passes() { "pass" } else { "drop" });
    if link_scoped(destination) {
        return (
            verdict_of(Reason::LinkScoped),
            Reason::LinkScoped.label(),
            None,
        );
    }
    // Rules of other groups are not there for this client (as in the kernel).
    let Some(policy) = policy.filter(|p| p.for_group(group).next().is_some()) else {
        return (
            verdict_of(Reason::NoService),
            Reason::NoService.label(),
            None,
        );
    };
    let Some(packet) = packet else {
        return (None, "covered", None);
    };
    let (proto, port) = match packet {
        PortSpec::Tcp(ports) => (RuleProto::Tcp, *ports.start()),
        PortSpec::Udp(ports) => (RuleProto::Udp, *ports.start()),
        PortSpec::Icmp => (RuleProto::Icmp, 0),
    };
    if let Some(rule) = policy.find_for(group, proto, port) {
        let service = names
            .get(usize::from(rule.service_id))
            .cloned()
            .unwrap_or_else(|| format!("#{}", rule.service_id));
        return (
            verdict_of(Reason::Allowed),
            Reason::Allowed.label(),
            Some(service),
        );
    }
    let reason = if policy.for_group(group).any(|r| r.proto == proto as u8) {
        Reason::PortNotAllowed
    } else {
        Reason::ProtocolNotAllowed
    };
    (verdict_of(reason), reason.label(), None)
}

/// Destinations the programs pass as link-scoped (see the reason's docs).
fn link_scoped(destination: IpAddr) -> bool {
    match destination {
        IpAddr::V4(a) => a.is_broadcast() || a.octets()[..3] == [224, 0, 0],
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            first & 0xffc0 == 0xfe80 || first & 0xff0f == 0xff02
        }
    }
}

/// The rules' CIDRs that cover `destination`.
fn cidr_grants(rules: &Rules, destination: IpAddr) -> Vec<Covering> {
    rules
        .services
        .iter()
        .flat_map(|service| {
            service
                .cidrs
                .iter()
                .filter(move |cidr| cidr.contains(&destination))
                .map(move |cidr| Covering {
                    prefix: *cidr,
                    service: service.name.clone(),
                    ports: ports_text(service),
                    origin: Origin::Cidr {
                        file: service.file.clone(),
                        line: cidr_line(&service.file, &service.name, *cidr),
                    },
                })
        })
        .collect()
}

/// The rules' hostnames whose addresses include `destination`.
fn host_grants(
    rules: &Rules,
    hosts: &Resolved,
    destination: IpAddr,
    ttl: &dyn Fn(&str) -> Option<u64>,
) -> Vec<Covering> {
    let mut out = Vec::new();
    for service in &rules.services {
        for host in &service.hosts {
            let HostPattern::Exact(name) = host else {
                continue;
            };
            if hosts.get(name).is_some_and(|a| a.contains(&destination)) {
                out.push(Covering {
                    prefix: IpNet::from(destination),
                    service: service.name.clone(),
                    ports: ports_text(service),
                    origin: Origin::Host {
                        name: name.clone(),
                        ttl_secs: ttl(name),
                    },
                });
            }
        }
    }
    out
}

fn ports_text(service: &Service) -> Vec<String> {
    service.ports.iter().map(ToString::to_string).collect()
}

fn service_ports(rules: &Rules, name: &str) -> Vec<String> {
    rules
        .services
        .iter()
        .find(|s| s.name == name)
        .map_or_else(Vec::new, ports_text)
}

/// The line of `cidr` in the service `service`'s table of `file`: the first line at or after
/// the service's `name = "…"` that holds the CIDR's text. `None` when the file cannot be read
/// or spells it differently.
fn cidr_line(file: &Path, service: &str, cidr: IpNet) -> Option<usize> {
    let text = std::fs::read_to_string(file).ok()?;
    let name = format!("\"{service}\"");
    let wanted = cidr.to_string();
    let mut lines = text.lines().enumerate();
    lines.find(|(_, line)| line.trim_start().starts_with("name") && line.contains(&name))?;
    lines
        .find(|(_, line)| line.contains(&format!("\"{wanted}\"")))
        .map(|(index, _)| index + 1)
}

impl Explanation {
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let packet = self
            .packet
            .as_ref()
            .map_or_else(String::new, |p| format!(" {p}"));
        let verdict = self.verdict.map_or_else(String::new, |v| format!("{v}, "));
        let by = self
            .allowed_by
            .as_ref()
            .map_or_else(String::new, |s| format!(" by {s}"));
        let group = self
            .group
            .as_ref()
            .map_or_else(String::new, |g| format!(" (group {g})"));
        let _ = writeln!(
            out,
            "{}{packet}: {verdict}{}{by}{group}",
            self.destination, self.reason
        );
        if !self.by_group.is_empty() {
            let _ = writeln!(out, "for each client group (--from picks one):");
            for answer in &self.by_group {
                let verdict = answer
                    .verdict
                    .map_or_else(String::new, |v| format!("{v}, "));
                let by = answer
                    .allowed_by
                    .as_ref()
                    .map_or_else(String::new, |s| format!(" by {s}"));
                let _ = writeln!(out, "  {}: {verdict}{}{by}", answer.group, answer.reason);
            }
        }
        let _ = writeln!(out, "answered from {}", self.answered_from);
        if self.policy.is_empty() {
            let _ = writeln!(out, "no policy covers {}", self.destination);
        } else {
            let _ = writeln!(out, "the policy for {} allows:", self.destination);
            for rule in &self.policy {
                let ports = rule
                    .ports
                    .as_deref()
                    .map_or(String::new(), |p| format!("/{p}"));
                let _ = writeln!(out, "  {}{ports}  {}", rule.proto, rule.service);
            }
        }
        if !self.covered_by.is_empty() {
            let _ = writeln!(out, "covered by:");
            for grant in &self.covered_by {
                let origin = match &grant.origin {
                    Origin::Cidr { file, line } => match line {
                        Some(line) => format!("{}:{line}", file.display()),
                        None => file.display().to_string(),
                    },
                    Origin::Host { name, ttl_secs } => match ttl_secs {
                        Some(ttl) => format!("host {name} (TTL {ttl} s)"),
                        None => format!("host {name} (resolved by the running filter)"),
                    },
                    Origin::Learned {
                        name,
                        question,
                        expires_in_secs,
                    } => format!(
                        "learned from DNS: {name} (asked {question}), expires in {expires_in_secs} s"
                    ),
                };
                let _ = writeln!(
                    out,
                    "  {}  {}  {}  {origin}",
                    grant.prefix,
                    grant.service,
                    grant.ports.join(",")
                );
            }
        }
        if !self.flows.is_empty() {
            let _ = writeln!(out, "connections to {}:", self.destination);
            for flow in &self.flows {
                let idle = flow
                    .idle_secs
                    .map_or_else(String::new, |idle| format!(", idle {idle} s"));
                let _ = writeln!(
                    out,
                    "  {} {} -> :{}  {}  {}, started {} s ago{idle}",
                    flow.proto, flow.source, flow.dport, flow.service, flow.state, flow.age_secs
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "note: {note}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::parse_sources(&[(
            Path::new("t.toml"),
            "[[service]]\nname = \"web\"\ncidrs = [\"198.51.100.0/24\"]\ntcp = [443]\n\
             [[service]]\nname = \"ntp\"\ncidrs = [\"198.51.100.0/28\"]\nudp = [123]\n",
        )])
        .expect("valid rules")
    }

    fn verdict(destination: &str, packet: Option<&str>) -> (Option<&'static str>, &'static str) {
        let rules = rules();
        let table = crate::compile::compile(&rules, &Resolved::new()).expect("compiles");
        let destination: IpAddr = destination.parse().expect("address");
        let policy = table.lookup(destination).map(|(_, set)| set.clone());
        let packet: Option<PortSpec> = packet.map(|p| p.parse().expect("packet"));
        let names: Vec<String> = rules.services.iter().map(|s| s.name.clone()).collect();
        let (verdict, reason, _) = judge(
            destination,
            packet.as_ref(),
            policy.as_ref(),
            &names,
            DEFAULT_GROUP,
        );
        (verdict, reason)
    }

    #[test]
    fn each_reason_the_table_can_give() {
        assert_eq!(
            verdict("198.51.100.7", Some("tcp/443")),
            (Some("pass"), "allowed")
        );
        assert_eq!(
            verdict("198.51.100.7", Some("tcp/80")),
            (Some("drop"), "port-not-allowed")
        );
        assert_eq!(
            verdict("198.51.100.7", Some("udp/123")),
            (Some("pass"), "allowed")
        );
        assert_eq!(
            verdict("198.51.100.200", Some("udp/123")),
            (Some("drop"), "protocol-not-allowed")
        );
        assert_eq!(
            verdict("198.51.100.7", Some("icmp")),
            (Some("drop"), "protocol-not-allowed")
        );
        assert_eq!(
            verdict("203.0.113.1", Some("tcp/443")),
            (Some("drop"), "no-service")
        );
        assert_eq!(verdict("198.51.100.7", None), (None, "covered"));
        assert_eq!(
            verdict("ff02::1", Some("udp/5353")),
            (Some("pass"), "link-scoped")
        );
        assert_eq!(verdict("224.0.0.251", None), (Some("pass"), "link-scoped"));
    }

    #[test]
    fn with_groups_each_group_gets_its_own_answer() {
        let rules = Rules::parse_sources(&[(
            Path::new("g.toml"),
            "[[group]]\nname = \"laptops\"\nsources = [\"10.1.0.0/16\"]\n\
             [[group]]\nname = \"phones\"\nsources = [\"10.2.0.0/16\"]\n\
             [[service]]\nname = \"push\"\ncidrs = [\"17.0.0.0/8\"]\ntcp = [5223]\ngroups = [\"phones\"]\n\
             [[service]]\nname = \"mdm\"\ncidrs = [\"17.0.0.0/8\"]\ntcp = [443]\n",
        )])
        .expect("valid rules");
        let table = crate::compile::compile(&rules, &Resolved::new()).expect("compiles");
        let destination: IpAddr = "17.1.2.3".parse().expect("address");
        let policy = table.lookup(destination).map(|(_, set)| set.clone());
        let names: Vec<String> = rules.services.iter().map(|s| s.name.clone()).collect();
        let packet: PortSpec = "tcp/5223".parse().expect("packet");
        let answers = group_answers(&rules, |group| {
            judge(destination, Some(&packet), policy.as_ref(), &names, group)
        });
        let summary: Vec<(&str, &str, Option<&str>)> = answers
            .iter()
            .map(|a| (a.group.as_str(), a.reason, a.allowed_by.as_deref()))
            .collect();
        assert_eq!(
            summary,
            [
                ("default", "no-service", None),
                ("laptops", "port-not-allowed", None),
                ("phones", "allowed", Some("push")),
            ]
        );
        let phones = group_of(&rules.groups, "10.2.0.9".parse().expect("address"));
        assert_eq!(rules.group_name(phones), "phones");
        assert_eq!(
            group_of(&rules.groups, "10.3.0.9".parse().expect("address")),
            DEFAULT_GROUP
        );
    }

    #[test]
    fn every_covering_cidr_is_listed_with_its_service() {
        let covering = cidr_grants(&rules(), "198.51.100.7".parse().expect("address"));
        let services: Vec<&str> = covering.iter().map(|c| c.service.as_str()).collect();
        assert_eq!(services, ["web", "ntp"]);
    }
}
