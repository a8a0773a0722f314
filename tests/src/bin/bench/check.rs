//! `egress-filter check` on generated rules at and past the limits: 1,024 services holding 1M
//! prefixes and 100k hostnames (within every limit, checked and compiled), and 100k services
//! (refused for the service limit). The binary runs as a user runs it, wall clock from exec to
//! exit. Goal: at the limits, ≤ 2 s.

use std::{fmt::Write as _, path::Path, process::Command, time::Instant};

use anyhow::Context as _;

use crate::prefixes::Rng;

/// One generated rule set and how `check` took it.
pub(crate) struct Check {
    pub services: usize,
    pub prefixes: usize,
    pub hostnames: usize,
    pub seconds: f64,
    /// Whether `check` accepted the rules, and its last line.
    pub accepted: bool,
    pub verdict: String,
}

pub(crate) fn measure(binary: &Path) -> anyhow::Result<Vec<Check>> {
    let mut checks = Vec::new();
    for (services, prefixes, hostnames) in
        [(1_024, 1_000_000, 100_000), (100_000, 100_000, 200_000)]
    {
        let dir = std::env::temp_dir().join(format!("ef-bench-check-{services}"));
        std::fs::create_dir_all(&dir)?;
        let file = dir.join("generated.toml");
        std::fs::write(&file, generate(services, prefixes, hostnames))?;
        let started = Instant::now();
        let out = Command::new(binary)
            .args(["check", "--rules"])
            .arg(&file)
            .output()
            .context("cannot run egress-filter check")?;
        let seconds = started.elapsed().as_secs_f64();
        let _removed = std::fs::remove_dir_all(&dir);
        let text = String::from_utf8_lossy(if out.status.success() {
            &out.stdout
        } else {
            &out.stderr
        })
        .into_owned();
        checks.push(Check {
            services,
            prefixes,
            hostnames,
            seconds,
            accepted: out.status.success(),
            verdict: text
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .trim()
                .to_owned(),
        });
        eprintln!("bench: check of {services} services took {seconds:.2} s");
    }
    Ok(checks)
}

/// `services` services sharing `prefixes` distinct IPv4 /32s and `hostnames` hostnames (half
/// exact names, half wildcards), a port range each.
fn generate(services: usize, prefixes: usize, hostnames: usize) -> String {
    let mut rng = Rng::new(0xc4ec);
    let mut text = String::with_capacity(prefixes * 20 + hostnames * 30);
    let mut next_prefix = 0usize;
    let mut next_host = 0usize;
    for service in 0..services {
        let _ = write!(
            text,
            "[[service]]\nname = \"generated-{service}\"\ncidrs = ["
        );
        let until = prefixes * (service + 1) / services;
        while next_prefix < until {
            // Distinct addresses in 10.0.0.0/8 (7 × index wraps only past 2.3M of them).
            let address = 0x0a00_0000u32 + (next_prefix as u32).wrapping_mul(7) % 0x00ff_ffff;
            let [a, b, c, d] = address.to_be_bytes();
            let _ = write!(text, "\"{a}.{b}.{c}.{d}/32\",");
            next_prefix += 1;
        }
        text.push_str("]\nhosts = [");
        let until = hostnames * (service + 1) / services;
        while next_host < until {
            if next_host.is_multiple_of(2) {
                let _ = write!(text, "\"h{next_host}.example.com\",");
            } else {
                let _ = write!(text, "\"*.w{next_host}.example.net\",");
            }
            next_host += 1;
        }
        let low = 1 + rng.below(60_000) as u16;
        let _ = writeln!(text, "]\ntcp = [\"{low}-{}\"]\n", low + 100);
    }
    text
}

/// The section of BENCHMARKS.md.
pub(crate) fn table(checks: &[Check], command: &str) -> String {
    let mut out = format!(
        "## Checking rules at the limits\n\n\
         `egress-filter check --rules FILE` on one generated file, wall clock from exec to exit \
         (parse, validate and, within the limits, compile the allow table). Goal: the 1,024 \
         services with 1M prefixes and 100k hostnames in ≤ 2 s; past the service limit, refused \
         before any service is validated. Produced by `{command}`.\n\n\
         | services | prefixes | hostnames | time | result | goal |\n|---|---|---|---|---|---|\n"
    );
    for check in checks {
        let goal = if check.services <= 1_024 {
            if check.accepted && check.seconds <= 2.0 {
                "≤ 2 s: met"
            } else {
                "≤ 2 s: **not met**"
            }
        } else if check.accepted {
            "refused: **not met**"
        } else {
            "refused: met"
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {:.2} s | {} | {goal} |",
            check.services,
            check.prefixes,
            check.hostnames,
            check.seconds,
            check.verdict.replace('|', "/"),
        );
    }
    out
}
