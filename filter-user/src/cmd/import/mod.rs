//! `egress-filter import`: rule TOML from vendor feeds, so the rules can follow them.
//!
//! The output is checked with the same parser `check` uses before it is printed: an import that
//! `check` would refuse is an error here, not a surprise later.

use std::{fmt::Write as _, path::Path};

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::rules::{hosts, ports, Rules};

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

/// Google's `goog.json`: the ranges Google makes available to users on the internet.
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

/// Converts the Microsoft 365 endpoints JSON in `file`, optionally only one service area.
pub fn m365(file: &Path, service_area: Option<&str>) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let records: Vec<M365Record> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not Microsoft 365 endpoints JSON", file.display()))?;
    let mut header = format!(
        "# Imported by `egress-filter import m365` from {}{}.\n",
        file.display(),
        service_area
            .map(|a| format!(", service area {a}"))
            .unwrap_or_default()
    );
    let mut services = Vec::new();
    for record in records
        .iter()
        .filter(|r| service_area.is_none_or(|a| r.service_area.eq_ignore_ascii_case(a)))
    {
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
            continue;
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
        services.push(OutService {
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
        });
    }
    anyhow::ensure!(
        !services.is_empty(),
        "no endpoint set in {}{} has both a destination and a port",
        file.display(),
        service_area
            .map(|a| format!(" with service area {a}"))
            .unwrap_or_default()
    );
    emit(&header, services)
}

/// Converts Google's `goog.json` in `file` into one service allowing `tcp`/`udp` to every range.
pub fn google(file: &Path, name: &str, tcp: &str, udp: Option<&str>) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let ranges: GoogleRanges = serde_json::from_str(&text)
        .with_context(|| format!("{} is not goog.json (no `prefixes` list?)", file.display()))?;
    let cidrs: Vec<String> = ranges
        .prefixes
        .iter()
        .filter_map(|p| p.ipv4_prefix.clone().or_else(|| p.ipv6_prefix.clone()))
        .collect();
    anyhow::ensure!(!cidrs.is_empty(), "{} lists no prefixes", file.display());
    let header = format!(
        "# Imported by `egress-filter import google` from {}.\n# Google's advice for FCM when IP filtering is unavoidable: allow all of goog.json, refresh monthly.\n",
        file.display()
    );
    let service = OutService {
        name: name.to_owned(),
        description: "Every range Google makes available to users on the internet (goog.json)"
            .into(),
        source: format!(
            "Google IP ranges, goog.json, syncToken {}, creationTime {}",
            ranges.sync_token.as_deref().unwrap_or("unknown"),
            ranges.creation_time.as_deref().unwrap_or("unknown")
        ),
        hosts: Vec::new(),
        cidrs,
        tcp: port_list(Some(tcp)).context("--tcp")?,
        udp: port_list(udp).context("--udp")?,
    };
    emit(&header, vec![service])
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

/// Renders the services and proves `check` accepts them.
fn emit(header: &str, services: Vec<OutService>) -> anyhow::Result<String> {
    let body = toml::to_string(&OutFile { service: services }).context("cannot render TOML")?;
    let out = format!("{header}\n{body}");
    Rules::parse_sources(&[(Path::new("(import output)"), &out)])
        .map_err(|e| anyhow::anyhow!("the import produced rules that do not validate:\n{e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn load(text: &str) -> Rules {
        Rules::parse_sources(&[(Path::new("out.toml"), text)]).expect("check accepts the import")
    }

    #[test]
    fn m365_mem_area_becomes_one_service_per_endpoint_set() {
        let out = m365(&fixture("m365-endpoints.json"), Some("MEM")).unwrap();
        let rules = load(&out);
        let names: Vec<&str> = rules.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["m365-mem-163", "m365-mem-165", "m365-mem-172"],
            "{out}"
        );
        let core = &rules.services[0];
        assert!(core.cidrs.contains(&"2620:1ec:40::/48".parse().unwrap()));
        assert!(core
            .hosts
            .iter()
            .any(|h| h.to_string() == "*.manage.microsoft.com"));
        assert_eq!(
            core.ports,
            [
                crate::table::PortSpec::Tcp(80..=80),
                crate::table::PortSpec::Tcp(443..=443)
            ]
        );
        assert_eq!(
            rules.services[1].ports,
            [crate::table::PortSpec::Udp(123..=123)]
        );
        assert!(
            out.contains("set 999: skipped"),
            "a set without ports is reported: {out}"
        );
    }

    #[test]
    fn m365_keeps_every_area_without_filter_and_reports_inexpressible_names() {
        let out = m365(&fixture("m365-endpoints.json"), None).unwrap();
        let rules = load(&out);
        assert!(rules.services.iter().any(|s| s.name == "m365-exchange-1"));
        assert!(
            out.contains("autodiscover.*.onmicrosoft.com"),
            "a mid-name wildcard is named as left out: {out}"
        );
    }

    #[test]
    fn google_ranges_become_one_service_with_the_fcm_ports() {
        let out = google(
            &fixture("goog.json"),
            "google-ip-ranges",
            "443,5228-5230",
            None,
        )
        .unwrap();
        let rules = load(&out);
        let s = &rules.services[0];
        assert_eq!(s.cidrs.len(), 4);
        assert_eq!(
            s.ports,
            [
                crate::table::PortSpec::Tcp(443..=443),
                crate::table::PortSpec::Tcp(5228..=5230)
            ]
        );
        assert!(s.source.contains("1631120724291"), "{}", s.source);
    }

    #[test]
    fn malformed_feeds_are_errors_naming_the_file() {
        let err = google(&fixture("m365-endpoints.json"), "x", "443", None).unwrap_err();
        assert!(
            format!("{err:#}").contains("m365-endpoints.json is not goog.json"),
            "{err:#}"
        );
        let err = m365(&fixture("m365-endpoints.json"), Some("NoSuchArea")).unwrap_err();
        assert!(
            err.to_string().contains("with service area NoSuchArea"),
            "{err}"
        );
        assert!(port_list(Some("80,9-1")).is_err());
    }
}
