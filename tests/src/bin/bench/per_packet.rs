//! Per-packet cost through `BPF_PROG_TEST_RUN`: the XDP and TC programs with 1k to 1M prefixes
//! per family, beside the trivial XDP_PASS program, on the same frames, in one run.
//!
//! Each figure is the mean over `KEYS` different destination addresses, each run `REPEAT` times
//! (the kernel reports the mean duration of a run). Different keys keep one hot trie path from
//! flattering the result; a single key repeated would measure the cache, not the trie.

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
pub(crate) const REPEAT: u32 = 50_000;

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

    pub(crate) fn mean_ns(&mut self, frames: &[Vec<u8>]) -> anyhow::Result<f64> {
        self.mean_ns_repeat(frames, REPEAT)
    }

    /// Like [`Baseline::mean_ns`], with `repeat` runs per frame.
    pub(crate) fn mean_ns_repeat(
        &mut self,
        frames: &[Vec<u8>],
        repeat: u32,
    ) -> anyhow::Result<f64> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(Self::PROGRAM)
            .context("baseline_pass")?
            .try_into()?;
        mean(frames, |frame| {
            let opts = TestRunOptions {
                data_in: Some(frame),
                repeat,
                ..TestRunOptions::default()
            };
            Ok(program.test_run(opts)?.duration.as_nanos() as f64)
        })
    }
}

fn mean(
    frames: &[Vec<u8>],
    mut run: impl FnMut(&[u8]) -> anyhow::Result<f64>,
) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for frame in frames {
        total += run(frame)?;
    }
    Ok(total / frames.len() as f64)
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
    for (kind, frames) in all_frames {
        let baseline_ns = baseline.mean_ns(&frames)?;
        let peer_ns = match peer.as_mut() {
            Some(peer) => Some(peer.mean_ns(&frames, REPEAT)?),
            None => None,
        };
        let mut per_hook = [0.0; 2];
        for (slot, hook) in per_hook.iter_mut().zip(Hook::BOTH) {
            *slot = mean(&frames, |frame| {
                Ok(filter.run_repeated(hook, frame, REPEAT)?.1 as f64)
            })?;
        }
        rows.push(Row {
            prefixes,
            kind,
            baseline_ns,
            xdp_ns: per_hook[0],
            tc_ns: per_hook[1],
            peer_ns,
        });
    }
    eprintln!(
        "bench: per-packet with {prefixes} prefixes per family took {:.1?}",
        started.elapsed()
    );
    Ok(rows)
}

/// Kernel memory of every BPF map this process holds open, from `/proc/self/fdinfo` (`memlock`:
/// what the kernel charges for the map, preallocated arrays whole, tries as filled).
pub(crate) fn map_memory_bytes() -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir("/proc/self/fdinfo")? {
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if !info.contains("map_type:") {
            continue;
        }
        total += info
            .lines()
            .find_map(|l| l.strip_prefix("memlock:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(total)
}
