//! Client groups: `[[group]]` tables name clients by source prefix, and a service's `groups`
//! says which of them it applies to.
//!
//! Without any group, every source gets every service, as before groups existed. Once the rules
//! define one, a service without `groups` applies to every group the rules define, and a source
//! no group's prefix covers is in `default`: it gets the services that list `default`, and those
//! without `groups` only if the rules define `default` too. So an undefined `default` is empty
//! and fail-closed. Overlapping prefixes of different groups resolve by longest match, like
//! destinations; the same prefix in two groups is ambiguous and refused.

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
    pub file: PathBuf,
    pub location: Location,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGroup {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    sources: Vec<Spanned<String>>,
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
        for problem in self.name_problems(&name, raw.sources.is_empty(), named) {
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
            file: file.to_path_buf(),
            location,
        });
    }

    /// What is wrong with a group's name, or with its having sources or none.
    fn name_problems(&self, name: &str, no_sources: bool, named: usize) -> Vec<String> {
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
            if !no_sources {
                problems.push(
                    "group \"default\" holds every source no other group covers; it takes no \
                     sources"
                        .into(),
                );
            }
        } else {
            if no_sources {
                problems.push(format!(
                    "group {name:?} has no sources: give it source prefixes"
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
