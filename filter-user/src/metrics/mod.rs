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

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use filter_common::{
    counters::COUNTED_INTERFACES, flows::FlowCounter, maps::MAX_PREFIXES, EventCounter, Hook,
    PacketCount, Reason,
};
use prometheus::{
    core::Collector as _, proto::MetricFamily, Gauge, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::{
    counters::Counters, daemon::attachments::InterfacePattern, dns::DnsCounters,
    dns::LearnCounters, pins::HookKind, state::InterfaceReport,
};

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

/// How long the loop may go without publishing before `/livez` says it is wedged: it publishes
/// every second.
pub const LIVENESS_WINDOW: Duration = Duration::from_secs(10);

/// What the daemon's loop knows, as of its last publication.
#[derive(Clone, Debug)]
pub struct Published {
    /// When the loop last published: `/livez` fails when this is older than [`LIVENESS_WINDOW`].
    pub at: Option<Instant>,
    pub health: Health,
    pub audit: bool,
    /// Service names by id (the ids of the kernel's service counters).
    pub services: Vec<String>,
    /// Client groups by number, `default` first; empty when the rules define none.
    pub groups: Vec<(u32, String)>,
    pub interfaces: Vec<CountedInterface>,
    /// The attachments held, missing and failed, and their counts since start.
    pub attachments: InterfaceReport,
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
            at: None,
            health: Health::Starting,
            audit: false,
            services: Vec::new(),
            groups: Vec::new(),
            interfaces: Vec::new(),
            attachments: InterfaceReport::default(),
            prefixes_v4: 0,
            prefixes_v6: 0,
            hostnames_resolved: 0,
            hostnames_failing: 0,
            learning: None,
        }
    }
}

/// Counters only the daemon's loop moves.
#[derive(Clone, Debug)]
pub struct LoopCounters {
    /// Rule reloads, by `result` (`success`, `failure`).
    pub reloads: IntCounterVec,
    /// Unix time of the last reload (or the start) whose policy reached the kernel.
    pub last_reload_success: Gauge,
    /// Hostname lookups, by `result` (`success`, `failure`).
    pub lookups: IntCounterVec,
    /// Unix time of the last lookup that returned addresses.
    pub last_lookup_success: Gauge,
    /// Map writes that failed (each followed by a full rebuild).
    pub policy_write_failures: IntCounter,
}

impl LoopCounters {
    fn new() -> prometheus::Result<Self> {
        Ok(Self {
            reloads: IntCounterVec::new(
                Opts::new(
                    "egress_filter_policy_reloads_total",
                    "Rule reloads (SIGHUP), by result: success when the new policy reached the \
                     kernel.",
                ),
                &["result"],
            )?,
            last_reload_success: Gauge::new(
                "egress_filter_policy_last_reload_success_timestamp_seconds",
                "When the policy last reached the kernel after a start or a reload (Unix time).",
            )?,
            lookups: IntCounterVec::new(
                Opts::new(
                    "egress_filter_hostname_lookups_total",
                    "Lookups of the rules' hostnames, by result.",
                ),
                &["result"],
            )?,
            last_lookup_success: Gauge::new(
                "egress_filter_hostname_last_success_timestamp_seconds",
                "When a lookup of a rules' hostname last returned addresses (Unix time).",
            )?,
            policy_write_failures: IntCounter::new(
                "egress_filter_policy_write_failures_total",
                "Map writes that failed; the running policy stays and a full rebuild follows.",
            )?,
        })
    }
}

/// What `/metrics` serves, and the handles the daemon writes through.
pub struct Metrics {
    /// The metrics that live between scrapes: the loop's counters, the DNS hold times.
    registry: Registry,
    kernel: Counters,
    dns: Option<Arc<DnsCounters>>,
    pub published: Arc<Mutex<Published>>,
    pub counters: LoopCounters,
}

impl Metrics {
    /// Every metric, with `kernel` read at each scrape and `dns` when the forwarder runs.
    pub fn new(kernel: Counters, dns: Option<Arc<DnsCounters>>) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let counters = LoopCounters::new()?;
        registry.register(Box::new(counters.reloads.clone()))?;
        registry.register(Box::new(counters.last_reload_success.clone()))?;
        registry.register(Box::new(counters.lookups.clone()))?;
        registry.register(Box::new(counters.last_lookup_success.clone()))?;
        registry.register(Box::new(counters.policy_write_failures.clone()))?;
        if let Some(dns) = &dns {
            registry.register(Box::new(dns.hold_time().clone()))?;
        }
        Ok(Self {
            registry,
            kernel,
            dns,
            published: Arc::new(Mutex::new(Published::default())),
            counters,
        })
    }

    /// Replaces what the loop publishes.
    pub fn publish(&self, update: impl FnOnce(&mut Published)) {
        if let Ok(mut published) = self.published.lock() {
            update(&mut published);
        }
    }

    /// The exposition, in the Prometheus text format.
    pub fn encode(&self) -> anyhow::Result<String> {
        let published = self
            .published
            .lock()
            .map_err(|_| anyhow::anyhow!("metrics lock poisoned"))?
            .clone();
        let mut families = Families::default();
        families.build_info()?;
        self.kernel_counters(&mut families, &published)?;
        self.group_counters(&mut families, &published)?;
        loop_state(&mut families, &published)?;
        if let Some(dns) = &self.dns {
            dns_counters(&mut families, dns, &published)?;
        }
        let mut all = families.0;
        all.extend(self.registry.gather());
        all.sort_by(|a, b| a.name().cmp(b.name()));
        Ok(TextEncoder::new().encode_to_string(&all)?)
    }

    /// Whether the daemon's loop published within [`LIVENESS_WINDOW`] (before the first
    /// publication, while starting, it counts as alive: start-up has its own probe).
    #[must_use]
    pub fn alive(&self) -> bool {
        self.published
            .lock()
            .is_ok_and(|p| p.at.is_none_or(|at| at.elapsed() <= LIVENESS_WINDOW))
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

    /// Packets and bytes by interface, hook, reason and verdict; per service; drop events.
    /// Drops per client group, when the rules define groups.
    fn group_counters(&self, families: &mut Families, published: &Published) -> anyhow::Result<()> {
        // A family without a sample is not valid exposition: rules without groups have none.
        if published.groups.is_empty() {
            return Ok(());
        }
        let group_drops: Vec<(String, PacketCount)> = published
            .groups
            .iter()
            .filter_map(|(id, name)| Some((name.clone(), self.kernel.group_drops(*id).ok()?)))
            .collect();
        families.counter(
            "egress_filter_group_dropped_packets_total",
            "Packets dropped (or, in audit mode, that would have been) from a client group's \
             sources.",
            &["group"],
            group_drops
                .iter()
                .map(|(g, c)| (vec![g.clone()], c.packets)),
        )?;
        families.counter(
            "egress_filter_group_dropped_bytes_total",
            "Bytes of the packets dropped from a client group's sources.",
            &["group"],
            group_drops.iter().map(|(g, c)| (vec![g.clone()], c.bytes)),
        )?;
        Ok(())
    }

    fn kernel_counters(
        &self,
        families: &mut Families,
        published: &Published,
    ) -> anyhow::Result<()> {
        let mut samples: Vec<([String; 4], PacketCount)> = Vec::new();
        let mut read = |slot: u32, name: &str, hook: Hook, keep_zero: bool| {
            for reason in Reason::ALL {
                let Ok(count) = self.kernel.reason_at(slot, hook, reason) else {
                    continue;
                };
                if keep_zero || count != PacketCount::default() {
                    let labels = [
                        name,
                        hook_label(hook),
                        reason.label(),
                        verdict_label(reason),
                    ];
                    samples.push((labels.map(str::to_owned), count));
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
        let labels = ["interface", "hook", "reason", "verdict"];
        families.counter(
            "egress_filter_packets_total",
            "Packets judged, by interface, hook, reason and verdict (in audit mode, packets with \
             verdict drop were let through).",
            &labels,
            samples.iter().map(|(l, c)| (l.to_vec(), c.packets)),
        )?;
        families.counter(
            "egress_filter_packet_bytes_total",
            "Bytes of the packets judged, by interface, hook, reason and verdict.",
            &labels,
            samples.iter().map(|(l, c)| (l.to_vec(), c.bytes)),
        )?;

        let services: Vec<(String, PacketCount)> = published
            .services
            .iter()
            .enumerate()
            .filter_map(|(id, name)| {
                Some((
                    name.clone(),
                    self.kernel.service(u32::try_from(id).ok()?).ok()?,
                ))
            })
            .collect();
        families.counter(
            "egress_filter_service_packets_total",
            "Packets a service allowed (the first service whose rule matched).",
            &["service"],
            services.iter().map(|(s, c)| (vec![s.clone()], c.packets)),
        )?;
        families.counter(
            "egress_filter_service_bytes_total",
            "Bytes of the packets a service allowed.",
            &["service"],
            services.iter().map(|(s, c)| (vec![s.clone()], c.bytes)),
        )?;

        let events = [
            ("sent", EventCounter::Emitted),
            ("rate_limited", EventCounter::RateLimited),
            ("ring_full", EventCounter::RingFull),
        ];
        families.counter(
            "egress_filter_drop_events_total",
            "Drop events: sent to the daemon, suppressed by the per-CPU rate limit, or lost to a \
             full ring buffer.",
            &["outcome"],
            events.iter().filter_map(|(outcome, counter)| {
                Some((
                    vec![(*outcome).to_owned()],
                    self.kernel.event(*counter).ok()?,
                ))
            }),
        )?;
        families.counter(
            "egress_filter_flows_total",
            "Connections: recorded at their first allowed packet (started), kept past their \
             address's expiry (kept), ended by --established-idle (ended_idle) or \
             --established-max (ended_max), by FIN or RST while kept (closed), or by a reload \
             (closed_by_reload).",
            &["event"],
            FlowCounter::ALL.iter().filter_map(|counter| {
                Some((
                    vec![counter.label().to_owned()],
                    self.kernel.flow(*counter).ok()?,
                ))
            }),
        )
    }
}

/// What the loop published: mode, health, table, hostnames.
fn loop_state(families: &mut Families, published: &Published) -> anyhow::Result<()> {
    families.gauge(
        "egress_filter_enforcing",
        "1 while the filter enforces the policy its rules compile to (what /healthz reports).",
        &[],
        [(vec![], i64::from(published.health == Health::Enforcing))],
    )?;
    families.gauge(
        "egress_filter_audit_mode",
        "1 in audit mode: packets with verdict drop are reported and let through.",
        &[],
        [(vec![], i64::from(published.audit))],
    )?;
    attachment_state(families, &published.attachments)?;
    let family = |f: &str, v: usize| (vec![f.to_owned()], i64::try_from(v).unwrap_or(i64::MAX));
    families.gauge(
        "egress_filter_table_prefixes",
        "Prefixes in the allow table, by address family.",
        &["family"],
        [
            family("ipv4", published.prefixes_v4),
            family("ipv6", published.prefixes_v6),
        ],
    )?;
    families.gauge(
        "egress_filter_table_capacity_prefixes",
        "Prefixes the kernel's tables can hold, by address family.",
        &["family"],
        [
            family("ipv4", MAX_PREFIXES as usize),
            family("ipv6", MAX_PREFIXES as usize),
        ],
    )?;
    families.gauge(
        "egress_filter_hostnames",
        "The rules' hostnames, by state: resolved (with addresses) or failing (the last lookup \
         failed; the last addresses stay allowed).",
        &["state"],
        [
            family("resolved", published.hostnames_resolved),
            family("failing", published.hostnames_failing),
        ],
    )
}

/// The forwarder's counters and the learned table.
fn dns_counters(
    families: &mut Families,
    dns: &DnsCounters,
    published: &Published,
) -> anyhow::Result<()> {
    let values = dns.values();
    let outcome = |o: &str, v: u64| (vec![o.to_owned()], v);
    families.counter(
        "egress_filter_dns_queries_total",
        "Client DNS queries, by outcome: forwarded upstream, cached (answered from a kept \
         answer), merged into an identical query in flight, refused (--dns-block-unlisted), malformed, failed (upstream error or timeout), \
         overloaded (too many in flight), client_limited (the client's bound in flight), \
         displaced (dropped after a second at the client's bound: a newer query took its place) or \
         unserved (a datagram or TCP connection from a source the forwarder does not serve, \
         dropped without a reply).",
        &["outcome"],
        [
            outcome("forwarded", values.forwarded),
            outcome("cached", values.cached),
            outcome("merged", values.merged),
            outcome("refused", values.refused),
            outcome("malformed", values.malformed),
            outcome("failed", values.servfail),
            outcome("overloaded", values.overloaded),
            outcome("client_limited", values.client_limited),
            outcome("displaced", values.displaced),
            outcome("unserved", values.unserved),
        ],
    )?;
    families.counter(
        "egress_filter_dns_truncated_replies_total",
        "UDP replies sent truncated (TC set, the client retries over TCP): the answer exceeded \
         the client's UDP size or the 1,232-byte cap.",
        &[],
        [(vec![], values.truncated)],
    )?;
    families.counter(
        "egress_filter_dns_tcp_connections_refused_total",
        "TCP client connections closed at once, by reason: client_limited (that client holds \
         its bound of connections) or full (every slot is taken).",
        &["reason"],
        [
            outcome("client_limited", values.tcp_client_limited),
            outcome("full", values.tcp_full),
        ],
    )?;
    families.counter(
        "egress_filter_dns_answers_total",
        "Upstream answers, by what learning did with them: matched a rule's name, released \
         before the daemon confirmed (late), or known open already.",
        &["outcome"],
        [
            outcome("matched", values.matched),
            outcome("late", values.late),
            outcome("already_open", values.already_open),
        ],
    )?;
    if let Some((learning, held)) = published.learning {
        families.counter(
            "egress_filter_dns_learned_addresses_total",
            "Learned (address, service) entries, by event: learned, renewed by a later answer, \
             expired, or evicted at capacity.",
            &["event"],
            [
                outcome("learned", learning.learned),
                outcome("renewed", learning.renewed),
                outcome("expired", learning.expired),
                outcome("evicted", learning.evicted),
            ],
        )?;
        families.gauge(
            "egress_filter_dns_learned_entries",
            "Learned (address, service) entries held now.",
            &[],
            [(vec![], i64::try_from(held).unwrap_or(i64::MAX))],
        )?;
    }
    Ok(())
}

/// Metric families built at scrape time from values read then.
#[derive(Default)]
struct Families(Vec<MetricFamily>);

impl Families {
    fn counter(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        samples: impl IntoIterator<Item = (Vec<String>, u64)>,
    ) -> anyhow::Result<()> {
        let family = IntCounterVec::new(Opts::new(name, help), labels)?;
        for (values, value) in samples {
            family.with_label_values(&values).inc_by(value);
        }
        self.0.extend(family.collect());
        Ok(())
    }

    fn gauge(
        &mut self,
        name: &str,
        help: &str,
        labels: &[&str],
        samples: impl IntoIterator<Item = (Vec<String>, i64)>,
    ) -> anyhow::Result<()> {
        let family = IntGaugeVec::new(Opts::new(name, help), labels)?;
        for (values, value) in samples {
            family.with_label_values(&values).set(value);
        }
        self.0.extend(family.collect());
        Ok(())
    }

    /// `egress_filter_build_info`, the Prometheus convention for a build's identity.
    fn build_info(&mut self) -> anyhow::Result<()> {
        self.gauge(
            "egress_filter_build_info",
            "The running build: version and git commit (always 1).",
            &["version", "commit"],
            [(
                vec![
                    env!("CARGO_PKG_VERSION").to_owned(),
                    option_env!("EGRESS_FILTER_COMMIT")
                        .unwrap_or("unknown")
                        .to_owned(),
                ],
                1,
            )],
        )
    }
}

/// The attachments: how many per hook, how many asked for are missing or failed, and what
/// happened since start. Hooks label them, never interface names: pods come and go.
fn attachment_state(families: &mut Families, report: &InterfaceReport) -> anyhow::Result<()> {
    let per_hook = |views: &[crate::state::AttachmentView]| {
        HookKind::ALL.map(|hook| {
            let count = views.iter().filter(|v| v.hook == hook.name()).count();
            (
                vec![hook.name().to_owned()],
                i64::try_from(count).unwrap_or(i64::MAX),
            )
        })
    };
    families.gauge(
        "egress_filter_interfaces_attached",
        "Interfaces the filter is attached to now, by hook (tc: egress, tc-ingress: ingress).",
        &["hook"],
        per_hook(&report.attached),
    )?;
    families.gauge(
        "egress_filter_interfaces_missing",
        "Interfaces named exactly on the command line that do not exist now, by hook.",
        &["hook"],
        per_hook(&report.missing),
    )?;
    families.gauge(
        "egress_filter_interfaces_failed",
        "Interfaces that match but whose attachment failed (tried again at each check), by hook.",
        &["hook"],
        per_hook(&report.failed),
    )?;
    let counts = report.counts;
    families.counter(
        "egress_filter_interface_changes_total",
        "Attachments made (at start and as interfaces appear), released (an interface vanished, \
         was renamed or no longer matches) and failed, since the daemon started.",
        &["change"],
        [
            (vec!["attached".to_owned()], counts.attached),
            (vec!["released".to_owned()], counts.released),
            (vec!["failed".to_owned()], counts.failed),
        ],
    )
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

/// Slots for the interface names and patterns asked for, in the order given (XDP first): every
/// interface a pattern matches counts in the pattern's slot, so the labels stay as few as the
/// options however many pods come and go. Slot 0 counts every other interface, so at most
/// [`COUNTED_INTERFACES`] - 1 get their own.
#[must_use]
pub fn number_interfaces(patterns: &[InterfacePattern]) -> Vec<CountedInterface> {
    let mut numbered: Vec<CountedInterface> = Vec::new();
    for pattern in patterns {
        let hook = match pattern.hook {
            HookKind::Xdp => Hook::Xdp,
            HookKind::Tc | HookKind::TcIngress => Hook::Tc,
        };
        if let Some(known) = numbered.iter_mut().find(|i| i.name == pattern.text) {
            if !known.hooks.contains(&hook) {
                known.hooks.push(hook);
            }
        } else if (numbered.len() as u32) < COUNTED_INTERFACES - 1 {
            numbered.push(CountedInterface {
                slot: numbered.len() as u32 + 1,
                name: pattern.text.clone(),
                hooks: vec![hook],
            });
        }
    }
    numbered
}

/// The counter slot of the interface `name`: that of the first name or pattern matching it.
#[must_use]
pub fn slot_of(name: &str, patterns: &[InterfacePattern], counted: &[CountedInterface]) -> u32 {
    patterns
        .iter()
        .filter(|p| p.matches(name))
        .find_map(|p| counted.iter().find(|c| c.name == p.text))
        .map_or(0, |c| c.slot)
}
