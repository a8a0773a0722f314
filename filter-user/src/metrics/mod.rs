//! Prometheus metrics: what `--metrics-listen` serves on `/metrics`, and the health `/healthz`
//! reports.
//!
//! Three sources, none of which a scrape can stall:
//! - the kernel's per-CPU counters, read and summed at scrape time ([`Counters`]);
//! - the DNS forwarder's atomics and its hold-time histogram, read at scrape time;
//! - what only the daemon's loop knows (table sizes, hostnames, learned addresses, reloads),
//!   which the loop publishes into a [`Published`] snapshot after every change and once a
//!   second; a scrape copies it under a lock held for a copy's time.
//!
//! No label carries a client address or a hostname: labels are reasons, hooks, the interfaces
//! the daemon attached to, the services of the rules, and fixed outcome names, so the number of
//! series is bounded by the configuration, never by the traffic.

pub mod server;

use std::sync::{Arc, Mutex};

use filter_common::{
    counters::COUNTED_INTERFACES, maps::MAX_PREFIXES, EventCounter, Hook, PacketCount, Reason,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        info::Info,
        MetricType,
    },
    registry::Registry,
};

use crate::{counters::Counters, dns::DnsCounters, dns::LearnCounters};

/// One interface the daemon attached to, as its counters are labelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CountedInterface {
    /// Its slot in the kernel's reason counters (`filter_common::counters`).
    pub slot: u32,
    pub name: String,
    pub hooks: Vec<Hook>,
}

/// Whether the filter enforces the policy it was asked to, as `/healthz` answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Loading, resolving, attaching: not filtering yet.
    Starting,
    /// Attached, and the maps hold the table the current rules compile to.
    Enforcing,
    /// Attached and filtering, but not with the intended policy: a reload was refused or the
    /// maps could not be written. The text says which.
    Degraded(String),
}

/// What the daemon's loop knows, as of its last publication.
#[derive(Clone, Debug)]
pub struct Published {
    pub health: Health,
    pub audit: bool,
    /// Service names by id (the ids of the kernel's service counters).
    pub services: Vec<String>,
    pub interfaces: Vec<CountedInterface>,
    pub prefixes_v4: usize,
    pub prefixes_v6: usize,
    pub hostnames_resolved: usize,
    pub hostnames_failing: usize,
    /// `None` without the DNS forwarder.
    pub learning: Option<(LearnCounters, usize)>,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            health: Health::Starting,
            audit: false,
            services: Vec::new(),
            interfaces: Vec::new(),
            prefixes_v4: 0,
            prefixes_v6: 0,
            hostnames_resolved: 0,
            hostnames_failing: 0,
            learning: None,
        }
    }
}

/// Counters only the daemon's loop moves.
#[derive(Clone, Debug, Default)]
pub struct LoopCounters {
    /// Rule reloads, by `result` (`success`, `failure`).
    pub reloads: Family<[(&'static str, &'static str); 1], Counter>,
    /// Unix time of the last reload (or the start) whose policy reached the kernel.
    pub last_reload_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Hostname lookups, by `result` (`success`, `failure`).
    pub lookups: Family<[(&'static str, &'static str); 1], Counter>,
    /// Unix time of the last lookup that returned addresses.
    pub last_lookup_success: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Map writes that failed (each followed by a full rebuild).
    pub policy_write_failures: Counter,
}

/// The registry `/metrics` encodes, and the handles the daemon writes through.
pub struct Metrics {
    pub registry: Registry,
    pub published: Arc<Mutex<Published>>,
    pub counters: LoopCounters,
}

impl Metrics {
    /// Every metric, with `kernel` read at each scrape and `dns` when the forwarder runs.
    #[must_use]
    pub fn new(kernel: Counters, dns: Option<Arc<DnsCounters>>) -> Self {
        let mut registry = Registry::with_prefix("egress_filter");
        let published = Arc::new(Mutex::new(Published::default()));
        let counters = LoopCounters::default();
        registry.register(
            "build",
            "The running build: version and git commit",
            Info::new([
                ("version", env!("CARGO_PKG_VERSION")),
                (
                    "commit",
                    option_env!("EGRESS_FILTER_COMMIT").unwrap_or("unknown"),
                ),
            ]),
        );
        registry.register(
            "policy_reloads",
            "Rule reloads (SIGHUP), by result: success when the new policy reached the kernel.",
            counters.reloads.clone(),
        );
        registry.register(
            "policy_last_reload_success_timestamp_seconds",
            "When the policy last reached the kernel after a start or a reload (Unix time)",
            counters.last_reload_success.clone(),
        );
        registry.register(
            "policy_write_failures",
            "Map writes that failed; the running policy stays and a full rebuild follows",
            counters.policy_write_failures.clone(),
        );
        registry.register(
            "hostname_lookups",
            "Lookups of the rules' hostnames, by result",
            counters.lookups.clone(),
        );
        registry.register(
            "hostname_last_success_timestamp_seconds",
            "When a lookup of a rules' hostname last returned addresses (Unix time)",
            counters.last_lookup_success.clone(),
        );
        registry.register_collector(Box::new(ScrapeTime {
            kernel,
            dns,
            published: Arc::clone(&published),
        }));
        Self {
            registry,
            published,
            counters,
        }
    }

    /// Replaces what the loop publishes.
    pub fn publish(&self, update: impl FnOnce(&mut Published)) {
        if let Ok(mut published) = self.published.lock() {
            update(&mut published);
        }
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }

    /// The health as last published.
    #[must_use]
    pub fn health(&self) -> Health {
        self.published
            .lock()
            .map_or(Health::Degraded("metrics lock poisoned".into()), |p| {
                p.health.clone()
            })
    }
}

/// Metrics read when scraped.
#[derive(Debug)]
struct ScrapeTime {
    kernel: Counters,
    dns: Option<Arc<DnsCounters>>,
    published: Arc<Mutex<Published>>,
}

impl Collector for ScrapeTime {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(published) = self.published.lock().map(|p| p.clone()) else {
            return Ok(());
        };
        self.encode_packets(&mut encoder, &published)?;
        self.encode_services(&mut encoder, &published)?;
        self.encode_events(&mut encoder)?;
        encode_loop_state(&mut encoder, &published)?;
        if let Some(dns) = &self.dns {
            encode_dns(&mut encoder, dns, &published)?;
        }
        Ok(())
    }
}

type Labels = Vec<(&'static str, String)>;

impl ScrapeTime {
    /// Packets and bytes by interface, hook, reason and verdict.
    fn encode_packets(
        &self,
        encoder: &mut DescriptorEncoder,
        published: &Published,
    ) -> Result<(), std::fmt::Error> {
        let mut samples: Vec<(Labels, PacketCount)> = Vec::new();
        let mut read = |slot: u32, name: &str, hook: Hook, keep_zero: bool| {
            for reason in Reason::ALL {
                let Ok(count) = self.kernel.reason_at(slot, hook, reason) else {
                    continue;
                };
                if keep_zero || count != PacketCount::default() {
                    let labels = vec![
                        ("interface", name.to_owned()),
                        ("hook", hook_label(hook).to_owned()),
                        ("reason", reason.label().to_owned()),
                        ("verdict", verdict_label(reason).to_owned()),
                    ];
                    samples.push((labels, count));
                }
            }
        };
        for interface in &published.interfaces {
            for hook in &interface.hooks {
                read(interface.slot, &interface.name, *hook, true);
            }
        }
        // Slot 0: interfaces beyond the numbered ones, shown only once something counted there.
        for hook in [Hook::Xdp, Hook::Tc] {
            read(0, "other", hook, false);
        }
        counter_family(
            encoder,
            "packets",
            "Packets judged, by interface, hook, reason and verdict (in audit mode, packets with \
             verdict drop were let through).",
            samples.iter().map(|(l, c)| (l.as_slice(), c.packets)),
        )?;
        counter_family(
            encoder,
            "packet_bytes",
            "Bytes of the packets judged, by interface, hook, reason and verdict.",
            samples.iter().map(|(l, c)| (l.as_slice(), c.bytes)),
        )
    }

    /// Allowed packets and bytes per service.
    fn encode_services(
        &self,
        encoder: &mut DescriptorEncoder,
        published: &Published,
    ) -> Result<(), std::fmt::Error> {
        let samples: Vec<([(&str, String); 1], PacketCount)> = published
            .services
            .iter()
            .enumerate()
            .filter_map(|(id, name)| {
                let count = self.kernel.service(u32::try_from(id).ok()?).ok()?;
                Some(([("service", name.clone())], count))
            })
            .collect();
        counter_family(
            encoder,
            "service_packets",
            "Packets a service allowed (the first service whose rule matched).",
            samples.iter().map(|(l, c)| (l.as_slice(), c.packets)),
        )?;
        counter_family(
            encoder,
            "service_bytes",
            "Bytes of the packets a service allowed.",
            samples.iter().map(|(l, c)| (l.as_slice(), c.bytes)),
        )
    }

    /// Drop events by outcome.
    fn encode_events(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let samples: Vec<([(&str, &str); 1], u64)> = [
            ("sent", EventCounter::Emitted),
            ("rate_limited", EventCounter::RateLimited),
            ("ring_full", EventCounter::RingFull),
        ]
        .into_iter()
        .filter_map(|(label, counter)| {
            Some(([("outcome", label)], self.kernel.event(counter).ok()?))
        })
        .collect();
        counter_family(
            encoder,
            "drop_events",
            "Drop events: sent to the daemon, suppressed by the per-CPU rate limit, or lost to a \
             full ring buffer.",
            samples.iter().map(|(l, v)| (l.as_slice(), *v)),
        )
    }
}

/// What the loop published: mode, health, table, hostnames.
fn encode_loop_state(
    encoder: &mut DescriptorEncoder,
    published: &Published,
) -> Result<(), std::fmt::Error> {
    gauge(
        encoder,
        "enforcing",
        "1 while the filter enforces the policy its rules compile to (what /healthz reports).",
        i64::from(published.health == Health::Enforcing),
    )?;
    gauge(
        encoder,
        "audit_mode",
        "1 in audit mode: packets with verdict drop are reported and let through.",
        i64::from(published.audit),
    )?;
    gauge_family(
        encoder,
        "table_prefixes",
        "Prefixes in the allow table, by address family.",
        [
            ([("family", "ipv4")], published.prefixes_v4),
            ([("family", "ipv6")], published.prefixes_v6),
        ],
    )?;
    gauge_family(
        encoder,
        "table_capacity_prefixes",
        "Prefixes the kernel's tables can hold, by address family.",
        [("ipv4", MAX_PREFIXES), ("ipv6", MAX_PREFIXES)]
            .map(|(family, max)| ([("family", family)], max as usize)),
    )?;
    gauge_family(
        encoder,
        "hostnames",
        "The rules' hostnames, by state: resolved (with addresses) or failing (the last lookup \
         failed; the last addresses stay allowed).",
        [
            ([("state", "resolved")], published.hostnames_resolved),
            ([("state", "failing")], published.hostnames_failing),
        ],
    )
}

/// The forwarder's counters and histogram, and the learned table.
fn encode_dns(
    encoder: &mut DescriptorEncoder,
    dns: &DnsCounters,
    published: &Published,
) -> Result<(), std::fmt::Error> {
    let values = dns.values();
    counter_family(
        encoder,
        "dns_queries",
        "Client DNS queries, by outcome: forwarded upstream, merged into an identical query in \
         flight, refused (--dns-block-unlisted), malformed, failed (upstream error or timeout), \
         overloaded (too many in flight) or client_limited (the client's bound in flight).",
        [
            ("forwarded", values.forwarded),
            ("merged", values.merged),
            ("refused", values.refused),
            ("malformed", values.malformed),
            ("failed", values.servfail),
            ("overloaded", values.overloaded),
            ("client_limited", values.client_limited),
        ]
        .iter()
        .map(|(outcome, v)| ([("outcome", *outcome)], *v)),
    )?;
    counter_family(
        encoder,
        "dns_answers",
        "Upstream answers, by what learning did with them: matched a rule's name, released \
         before the daemon confirmed (late), or known open already.",
        [
            ("matched", values.matched),
            ("late", values.late),
            ("already_open", values.already_open),
        ]
        .iter()
        .map(|(outcome, v)| ([("outcome", *outcome)], *v)),
    )?;
    if let Some((learning, held)) = published.learning {
        counter_family(
            encoder,
            "dns_learned_addresses",
            "Learned (address, service) entries, by event: learned, renewed by a later answer, \
             expired, or evicted at capacity.",
            [
                ("learned", learning.learned),
                ("renewed", learning.renewed),
                ("expired", learning.expired),
                ("evicted", learning.evicted),
            ]
            .iter()
            .map(|(event, v)| ([("event", *event)], *v)),
        )?;
        gauge(
            encoder,
            "dns_learned_entries",
            "Learned (address, service) entries held now.",
            i64::try_from(held).unwrap_or(i64::MAX),
        )?;
    }
    let histogram = encoder.encode_descriptor(
        "dns_answer_hold_seconds",
        "How long an answer to a rule's name was held while its addresses were written to the \
         kernel, before it went to the client.",
        None,
        MetricType::Histogram,
    )?;
    dns.hold_time().encode(histogram)
}

fn counter_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge_family<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, usize)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        let value = i64::try_from(value).unwrap_or(i64::MAX);
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: i64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn hook_label(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => "xdp",
        Hook::Tc => "tc",
    }
}

fn verdict_label(reason: Reason) -> &'static str {
    if reason.passes() {
        "pass"
    } else {
        "drop"
    }
}

/// Slots for the interfaces attached to, in the order given (XDP first): slot 0 counts every
/// other interface, so at most [`COUNTED_INTERFACES`] - 1 get their own.
#[must_use]
pub fn number_interfaces(xdp: &[String], tc: &[String]) -> Vec<CountedInterface> {
    let mut numbered: Vec<CountedInterface> = Vec::new();
    for (name, hook) in xdp
        .iter()
        .map(|n| (n, Hook::Xdp))
        .chain(tc.iter().map(|n| (n, Hook::Tc)))
    {
        if let Some(known) = numbered.iter_mut().find(|i| &i.name == name) {
            known.hooks.push(hook);
        } else if (numbered.len() as u32) < COUNTED_INTERFACES - 1 {
            numbered.push(CountedInterface {
                slot: numbered.len() as u32 + 1,
                name: name.clone(),
                hooks: vec![hook],
            });
        }
    }
    numbered
}
