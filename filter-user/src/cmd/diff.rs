//! `egress-filter diff OLD NEW`: what an update of the rules opens and closes, per service, so a
//! person can review it before it is applied. Each addition that opens something broad (see
//! [`crate::risk`]) is flagged, and so is a port added to a service that already reaches
//! something broad: the new port is opened there too. Services are matched by name (a renamed
//! service shows as one removed and one added); a change of description, citations or
//! `accept-risk` alone opens nothing and is not listed.
//!
//! Example: `egress-filter diff rules-old/ rules/ --json`

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use anyhow::Context as _;
use serde::Serialize;

use crate::{
    risk::{self, Risk},
    rules::{Rules, Service},
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

/// Every service that changed, in name order.
#[derive(Debug, Serialize)]
pub struct Diff {
    pub services: Vec<ServiceDiff>,
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
}

/// The differences between two rule sets; services are matched by name.
#[must_use]
pub fn compare(old: &Rules, new: &Rules) -> Diff {
    let by_name = |rules: &Rules| -> BTreeMap<String, Service> {
        rules
            .services
            .iter()
            .map(|s| (s.name.clone(), s.clone()))
            .collect()
    };
    let (old, new) = (by_name(old), by_name(new));
    let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
    names.sort();
    names.dedup();
    let mut services = Vec::new();
    for name in names {
        let (before, after) = (old.get(name), new.get(name));
        let change = match (before, after) {
            (None, _) => Change::Added,
            (_, None) => Change::Removed,
            _ => Change::Changed,
        };
        let before_items = before.map(openings).unwrap_or_default();
        let after_items = after.map(openings).unwrap_or_default();
        let added: Vec<Item> = after_items
            .iter()
            .filter(|(key, _)| !before_items.contains_key(*key))
            .map(|((kind, value), risk)| Item {
                kind: *kind,
                value: value.clone(),
                risk: risk.clone(),
            })
            .collect();
        let removed: Vec<Item> = before_items
            .keys()
            .filter(|key| !after_items.contains_key(*key))
            .map(|(kind, value)| Item {
                kind: *kind,
                value: value.clone(),
                risk: None,
            })
            .collect();
        if added.is_empty() && removed.is_empty() {
            continue;
        }
        services.push(ServiceDiff {
            name: name.clone(),
            change,
            accept_risk: after.and_then(|s| s.accept_risk.clone()),
            added,
            removed,
        });
    }
    let risky_additions = services
        .iter()
        .flat_map(|s| &s.added)
        .filter(|item| item.risk.is_some())
        .count();
    Diff {
        services,
        risky_additions,
    }
}

/// A service's hosts, prefixes and ports, each with its risk. A port carries the risk of the
/// broadest destination it opens, since adding it opens that destination further.
fn openings(service: &Service) -> BTreeMap<(Kind, String), Option<String>> {
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
    items
}

impl Diff {
    /// One block per changed service, then a count.
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for service in &self.services {
            let sign = match service.change {
                Change::Added => '+',
                Change::Removed => '-',
                Change::Changed => '~',
            };
            let _ = writeln!(out, "{sign} service {}", service.name);
            for (mark, items) in [('+', &service.added), ('-', &service.removed)] {
                for item in items {
                    let kind = match item.kind {
                        Kind::Host => "host",
                        Kind::Prefix => "prefix",
                        Kind::Port => "port",
                    };
                    let _ = write!(out, "    {mark} {kind} {}", item.value);
                    if let Some(risk) = &item.risk {
                        let _ = write!(out, "    RISK: {risk}");
                    }
                    out.push('\n');
                }
            }
            if let Some(why) = service
                .accept_risk
                .as_ref()
                .filter(|_| service.added.iter().any(|item| item.risk.is_some()))
            {
                let _ = writeln!(out, "    accepted: {why}");
            }
        }
        let count = |change| self.services.iter().filter(|s| s.change == change).count();
        let _ = writeln!(
            out,
            "{} services added, {} removed, {} changed; {} risky addition{}",
            count(Change::Added),
            count(Change::Removed),
            count(Change::Changed),
            self.risky_additions,
            if self.risky_additions == 1 { "" } else { "s" }
        );
        out
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
    fn identical_rules_have_no_differences() {
        let diff = compare(&rules(NEW), &rules(NEW));
        assert!(diff.services.is_empty());
        assert_eq!(
            diff.to_text(),
            "0 services added, 0 removed, 0 changed; 0 risky additions\n"
        );
    }
}
