//! The cost of one `/metrics` scrape with the shipped rules: every service's counters, two
//! interfaces with both hooks, the DNS forwarder's counters and histogram, encoded as the
//! daemon's server encodes them. The goal: under 5 ms.

use std::{sync::Arc, time::Instant};

use filter_common::Hook;
use filter_user::{
    dns::DnsCounters,
    metrics::{CountedInterface, Health, Metrics, Published},
    rules::Rules,
};

/// Scrapes timed.
const SCRAPES: usize = 200;

/// Median and slowest scrape, in microseconds, and the exposition's size in bytes and lines.
pub(crate) struct Scrape {
    pub services: usize,
    pub median_us: f64,
    pub max_us: f64,
    pub bytes: usize,
    pub lines: usize,
}

pub(crate) fn measure() -> anyhow::Result<Scrape> {
    let rules = Rules::load(&[std::path::PathBuf::from("rules")])?;
    let filter = filter_tests::harness::Filter::empty()?;
    let metrics = Metrics::new(filter.counters()?, Some(Arc::new(DnsCounters::default())))?;
    let services: Vec<String> = rules.services.iter().map(|s| s.name.clone()).collect();
    let interfaces = ["lan0", "wan0"]
        .iter()
        .enumerate()
        .map(|(i, name)| CountedInterface {
            slot: i as u32 + 1,
            name: (*name).to_owned(),
            hooks: vec![Hook::Xdp, Hook::Tc],
        })
        .collect();
    metrics.publish(|published| {
        *published = Published {
            health: Health::Enforcing,
            services: services.clone(),
            interfaces,
            learning: Some((filter_user::dns::LearnCounters::default(), 0)),
            ..Published::default()
        };
    });
    let mut times = Vec::with_capacity(SCRAPES);
    let mut exposition = String::new();
    for _ in 0..SCRAPES {
        let started = Instant::now();
        exposition = metrics.encode()?;
        times.push(started.elapsed().as_secs_f64() * 1e6);
    }
    times.sort_by(f64::total_cmp);
    Ok(Scrape {
        services: services.len(),
        median_us: times[SCRAPES / 2],
        max_us: times[SCRAPES - 1],
        bytes: exposition.len(),
        lines: exposition.lines().count(),
    })
}

/// The section of BENCHMARKS.md.
pub(crate) fn table(scrape: &Scrape, command: &str) -> String {
    format!(
        "## A metrics scrape\n\n\
         One `GET /metrics` encoding with the shipped rules ({} services), two interfaces with \
         both hooks and the DNS forwarder: every kernel counter read and summed over CPUs, \
         {SCRAPES} scrapes. Goal: under 5 ms. Produced by `{command}`.\n\n\
         | median | slowest | exposition | goal |\n|---|---|---|---|\n\
         | {:.0} µs | {:.0} µs | {} lines, {} KB | {} |\n",
        scrape.services,
        scrape.median_us,
        scrape.max_us,
        scrape.lines,
        scrape.bytes / 1024,
        if scrape.max_us < 5000.0 {
            "met"
        } else {
            "not met"
        },
    )
}
