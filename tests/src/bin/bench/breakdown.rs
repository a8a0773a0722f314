//! Where the per-packet time goes: `egress_xdp` beside variants of itself with one part left out
//! (`filter-ebpf/src/ablation.rs`), the trivial program and the full program without the source
//! check, all on the same frames and the same maps, interleaved round by round. The difference
//! between the full program and a variant is what the part left out costs.

use anyhow::Context as _;
use filter_common::{maps as names, Config, Mode};
use filter_tests::harness::Filter;
use filter_user::table::AllowTable;

use crate::per_packet::{self, Baseline, Kind, REPEAT, ROUNDS};

/// The variants, with what each leaves out.
const VARIANTS: [(&str, &str); 8] = [
    (
        "abl_no_count",
        "counter updates (REASON_STATS per interface slot, SERVICE_STATS)",
    ),
    ("abl_no_config", "CONFIG read"),
    ("abl_no_dest", "destination lookup (ALLOW_V4/ALLOW_V6)"),
    ("abl_no_rules", "policy slot (POLICIES) and rule scan"),
    ("abl_parse_only", "everything after the parser"),
    (
        "abl_no_log",
        "kernel log lines (aya-log, on the damaged-map and unknown-config paths)",
    ),
    (
        "abl_no_flows",
        "flow table (TCP_FLOWS/UDP_FLOWS, EXPIRED_ADDRS)",
    ),
    (
        "abl_no_groups",
        "client-group lookup (TABLE_STATE's window count; rules without groups)",
    ),
];

/// The frames the breakdown uses.
const KINDS: [Kind; 4] = [
    Kind::AllowedTcpHit,
    Kind::DroppedTcpMiss,
    Kind::Ipv6ExtAllowedHit,
    Kind::Ipv6ExtDroppedMiss,
];

/// One program's cost per frame kind (each frame's fastest round, averaged).
pub(crate) struct Line {
    pub program: String,
    pub left_out: String,
    pub ns: Vec<f64>,
}

/// Measures the breakdown on `filter` (holding `table`, sources written, source check on).
pub(crate) fn measure(
    filter: &mut Filter,
    baseline: &mut Baseline,
    table: &AllowTable,
) -> anyhow::Result<Vec<Line>> {
    for (name, _) in VARIANTS {
        filter.load_extra_xdp(name)?;
    }
    let frames: Vec<(Kind, Vec<Vec<u8>>)> = per_packet::frames(table, 0xb4ea)
        .into_iter()
        .filter(|(kind, _)| {
            KINDS
                .iter()
                .any(|k| std::mem::discriminant(k) == std::mem::discriminant(kind))
        })
        .collect();
    // Programs in measuring order; the full program twice, with and without the source check.
    let mut programs: Vec<(String, String)> = vec![
        (
            "baseline_pass".into(),
            "everything (the trivial program)".into(),
        ),
        (names::PROG_XDP.into(), "nothing (the real program)".into()),
        (
            format!("{} without source check", names::PROG_XDP),
            "source check (SOURCES_V4/V6), by config".into(),
        ),
    ];
    programs.extend(
        VARIANTS
            .iter()
            .map(|(n, what)| ((*n).to_owned(), (*what).to_owned())),
    );
    let mut per_program = vec![Vec::new(); programs.len()];
    for (_, kind_frames) in &frames {
        let ns = per_packet::fastest_means(kind_frames, programs.len(), |index, frame| {
            let program = &programs[index].0;
            let checks_sources = !program.ends_with("without source check");
            filter.maps.set_config(bench_config(checks_sources))?;
            Ok(if program == "baseline_pass" {
                baseline.run(frame, REPEAT)?
            } else if program.starts_with(names::PROG_XDP) {
                filter.run_xdp_named(names::PROG_XDP, frame, REPEAT)?.1
            } else {
                filter.run_xdp_named(program, frame, REPEAT)?.1
            })
        })?;
        for (line, ns) in per_program.iter_mut().zip(ns) {
            line.push(ns);
        }
    }
    filter.maps.set_config(bench_config(true))?;
    Ok(programs
        .into_iter()
        .zip(per_program)
        .map(|((program, left_out), ns)| Line {
            program,
            left_out,
            ns,
        })
        .collect())
}

/// The config the per-packet figures run under: enforce, drop events off (the datapath is
/// measured, not the ring buffer), the source check on when asked and flows kept with the
/// default bounds, as the daemon has them.
pub(crate) fn bench_config(checks_sources: bool) -> Config {
    Config {
        events_per_sec: 0,
        event_burst: 0,
        established_idle_secs: Config::DEFAULT_ESTABLISHED_IDLE_SECS,
        established_max_secs: Config::DEFAULT_ESTABLISHED_MAX_SECS,
        flags: if checks_sources {
            Config::CHECK_SOURCES
        } else {
            0
        },
        ..Config::new(Mode::Enforce)
    }
}

/// The markdown table.
pub(crate) fn table(lines: &[Line], prefixes: usize, command: &str) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let full = lines
        .iter()
        .find(|l| l.program == names::PROG_XDP)
        .context("the full program's line")?;
    let mut t = format!(
        "## Where the per-packet time goes (XDP)\n\nProduced by `{command}`. `egress_xdp` beside \
         variants of itself with one part left out (`filter-ebpf/src/ablation.rs`), on the same \
         {} frames per column, {prefixes} prefixes per family loaded, source check on, drop events \
         off; each frame's fastest of {ROUNDS} interleaved rounds of {REPEAT} repeats, averaged \
         over the frames. \"Saves\" is the \
         full program minus the variant: what the part left out costs.\n\n| program | left out |",
        per_packet::KEYS
    );
    for kind in KINDS {
        let _ = write!(t, " {} ns | saves |", kind.label());
    }
    t.push_str("\n|---|---|");
    for _ in KINDS {
        t.push_str("---|---|");
    }
    t.push('\n');
    for line in lines {
        let _ = write!(t, "| `{}` | {} |", line.program, line.left_out);
        for (ns, full_ns) in line.ns.iter().zip(&full.ns) {
            let _ = write!(t, " {ns:.1} | {:+.1} |", full_ns - ns);
        }
        t.push('\n');
    }
    Ok(t)
}
