//! `egress-filter check`: validate rule files and summarise them; with `--strict`, refuse broad
//! openings no service accepts; with `--max-source-age`, warn about sources not checked lately.
//!
//! Example: `egress-filter check --rules rules/ --strict --max-source-age 180`

use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf};

use crate::{
    compile::{compile, Resolved},
    risk,
    rules::{register::Day, Diagnostic, HostPattern, Rules},
};

/// `check`: validate rule files and summarise them.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A rules file, or a directory whose *.toml files are loaded. Repeatable.
    #[arg(long = "rules", required = true, value_name = "PATH")]
    pub rules: Vec<PathBuf>,
    /// Also fail on broad openings (prefixes shorter than /16 or /32, port ranges wider than
    /// 100 ports, `any`, wildcards under shared hosting/CDN domains) in services that do not
    /// say `accept-risk = "why"`.
    #[arg(long)]
    pub strict: bool,
    /// Warn about every cited source last checked more than DAYS days ago.
    #[arg(long, value_name = "DAYS")]
    pub max_source_age: Option<u32>,
}

/// What `check` prints: the summary on stdout, warnings on stderr.
#[derive(Debug)]
pub struct Checked {
    pub summary: String,
    pub warnings: Vec<String>,
}

/// Loads, validates and compiles the rules (without resolving) and returns the summary to print.
/// Any problem is an error naming file, line and column.
pub fn run(args: &Args) -> anyhow::Result<Checked> {
    let rules = Rules::load(&args.rules)?;
    if args.strict {
        let refused = unaccepted_risks(&rules);
        if !refused.is_empty() {
            let mut message = format!(
                "strict check failed ({} problem{}): broad openings need accept-risk = \"why\"",
                refused.len(),
                if refused.len() == 1 { "" } else { "s" }
            );
            for diagnostic in &refused {
                let _ = write!(message, "\n  {diagnostic}");
            }
            anyhow::bail!(message);
        }
    }
    let table = compile(&rules, &Resolved::default())?;
    let warnings = args
        .max_source_age
        .map(|days| stale_sources(&rules, Day::today(), days))
        .unwrap_or_default();
    Ok(Checked {
        summary: summary(
            &rules,
            table.v4.len(),
            table.v6.len(),
            table.distinct_rule_sets().len(),
        ),
        warnings,
    })
}

/// Each broad opening of a service without `accept-risk`, and each `accept-risk` that accepts
/// nothing (an acceptance must not outlive the opening it was written for).
fn unaccepted_risks(rules: &Rules) -> Vec<Diagnostic> {
    let mut found = Vec::new();
    for service in &rules.services {
        let risks = risk::of_service(service);
        let at = |message: String| Diagnostic {
            file: service.file.clone(),
            location: Some(service.location),
            message,
        };
        match (&service.accept_risk, risks.is_empty()) {
            (None, false) => found.extend(risks.iter().map(|risk| {
                at(format!(
                    "service {:?} opens {risk} without accept-risk",
                    service.name
                ))
            })),
            (Some(_), true) => found.push(at(format!(
                "service {:?} says accept-risk but opens nothing broad; remove it",
                service.name
            ))),
            _ => {}
        }
    }
    found
}

/// A warning for each cited source last checked more than `max_days` before `today`.
fn stale_sources(rules: &Rules, today: Day, max_days: u32) -> Vec<String> {
    let cited: std::collections::BTreeSet<&str> = rules
        .services
        .iter()
        .flat_map(|s| s.cites.iter().map(String::as_str))
        .collect();
    let mut warnings = Vec::new();
    for register in &rules.registers {
        for source in register.sources.values() {
            let age = today.0 - source.checked.0;
            if cited.contains(source.key.as_str()) && age > i64::from(max_days) {
                warnings.push(format!(
                    "warning: {}:{}:{}: source {} ({}) was last checked {} ({age} days ago, more than {max_days})",
                    register.file.display(),
                    source.location.line,
                    source.location.column,
                    source.key,
                    source.title,
                    source.checked,
                ));
            }
        }
    }
    warnings
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
    if !rules.groups.is_empty() {
        let names: Vec<String> = rules.every_group().into_iter().map(|(_, n)| n).collect();
        let _ = writeln!(
            out,
            "{} client groups: {} (see `show` for what each may reach)",
            names.len(),
            names.join(", ")
        );
    }
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

    fn strict_problems(text: &str) -> Vec<String> {
        let rules = Rules::parse_sources(&[(Path::new("s.toml"), text)]).unwrap();
        unaccepted_risks(&rules)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn strict_refuses_broad_openings_unless_accepted() {
        let broad = "\n[[service]]\nname = \"wide\"\nhosts = [\"*.googleapis.com\"]\ncidrs = [\"17.0.0.0/8\"]\ntcp = [\"any\"]\n";
        let problems = strict_problems(broad);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            problems[0].starts_with("s.toml:2:1: service \"wide\" opens *.googleapis.com: wildcard under shared hosting/CDN domain googleapis.com without accept-risk"),
            "{problems:?}"
        );
        let accepted = broad.replace("tcp =", "accept-risk = \"the vendor requires it\"\ntcp =");
        assert!(strict_problems(&accepted).is_empty());
        let needless = "[[service]]\nname = \"narrow\"\naccept-risk = \"just in case\"\nhosts = [\"a.example.com\"]\ntcp = [443]\n";
        assert!(
            strict_problems(needless)[0].contains("opens nothing broad"),
            "{:?}",
            strict_problems(needless)
        );
    }

    #[test]
    fn sources_checked_too_long_ago_are_warned_about_when_cited() {
        let register_text = "[[source]]\nkey = \"OLD\"\ntitle = \"Old page\"\nurl = \"https://example.com/old\"\nchecked = 2026-01-01\n\n[[source]]\nkey = \"UNCITED\"\ntitle = \"t\"\nurl = \"u\"\nchecked = 2020-01-01\n";
        let register =
            crate::rules::register::Register::parse(Path::new("sources.toml"), register_text)
                .unwrap();
        let mut rules = Rules::parse_cited(
            &[(
                Path::new("a.toml"),
                "[[service]]\nname = \"a\"\ncites = [\"OLD\"]\nhosts = [\"a.example.com\"]\ntcp = [443]\n",
            )],
            &|_| Some(&register),
        )
        .unwrap();
        rules.registers.push(register.clone());
        let jan_31 = Day(register.sources["OLD"].checked.0 + 30);
        assert!(stale_sources(&rules, jan_31, 30).is_empty());
        let warnings = stale_sources(&rules, jan_31, 29);
        assert_eq!(
            warnings,
            ["warning: sources.toml:1:1: source OLD (Old page) was last checked 2026-01-01 (30 days ago, more than 29)"]
        );
    }
}
