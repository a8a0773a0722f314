//! `egress-filter import`: rule TOML from vendor feeds, so the rules can follow them.
//!
//! The output is checked with the same parser `check` uses before it is printed: an import that
//! `check` would refuse is an error here, not a surprise later. Imports do not over-open: sets a
//! feed marks optional are left out unless asked for, Google Cloud customer ranges can be taken
//! out of Google's ranges, and every broad opening (see [`crate::risk`]) is named in the
//! header, where `check --strict` will refuse it until a person writes `accept-risk`.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::{
    prefixes, risk,
    rules::{hosts, ports, Rules},
};

/// The Microsoft 365 endpoint sets outside service area MEM that the Intune page lists as
/// Intune's own requirements: Entra ID authentication (56), device registration (59), Microsoft
/// account (97) and the Office customization service (150, not required). An import of MEM
/// includes them; without them enrolled devices cannot sign in.
pub const INTUNE_IDENTITY_SETS: [u32; 4] = [56, 59, 97, 150];

/// What `import m365` is asked for.
#[derive(Debug, Default)]
pub struct M365Options<'a> {
    /// Only this service area (MEM also brings [`INTUNE_IDENTITY_SETS`]).
    pub service_area: Option<&'a str>,
    /// Keep sets the feed marks `"required": false`.
    pub include_optional: bool,
    /// The saved answer of the web service's version method, recorded in the header.
    pub feed_version: Option<&'a Path>,
}

/// What `import google` is asked for.
#[derive(Debug)]
pub struct GoogleOptions<'a> {
    pub name: &'a str,
    pub tcp: &'a str,
    pub udp: Option<&'a str>,
    /// cloud.json: Google Cloud customer ranges to take out of the input.
    pub exclude: Option<&'a Path>,
    /// Accept cloud.json itself as the input (every Google Cloud customer's addresses).
    pub cloud_ranges: bool,
}

/// A record of the Microsoft 365 endpoints web service (`/endpoints/WorldWide`), as documented:
/// `id`, `serviceArea`, `urls`, `ips`, `tcpPorts`/`udpPorts` as comma lists with `-` ranges.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct M365Record {
    id: u32,
    service_area: String,
    #[serde(default)]
    service_area_display_name: Option<String>,
    #[serde(default)]
    urls: Vec<String>,
    #[serde(default)]
    ips: Vec<String>,
    #[serde(default)]
    tcp_ports: Option<String>,
    #[serde(default)]
    udp_ports: Option<String>,
    #[serde(default)]
    category: Option<String>,
    #[serde(default)]
    required: Option<bool>,
    #[serde(default)]
    notes: Option<String>,
}

/// The web service's version method (`/version/Worldwide`): the feed's version, `YYYYMMDDNN`.
#[derive(Deserialize)]
struct M365Version {
    instance: String,
    latest: String,
}

/// Google's `goog.json` (ranges Google makes available to users on the internet) or
/// `cloud.json` (Google Cloud customers' external ranges), which adds `service` and `scope`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GoogleRanges {
    #[serde(default)]
    sync_token: Option<String>,
    #[serde(default)]
    creation_time: Option<String>,
    prefixes: Vec<GooglePrefix>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GooglePrefix {
    #[serde(default)]
    ipv4_prefix: Option<String>,
    #[serde(default)]
    ipv6_prefix: Option<String>,
    #[serde(default)]
    service: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

impl GoogleRanges {
    /// Reads goog.json or cloud.json.
    fn read(file: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not goog.json (no `prefixes` list?)", file.display()))
    }

    /// Whether this is cloud.json: its items name a Google Cloud service and region.
    fn is_cloud(&self) -> bool {
        self.prefixes
            .iter()
            .any(|p| p.service.is_some() || p.scope.is_some())
    }

    fn prefixes(&self) -> anyhow::Result<Vec<ipnet::IpNet>> {
        self.prefixes
            .iter()
            .filter_map(|p| p.ipv4_prefix.as_ref().or(p.ipv6_prefix.as_ref()))
            .map(|text| {
                text.parse()
                    .with_context(|| format!("{text:?} is not a prefix"))
            })
            .collect()
    }

    fn stamp(&self) -> String {
        format!(
            "syncToken {}, creationTime {}",
            self.sync_token.as_deref().unwrap_or("unknown"),
            self.creation_time.as_deref().unwrap_or("unknown")
        )
    }
}

#[derive(Serialize)]
struct OutFile {
    service: Vec<OutService>,
}

#[derive(Serialize)]
struct OutService {
    name: String,
    description: String,
    source: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    hosts: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cidrs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tcp: Vec<OutPort>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    udp: Vec<OutPort>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum OutPort {
    Single(u16),
    Range(String),
}

/// Converts the Microsoft 365 endpoints JSON in `file`.
pub fn m365(file: &Path, options: &M365Options<'_>) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let records: Vec<M365Record> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not Microsoft 365 endpoints JSON", file.display()))?;
    let service_area = options.service_area;
    let mut header = format!(
        "# Imported by `egress-filter import m365` from {}{}.\n{}",
        file.display(),
        service_area
            .map(|a| format!(", service area {a}"))
            .unwrap_or_default(),
        feed_version_line(options.feed_version)?
    );
    if service_area.is_some_and(|area| area.eq_ignore_ascii_case("MEM")) {
        header.push_str(
            "# The Intune endpoints page of 2026-03-24 (MS-I26) says this feed's MEM records are no \
             longer accurate: compare with rules/intune.toml (`egress-filter diff`) before use.\n",
        );
    }
    let wanted = |record: &M365Record| match service_area {
        None => true,
        Some(area) => {
            record.service_area.eq_ignore_ascii_case(area)
                || (area.eq_ignore_ascii_case("MEM") && INTUNE_IDENTITY_SETS.contains(&record.id))
        }
    };
    let mut services = Vec::new();
    for record in records.iter().filter(|r| wanted(r)) {
        if record.required == Some(false) && !options.include_optional {
            let _ = writeln!(
                header,
                "# set {}: skipped, the feed marks it optional (--include-optional keeps it)",
                record.id
            );
            continue;
        }
        if let Some(service) = m365_service(record, &mut header)? {
            services.push(service);
        }
    }
    anyhow::ensure!(
        !services.is_empty(),
        "no endpoint set in {}{} has both a destination and a port{}",
        file.display(),
        service_area
            .map(|a| format!(" with service area {a}"))
            .unwrap_or_default(),
        if options.include_optional {
            ""
        } else {
            " among the required sets (--include-optional adds the others)"
        }
    );
    emit(&header, services)
}

/// One endpoint set as a service, or `None` where it names no destination or no port. Names
/// the format cannot express, and skipped sets, are noted in `header`.
fn m365_service(record: &M365Record, header: &mut String) -> anyhow::Result<Option<OutService>> {
    let (hosts, refused): (Vec<&String>, Vec<&String>) =
        record.urls.iter().partition(|u| hosts::parse(u).is_ok());
    if !refused.is_empty() {
        let _ = writeln!(
            header,
            "# set {}: left out names this format cannot express: {}",
            record.id,
            refused
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let tcp = port_list(record.tcp_ports.as_deref())
        .with_context(|| format!("set {}: tcpPorts", record.id))?;
    let udp = port_list(record.udp_ports.as_deref())
        .with_context(|| format!("set {}: udpPorts", record.id))?;
    if (hosts.is_empty() && record.ips.is_empty()) || (tcp.is_empty() && udp.is_empty()) {
        let _ = writeln!(
            header,
            "# set {}: skipped, it names no destination or no port",
            record.id
        );
        return Ok(None);
    }
    let mut description = record
        .service_area_display_name
        .clone()
        .unwrap_or_else(|| record.service_area.clone());
    for (label, value) in [
        ("category", record.category.clone()),
        ("notes", record.notes.clone()),
    ] {
        if let Some(value) = value {
            let _ = write!(description, "; {label}: {value}");
        }
    }
    if record.required == Some(false) {
        description.push_str("; optional");
    }
    Ok(Some(OutService {
        name: format!(
            "m365-{}-{}",
            record.service_area.to_ascii_lowercase(),
            record.id
        ),
        description,
        source: format!(
            "Microsoft 365 IP Address and URL web service, endpoint set {}",
            record.id
        ),
        hosts: hosts.into_iter().map(|h| h.to_ascii_lowercase()).collect(),
        cidrs: record.ips.clone(),
        tcp,
        udp,
    }))
}

/// Converts Google's `goog.json` in `file` into one service allowing the given ports to every
/// range, less the Google Cloud customer ranges of `exclude` (cloud.json) when given.
pub fn google(file: &Path, options: &GoogleOptions<'_>) -> anyhow::Result<String> {
    let ranges = GoogleRanges::read(file)?;
    anyhow::ensure!(
        options.cloud_ranges || !ranges.is_cloud(),
        "{} is cloud.json, Google Cloud customers' ranges: allowing it opens every customer's \
         servers. Give goog.json (and this file with --exclude), or --cloud-ranges if that is meant",
        file.display()
    );
    let mut cidrs = ranges.prefixes()?;
    anyhow::ensure!(!cidrs.is_empty(), "{} lists no prefixes", file.display());
    let mut header = format!(
        "# Imported by `egress-filter import google` from {} ({}).\n# Google's advice for FCM when IP filtering is unavoidable: allow all of goog.json, refresh monthly.\n",
        file.display(),
        ranges.stamp()
    );
    let mut source = format!("Google IP ranges, goog.json, {}", ranges.stamp());
    let mut description =
        String::from("Every range Google makes available to users on the internet (goog.json)");
    if let Some(exclude) = options.exclude {
        let cloud = GoogleRanges::read(exclude)?;
        let before = cidrs.len();
        cidrs = prefixes::subtract(&cidrs, &cloud.prefixes()?);
        let _ = writeln!(
            header,
            "# Less the Google Cloud customer ranges of {} ({}): {before} prefixes became {}.",
            exclude.display(),
            cloud.stamp(),
            cidrs.len()
        );
        let _ = write!(source, ", less cloud.json {}", cloud.stamp());
        description.push_str(", less Google Cloud customers' ranges (cloud.json)");
        anyhow::ensure!(
            !cidrs.is_empty(),
            "nothing of {} is left outside {}",
            file.display(),
            exclude.display()
        );
    }
    let service = OutService {
        name: options.name.to_owned(),
        description,
        source,
        hosts: Vec::new(),
        cidrs: cidrs.iter().map(ToString::to_string).collect(),
        tcp: port_list(Some(options.tcp)).context("--tcp")?,
        udp: port_list(options.udp).context("--udp")?,
    };
    emit(&header, vec![service])
}

/// The header line naming the feed's version and the date it encodes (`YYYYMMDDNN`).
fn feed_version_line(version_file: Option<&Path>) -> anyhow::Result<String> {
    let Some(file) = version_file else {
        return Ok("# Feed version: not recorded (save the version method's answer and pass it with --feed-version).\n".into());
    };
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let version: M365Version = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not the version method's answer (`instance`, `latest`)",
            file.display()
        )
    })?;
    let latest = &version.latest;
    anyhow::ensure!(
        latest.len() == 10 && latest.bytes().all(|b| b.is_ascii_digit()),
        "{}: version {latest:?} is not YYYYMMDDNN",
        file.display()
    );
    Ok(format!(
        "# Feed: instance {}, version {latest}, published {}-{}-{}.\n",
        version.instance,
        &latest[..4],
        &latest[4..6],
        &latest[6..8]
    ))
}

/// A comma list of ports and `lo-hi` ranges, as the feeds write them.
fn port_list(list: Option<&str>) -> anyhow::Result<Vec<OutPort>> {
    let Some(list) = list else {
        return Ok(Vec::new());
    };
    list.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|item| {
            let range = ports::parse(&ports::PortItem::Text(item.to_owned()))
                .map_err(anyhow::Error::msg)?;
            Ok(if range.start() == range.end() {
                OutPort::Single(*range.start())
            } else {
                OutPort::Range(item.to_owned())
            })
        })
        .collect()
}

/// Renders the services, proves `check` accepts them, and names their broad openings.
fn emit(header: &str, services: Vec<OutService>) -> anyhow::Result<String> {
    let body = toml::to_string(&OutFile { service: services }).context("cannot render TOML")?;
    let rules = Rules::parse_sources(&[(Path::new("(import output)"), &body)])
        .map_err(|e| anyhow::anyhow!("the import produced rules that do not validate:\n{e}"))?;
    let mut header = header.to_owned();
    for service in &rules.services {
        for broad in risk::of_service(service) {
            let _ = writeln!(
                header,
                "# RISK {}: {broad} (check --strict refuses it without accept-risk)",
                service.name
            );
        }
    }
    Ok(format!("{header}\n{body}"))
}

#[cfg(test)]
mod tests;
