//! What connections kept past their address cost per packet: the allowed path in the middle of a
//! connection and at its start, an allowed UDP datagram, and the drop path for an expired
//! address with and without a kept flow, for `egress_xdp`, for it without the flow table
//! (`abl_no_flows`) and for `egress_tc`, interleaved round by round.

use filter_common::{flows::FlowState, maps as names, Config, RuleProto};
use filter_tests::{
    harness::{Filter, Hook},
    packet::{tcp_flags, Pkt},
};
use filter_user::{
    maps::flows::{flow_key, monotonic_ns},
    table::{AllowTable, Grant, PortSpec},
};

use crate::{
    per_packet::{self, KEYS, REPEAT, ROUNDS},
    prefixes::{self, Rng},
    updates,
};

const SOURCE: &str = "192.0.2.1";
const SPORT: u16 = 40000;

/// The frames measured.
#[derive(Clone, Copy)]
enum Kind {
    AllowedAck,
    AllowedSyn,
    AllowedUdp,
    KeptAck,
    ExpiredNoFlow,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Self::AllowedAck,
        Self::AllowedSyn,
        Self::AllowedUdp,
        Self::KeptAck,
        Self::ExpiredNoFlow,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::AllowedAck => "IPv4 TCP allowed, mid-connection (ACK)",
            Self::AllowedSyn => "IPv4 TCP allowed, connection start (SYN; flow already recorded)",
            Self::AllowedUdp => "IPv4 UDP allowed (flow already recorded)",
            Self::KeptAck => "IPv4 TCP to an expired address, flow kept (ACK)",
            Self::ExpiredNoFlow => "IPv4 TCP to an expired address, no flow (ACK, dropped)",
        }
    }
}

/// One row: the mean per frame of each program.
pub(crate) struct Row {
    label: &'static str,
    xdp_ns: f64,
    no_flows_ns: f64,
    tc_ns: f64,
}

/// Measures every kind at `size` prefixes per family (TCP and UDP 443), flows kept with the
/// daemon's default bounds.
pub(crate) fn measure(size: usize) -> anyhow::Result<Vec<Row>> {
    let mut rng = Rng::new(0xf10 ^ size as u64);
    let v4 = prefixes::v4_prefixes(size, &mut rng);
    let v6 = prefixes::v6_prefixes(size, &mut rng);
    let grants: Vec<Grant> = prefixes::grants(&v4, &v6)
        .into_iter()
        .map(|mut grant| {
            grant.ports.push(PortSpec::Udp(443..=443));
            grant
        })
        .collect();
    let (mut filter, table, _) = updates::load(&grants, size)?;
    per_packet::configure_as_daemon(&mut filter)?;
    filter.load_extra_xdp("abl_no_flows")?;
    let frames = frames(&mut filter, &table, &mut rng)?;
    let mut rows = Vec::new();
    for (kind, kind_frames) in Kind::ALL.iter().zip(&frames) {
        let ns = per_packet::fastest_means(kind_frames, 3, |program, frame| {
            Ok(match program {
                0 => filter.run_xdp_named(names::PROG_XDP, frame, REPEAT)?.1,
                1 => filter.run_xdp_named("abl_no_flows", frame, REPEAT)?.1,
                _ => filter.run_repeated(Hook::Tc, frame, REPEAT)?.1,
            })
        })?;
        rows.push(Row {
            label: kind.label(),
            xdp_ns: ns[0],
            no_flows_ns: ns[1],
            tc_ns: ns[2],
        });
    }
    Ok(rows)
}

/// `KEYS` frames per kind; the flows of the kept kind recorded and their addresses marked, the
/// addresses of the no-flow kind marked.
fn frames(
    filter: &mut Filter,
    table: &AllowTable,
    rng: &mut Rng,
) -> anyhow::Result<Vec<Vec<Vec<u8>>>> {
    let now = monotonic_ns();
    let mut all = Vec::new();
    for kind in Kind::ALL {
        let mut frames = Vec::new();
        for _ in 0..KEYS {
            let expired = matches!(kind, Kind::KeptAck | Kind::ExpiredNoFlow);
            let dst = if expired {
                prefixes::miss(table, false, rng)
            } else {
                prefixes::hit(table, false, rng)
            };
            let pkt = Pkt::ip(SOURCE, &dst.to_string());
            let (proto, pkt) = match kind {
                Kind::AllowedUdp => (RuleProto::Udp, pkt.udp(SPORT, 443)),
                Kind::AllowedSyn => (RuleProto::Tcp, pkt.tcp_with(SPORT, 443, tcp_flags::SYN)),
                _ => (RuleProto::Tcp, pkt.tcp_with(SPORT, 443, tcp_flags::ACK)),
            };
            if expired {
                filter.flows.mark_expired([dst], now)?;
            }
            if matches!(kind, Kind::KeptAck) {
                let key = flow_key(proto, SOURCE.parse()?, SPORT, dst, 443);
                filter.flows.insert(
                    key,
                    FlowState {
                        started_ns: now,
                        last_seen_ns: now,
                        ..FlowState::default()
                    },
                )?;
            }
            frames.push(pkt.build());
        }
        all.push(frames);
    }
    Ok(all)
}

/// The markdown table.
pub(crate) fn table(rows: &[Row], prefixes: usize, command: &str) -> String {
    use std::fmt::Write as _;
    let mut t = format!(
        "## Connections kept past their address\n\nProduced by `{command}`. {prefixes} prefixes \
         per family (TCP and UDP 443), source check on, drop events off, flows kept with the \
         daemon's default bounds ({} s idle, {} s in all); {KEYS} frames per row, each frame's \
         fastest of {ROUNDS} interleaved rounds of {REPEAT} repeats, averaged over the frames. `abl_no_flows` is \
         `egress_xdp` without the flow table: the difference is what flows cost on that \
         path.\n\n| packet | `egress_xdp` ns | `abl_no_flows` ns | flows cost ns | `egress_tc` ns |\n\
         |---|---|---|---|---|\n",
        Config::DEFAULT_ESTABLISHED_IDLE_SECS,
        Config::DEFAULT_ESTABLISHED_MAX_SECS
    );
    for row in rows {
        let _ = writeln!(
            t,
            "| {} | {:.1} | {:.1} | {:+.1} | {:.1} |",
            row.label,
            row.xdp_ns,
            row.no_flows_ns,
            row.xdp_ns - row.no_flows_ns,
            row.tc_ns
        );
    }
    t
}
