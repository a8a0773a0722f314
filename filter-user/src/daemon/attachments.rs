//! Which interfaces the filter is attached to, kept equal to the interfaces that exist and match
//! what `--xdp`, `--tc` and `--tc-ingress` ask for.
//!
//! Each option takes a name or a shell-style pattern (`lxc*`, `cali*`, `veth*`). The daemon
//! attaches to every match at start, then again whenever the kernel reports a link appearing,
//! vanishing or being renamed (rtnetlink link notifications, see
//! [`super::interfaces::LinkWatch`]); every 30 s it also compares with a fresh dump of the links,
//! in case a notification was lost (a netlink socket that overflows drops them). An interface
//! deleted and created again under the same name is a new device with a new index: the link to
//! the old one went defunct with it, so the new one is attached afresh. Exact names follow the
//! same rule as patterns; the only difference is that an exact name with no interface behind it
//! is an error the daemon reports (log, `stats`, metrics, `/healthz`), where a pattern that
//! matches nothing is normal (a node with no pods yet).
//!
//! [`plan`] decides, from the links that exist and the attachments held, what to attach and what
//! to let go; it touches nothing, so it is tested on its own. `super::attach` carries it out.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, ensure};

use super::interfaces::{CheckedInterfaces, LinkLayer};
use crate::{
    pins::HookKind,
    state::{AttachmentView, InterfaceReport, XdpModeView},
};

/// One `--xdp`, `--tc` or `--tc-ingress` value: a hook and the interface names it applies to.
#[derive(Clone, Debug)]
pub struct InterfacePattern {
    pub hook: HookKind,
    /// As given on the command line: a name, or a pattern with `*`, `?` or `[...]`.
    pub text: String,
    glob: glob::Pattern,
}

impl PartialEq for InterfacePattern {
    fn eq(&self, other: &Self) -> bool {
        (self.hook, &self.text) == (other.hook, &other.text)
    }
}

impl Eq for InterfacePattern {}

/// Longest interface name the kernel takes (`IFNAMSIZ` - 1).
const MAX_NAME: usize = libc::IFNAMSIZ - 1;

impl InterfacePattern {
    /// Checks `text` as the option `--<hook>` gave it.
    pub fn new(hook: HookKind, text: &str) -> anyhow::Result<Self> {
        let option = hook.option();
        ensure!(!text.is_empty(), "{option}: an empty interface name");
        ensure!(
            !text.contains(['/', ' ', ':']),
            "{option} {text}: interface names cannot hold '/', ':' or spaces"
        );
        let glob = match glob::Pattern::new(text) {
            Ok(glob) => glob,
            Err(err) => bail!("{option} {text}: not a valid pattern: {}", err.msg),
        };
        let pattern = Self {
            hook,
            text: text.to_owned(),
            glob,
        };
        ensure!(
            !pattern.is_exact() || text.len() <= MAX_NAME,
            "{option} {text}: interface names have at most {MAX_NAME} bytes"
        );
        Ok(pattern)
    }

    /// A plain name (no `*`, `?` or `[`): it must exist, and is reported when it does not.
    #[must_use]
    pub fn is_exact(&self) -> bool {
        !self.text.contains(['*', '?', '['])
    }

    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        if self.is_exact() {
            name == self.text
        } else {
            self.glob.matches(name)
        }
    }
}

/// One link of the daemon's network namespace, as rtnetlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedLink {
    pub index: u32,
    pub name: String,
    /// Its `ARPHRD_*` type, which decides the program variant.
    pub link_type: u16,
}

/// An attachment: a hook on the interface with this name.
pub type AttachmentKey = (HookKind, String);

/// An attachment to make: the hook, the interface, and the program variant its link layer needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub hook: HookKind,
    pub name: String,
    pub index: u32,
    pub layer: LinkLayer,
}

impl Target {
    #[must_use]
    pub fn key(&self) -> AttachmentKey {
        (self.hook, self.name.clone())
    }
}

/// What must change so that the attachments equal the links that exist and match.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Interfaces that match and are not attached, or whose device is new (a name re-created).
    pub attach: Vec<Target>,
    /// Attachments whose interface vanished, was renamed, or no longer matches.
    pub release: Vec<AttachmentKey>,
    /// Exact names asked for that no interface has now.
    pub missing: BTreeSet<AttachmentKey>,
    /// Matching interfaces the programs cannot parse, and why: never attached.
    pub unsupported: BTreeMap<AttachmentKey, String>,
}

impl Plan {
    /// The interfaces to attach whose sources are checked.
    #[must_use]
    pub fn checked(&self) -> CheckedInterfaces {
        CheckedInterfaces {
            lans: self.indexes(|hook| hook == HookKind::Xdp),
            pods: self.indexes(|hook| hook == HookKind::TcIngress),
        }
    }

    /// The interface indexes to attach, for the hooks `wanted` picks.
    #[must_use]
    pub fn indexes(&self, wanted: impl Fn(HookKind) -> bool) -> Vec<u32> {
        self.attach
            .iter()
            .filter(|t| wanted(t.hook))
            .map(|t| t.index)
            .collect()
    }

    #[must_use]
    pub fn changes_nothing(&self) -> bool {
        self.attach.is_empty() && self.release.is_empty()
    }
}

/// What to attach and release so that `attached` ((hook, name) → interface index) covers
/// exactly the `links` that `patterns` match.
#[must_use]
pub fn plan(
    patterns: &[InterfacePattern],
    links: &[NamedLink],
    attached: &BTreeMap<AttachmentKey, u32>,
) -> Plan {
    let mut plan = Plan::default();
    let mut wanted = BTreeSet::new();
    for pattern in patterns {
        let mut found = false;
        for link in links.iter().filter(|link| pattern.matches(&link.name)) {
            found = true;
            let key = (pattern.hook, link.name.clone());
            if !wanted.insert(key.clone()) {
                continue;
            }
            match LinkLayer::from_link_type(&link.name, link.link_type) {
                Ok(layer) if attached.get(&key) != Some(&link.index) => plan.attach.push(Target {
                    hook: pattern.hook,
                    name: link.name.clone(),
                    index: link.index,
                    layer,
                }),
                Ok(_) => {}
                Err(why) => {
                    wanted.remove(&key);
                    plan.unsupported.insert(key, format!("{why:#}"));
                }
            }
        }
        if !found && pattern.is_exact() {
            plan.missing.insert((pattern.hook, pattern.text.clone()));
        }
    }
    plan.release = attached
        .keys()
        .filter(|key| !wanted.contains(*key))
        .cloned()
        .collect();
    plan
}

/// The attachments the daemon holds, and what it reports about them.
#[derive(Debug, Default)]
pub struct Attachments {
    /// (hook, interface name) → the index of the device attached to.
    pub held: BTreeMap<AttachmentKey, u32>,
    /// Exact names asked for that no interface has now.
    pub missing: BTreeSet<AttachmentKey>,
    /// Interfaces that match but could not be attached, and why (tried again at each check).
    pub failed: BTreeMap<AttachmentKey, String>,
    /// XDP attachments' modes, as the kernel reported them once attached, and why.
    pub xdp_modes: BTreeMap<AttachmentKey, XdpModeView>,
    /// Unparseable matches already logged, so each is logged once.
    pub unsupported_seen: BTreeSet<AttachmentKey>,
    pub counts: AttachmentCounts,
}

/// What happened to attachments since the daemon started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachmentCounts {
    /// Attachments made (at start, and each time an interface appeared).
    pub attached: u64,
    /// Attachments let go: the interface vanished, was renamed or no longer matches.
    pub released: u64,
    /// Attachments tried that failed.
    pub failed: u64,
}

impl Attachments {
    /// The interfaces XDP and TC ingress are attached to: the source check's interfaces.
    #[must_use]
    pub fn checked(&self) -> CheckedInterfaces {
        let of = |wanted: HookKind| {
            let indices = self
                .held
                .iter()
                .filter(|((hook, _), _)| *hook == wanted)
                .map(|(_, index)| *index);
            indices.collect::<BTreeSet<_>>().into_iter().collect()
        };
        CheckedInterfaces {
            lans: of(HookKind::Xdp),
            pods: of(HookKind::TcIngress),
        }
    }

    /// The indices of every interface attached to, whatever the hook: the guarded networks,
    /// whose clients the DNS forwarder answers.
    #[must_use]
    pub fn indices(&self) -> Vec<u32> {
        let indices = self.held.values().copied();
        indices.collect::<BTreeSet<_>>().into_iter().collect()
    }

    /// What `stats` shows.
    #[must_use]
    pub fn report(&self) -> InterfaceReport {
        let view = |key: &AttachmentKey, ifindex: Option<u32>, error: Option<&String>| {
            let (hook, name) = key;
            AttachmentView {
                hook: hook.name().to_owned(),
                iface: name.clone(),
                ifindex,
                error: error.cloned(),
                xdp_mode: ifindex.and(self.xdp_modes.get(key).cloned()),
            }
        };
        InterfaceReport {
            attached: self
                .held
                .iter()
                .map(|(key, index)| view(key, Some(*index), None))
                .collect(),
            missing: self
                .missing
                .iter()
                .map(|key| view(key, None, None))
                .collect(),
            failed: self
                .failed
                .iter()
                .map(|(key, why)| view(key, None, Some(why)))
                .collect(),
            counts: self.counts,
        }
    }

    /// Why the filter does not cover every interface it was asked to, if it does not: what
    /// `/healthz` reports.
    #[must_use]
    pub fn trouble(&self) -> Option<String> {
        let missing = self
            .missing
            .iter()
            .map(|(hook, name)| format!("{name} ({}) does not exist", hook.option()));
        let failed = self
            .failed
            .iter()
            .map(|((hook, name), why)| format!("{} on {name} failed: {why}", hook.name()));
        let all: Vec<String> = missing.chain(failed).collect();
        (!all.is_empty()).then(|| all.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ETHER: u16 = 1;
    const LOOPBACK: u16 = 772;

    fn link(index: u32, name: &str) -> NamedLink {
        NamedLink {
            index,
            name: name.into(),
            link_type: ETHER,
        }
    }

    fn patterns(given: &[(HookKind, &str)]) -> Vec<InterfacePattern> {
        given
            .iter()
            .map(|(hook, text)| InterfacePattern::new(*hook, text).expect("valid pattern"))
            .collect()
    }

    fn names(targets: &[Target]) -> Vec<(HookKind, &str, u32)> {
        targets
            .iter()
            .map(|t| (t.hook, t.name.as_str(), t.index))
            .collect()
    }

    #[test]
    fn names_and_patterns_are_checked_and_matched() {
        let exact = InterfacePattern::new(HookKind::Xdp, "lan0").unwrap();
        assert!(exact.is_exact() && exact.matches("lan0") && !exact.matches("lan01"));
        let glob = InterfacePattern::new(HookKind::TcIngress, "lxc*").unwrap();
        assert!(!glob.is_exact());
        assert!(glob.matches("lxc1a2b") && glob.matches("lxc") && !glob.matches("eth0"));
        let class = InterfacePattern::new(HookKind::Tc, "veth[0-3]").unwrap();
        assert!(class.matches("veth2") && !class.matches("veth7"));
        for (bad, why) in [
            ("", "empty"),
            ("a/b", "cannot hold"),
            ("lan[", "not a valid pattern"),
            ("a-name-longer-than-15", "at most 15 bytes"),
        ] {
            let err = InterfacePattern::new(HookKind::Xdp, bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--xdp") && err.contains(why), "{bad:?}: {err}");
        }
    }

    #[test]
    fn every_match_is_attached_once_per_hook() {
        let wanted = patterns(&[
            (HookKind::Xdp, "lan0"),
            (HookKind::TcIngress, "lxc*"),
            (HookKind::TcIngress, "lxc1*"),
            (HookKind::Tc, "lan0"),
        ]);
        let links = [
            link(2, "lan0"),
            link(7, "lxc11"),
            link(9, "lxc2"),
            link(4, "eth0"),
        ];
        let plan = plan(&wanted, &links, &BTreeMap::new());
        assert_eq!(
            names(&plan.attach),
            [
                (HookKind::Xdp, "lan0", 2),
                (HookKind::TcIngress, "lxc11", 7),
                (HookKind::TcIngress, "lxc2", 9),
                (HookKind::Tc, "lan0", 2),
            ]
        );
        assert!(plan.release.is_empty() && plan.missing.is_empty());
    }

    #[test]
    fn held_attachments_stay_and_vanished_or_renamed_ones_go() {
        let wanted = patterns(&[(HookKind::TcIngress, "lxc*")]);
        let attached = BTreeMap::from([
            ((HookKind::TcIngress, "lxc1".to_owned()), 7),
            ((HookKind::TcIngress, "lxc2".to_owned()), 8),
            ((HookKind::TcIngress, "lxc3".to_owned()), 9),
        ]);
        // lxc1 unchanged, lxc2 gone, lxc3 renamed to eth3 (no longer matching).
        let links = [link(7, "lxc1"), link(9, "eth3")];
        let plan = plan(&wanted, &links, &attached);
        assert!(plan.attach.is_empty(), "{plan:?}");
        assert_eq!(
            plan.release,
            [
                (HookKind::TcIngress, "lxc2".to_owned()),
                (HookKind::TcIngress, "lxc3".to_owned())
            ]
        );
    }

    #[test]
    fn a_name_created_again_is_a_new_device_to_attach() {
        let wanted = patterns(&[(HookKind::Xdp, "lan0")]);
        let attached = BTreeMap::from([((HookKind::Xdp, "lan0".to_owned()), 3)]);
        let plan = plan(&wanted, &[link(12, "lan0")], &attached);
        assert_eq!(names(&plan.attach), [(HookKind::Xdp, "lan0", 12)]);
        assert!(
            plan.release.is_empty(),
            "the pin is taken over, not released"
        );
    }

    #[test]
    fn missing_exact_names_are_reported_and_empty_patterns_are_not() {
        let wanted = patterns(&[(HookKind::Xdp, "lan0"), (HookKind::TcIngress, "cali*")]);
        let attached = BTreeMap::from([((HookKind::Xdp, "lan0".to_owned()), 3)]);
        let plan = plan(&wanted, &[link(1, "eth0")], &attached);
        assert_eq!(
            plan.missing,
            BTreeSet::from([(HookKind::Xdp, "lan0".to_owned())])
        );
        assert_eq!(plan.release, [(HookKind::Xdp, "lan0".to_owned())]);
    }

    #[test]
    fn devices_the_programs_cannot_parse_are_never_attached() {
        let wanted = patterns(&[(HookKind::Tc, "*")]);
        let lo = NamedLink {
            link_type: LOOPBACK,
            ..link(1, "lo")
        };
        let attached = BTreeMap::from([((HookKind::Tc, "lo".to_owned()), 1)]);
        let plan = plan(&wanted, &[lo, link(2, "eth0")], &attached);
        assert_eq!(names(&plan.attach), [(HookKind::Tc, "eth0", 2)]);
        assert_eq!(plan.release, [(HookKind::Tc, "lo".to_owned())]);
        let why = &plan.unsupported[&(HookKind::Tc, "lo".to_owned())];
        assert!(why.contains("link type 772"), "{why}");
    }
}
