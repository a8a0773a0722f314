//! `egress-filter check`: validate rule files and summarise them.

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use crate::{
    compile::{compile, Resolved},
    rules::{HostPattern, Rules},
};

/// Loads, validates and compiles the rules (without resolving) and returns the summary to print.
/// Any problem is an error naming file, line and column.
pub fn run(paths: &[PathBuf]) -> anyhow::Result<String> {
    let rules = Rules::load(paths)?;
    let table = compile(&rules, &Resolved::default())?;
    Ok(summary(
        &rules,
        table.v4.len(),
        table.v6.len(),
        table.distinct_rule_sets().len(),
    ))
}

#[derive(Default)]
struct Counts {
    services: usize,
    cidrs: usize,
    hosts: usize,
    wildcards: usize,
}

fn summary(rules: &Rules, v4: usize, v6: usize, port_sets: usize) -> String {
    let mut per_file: BTreeMap<&PathBuf, Counts> =
        rules.files.iter().map(|f| (f, Counts::default())).collect();
    let mut total = Counts::default();
    for service in &rules.services {
        let wildcards = service
            .hosts
            .iter()
            .filter(|h| matches!(h, HostPattern::Wildcard(_)))
            .count();
        for counts in [per_file.entry(&service.file).or_default(), &mut total] {
            counts.services += 1;
            counts.cidrs += service.cidrs.len();
            counts.hosts += service.hosts.len() - wildcards;
            counts.wildcards += wildcards;
        }
    }
    let line = |c: &Counts| {
        format!(
            "{} services, {} prefixes, {} hostnames, {} wildcard names",
            c.services, c.cidrs, c.hosts, c.wildcards
        )
    };
    let mut out = String::new();
    for (file, counts) in &per_file {
        let _ = writeln!(out, "{}: {}", file.display(), line(counts));
    }
    let _ = writeln!(out, "ok: {}", line(&total));
    let _ = writeln!(
        out,
        "compiles to {v4} IPv4 and {v6} IPv6 table entries with {port_sets} distinct port sets (hostnames add entries once resolved)"
    );
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn summary_counts_per_file_and_in_total() {
        let rules = Rules::parse_sources(&[
            (Path::new("a.toml"), "[[service]]\nname = \"a\"\nhosts = [\"{1..3}.example.com\", \"*.example.net\"]\ncidrs = [\"192.0.2.0/24\"]\ntcp = [443]\n"),
            (Path::new("b.toml"), "[[service]]\nname = \"b\"\ncidrs = [\"2001:db8::/32\", \"198.51.100.0/24\"]\nudp = [123]\n"),
        ])
        .unwrap();
        let text = summary(&rules, 2, 1, 2);
        assert!(
            text.contains("a.toml: 1 services, 1 prefixes, 3 hostnames, 1 wildcard names"),
            "{text}"
        );
        assert!(
            text.contains("b.toml: 1 services, 2 prefixes, 0 hostnames, 0 wildcard names"),
            "{text}"
        );
        assert!(
            text.contains("ok: 2 services, 3 prefixes, 3 hostnames, 1 wildcard names"),
            "{text}"
        );
        assert!(text.contains("2 IPv4 and 1 IPv6"), "{text}");
    }
}
