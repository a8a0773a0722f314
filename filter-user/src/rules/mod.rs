//! Rule files: parsing, validation, and the services they define.
//!
//! The format is a contract, documented in the README ("Rules"). A rules path is a file or
//! a directory, whose `*.toml` files (not subdirectories) load in name order. Every problem is
//! reported with `file:line:column`, all of them at once, and nothing loads unless everything is
//! valid: a typo must never half-apply a policy. The keys a service cites must be defined in the
//! source register ([`register`]) that lies beside its file.

pub mod groups;
pub mod hosts;
pub mod ports;
pub mod register;

use std::{
    collections::HashMap,
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use filter_common::{groups::GroupMask, maps::MAX_SERVICES};
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

pub use self::groups::{interface_groups, AmbiguousInterface, Group, DEFAULT_NAME};
use self::groups::{GroupBook, GroupList, RawGroup};
pub use self::hosts::HostPattern;
use self::register::{Register, REGISTER_FILE};
use crate::protocols::{PortSpec, ServiceId};

/// One service, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// Position in load order; the index of its kernel counters.
    pub id: ServiceId,
    pub name: String,
    pub description: String,
    pub source: String,
    /// The source register keys it cites (`cites`).
    pub cites: Vec<String>,
    /// Why its broad openings are accepted (`accept-risk`); `check --strict` requires it.
    pub accept_risk: Option<String>,
    /// The file that defines it.
    pub file: PathBuf,
    /// Where its `[[service]]` table starts.
    pub location: Location,
    pub hosts: Vec<HostPattern>,
    pub cidrs: Vec<IpNet>,
    pub ports: Vec<PortSpec>,
    /// The client groups it applies to, as written (`groups`); `None`: every group.
    pub groups: Option<Vec<String>>,
    /// The same as kernel group bits (`filter_common::groups`).
    pub group_mask: GroupMask,
}

/// Everything loaded from the rules paths.
#[derive(Clone, Debug, Default)]
pub struct Rules {
    pub services: Vec<Service>,
    /// The client groups (`[[group]]`), in load order; empty when the rules define none.
    pub groups: Vec<Group>,
    /// The files read, in load order.
    pub files: Vec<PathBuf>,
    /// The source registers the files use, in the order first used.
    pub registers: Vec<Register>,
}

impl Rules {
    /// Loads and validates every rules path. Either all of it is valid or nothing is returned.
    pub fn load(paths: &[PathBuf]) -> Result<Self, RulesError> {
        let mut files = Vec::new();
        let mut errors = Vec::new();
        for path in paths {
            match rule_files(path) {
                Ok(found) => files.extend(found),
                Err(diagnostic) => errors.push(diagnostic),
            }
        }
        let mut sources = Vec::new();
        for file in &files {
            match std::fs::read_to_string(file) {
                Ok(text) => sources.push((file.clone(), text)),
                Err(err) => errors.push(Diagnostic::file(file, format!("cannot read: {err}"))),
            }
        }
        let (registers, register_of) = Register::load_for(&sources, &mut errors);
        let sources: Vec<(&Path, &str)> = sources
            .iter()
            .map(|(p, t)| (p.as_path(), t.as_str()))
            .collect();
        let parsed = Self::parse_cited(&sources, &|file| {
            register_of.get(file).map(|&index| &registers[index])
        });
        match parsed.map(|rules| Self { registers, ..rules }) {
            Ok(rules) if errors.is_empty() => Ok(rules),
            Ok(_) => Err(RulesError(errors)),
            Err(RulesError(more)) => {
                errors.extend(more);
                Err(RulesError(errors))
            }
        }
    }

    /// Parses rule files already in memory: `(path for messages, contents)`, without a source
    /// register (a service citing a key is then an error).
    pub fn parse_sources(sources: &[(&Path, &str)]) -> Result<Self, RulesError> {
        Self::parse_cited(sources, &|_| None)
    }

    /// Parses rule files already in memory, each checked against the register `register_of`
    /// gives for its path.
    pub fn parse_cited<'r>(
        sources: &[(&Path, &str)],
        register_of: &dyn Fn(&Path) -> Option<&'r Register>,
    ) -> Result<Self, RulesError> {
        let mut errors = Vec::new();
        // The TOML first, all of it: the service limit is known before any service is checked,
        // so a file far over it is refused at once, with the true count.
        let mut parsed = Vec::new();
        for (path, text) in sources {
            match toml::from_str::<RawFile>(text) {
                Ok(raw) => parsed.push((*path, *text, raw)),
                Err(err) => errors.push(Diagnostic {
                    file: path.to_path_buf(),
                    location: err.span().map(|span| Lines::new(text).locate(span.start)),
                    message: err.message().to_owned(),
                }),
            }
        }
        let count: usize = parsed.iter().map(|(_, _, raw)| raw.service.len()).sum();
        if count > MAX_SERVICES as usize {
            errors.push(Diagnostic {
                file: PathBuf::from("(all rules)"),
                location: None,
                message: format!(
                    "{count} services, more than the {MAX_SERVICES} the kernel counts"
                ),
            });
            return Err(RulesError(errors));
        }
        // The groups of every file before any service, which may name a group defined later.
        let groups = read_groups(&mut parsed, &mut errors);
        let mut services: Vec<Service> = Vec::new();
        let mut first_definition: HashMap<String, (PathBuf, usize)> = HashMap::new();
        for (path, text, raw) in parsed {
            let lines = Lines::new(text);
            let at = |span: Range<usize>| lines.locate(span.start);
            if raw.service.is_empty() && !raw.defines_groups {
                errors.push(Diagnostic::file(
                    path,
                    "defines no [[service]]; a rules file holds at least one".into(),
                ));
            }
            for raw_service in raw.service {
                let service_at = at(raw_service.span());
                let mut report = |span: Range<usize>, message: String| {
                    errors.push(Diagnostic {
                        file: path.to_path_buf(),
                        location: Some(at(span)),
                        message,
                    });
                };
                let context = Context {
                    index: services.len(),
                    file: path,
                    location: service_at,
                    register: register_of(path),
                };
                let mut raw_service = raw_service.into_inner();
                let group_list = raw_service.groups.take().map(|list| GroupList {
                    span: list.span(),
                    names: list.into_inner(),
                });
                let service = validate(raw_service, &context, &mut report);
                let group_mask =
                    groups::mask_of(group_list.as_ref(), &groups, path, &lines, &mut errors);
                let (Some(mut service), Some(group_mask)) = (service, group_mask) else {
                    continue;
                };
                service.groups = group_list.map(|list| {
                    list.names
                        .into_iter()
                        .map(|name| name.into_inner().trim().to_owned())
                        .collect()
                });
                service.group_mask = group_mask;
                if let Some((file, line)) = first_definition.get(&service.name) {
                    errors.push(Diagnostic {
                        file: path.to_path_buf(),
                        location: Some(service_at),
                        message: format!(
                            "service name {:?} is already defined at {}:{line}; names are unique across all rules files",
                            service.name,
                            file.display()
                        ),
                    });
                    continue;
                }
                first_definition
                    .insert(service.name.clone(), (path.to_path_buf(), service_at.line));
                services.push(service);
            }
        }
        if errors.is_empty() {
            Ok(Self {
                services,
                groups,
                files: sources.iter().map(|(p, _)| p.to_path_buf()).collect(),
                registers: Vec::new(),
            })
        } else {
            Err(RulesError(errors))
        }
    }

    /// Each named group's kernel number, for [`Rules::keep_group_ids`] next time.
    #[must_use]
    pub fn group_ids(&self) -> std::collections::BTreeMap<String, u32> {
        self.groups
            .iter()
            .filter(|g| g.name != DEFAULT_NAME)
            .map(|g| (g.name.clone(), g.id))
            .collect()
    }

    /// Gives the groups the numbers the rules in force gave the same names (`previous`, from
    /// [`Rules::group_ids`]), so that a number means one group across a reload or a restart
    /// while the kernel's group ranges and policies change one after the other.
    pub fn keep_group_ids(&mut self, previous: &std::collections::BTreeMap<String, u32>) {
        let renumbered = groups::keep_ids(&mut self.groups, previous);
        for service in &mut self.services {
            service.group_mask = groups::renumber_mask(service.group_mask, &renumbered);
        }
    }

    /// The name of group number `id`: `default` for 0.
    #[must_use]
    pub fn group_name(&self, id: u32) -> String {
        self.groups.iter().find(|g| g.id == id).map_or_else(
            || {
                if id == filter_common::groups::DEFAULT_GROUP {
                    DEFAULT_NAME.to_owned()
                } else {
                    format!("group{id}")
                }
            },
            |g| g.name.clone(),
        )
    }

    /// Every group a source can be in, `default` first: `(number, name)`; only `default`
    /// when the rules define no groups.
    #[must_use]
    pub fn every_group(&self) -> Vec<(u32, String)> {
        let mut all = vec![(
            filter_common::groups::DEFAULT_GROUP,
            DEFAULT_NAME.to_owned(),
        )];
        all.extend(
            self.groups
                .iter()
                .filter(|g| g.name != DEFAULT_NAME)
                .map(|g| (g.id, g.name.clone())),
        );
        all
    }

    /// Every exact hostname (after expansion) with the services that list it.
    #[must_use]
    pub fn exact_hosts(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .services
            .iter()
            .flat_map(|s| &s.hosts)
            .filter_map(|h| match h {
                HostPattern::Exact(name) => Some(name.as_str()),
                HostPattern::Wildcard(_) => None,
            })
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }
}

/// The `[[group]]` tables of every file, checked; each file remembers whether it had any.
fn read_groups(parsed: &mut [(&Path, &str, RawFile)], errors: &mut Vec<Diagnostic>) -> Vec<Group> {
    let mut book = GroupBook::default();
    for (path, text, raw) in parsed {
        let lines = Lines::new(text);
        raw.defines_groups = !raw.group.is_empty();
        for raw_group in std::mem::take(&mut raw.group) {
            book.add(raw_group, path, &lines, errors);
        }
    }
    book.finish(errors)
}

/// The files a rules path stands for.
fn rule_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let meta = std::fs::metadata(path)
        .map_err(|err| Diagnostic::file(path, format!("cannot read: {err}")))?;
    let is_register = |p: &Path| p.file_name().is_some_and(|n| n == REGISTER_FILE);
    if !meta.is_dir() {
        if is_register(path) {
            return Err(Diagnostic::file(
                path,
                "is the source register, not a rules file; give the rules files or their directory"
                    .into(),
            ));
        }
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|err| Diagnostic::file(path, format!("cannot list: {err}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "toml") && !is_register(p))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Diagnostic::file(
            path,
            "directory holds no *.toml rules files".into(),
        ));
    }
    Ok(files)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    #[serde(default)]
    group: Vec<Spanned<RawGroup>>,
    /// Whether `group` held tables before they were taken for checking.
    #[serde(skip)]
    defines_groups: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    source: String,
    #[serde(default)]
    cites: Vec<Spanned<String>>,
    #[serde(default, rename = "accept-risk")]
    accept_risk: Option<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    cidrs: Vec<Spanned<String>>,
    #[serde(default)]
    tcp: Vec<Spanned<ports::PortItem>>,
    #[serde(default)]
    udp: Vec<Spanned<ports::PortItem>>,
    #[serde(default)]
    icmp: bool,
    #[serde(default)]
    groups: Option<Spanned<Vec<Spanned<String>>>>,
}

/// Where a service stands: its position in load order, its file and the register it cites from.
struct Context<'a> {
    index: usize,
    file: &'a Path,
    location: Location,
    register: Option<&'a Register>,
}

/// Checks one service; reports every problem through `report` and returns it only if clean.
fn validate(
    raw: RawService,
    context: &Context<'_>,
    report: &mut impl FnMut(Range<usize>, String),
) -> Option<Service> {
    let mut ok = true;
    let mut fail = |span: Range<usize>, message: String| {
        ok = false;
        report(span, message);
    };
    let name = raw.name.get_ref().trim().to_owned();
    if !valid_name(&name) {
        fail(
            raw.name.span(),
            format!("service name {name:?} must be 1-64 characters without spaces"),
        );
    }
    for key in &raw.cites {
        if let Some(message) = Register::refuse(context.register, key.get_ref(), context.file) {
            fail(key.span(), message);
        }
    }
    if let Some(why) = raw
        .accept_risk
        .as_ref()
        .filter(|why| why.get_ref().trim().is_empty())
    {
        fail(
            why.span(),
            "accept-risk is empty; say why the broad opening is needed".into(),
        );
    }
    let mut hosts = Vec::new();
    for entry in &raw.hosts {
        match hosts::parse(entry.get_ref()) {
            Ok(patterns) => hosts.extend(patterns),
            Err(message) => fail(entry.span(), message),
        }
    }
    hosts.sort();
    hosts.dedup();
    let mut cidrs = Vec::new();
    for entry in &raw.cidrs {
        match parse_cidr(entry.get_ref()) {
            Ok(net) => cidrs.push(net),
            Err(message) => fail(entry.span(), message),
        }
    }
    cidrs.sort();
    cidrs.dedup();
    let mut ports = Vec::new();
    for (list, make) in [
        (&raw.tcp, PortSpec::Tcp as fn(_) -> PortSpec),
        (&raw.udp, PortSpec::Udp as fn(_) -> PortSpec),
    ] {
        for item in list {
            match ports::parse(item.get_ref()) {
                Ok(range) => ports.push(make(range)),
                Err(message) => fail(item.span(), message),
            }
        }
    }
    if raw.icmp {
        ports.push(PortSpec::Icmp);
    }
    if raw.hosts.is_empty() && raw.cidrs.is_empty() {
        fail(
            raw.name.span(),
            format!("service {name:?} has no destinations: give it hosts or cidrs"),
        );
    }
    if raw.tcp.is_empty() && raw.udp.is_empty() && !raw.icmp {
        fail(
            raw.name.span(),
            format!("service {name:?} allows no protocol: give it tcp, udp or icmp = true"),
        );
    }
    let id = ServiceId::try_from(context.index).ok()?;
    ok.then(|| Service {
        id,
        name,
        description: raw.description,
        source: raw.source,
        cites: raw.cites.into_iter().map(Spanned::into_inner).collect(),
        accept_risk: raw.accept_risk.map(Spanned::into_inner),
        file: context.file.to_path_buf(),
        location: context.location,
        hosts,
        cidrs,
        ports,
        groups: None,
        group_mask: filter_common::groups::ALL_GROUPS,
    })
}

/// Whether a service or group name is usable: 1-64 characters, no spaces or controls.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A CIDR, or a bare address meaning a single host. Host bits must be clear: `17.1.2.3/8` is
/// far more likely a typo than a way to write `17.0.0.0/8`.
fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpNet::from(addr));
    }
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} is not an address or a CIDR like 192.0.2.0/24"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{addr:?} in {text:?} is not an IP address"))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len: u8 = len
        .parse()
        .ok()
        .filter(|l| *l <= max)
        .ok_or_else(|| format!("prefix length in {text:?} must be 0-{max}"))?;
    let net = IpNet::new(addr, len).map_err(|e| format!("{text:?}: {e}"))?;
    if net.addr() != net.network() {
        return Err(format!(
            "{text:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A 1-based line and column in a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// Where each line of a file starts, so that placing a byte offset costs a binary search: a
/// file of 100k services has 100k spans to place, and scanning from the start for each made
/// checking it quadratic.
pub(crate) struct Lines<'t> {
    text: &'t str,
    starts: Vec<usize>,
}

impl<'t> Lines<'t> {
    pub(crate) fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(newline, _)| newline + 1))
            .collect();
        Self { text, starts }
    }

    /// The line and column (in characters) of the byte at `offset`.
    pub(crate) fn locate(&self, offset: usize) -> Location {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset);
        let start = self.starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset - start, |before| before.chars().count())
            + 1;
        Location { line, column }
    }
}

/// One problem in the rules, where it is and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub location: Option<Location>,
    pub message: String,
}

impl Diagnostic {
    fn file(path: &Path, message: String) -> Self {
        Self {
            file: path.to_path_buf(),
            location: None,
            message,
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.location {
            Some(Location { line, column }) => write!(
                f,
                "{}:{line}:{column}: {}",
                self.file.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in the rules; nothing was loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct RulesError(pub Vec<Diagnostic>);

impl fmt::Display for RulesError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "invalid rules ({} problem{}); nothing was applied",
            self.0.len(),
            if self.0.len() == 1 { "" } else { "s" }
        )?;
        for diagnostic in &self.0 {
            writeln!(f, "  {diagnostic}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
