//! Per-packet cost through `BPF_PROG_TEST_RUN`: the XDP and TC programs with 1k to 1M prefixes
//! per family, beside the trivial XDP_PASS program, on the same frames, in one run.
//!
//! Each figure is the mean over `KEYS` different destination addresses of each one's fastest of
//! `ROUNDS` interleaved rounds of `REPEAT` runs (the kernel reports the mean duration of a run).
//! Different keys keep one hot path from flattering the result; a single key repeated would
//! measure the cache, not the lookup.

use std::time::Instant;

use anyhow::Context as _;
use aya::{
    programs::{TestRun as _, TestRunOptions, Xdp},
    EbpfLoader,
};
use filter_tests::{
    harness::{Filter, Hook},
    packet::{tcp_flags, Ext, Pkt, TPID_8021Q},
};
use filter_user::{loader::BASELINE_PASS_OBJECT, table::AllowTable};

use crate::prefixes::{self, Rng};

pub(crate) const KEYS: usize = 32;
pub(crate) const REPEAT: u32 = 10_000;
/// Interleaved rounds per frame; each frame's fastest counts (see [`fastest_means`]).
pub(crate) const ROUNDS: usize = 5;

/// The packet kinds measured.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    AllowedTcpHit,
    DroppedTcpHitPort,
    DroppedTcpMiss,
    TaggedAllowedHit,
    Ipv6ExtAllowedHit,
    Ipv6ExtDroppedMiss,
}

impl Kind {
    pub(crate) const ALL: [Kind; 6] = [
        Self::AllowedTcpHit,
        Self::DroppedTcpHitPort,
        Self::DroppedTcpMiss,
        Self::TaggedAllowedHit,
        Self::Ipv6ExtAllowedHit,
        Self::Ipv6ExtDroppedMiss,
    ];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::AllowedTcpHit => "IPv4 TCP allowed (hit)",
            Self::DroppedTcpHitPort => "IPv4 TCP dropped, wrong port (hit)",
            Self::DroppedTcpMiss => "IPv4 TCP dropped (miss)",
            Self::TaggedAllowedHit => "802.1Q IPv4 TCP allowed (hit)",
            Self::Ipv6ExtAllowedHit => "IPv6 + hop-by-hop allowed (hit)",
            Self::Ipv6ExtDroppedMiss => "IPv6 + hop-by-hop dropped (miss)",
        }
    }

    pub(crate) fn is_hit(self) -> bool {
        !matches!(self, Self::DroppedTcpMiss | Self::Ipv6ExtDroppedMiss)
    }

    fn frame(self, table: &AllowTable, rng: &mut Rng) -> Vec<u8> {
        let v6 = matches!(self, Self::Ipv6ExtAllowedHit | Self::Ipv6ExtDroppedMiss);
        let dst = if self.is_hit() {
            prefixes::hit(table, v6, rng)
        } else {
            prefixes::miss(table, v6, rng)
        };
        let src = if v6 { "2001:db8::1" } else { "192.0.2.1" };
        let pkt = Pkt::ip(src, &dst.to_string());
        // Segments in the middle of a connection (ACK), the packets a connection is made of; a
        // SYN also records the connection (the flows section measures that).
        let tcp = |pkt: Pkt, dport| pkt.tcp_with(40000, dport, tcp_flags::ACK);
        match self {
            Self::AllowedTcpHit | Self::DroppedTcpMiss => tcp(pkt, 443),
            Self::DroppedTcpHitPort => tcp(pkt, 22),
            Self::TaggedAllowedHit => tcp(pkt.vlan(TPID_8021Q, 100), 443),
            Self::Ipv6ExtAllowedHit | Self::Ipv6ExtDroppedMiss => {
                tcp(pkt.ext(Ext::HopByHop { units: 0 }), 443)
            }
        }
        .build()
    }
}

/// One measured row.
pub(crate) struct Row {
    pub prefixes: usize,
    pub kind: Kind,
    pub baseline_ns: f64,
    pub xdp_ns: f64,
    pub tc_ns: f64,
    /// xdp-filter on the same frames, when it is installed.
    pub peer_ns: Option<f64>,
}

/// The destination address of a frame built by [`Kind::frame`] (untagged or one tag).
fn destination(frame: &[u8]) -> Option<std::net::IpAddr> {
    let mut offset = 12;
    let mut ether_type = u16::from_be_bytes([*frame.get(offset)?, *frame.get(offset + 1)?]);
    if ether_type == TPID_8021Q {
        offset += 4;
        ether_type = u16::from_be_bytes([*frame.get(offset)?, *frame.get(offset + 1)?]);
    }
    let ip = offset + 2;
    match ether_type {
        0x0800 => {
            let b: [u8; 4] = frame.get(ip + 16..ip + 20)?.try_into().ok()?;
            Some(std::net::IpAddr::from(b))
        }
        0x86dd => {
            let b: [u8; 16] = frame.get(ip + 24..ip + 40)?.try_into().ok()?;
            Some(std::net::IpAddr::from(b))
        }
        _ => None,
    }
}

/// Frames for every kind against a table.
pub(crate) fn frames(table: &AllowTable, seed: u64) -> Vec<(Kind, Vec<Vec<u8>>)> {
    let mut rng = Rng::new(seed);
    Kind::ALL
        .iter()
        .map(|k| (*k, (0..KEYS).map(|_| k.frame(table, &mut rng)).collect()))
        .collect()
}

/// The interface the kernel's XDP test run reports a frame arriving on: the loopback device.
const TEST_RUN_IFINDEX: u32 = 1;

/// Writes the source prefixes of the measured frames for the test run's interface and turns
/// the source check on, with drop events off: the per-packet cost the daemon's defaults give.
pub(crate) fn configure_as_daemon(filter: &mut Filter) -> anyhow::Result<()> {
    let sources = [
        (TEST_RUN_IFINDEX, "192.0.2.0/24".parse()?),
        (TEST_RUN_IFINDEX, "2001:db8::/64".parse()?),
    ]
    .into_iter()
    .collect();
    filter.sources.set(&sources)?;
    filter
        .maps
        .set_config(crate::breakdown::bench_config(true))?;
    Ok(())
}

/// The trivial program, loaded.
pub(crate) struct Baseline {
    ebpf: aya::Ebpf,
}

impl Baseline {
    const PROGRAM: &'static str = "baseline_pass";

    pub(crate) fn load() -> anyhow::Result<Self> {
        let mut ebpf = EbpfLoader::new()
            .load(BASELINE_PASS_OBJECT)
            .context("baseline object")?;
        let program: &mut Xdp = ebpf
            .program_mut(Self::PROGRAM)
            .context("baseline_pass")?
            .try_into()?;
        program.load()?;
        Ok(Self { ebpf })
    }

    /// The mean ns of one run of `frame`, over `repeat` runs.
    pub(crate) fn run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<u128> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(Self::PROGRAM)
            .context("baseline_pass")?
            .try_into()?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        Ok(program.test_run(opts)?.duration.as_nanos())
    }
}

/// For each of `programs` programs, the mean over `frames` of each frame's fastest of
/// [`ROUNDS`] rounds, `run(program, frame)` timing one program on one frame; the programs take
/// turns frame by frame, so each meets the machine as the others do. The fastest round, not
/// the median: the programs are deterministic, so what slows a round (a preemption, the
/// hypervisor taking the core, a frequency step) only ever adds, and the minimum is the
/// estimate it disturbs least. Medians on this machine kind moved by 10-30 ns between runs,
/// as much as the differences the tables are about.
pub(crate) fn fastest_means(
    frames: &[Vec<u8>],
    programs: usize,
    mut run: impl FnMut(usize, &[u8]) -> anyhow::Result<u128>,
) -> anyhow::Result<Vec<f64>> {
    let mut fastest = vec![vec![u128::MAX; programs]; frames.len()];
    for _ in 0..ROUNDS {
        for (frame, fastest) in frames.iter().zip(&mut fastest) {
            for (program, fastest) in fastest.iter_mut().enumerate() {
                *fastest = (*fastest).min(run(program, frame)?);
            }
        }
    }
    let mut means = vec![0.0; programs];
    for frame in &fastest {
        for (mean, ns) in means.iter_mut().zip(frame) {
            *mean += *ns as f64 / frames.len() as f64;
        }
    }
    Ok(means)
}

/// Measures every kind on both hooks against `filter` (already holding `table`).
pub(crate) fn measure(
    filter: &mut Filter,
    baseline: &mut Baseline,
    table: &AllowTable,
    prefixes: usize,
) -> anyhow::Result<Vec<Row>> {
    let started = Instant::now();
    let mut rows = Vec::new();
    let all_frames = frames(table, 0x5eed ^ prefixes as u64);
    // xdp-filter allows the addresses the hit frames go to (and TCP 443).
    let hit_addresses: std::collections::BTreeSet<std::net::IpAddr> = all_frames
        .iter()
        .filter(|(kind, _)| kind.is_hit())
        .flat_map(|(_, frames)| frames.iter().filter_map(|f| destination(f)))
        .collect();
    let hit_addresses: Vec<std::net::IpAddr> = hit_addresses.into_iter().collect();
    let mut peer = crate::peer::XdpFilter::load(&hit_addresses)?;
    // The trivial program, egress-filter on each hook, and xdp-filter when installed.
    let programs = if peer.is_some() { 4 } else { 3 };
    for (kind, frames) in all_frames {
        let ns = fastest_means(&frames, programs, |program, frame| match program {
            0 => baseline.run(frame, REPEAT),
            1 => Ok(filter.run_repeated(Hook::Xdp, frame, REPEAT)?.1),
            2 => Ok(filter.run_repeated(Hook::Tc, frame, REPEAT)?.1),
            _ => match peer.as_mut() {
                Some(peer) => peer.run(frame, REPEAT),
                None => anyhow::bail!("no peer to time"),
            },
        })?;
        rows.push(Row {
            prefixes,
            kind,
            baseline_ns: ns[0],
            xdp_ns: ns[1],
            tc_ns: ns[2],
            peer_ns: ns.get(3).copied(),
        });
    }
    eprintln!(
        "bench: per-packet with {prefixes} prefixes per family took {:.1?}",
        started.elapsed()
    );
    Ok(rows)
}

/// Kernel memory of every BPF map this process holds open, from `/proc/self/fdinfo` (`memlock`:
/// what the kernel charges for the map, preallocated arrays whole, tries as filled). Each map
/// counts once, however many descriptors the process holds for it (the test harness keeps a
/// second one of some maps, to damage them on purpose).
pub(crate) fn map_memory_bytes() -> anyhow::Result<u64> {
    let mut total = 0;
    let mut counted = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        let id = info.lines().find_map(|l| l.strip_prefix("map_id:"));
        if let Some(id) = id {
            if !counted.insert(id.trim().to_owned()) {
                continue;
            }
        }
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}
