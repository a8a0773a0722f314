//! `egress-filter diff OLD NEW`: what an update of the rules opens and closes, per service, so a
//! person can review it before it is applied. Each addition that opens something broad (see
//! [`crate::risk`]) is flagged, and so is a port added to a service that already reaches
//! something broad: the new port is opened there too. Services are matched by name (a renamed
//! service shows as one removed and one added); a change of description, citations or
//! `accept-risk` alone opens nothing and is not listed.
//!
//! Client groups change who gets a service as much as its hosts and ports change what it
//! reaches: each service lists the groups it applies to (`everyone` in rules without groups),
//! and each group that changed lists the source prefixes and interfaces it gained or lost. A
//! group added to a service that reaches something broad is flagged, as a port is.
//!
//! Example: `egress-filter diff rules-old/ rules/ --json`

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    risk::{self, Risk},
    rules::{Group, Rules, Service},
};

/// `diff`: compare two rule sets.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The rules before the update: a file or a directory of *.toml files.
    pub old: PathBuf,
    /// The rules after the update, likewise.
    pub new: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Loads both rule sets and renders what changed.
pub fn run(args: &Args) -> anyhow::Result<String> {
    let load = |path: &PathBuf, which: &str| {
        Rules::load(std::slice::from_ref(path))
            .with_context(|| format!("the {which} rules, {}", path.display()))
    };
    let diff = compare(&load(&args.old, "old")?, &load(&args.new, "new")?);
    Ok(if args.json {
        serde_json::to_string_pretty(&diff)? + "\n"
    } else {
        diff.to_text()
    })
}

/// Every service and client group that changed, in name order.
#[derive(Debug, Serialize)]
pub struct Diff {
    pub services: Vec<ServiceDiff>,
    /// The client groups whose clients changed (source prefixes, interfaces).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupDiff>,
    /// How many additions carry a risk flag.
    pub risky_additions: usize,
}

/// One service's additions and removals.
#[derive(Debug, Serialize)]
pub struct ServiceDiff {
    pub name: String,
    pub change: Change,
    /// The new service's `accept-risk`, shown beside its flags.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accept_risk: Option<String>,
    pub added: Vec<Item>,
    pub removed: Vec<Item>,
}

/// One client group's clients gained and lost.
#[derive(Debug, Serialize)]
pub struct GroupDiff {
    pub name: String,
    pub change: Change,
    pub added: Vec<Item>,
    pub removed: Vec<Item>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Added,
    Removed,
    Changed,
}

/// One host pattern, prefix or port spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Item {
    pub kind: Kind,
    pub value: String,
    /// Why this addition is broad; never set on removals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Host,
    Prefix,
    Port,
    /// A client group the service applies to.
    Group,
    /// A group's source prefix.
    Source,
    /// A group's interface name or pattern.
    Interface,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Host => "host",
            Kind::Prefix => "prefix",
            Kind::Port => "port",
            Kind::Group => "group",
            Kind::Source => "source",
            Kind::Interface => "interface",
        }
    }
}

/// What applies to every source in rules without groups.
const EVERYONE: &str = "everyone";

/// A service's or group's items, each with its risk.
type Items = BTreeMap<(Kind, String), Option<String>>;

/// The differences between two rule sets; services and groups are matched by name.
#[must_use]
pub fn compare(old: &Rules, new: &Rules) -> Diff {
    // Rules without groups on either side: every service applies to everyone, before and after.
    let with_groups = !old.groups.is_empty() || !new.groups.is_empty();
    let by_name = |rules: &Rules| -> BTreeMap<String, Items> {
        rules
            .services
            .iter()
            .map(|s| (s.name.clone(), openings(rules, s, with_groups)))
            .collect()
    };
    let accept_risk: BTreeMap<&str, &str> = new
        .services
        .iter()
        .filter_map(|s| Some((s.name.as_str(), s.accept_risk.as_deref()?)))
        .collect();
    let services = changes(&by_name(old), &by_name(new))
        .into_iter()
        .map(|(name, change, mut added, removed)| {
            if change == Change::Added {
                // A new service's broad destination is flagged once, on itself.
                for item in added.iter_mut().filter(|i| i.kind == Kind::Group) {
                    item.risk = None;
                }
            }
            ServiceDiff {
                accept_risk: accept_risk.get(name.as_str()).map(|&why| why.to_owned()),
                name,
                change,
                added,
                removed,
            }
        })
        .collect::<Vec<_>>();
    let clients = |rules: &Rules| -> BTreeMap<String, Items> {
        rules
            .groups
            .iter()
            .map(|g| (g.name.clone(), clients_of(g)))
            .collect()
    };
    let groups = changes(&clients(old), &clients(new))
        .into_iter()
        .map(|(name, change, added, removed)| GroupDiff {
            name,
            change,
            added,
            removed,
        })
        .collect();
    let risky_additions = services
        .iter()
        .flat_map(|s| &s.added)
        .filter(|item| item.risk.is_some())
        .count();
    Diff {
        services,
        groups,
        risky_additions,
    }
}

/// What was added to and removed from each name's items, for the names whose items differ.
fn changes(
    old: &BTreeMap<String, Items>,
    new: &BTreeMap<String, Items>,
) -> Vec<(String, Change, Vec<Item>, Vec<Item>)> {
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    let empty = Items::new();
    let mut found = Vec::new();
    for name in names {
        let (before, after) = (old.get(name), new.get(name));
        let change = match (before, after) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            _ => Change::Changed,
        };
        let (before, after) = (before.unwrap_or(&empty), after.unwrap_or(&empty));
        let added: Vec<Item> = after
            .iter()
            .filter(|(key, _)| !before.contains_key(*key))
            .map(|((kind, value), risk)| Item {
                kind: *kind,
                value: value.clone(),
                risk: risk.clone(),
            })
            .collect();
        let removed: Vec<Item> = before
            .keys()
            .filter(|key| !after.contains_key(*key))
            .map(|(kind, value)| Item {
                kind: *kind,
                value: value.clone(),
                risk: None,
            })
            .collect();
        if !added.is_empty() || !removed.is_empty() {
            found.push((name.clone(), change, added, removed));
        }
    }
    found
}

/// A group's source prefixes and interfaces.
fn clients_of(group: &Group) -> Items {
    group
        .sources
        .iter()
        .map(|net| ((Kind::Source, net.to_string()), None))
        .chain(
            group
                .interfaces
                .iter()
                .map(|i| ((Kind::Interface, i.clone()), None)),
        )
        .collect()
}

/// A service's hosts, prefixes and ports, and `with_groups` the groups it applies to, each with
/// its risk. A port or a group carries the risk of the broadest destination it opens, since
/// adding it opens that destination further (to more ports, or to more clients).
fn openings(rules: &Rules, service: &Service, with_groups: bool) -> Items {
    let text = |risk: Option<Risk>| risk.as_ref().map(ToString::to_string);
    let mut items = BTreeMap::new();
    for host in &service.hosts {
        items.insert((Kind::Host, host.to_string()), text(risk::of_host(host)));
    }
    for net in &service.cidrs {
        items.insert((Kind::Prefix, net.to_string()), text(risk::of_prefix(net)));
    }
    let broad_destination = service
        .hosts
        .iter()
        .filter_map(risk::of_host)
        .chain(service.cidrs.iter().filter_map(risk::of_prefix))
        .next();
    for ports in &service.ports {
        let risk = text(risk::of_ports(ports)).or_else(|| {
            broad_destination
                .as_ref()
                .map(|risk| format!("opened to a broad destination, {risk}"))
        });
        items.insert((Kind::Port, ports.to_string()), risk);
    }
    let wider = broad_destination
        .as_ref()
        .map(|risk| format!("given a broad destination, {risk}"));
    if !with_groups {
        return items;
    }
    if rules.groups.is_empty() {
        items.insert((Kind::Group, EVERYONE.to_owned()), wider);
    } else {
        for (id, name) in rules.every_group() {
            if service.group_mask & filter_common::groups::group_bit(id) != 0 {
                items.insert((Kind::Group, name), wider.clone());
            }
        }
    }
    items
}

impl Diff {
    /// One block per changed service, then a count.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for service in &self.services {
            let _ = writeln!(out, "{} service {}", sign(service.change), service.name);
            items_text(&mut out, &service.added, &service.removed);
            if let Some(why) = service
                .accept_risk
                .as_ref()
                .filter(|_| service.added.iter().any(|item| item.risk.is_some()))
            {
                let _ = writeln!(out, "    accepted: {why}");
            }
        }
        for group in &self.groups {
            let _ = writeln!(out, "{} group {}", sign(group.change), group.name);
            items_text(&mut out, &group.added, &group.removed);
        }
        let count = |change| self.services.iter().filter(|s| s.change == change).count();
        let _ = write!(
            out,
            "{} services added, {} removed, {} changed; ",
            count(Change::Added),
            count(Change::Removed),
            count(Change::Changed),
        );
        if !self.groups.is_empty() {
            let count = |change| self.groups.iter().filter(|g| g.change == change).count();
            let _ = write!(
                out,
                "{} groups added, {} removed, {} changed; ",
                count(Change::Added),
                count(Change::Removed),
                count(Change::Changed),
            );
        }
        let _ = writeln!(
            out,
            "{} risky addition{}",
            self.risky_additions,
            if self.risky_additions == 1 { "" } else { "s" }
        );
        out
    }
}

fn sign(change: Change) -> char {
    match change {
        Change::Added => '+',
        Change::Removed => '-',
        Change::Changed => '~',
    }
}

/// The indented `+`/`-` lines of one service or group.
fn items_text(out: &mut String, added: &[Item], removed: &[Item]) {
    for (mark, items) in [('+', added), ('-', removed)] {
        for item in items {
            let _ = write!(out, "    {mark} {} {}", item.kind.label(), item.value);
            if let Some(risk) = &item.risk {
                let _ = write!(out, "    RISK: {risk}");
            }
            out.push('\n');
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn rules(text: &str) -> Rules {
        Rules::parse_sources(&[(Path::new("r.toml"), text)]).unwrap()
    }

    const OLD: &str = r#"
[[service]]
name = "push"
hosts = ["*.push.example.com"]
cidrs = ["17.0.0.0/16"]
tcp = [443, 2197]

[[service]]
name = "gone"
hosts = ["old.example.com"]
tcp = [443]
"#;

    const NEW: &str = r#"
[[service]]
name = "push"
hosts = ["*.push.example.com", "*.googleapis.com"]
cidrs = ["17.0.0.0/8"]
tcp = [443, 5223]
accept-risk = "the vendor publishes nothing narrower"

[[service]]
name = "fresh"
cidrs = ["192.0.2.0/24"]
udp = ["1000-2000"]
"#;

    #[test]
    fn additions_and_removals_are_listed_per_service_with_risks() {
        let diff = compare(&rules(OLD), &rules(NEW));
        let names: Vec<(&str, Change)> = diff
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.change))
            .collect();
        assert_eq!(
            names,
            [
                ("fresh", Change::Added),
                ("gone", Change::Removed),
                ("push", Change::Changed)
            ]
        );
        let push = &diff.services[2];
        let added: Vec<(&str, bool)> = push
            .added
            .iter()
            .map(|i| (i.value.as_str(), i.risk.is_some()))
            .collect();
        assert_eq!(
            added,
            [
                ("*.googleapis.com", true),
                ("17.0.0.0/8", true),
                ("tcp/5223", true)
            ],
            "a port added beside a broad destination is flagged too"
        );
        let removed: Vec<&str> = push.removed.iter().map(|i| i.value.as_str()).collect();
        assert_eq!(removed, ["17.0.0.0/16", "tcp/2197"]);
        assert!(push.removed.iter().all(|i| i.risk.is_none()));
        assert_eq!(
            diff.services[0].added[1].risk.as_deref(),
            Some("udp/1000-2000: port range wider than 100 ports")
        );
        assert_eq!(diff.risky_additions, 4);
    }

    #[test]
    fn text_and_json_say_the_same() {
        let diff = compare(&rules(OLD), &rules(NEW));
        let text = diff.to_text();
        for line in [
            "~ service push",
            "    + prefix 17.0.0.0/8    RISK: 17.0.0.0/8: prefix IPv4 shorter than /16",
            "    - port tcp/2197",
            "    accepted: the vendor publishes nothing narrower",
            "- service gone",
            "1 services added, 1 removed, 1 changed; 4 risky additions",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        let json = serde_json::to_value(&diff).unwrap();
        assert_eq!(json["services"][2]["change"], "changed");
        assert_eq!(json["services"][2]["added"][1]["kind"], "prefix");
        assert_eq!(json["risky_additions"], 4);
        assert!(json["services"][1]["removed"][0].get("risk").is_none());
    }

    #[test]
    fn group_changes_show_who_gains_a_service_and_which_clients_a_group_gains() {
        let old_text = r#"
[[group]]
name = "laptops"
sources = ["10.1.0.0/16"]

[[group]]
name = "phones"
sources = ["10.2.0.0/16"]

[[service]]
name = "push"
cidrs = ["17.0.0.0/8"]
tcp = [5223]
groups = ["phones"]

[[service]]
name = "mdm"
cidrs = ["192.0.2.0/24"]
tcp = [443]
"#;
        let old = rules(old_text);
        let new = rules(
            &old_text
                .replace(
                    "sources = [\"10.2.0.0/16\"]",
                    "sources = [\"10.2.0.0/16\", \"10.3.0.0/16\"]\ninterfaces = [\"wlan*\"]",
                )
                .replace(
                    "groups = [\"phones\"]",
                    "groups = [\"phones\", \"laptops\"]",
                ),
        );
        let diff = compare(&old, &new);
        let text = diff.to_text();
        for line in [
            "~ service push\n    + group laptops    RISK: given a broad destination, 17.0.0.0/8",
            "~ group phones\n    + source 10.3.0.0/16\n    + interface wlan*\n",
            "0 services added, 0 removed, 1 changed; 0 groups added, 0 removed, 1 changed; 1 risky addition",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
        assert!(
            !text.contains("service mdm"),
            "mdm applies to every defined group before and after:\n{text}"
        );
        // Rules that start to define groups take the services from everyone to the groups.
        let before =
            rules("[[service]]\nname = \"mdm\"\ncidrs = [\"192.0.2.0/24\"]\ntcp = [443]\n");
        let diff = compare(&before, &new);
        let mdm = diff
            .services
            .iter()
            .find(|s| s.name == "mdm")
            .expect("mdm changed");
        let values = |items: &[Item]| -> Vec<String> {
            items
                .iter()
                .map(|i| format!("{:?} {}", i.kind, i.value))
                .collect()
        };
        assert_eq!(values(&mdm.added), ["Group laptops", "Group phones"]);
        assert_eq!(values(&mdm.removed), ["Group everyone"]);
        let json = serde_json::to_value(&diff).unwrap();
        assert_eq!(json["groups"][0]["change"], "added");
        assert_eq!(json["groups"][0]["added"][0]["kind"], "source");
    }

    #[test]
    fn identical_rules_have_no_differences() {
        let diff = compare(&rules(NEW), &rules(NEW));
        assert!(diff.services.is_empty());
        assert_eq!(
            diff.to_text(),
            "0 services added, 0 removed, 0 changed; 0 risky additions\n"
        );
    }
}
