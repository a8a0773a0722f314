//! `egress-filter stats`: the counters of a running (or left-behind) filter, read from its pins.
//!
//! Example: `egress-filter stats --json`

use std::fmt::Write as _;

use filter_common::{flows::FlowCounter, EventCounter, Reason};
use serde::Serialize;

use crate::{
    counters::Counters,
    pins::PinDir,
    state::{DnsStats, InterfaceReport, State},
};

/// `stats`: print the counters of the running filter: per service, per reason, events.
pub type Args = super::PinnedReport;

/// Reads the counters and renders them as asked.
pub fn run(args: &Args) -> anyhow::Result<String> {
    let stats = read(&PinDir::new(&args.pin_path))?;
    Ok(if args.json {
        serde_json::to_string_pretty(&stats)? + "\n"
    } else {
        stats.to_text()
    })
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub mode: String,
    pub reasons: Vec<ReasonStat>,
    pub services: Vec<ServiceStat>,
    /// Drops per client group, `default` first; absent when the rules define no groups.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupStat>,
    pub events: EventStats,
    pub flows: FlowStats,
    /// The DNS forwarder's counters, when it runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dns: Option<DnsStats>,
    pub interfaces: InterfaceReport,
}

#[derive(Debug, Serialize)]
pub struct ReasonStat {
    pub reason: &'static str,
    pub verdict: &'static str,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct ServiceStat {
    pub service: String,
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct GroupStat {
    pub group: String,
    pub dropped_packets: u64,
    pub dropped_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct EventStats {
    pub emitted: u64,
    pub rate_limited: u64,
    pub ring_full: u64,
}

/// Connections kept past their address's expiry (`filter_common::flows`).
#[derive(Debug, Serialize)]
pub struct FlowStats {
    /// Connections recorded at their first allowed packet.
    pub started: u64,
    /// Connections whose packets passed after their address expired.
    pub kept: u64,
    /// Kept connections ended by `--established-idle`.
    pub ended_idle: u64,
    /// Kept connections ended by `--established-max`.
    pub ended_max: u64,
    /// Kept connections ended by FIN or RST.
    pub closed: u64,
    /// Connections a reload closed.
    pub closed_by_reload: u64,
}

impl FlowStats {
    fn read(counters: &Counters) -> anyhow::Result<Self> {
        let flow = |c: FlowCounter| counters.flow(c);
        Ok(Self {
            started: flow(FlowCounter::Started)?,
            kept: flow(FlowCounter::Kept)?,
            ended_idle: flow(FlowCounter::EndedIdle)?,
            ended_max: flow(FlowCounter::EndedMax)?,
            closed: flow(FlowCounter::Closed)?,
            closed_by_reload: flow(FlowCounter::ClosedByReload)?,
        })
    }
}

/// Reads every counter.
pub fn read(pins: &PinDir) -> anyhow::Result<Stats> {
    let counters = Counters::pinned(pins)?;
    let state = State::load(&pins.state_file())?.unwrap_or_default();
    let reasons = Reason::ALL
        .iter()
        .map(|r| {
            let count = counters.reason(*r)?;
            Ok(ReasonStat {
                reason: r.label(),
                verdict: if r.passes() { "pass" } else { "drop" },
                packets: count.packets,
                bytes: count.bytes,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let services = state
        .services
        .iter()
        .enumerate()
        .map(|(id, name)| {
            let count = counters.service(id as u32)?;
            Ok(ServiceStat {
                service: name.clone(),
                packets: count.packets,
                bytes: count.bytes,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let groups = group_numbers(&state.groups)
        .into_iter()
        .map(|(id, group)| {
            let count = counters.group_drops(id)?;
            Ok(GroupStat {
                group,
                dropped_packets: count.packets,
                dropped_bytes: count.bytes,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let event = |c: EventCounter| counters.event(c);
    Ok(Stats {
        mode: if state.mode.is_empty() {
            "unknown".into()
        } else {
            state.mode
        },
        reasons,
        services,
        groups,
        events: EventStats {
            emitted: event(EventCounter::Emitted)?,
            rate_limited: event(EventCounter::RateLimited)?,
            ring_full: event(EventCounter::RingFull)?,
        },
        flows: FlowStats::read(&counters)?,
        dns: state.dns,
        interfaces: state.interfaces,
    })
}

/// The client groups a running daemon numbered (its state file's), `default` first; none
/// when its rules define no groups.
#[must_use]
pub fn group_numbers(named: &std::collections::BTreeMap<String, u32>) -> Vec<(u32, String)> {
    if named.is_empty() {
        return Vec::new();
    }
    let mut all = vec![(
        filter_common::groups::DEFAULT_GROUP,
        crate::rules::DEFAULT_NAME.to_owned(),
    )];
    let mut rest: Vec<(u32, String)> = named.iter().map(|(n, id)| (*id, n.clone())).collect();
    rest.sort();
    all.extend(rest);
    all
}

impl Stats {
    #[must_use]
    pub fn to_text(&self) -> String {
        let mut out = format!("mode: {}\n", self.mode);
        self.interfaces_text(&mut out);
        out.push_str("\nallowed per service:\n");
        for s in self.services.iter().filter(|s| s.packets > 0) {
            let _ = writeln!(
                out,
                "  {:40} {:>12} packets {:>14} bytes",
                s.service, s.packets, s.bytes
            );
        }
        if !self.groups.is_empty() {
            out.push_str("\ndropped per client group:\n");
            for g in &self.groups {
                let _ = writeln!(
                    out,
                    "  {:40} {:>12} packets {:>14} bytes",
                    g.group, g.dropped_packets, g.dropped_bytes
                );
            }
        }
        out.push_str("\nper reason:\n");
        for r in self.reasons.iter().filter(|r| r.packets > 0) {
            let _ = writeln!(
                out,
                "  {:24} {:4} {:>12} packets {:>14} bytes",
                r.reason, r.verdict, r.packets, r.bytes
            );
        }
        let _ = writeln!(
            out,
            "\nevents: {} sent, {} suppressed by the rate limit, {} lost to a full ring",
            self.events.emitted, self.events.rate_limited, self.events.ring_full
        );
        let f = &self.flows;
        let _ = writeln!(
            out,
            "connections: {} recorded at their start; {} kept past their address's expiry, of \
             which {} ended idle, {} at the age bound, {} by FIN or RST; {} closed by a reload",
            f.started, f.kept, f.ended_idle, f.ended_max, f.closed, f.closed_by_reload
        );
        if let Some(dns) = &self.dns {
            let (f, l) = (&dns.forwarder, &dns.learning);
            let _ = writeln!(
                out,
                "\ndns: {} queries answered, {} matched a rule; {} addresses learned, {} renewed, \
                 {} expired, {} evicted, {} held now",
                f.queries, f.matched, l.learned, l.renewed, l.expired, l.evicted, dns.learned_now
            );
            let _ = writeln!(
                out,
                "     {} refused (unlisted), {} malformed, {} upstream failures, {} overloaded, \
                 {} over the per-client limit, {} displaced by a newer query of their client, \
                 {} answered from the cache, {} merged with an identical question, \
                 {} retried over TCP, \
                 {} stray upstream datagrams, {} answered before learning",
                f.refused,
                f.malformed,
                f.servfail,
                f.overloaded,
                f.client_limited,
                f.displaced,
                f.cached,
                f.merged,
                f.tcp_retries,
                f.mismatched,
                f.late
            );
            let _ = writeln!(
                out,
                "     {} from sources it does not serve (no reply), {} UDP replies truncated, \
                 {} TCP connections over the per-client limit, {} with every TCP slot taken",
                f.unserved, f.truncated, f.tcp_client_limited, f.tcp_full
            );
        }
        out
    }

    /// The attachments, and loudly the interfaces asked for that are not filtered.
    fn interfaces_text(&self, out: &mut String) {
        let report = &self.interfaces;
        let attached: Vec<String> = report
            .attached
            .iter()
            .map(|a| match &a.xdp_mode {
                Some(xdp) => format!("{} ({}, {} mode: {})", a.iface, a.hook, xdp.mode, xdp.why),
                None => format!("{} ({})", a.iface, a.hook),
            })
            .collect();
        let _ = writeln!(
            out,
            "interfaces: {}",
            if attached.is_empty() {
                "none attached".to_owned()
            } else {
                attached.join(", ")
            }
        );
        for missing in &report.missing {
            let _ = writeln!(
                out,
                "  MISSING: {} ({}) does not exist; nothing is filtered there",
                missing.iface, missing.hook
            );
        }
        for failed in &report.failed {
            let _ = writeln!(
                out,
                "  FAILED: {} on {}: {}",
                failed.hook,
                failed.iface,
                failed.error.as_deref().unwrap_or("unknown error")
            );
        }
        let counts = report.counts;
        let _ = writeln!(
            out,
            "  since start: {} attached, {} released, {} failed",
            counts.attached, counts.released, counts.failed
        );
    }
}
