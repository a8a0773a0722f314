//! Client groups: `[[group]]` tables name clients by source prefix or by the interface their
//! packets arrive on, and a service's `groups` says which of them it applies to.
//!
//! Without any group, every source gets every service, as before groups existed. Once the rules
//! define one, a service without `groups` applies to every group the rules define, and a source
//! no group's prefix covers is in `default`: it gets the services that list `default`, and those
//! without `groups` only if the rules define `default` too. So an undefined `default` is empty
//! and fail-closed. Overlapping prefixes of different groups resolve by longest match, like
//! destinations; the same prefix in two groups is ambiguous and refused.
//!
//! An interface (a name, or a pattern with `*`, `?` or `[...]`) decides before the source
//! address: a packet arriving on an interface a group names is in that group whatever its
//! source, since a client can forge its address but not the interface it is plugged into. The
//! same name or pattern in two groups is refused; an interface that patterns of two groups both
//! match goes to the group an exact name puts it in, else to the group defined first (see
//! [`interface_groups`]).

use std::{
    collections::{BTreeMap, HashMap},
    ops::Range,
    path::{Path, PathBuf},
};

use filter_common::groups::{GroupMask, ALL_GROUPS, DEFAULT_GROUP, MAX_GROUPS, MAX_GROUP_PREFIXES};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{parse_cidr, valid_name, Diagnostic, Lines, Location};

/// The group of sources no other group covers.
pub const DEFAULT_NAME: &str = "default";

/// One client group, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    /// The kernel's number for it (`filter_common::groups`): 0 for `default`.
    pub id: u32,
    pub name: String,
    pub description: String,
    /// The clients' source prefixes; empty for `default`.
    pub sources: Vec<IpNet>,
    /// The interfaces whose arriving packets are this group's, as names or shell-style
    /// patterns; empty for `default`.
    pub interfaces: Vec<String>,
    pub file: PathBuf,
    pub location: Location,
}

impl Group {
    /// A group numbered `id` and named `g{id}`, with no clients yet: what generated rules (the
    /// tests, the bench) start from.
    #[must_use]
    pub fn numbered(id: u32, file: &str) -> Self {
        Self {
            id,
            name: format!("g{id}"),
            description: String::new(),
            sources: Vec::new(),
            interfaces: Vec::new(),
            file: file.into(),
            location: Location { line: 1, column: 1 },
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    sources: Vec<Spanned<String>>,
    #[serde(default)]
    interfaces: Vec<Spanned<String>>,
}

/// A service's `groups`, as written, for checking once every group is known.
pub(super) struct GroupList {
    pub names: Vec<Spanned<String>>,
    pub span: Range<usize>,
}

/// Collects the groups of every file, then checks the services' lists against them.
#[derive(Default)]
pub(super) struct GroupBook {
    groups: Vec<Group>,
    /// Every source prefix, with the group and place that named it first.
    sources: HashMap<IpNet, (String, PathBuf, Location)>,
    /// Every interface name or pattern, likewise.
    interfaces: HashMap<String, (String, PathBuf, Location)>,
}

impl GroupBook {
    /// Checks one `[[group]]` table; reports every problem through `errors`.
    pub(super) fn add(
        &mut self,
        raw: Spanned<RawGroup>,
        file: &Path,
        lines: &Lines<'_>,
        errors: &mut Vec<Diagnostic>,
    ) {
        let at = |span: Range<usize>| Some(lines.locate(span.start));
        let location = lines.locate(raw.span().start);
        let raw = raw.into_inner();
        let mut ok = true;
        let mut fail = |span: Range<usize>, message: String| {
            ok = false;
            errors.push(Diagnostic {
                file: file.to_path_buf(),
                location: at(span),
                message,
            });
        };
        let name = raw.name.get_ref().trim().to_owned();
        let is_default = name == DEFAULT_NAME;
        let named = self.groups.iter().filter(|g| g.id != DEFAULT_GROUP).count();
        let no_clients = raw.sources.is_empty() && raw.interfaces.is_empty();
        for problem in self.name_problems(&name, no_clients, named) {
            fail(raw.name.span(), problem);
        }
        let mut sources = Vec::new();
        for entry in &raw.sources {
            let net = match parse_cidr(entry.get_ref()) {
                Ok(net) => net,
                Err(message) => {
                    fail(entry.span(), message);
                    continue;
                }
            };
            match self.sources.get(&net) {
                Some((other, _, _)) if *other == name => {}
                Some((other, other_file, other_at)) => fail(
                    entry.span(),
                    format!(
                        "{net} is already a source of group {other:?} ({}:{}); a source \
                         prefix belongs to one group",
                        other_file.display(),
                        other_at.line
                    ),
                ),
                None => {
                    self.sources.insert(
                        net,
                        (
                            name.clone(),
                            file.to_path_buf(),
                            lines.locate(entry.span().start),
                        ),
                    );
                    sources.push(net);
                }
            }
        }
        let mut interfaces = Vec::new();
        for entry in &raw.interfaces {
            let text = entry.get_ref().trim();
            if let Err(message) = check_interface(text) {
                fail(entry.span(), message);
                continue;
            }
            match self.interfaces.get(text) {
                Some((other, _, _)) if *other == name => {}
                Some((other, other_file, other_at)) => fail(
                    entry.span(),
                    format!(
                        "interface {text:?} is already in group {other:?} ({}:{}); an \
                         interface belongs to one group",
                        other_file.display(),
                        other_at.line
                    ),
                ),
                None => {
                    self.interfaces.insert(
                        text.to_owned(),
                        (
                            name.clone(),
                            file.to_path_buf(),
                            lines.locate(entry.span().start),
                        ),
                    );
                    interfaces.push(text.to_owned());
                }
            }
        }
        if !ok {
            return;
        }
        sources.sort();
        self.groups.push(Group {
            id: if is_default {
                DEFAULT_GROUP
            } else {
                u32::try_from(named + 1).unwrap_or(u32::MAX)
            },
            name,
            description: raw.description,
            sources,
            interfaces,
            file: file.to_path_buf(),
            location,
        });
    }

    /// What is wrong with a group's name, or with its having clients (sources or interfaces)
    /// or none.
    fn name_problems(&self, name: &str, no_clients: bool, named: usize) -> Vec<String> {
        let mut problems = Vec::new();
        if !valid_name(name) {
            problems.push(format!(
                "group name {name:?} must be 1-64 characters without spaces"
            ));
        }
        if let Some(first) = self.groups.iter().find(|g| g.name == name) {
            problems.push(format!(
                "group name {name:?} is already defined at {}:{}",
                first.file.display(),
                first.location.line
            ));
        }
        if name == DEFAULT_NAME {
            if !no_clients {
                problems.push(
                    "group \"default\" holds every source no other group covers; it takes no \
                     sources or interfaces"
                        .into(),
                );
            }
        } else {
            if no_clients {
                problems.push(format!(
                    "group {name:?} has no sources: give it source prefixes or interfaces"
                ));
            }
            if named + 1 >= MAX_GROUPS {
                problems.push(format!(
                    "more than {} groups besides \"default\"; the kernel tells {MAX_GROUPS} apart",
                    MAX_GROUPS - 1
                ));
            }
        }
        problems
    }

    /// The groups, once every file is read; checks the limits that concern all of them.
    pub(super) fn finish(self, errors: &mut Vec<Diagnostic>) -> Vec<Group> {
        for family in [4, 6] {
            let count = self
                .groups
                .iter()
                .flat_map(|g| &g.sources)
                .filter(|net| matches!((family, net), (4, IpNet::V4(_)) | (6, IpNet::V6(_))))
                .count();
            if count > MAX_GROUP_PREFIXES {
                errors.push(Diagnostic {
                    file: PathBuf::from("(all rules)"),
                    location: None,
                    message: format!(
                        "the groups name {count} IPv{family} source prefixes, more than the \
                         {MAX_GROUP_PREFIXES} the kernel holds"
                    ),
                });
            }
        }
        self.groups
    }
}

/// The number of the group `address` is in: the group of the longest source prefix covering
/// it, `default` where none does. The kernel's answer, computed the slow way.
#[must_use]
pub fn group_of(groups: &[Group], address: std::net::IpAddr) -> u32 {
    groups
        .iter()
        .flat_map(|g| g.sources.iter().map(move |net| (net, g.id)))
        .filter(|(net, _)| net.contains(&address))
        .max_by_key(|(net, _)| net.prefix_len())
        .map_or(DEFAULT_GROUP, |(_, id)| id)
}

/// Interface names have at most this many bytes (the kernel's `IFNAMSIZ`, less its NUL).
const MAX_INTERFACE_NAME: usize = libc::IFNAMSIZ - 1;

/// Whether `text` can name interfaces: a name the kernel allows, or a valid pattern.
fn check_interface(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("an interface name cannot be empty".into());
    }
    if text.contains(['/', ' ']) {
        return Err(format!("{text:?} is not an interface name or pattern"));
    }
    if is_pattern(text) {
        glob::Pattern::new(text)
            .map(drop)
            .map_err(|err| format!("{text:?} is not a valid pattern: {}", err.msg))
    } else if text.len() > MAX_INTERFACE_NAME {
        Err(format!(
            "{text:?}: interface names have at most {MAX_INTERFACE_NAME} bytes"
        ))
    } else {
        Ok(())
    }
}

fn is_pattern(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

/// An interface that patterns of two groups match, for a warning.
#[derive(Debug, PartialEq, Eq)]
pub struct AmbiguousInterface {
    pub interface: String,
    /// The group it is in: the one defined first.
    pub chosen: String,
    /// Another group whose pattern matches it.
    pub other: String,
}

/// Which group each of `links` (index, name) is in, for those some group's interfaces name: an
/// exact name first, then the patterns of the groups in the order the rules define them. The
/// interfaces that patterns of more than one group match are listed too.
#[must_use]
pub fn interface_groups<'a>(
    groups: &[Group],
    links: impl IntoIterator<Item = (u32, &'a str)>,
) -> (BTreeMap<u32, u32>, Vec<AmbiguousInterface>) {
    let patterns: Vec<(&Group, glob::Pattern)> = groups
        .iter()
        .flat_map(|g| {
            g.interfaces
                .iter()
                .filter(|text| is_pattern(text))
                .filter_map(move |text| Some((g, glob::Pattern::new(text).ok()?)))
        })
        .collect();
    let mut found = BTreeMap::new();
    let mut ambiguous = Vec::new();
    for (index, name) in links {
        let exact = groups
            .iter()
            .find(|g| g.interfaces.iter().any(|i| i == name));
        let mut matching = patterns
            .iter()
            .filter(|(_, pattern)| pattern.matches(name))
            .map(|(g, _)| *g);
        let chosen = exact.or_else(|| matching.next());
        let Some(chosen) = chosen else { continue };
        if exact.is_none() {
            if let Some(other) = matching.find(|g| g.id != chosen.id) {
                ambiguous.push(AmbiguousInterface {
                    interface: name.to_owned(),
                    chosen: chosen.name.clone(),
                    other: other.name.clone(),
                });
            }
        }
        found.insert(index, chosen.id);
    }
    (found, ambiguous)
}

/// The groups a service applies to, as kernel group bits; `None` after reporting a problem.
pub(super) fn mask_of(
    list: Option<&GroupList>,
    groups: &[Group],
    file: &Path,
    lines: &Lines<'_>,
    errors: &mut Vec<Diagnostic>,
) -> Option<GroupMask> {
    let Some(list) = list else {
        // Without `groups`: every group the rules define, or everyone when they define none.
        return Some(if groups.is_empty() {
            ALL_GROUPS
        } else {
            groups.iter().fold(0, |mask, g| mask | bit(g.id))
        });
    };
    let mut report = |span: Range<usize>, message: String| {
        errors.push(Diagnostic {
            file: file.to_path_buf(),
            location: Some(lines.locate(span.start)),
            message,
        });
    };
    if list.names.is_empty() {
        report(
            list.span.clone(),
            "groups = [] applies the service to no client; list groups or leave groups out".into(),
        );
        return None;
    }
    let mut mask = 0;
    let mut ok = true;
    for name in &list.names {
        let name_text = name.get_ref().trim();
        match groups.iter().find(|g| g.name == name_text) {
            Some(group) => mask |= bit(group.id),
            None if name_text == DEFAULT_NAME => mask |= bit(DEFAULT_GROUP),
            None => {
                ok = false;
                let known: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
                report(
                    name.span(),
                    format!(
                        "unknown group {name_text:?}; the rules define {}",
                        if known.is_empty() {
                            "no groups".to_owned()
                        } else {
                            known.join(", ")
                        }
                    ),
                );
            }
        }
    }
    ok.then_some(mask)
}

fn bit(id: u32) -> GroupMask {
    filter_common::groups::group_bit(id)
}

/// Gives the groups the numbers `previous` gave the same names, and new names numbers no
/// previous group had: between the moment the kernel's group ranges change and the moment its
/// policies do, a number must never mean two different groups (that would hand one group's
/// services to another). Returns the renumbering, old id → new id, for the services' masks.
pub(super) fn keep_ids(groups: &mut [Group], previous: &BTreeMap<String, u32>) -> Vec<(u32, u32)> {
    let mut used: Vec<u32> = groups
        .iter()
        .filter_map(|g| previous.get(&g.name).copied())
        .collect();
    let mut renumbered = Vec::new();
    for group in groups.iter_mut().filter(|g| g.id != DEFAULT_GROUP) {
        let id = if let Some(&id) = previous.get(&group.name) {
            id
        } else {
            // A new name: the lowest number no previous group had; only when there is none
            // left, one a removed group had.
            let unused = |id: &u32| !used.contains(id);
            let id = (1..MAX_GROUPS as u32)
                .filter(unused)
                .find(|id| !previous.values().any(|p| p == id))
                .or_else(|| (1..MAX_GROUPS as u32).find(unused))
                .unwrap_or(group.id);
            used.push(id);
            id
        };
        if group.id != id {
            renumbered.push((group.id, id));
            group.id = id;
        }
    }
    renumbered
}

/// A mask with its group bits moved as `renumbered` says (old id → new id).
#[must_use]
pub(super) fn renumber_mask(mask: GroupMask, renumbered: &[(u32, u32)]) -> GroupMask {
    if mask == ALL_GROUPS || renumbered.is_empty() {
        return mask;
    }
    let moved: GroupMask = renumbered.iter().fold(0, |m, (old, _)| m | bit(*old));
    renumbered
        .iter()
        .filter(|(old, _)| mask & bit(*old) != 0)
        .fold(mask & !moved, |m, (_, new)| m | bit(*new))
}

#[cfg(test)]
mod tests {
    use std::{fmt::Write as _, path::Path};

    use super::*;
    use crate::rules::Rules;

    fn parse(text: &str) -> Result<Rules, Vec<String>> {
        Rules::parse_sources(&[(Path::new("g.toml"), text)])
            .map_err(|err| err.0.iter().map(ToString::to_string).collect())
    }

    const SERVICE: &str = "[[service]]\nname = \"s\"\ncidrs = [\"192.0.2.0/24\"]\ntcp = [443]\n";

    #[test]
    fn services_apply_to_the_groups_they_list_or_to_every_defined_group() {
        let rules = parse(&format!(
            "[[group]]\nname = \"laptops\"\nsources = [\"10.1.0.0/16\"]\n\
             [[group]]\nname = \"phones\"\nsources = [\"10.2.0.0/16\", \"fd00:2::/48\"]\n\
             {SERVICE}\
             [[service]]\nname = \"push\"\ncidrs = [\"17.0.0.0/8\"]\ntcp = [5223]\ngroups = [\"phones\", \"default\"]\n"
        ))
        .expect("valid");
        let ids: Vec<(String, u32)> = rules
            .groups
            .iter()
            .map(|g| (g.name.clone(), g.id))
            .collect();
        assert_eq!(ids, [("laptops".into(), 1), ("phones".into(), 2)]);
        assert_eq!(
            rules.services[0].group_mask, 0b110,
            "every defined group, not default"
        );
        assert_eq!(rules.services[1].group_mask, 0b101, "phones and default");
        assert_eq!(
            rules.services[1].groups.as_deref(),
            Some(&["phones".to_owned(), "default".to_owned()][..])
        );
        let with_default = parse(&format!(
            "[[group]]\nname = \"default\"\n[[group]]\nname = \"lab\"\nsources = [\"10.3.0.0/16\"]\n{SERVICE}"
        ))
        .expect("valid");
        assert_eq!(
            with_default.services[0].group_mask, 0b11,
            "a defined default gets the services without groups"
        );
        let without = parse(SERVICE).expect("valid");
        assert_eq!(without.services[0].group_mask, ALL_GROUPS);
    }

    #[test]
    fn group_mistakes_are_reported_at_their_line_and_column() {
        for (text, expected) in [
            (
                format!("{SERVICE}groups = [\"phones\"]\n"),
                "g.toml:5:11: unknown group \"phones\"; the rules define no groups",
            ),
            (
                format!("{SERVICE}groups = []\n"),
                "g.toml:5:10: groups = [] applies the service to no client",
            ),
            (
                format!("[[group]]\nname = \"lab\"\n{SERVICE}"),
                "g.toml:2:8: group \"lab\" has no sources: give it source prefixes or interfaces",
            ),
            (
                format!("[[group]]\nname = \"default\"\nsources = [\"10.0.0.0/8\"]\n{SERVICE}"),
                "g.toml:2:8: group \"default\" holds every source no other group covers",
            ),
            (
                format!(
                    "[[group]]\nname = \"a\"\nsources = [\"10.0.0.0/8\"]\n\
                     [[group]]\nname = \"b\"\nsources = [\"10.0.0.0/8\"]\n{SERVICE}"
                ),
                "g.toml:6:12: 10.0.0.0/8 is already a source of group \"a\" (g.toml:3)",
            ),
            (
                format!(
                    "[[group]]\nname = \"a\"\nsources = [\"10.0.0.0/8\"]\n\
                     [[group]]\nname = \"a\"\nsources = [\"10.1.0.0/16\"]\n{SERVICE}"
                ),
                "g.toml:5:8: group name \"a\" is already defined at g.toml:1",
            ),
            (
                format!("[[group]]\nname = \"a\"\nsources = [\"10.0.0.1/8\"]\n{SERVICE}"),
                "g.toml:3:12: \"10.0.0.1/8\" has host bits set",
            ),
            (
                format!("[[group]]\nname = \"a\"\nsources = [\"10.0.0.0/8\"]\nport = 1\n{SERVICE}"),
                "g.toml:4:1: unknown field `port`",
            ),
        ] {
            let errors = parse(&text).expect_err("must be refused");
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "expected {expected:?} in {errors:?}"
            );
        }
    }

    #[test]
    fn interfaces_name_groups_exactly_or_by_pattern_and_belong_to_one_group() {
        let rules = parse(&format!(
            "[[group]]\nname = \"lan\"\ninterfaces = [\"lan*\", \"wlan0\"]\n\
             [[group]]\nname = \"lab\"\ninterfaces = [\"lan9\", \"l?n*\"]\nsources = [\"10.9.0.0/16\"]\n\
             {SERVICE}"
        ))
        .expect("valid");
        let links = [
            (2, "lan0"),
            (3, "wlan0"),
            (4, "lan9"),
            (5, "lxn1"),
            (6, "eth0"),
        ];
        let (groups, ambiguous) = interface_groups(&rules.groups, links);
        let (lan, lab) = (rules.groups[0].id, rules.groups[1].id);
        assert_eq!(
            groups.into_iter().collect::<Vec<_>>(),
            [(2, lan), (3, lan), (4, lab), (5, lab)],
            "an exact name beats any pattern; eth0 is in no group"
        );
        assert_eq!(
            ambiguous,
            [AmbiguousInterface {
                interface: "lan0".into(),
                chosen: "lan".into(),
                other: "lab".into()
            }],
            "lan0 matches lan* and l?n*: the group defined first, with a warning"
        );
        for (text, expected) in [
            (
                format!(
                    "[[group]]\nname = \"a\"\ninterfaces = [\"lan0\"]\n\
                     [[group]]\nname = \"b\"\ninterfaces = [\"lan0\"]\n{SERVICE}"
                ),
                "g.toml:6:15: interface \"lan0\" is already in group \"a\" (g.toml:3)",
            ),
            (
                format!("[[group]]\nname = \"a\"\ninterfaces = [\"lan[0\"]\n{SERVICE}"),
                "g.toml:3:15: \"lan[0\" is not a valid pattern",
            ),
            (
                format!("[[group]]\nname = \"a\"\ninterfaces = [\"sixteen-bytes-00\"]\n{SERVICE}"),
                "g.toml:3:15: \"sixteen-bytes-00\": interface names have at most 15 bytes",
            ),
            (
                format!("[[group]]\nname = \"a\"\ninterfaces = [\"\"]\n{SERVICE}"),
                "g.toml:3:15: an interface name cannot be empty",
            ),
            (
                format!("[[group]]\nname = \"default\"\ninterfaces = [\"eth0\"]\n{SERVICE}"),
                "g.toml:2:8: group \"default\" holds every source no other group covers; it \
                 takes no sources or interfaces",
            ),
        ] {
            let errors = parse(&text).expect_err("must be refused");
            assert!(
                errors.iter().any(|e| e.starts_with(expected)),
                "expected {expected:?} in {errors:?}"
            );
        }
    }

    #[test]
    fn a_file_of_groups_alone_is_valid_beside_files_of_services() {
        let rules = Rules::parse_sources(&[
            (
                Path::new("groups.toml"),
                "[[group]]\nname = \"lab\"\nsources = [\"10.3.0.0/16\"]\n",
            ),
            (
                Path::new("services.toml"),
                &format!("{SERVICE}groups = [\"lab\"]\n"),
            ),
        ])
        .expect("groups may be defined in a file of their own");
        assert_eq!(rules.services[0].group_mask, 0b10);
    }

    #[test]
    fn more_groups_than_the_kernel_tells_apart_are_refused() {
        let mut text = String::new();
        for i in 0..MAX_GROUPS {
            let _ = write!(
                text,
                "[[group]]\nname = \"g{i}\"\nsources = [\"10.{i}.0.0/16\"]\n"
            );
        }
        text.push_str(SERVICE);
        let errors = parse(&text).expect_err("64 named groups and default are 65");
        assert!(
            errors.iter().any(|e| e.contains("more than 63 groups")),
            "{errors:?}"
        );
    }

    #[test]
    fn numbers_stay_with_their_names_and_new_names_take_unused_numbers() {
        let text = |names: &[&str]| {
            let mut text = String::new();
            for (i, name) in names.iter().enumerate() {
                let _ = write!(
                    text,
                    "[[group]]\nname = \"{name}\"\nsources = [\"10.{i}.0.0/16\"]\n"
                );
            }
            let _ = writeln!(text, "{SERVICE}groups = [\"{}\"]", names[0]);
            text
        };
        let old = parse(&text(&["a", "b", "c"])).expect("valid");
        assert_eq!(old.group_ids().into_values().collect::<Vec<_>>(), [1, 2, 3]);
        // Reordered, one removed (b, 2), one new (d): a keeps 1, c keeps 3, d takes 4 (not
        // b's 2, which the kernel may still hold until the switch).
        let mut new = parse(&text(&["c", "d", "a"])).expect("valid");
        assert_eq!(new.services[0].group_mask, 0b10, "c is first in load order");
        new.keep_group_ids(&old.group_ids());
        let ids = new.group_ids();
        assert_eq!((ids["a"], ids["c"], ids["d"]), (1, 3, 4));
        assert_eq!(new.services[0].group_mask, 0b1000, "c keeps number 3");
        assert_eq!(renumber_mask(0b0110, &[(1, 2), (2, 1)]), 0b0110);
        assert_eq!(renumber_mask(0b0011, &[(1, 5)]), 0b10_0001);
    }
}
