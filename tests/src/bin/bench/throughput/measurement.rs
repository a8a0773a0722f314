//! What a window measures: two readings of the router's counters, the receiver's CPU time and
//! the filter's own drop count, checked for what each setup claims and turned into a row.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};

use super::{
    setups::{Filter, Setup},
    topology::{Counters, Topology},
    traffic::{pin_to_cpu, Generator},
    ThroughputRow,
};

/// Traffic runs this long before the window opens (rings, caches and page pools fill).
const WARMUP: Duration = Duration::from_millis(700);

/// One reading of everything a window is computed from.
struct Snapshot {
    at: Instant,
    counters: Counters,
    cpu_ns: u64,
    filter_drops: Option<u64>,
}

/// Two snapshots around the window.
pub(super) struct Sample {
    before: Snapshot,
    after: Snapshot,
}

/// `n` as a float, for rates and shares (packet counts stay far below 2^52).
#[expect(
    clippy::cast_precision_loss,
    reason = "packet counts and nanoseconds of a benchmark stay far below 2^52"
)]
fn float(n: u64) -> f64 {
    n as f64
}

/// `part` as a percentage of `whole`.
fn percent(part: u64, whole: u64) -> f64 {
    float(part) * 100.0 / float(whole.max(1))
}

impl Sample {
    pub(super) fn row(&self, setup: Setup, topo: &Topology) -> anyhow::Result<ThroughputRow> {
        let label = setup.label();
        let (b, a) = (&self.before, &self.after);
        let delta = |f: fn(&Counters) -> u64| f(&a.counters).saturating_sub(f(&b.counters));
        let processed = delta(|c| c.rx_packets);
        let lost = delta(|c| c.rx_dropped);
        let forwarded = delta(|c| c.forwarded);
        let unexpected = delta(|c| c.unexpected);
        let secs = a.at.duration_since(b.at).as_secs_f64();
        let cpu_secs = float(a.cpu_ns.saturating_sub(b.cpu_ns)) / 1e9;
        ensure!(
            processed > 0 && cpu_secs > 1e-3,
            "throughput {label}: the receiver took {processed} frames using {cpu_secs:.3} s of CPU"
        );
        // Each of these means the method is broken, not that the figure is noisy.
        ensure!(
            unexpected * 1000 <= processed,
            "throughput {label}: the router discarded {unexpected} of {processed} frames before \
             any filter (not addressed to it, bad header, TTL): the frames are not the ones built"
        );
        let mut note = format!(
            "receiver NAPI thread {:.0}% busy on CPU {}{}; {:.2} Mpps offered, {:.0}% found the \
             ring full",
            cpu_secs * 100.0 / secs,
            topo.rx_cpu,
            if topo.rx_cpu == topo.tx_cpu {
                " (shared with the generator: one CPU)"
            } else {
                ""
            },
            float(processed + lost) / secs / 1e6,
            percent(lost, processed + lost),
        );
        if setup == Setup::NoFilter {
            ensure!(
                forwarded * 100 >= processed * 99,
                "throughput {label}: only {forwarded} of {processed} frames were forwarded"
            );
            let _ = write!(note, "; {:.1}% forwarded", percent(forwarded, processed));
        } else {
            ensure!(
                forwarded * 1000 <= processed,
                "throughput {label}: {forwarded} of {processed} frames were forwarded, not dropped"
            );
            let _ = write!(note, "; {forwarded} forwarded");
        }
        if let (Some(before), Some(after)) = (b.filter_drops, a.filter_drops) {
            let drops = after.saturating_sub(before);
            ensure!(
                drops * 100 >= processed * 99,
                "throughput {label}: egress-filter counted {drops} drops of {processed} frames"
            );
            let _ = write!(
                note,
                "; egress-filter counted {:.1}% dropped",
                percent(drops, processed)
            );
        }
        Ok(ThroughputRow {
            setup: label,
            rx_pps: float(processed) / secs,
            rx_pps_per_cpu: float(processed) / cpu_secs,
            note,
        })
    }
}

/// Runs the generator, warms up, then reads everything around a window of `window`.
pub(super) fn run_traffic(
    topo: &Topology,
    frame: &[u8],
    window: Duration,
    filter: Option<&Filter>,
) -> anyhow::Result<Sample> {
    // Looked up (and pinned) again for every setup: a NAPI context, and its thread, may be
    // recreated when programs come and go on the device.
    let threads = topo.receiver_threads()?;
    let napi = *threads.first().context("no NAPI thread")?;
    pin_to_cpu(napi, topo.rx_cpu)?;
    let snapshot = || -> anyhow::Result<Snapshot> {
        let cpu_before = receiver_cpu_ns(&threads)?;
        let at = Instant::now();
        let counters = topo.counters()?;
        let cpu_after = receiver_cpu_ns(&threads)?;
        Ok(Snapshot {
            at,
            counters,
            cpu_ns: cpu_before / 2 + cpu_after / 2,
            filter_drops: filter.map(Filter::drops).transpose()?.flatten(),
        })
    };
    let generator = Generator::start(topo, frame.to_vec(), WARMUP * 2 + window * 2)?;
    std::thread::sleep(WARMUP);
    let sampled = snapshot().and_then(|before| {
        ensure!(generator.running(), "it stopped during the warm-up");
        std::thread::sleep(window);
        let after = snapshot()?;
        ensure!(generator.running(), "it stopped before the window ended");
        Ok((before, after))
    });
    // Stopped whatever happened, so no thread outlives the topology.
    let stopped = generator.stop();
    let (before, after) = match (sampled, stopped) {
        (Ok(sampled), Ok(())) => sampled,
        (_, Err(e)) | (Err(e), _) => return Err(e.context("traffic generator")),
    };
    Ok(Sample { before, after })
}

/// CPU time the receiver's threads have used, in ns.
fn receiver_cpu_ns(threads: &[libc::pid_t]) -> anyhow::Result<u64> {
    threads.iter().map(|&pid| task_runtime_ns(pid)).sum()
}

/// Time task `pid` has spent on a CPU, in ns (first field of /proc/PID/schedstat).
fn task_runtime_ns(pid: libc::pid_t) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/schedstat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.split_whitespace()
        .next()
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("{path}: unexpected {text:?}"))
}
