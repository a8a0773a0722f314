//! Packets per second through a veth pair (issue 5, part 3): no filter, egress-filter (XDP, TC)
//! and the same policy in nftables (forward chain, netdev ingress chain), same traffic, same run.
//!
//! ```text
//!  snd ────────(veth)──────── rtr: a router ────────(veth)──────── snk
//!  generator: live-frame      A→B: B receives (XDP,           O: out interface (TC egress),
//!  XDP_TX out of A            netdev ingress here)            route 10.0.0.0/8 via a neighbour
//! ```
//!
//! **Traffic.** This kernel has no pktgen, so a thread that entered the sender namespace and is
//! pinned to one CPU runs live-frame `BPF_PROG_TEST_RUN`s of a program returning `XDP_TX`
//! (`TX_GENERATOR_OBJECT`): each frame goes out of A into B. (The program is also attached to A,
//! which receives nothing, so that each run does not patch it into the kernel's XDP dispatcher
//! and out again, an RCU grace period per run.) Every frame is the same TCP SYN from
//! 192.0.2.2 to an address inside one of the allowed prefixes, port 22: covered, port not
//! allowed, so every filter under test drops all of it. The router forwards it (forwarding on,
//! a route and a permanent neighbour entry on O); the sink namespace discards what arrives.
//!
//! **Policy.** 10,000 disjoint IPv4 prefixes in 10.0.0.0/8, lengths /16 to /32 (mostly /24 and
//! /32, a few wide blocks), allowing TCP 443: one rules file for egress-filter, run as the real
//! daemon (`run --xdp B` or `run --tc O`, events off), and the same prefixes as an nftables
//! interval set with a port set, in an `inet` forward chain and in a `netdev` ingress chain on B,
//! both dropping what they do not accept.
//!
//! **What is measured: the receiver, not the sender.** B has GRO on (that gives a veth the NAPI
//! context frames redirected into it need, and NICs have it on) and *threaded* NAPI, its NAPI
//! thread pinned to another CPU than the generator. Everything the router does with a frame (XDP,
//! skb, GRO, ingress hooks, routing, forward chain, TC egress, transmit, the sink's receive) runs
//! in that thread, in softirqs it raises and runs when it re-enables them, or in `ksoftirqd` of
//! that CPU. Over a window of `seconds`, after a warm-up:
//! - `rx_pps`: the growth of B's `rx_packets` (frames its NAPI poll took off the ring, whatever
//!   happened to them next) per wall-clock second;
//! - receiver CPU: the growth of the run time (`/proc/PID/schedstat`) of that NAPI thread and of
//!   `ksoftirqd` on its CPU; `rx_pps_per_cpu` is packets per second of that time. It stays
//!   comparable whether the receiver is saturated (the generator offers more than any setup
//!   takes here; the rest is B's `rx_dropped`, frames that found its ring full) or idles part of
//!   the time, or shares its CPU with other work.
//!
//! Each setup checks what it claims, and fails rather than report a figure that means something
//! else: without a filter at least 99% of the frames are forwarded; with one, at most 0.1% are,
//! and egress-filter's own drop counters (`stats --json`) account for at least 99%; the router
//! discards at most 0.1% for reasons of its own (not addressed to it, bad header, expired TTL).
//!
//! **Live frames are recycled, not rebuilt.** A test run fills each page of its page pool from
//! the frame once and recycles pages as they come back, so whatever the receiver writes into a
//! frame comes back in a later one. Forwarding writes the TTL and the Ethernet header in place.
//! So the frame starts with the Ethernet header forwarding writes (see `syn_frame`) and TTL 255,
//! and one test run sends at most CHUNK / BATCH = 128 batches (a page carries at most one frame
//! per batch), after which the next run starts a fresh pool.

use std::{
    fmt::Write as _,
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    net::Ipv4Addr,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use filter_tests::lab::{sh, unique_id};

use crate::prefixes::Rng;
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode};

#[derive(Debug)]
pub struct ThroughputRow {
    /// e.g. "no filter", "egress-filter XDP", "egress-filter TC", "nftables forward", "nftables netdev ingress"
    pub setup: &'static str,
    /// packets per second the receiving side processed (see below)
    pub rx_pps: f64,
    /// packets processed per second of receiver CPU time (pps normalised by CPU busy fraction)
    pub rx_pps_per_cpu: f64,
    /// how it was measured / anything odd, one short sentence
    pub note: String,
}

/// How many prefixes the policy holds.
const PREFIXES: usize = 10_000;
/// The one allowed port.
const ALLOWED_PORT: u16 = 443;
/// The port the traffic goes to: covered destination, port not allowed.
const DROPPED_PORT: u16 = 22;
const SENDER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const ROUTER_LAN: &str = "192.0.2.1/24";
const ROUTER_WAN: &str = "198.51.100.1/24";
const NEXT_HOP: &str = "198.51.100.2";
/// Frames per live-frame test run: 128 batches (see the module docs on recycled frames).
const CHUNK: u32 = 32_768;
/// Frames the kernel sends per batch in live-frame mode: the most it takes. The run's page
/// pool keeps as many pages for recycling, so fewer are freed and allocated again.
const BATCH: u32 = 256;
// A page carries at most one frame per batch, and each forwarding takes one off TTL 255.
const _: () = assert!(CHUNK / BATCH < 255 - 1);
/// Traffic runs this long before the window opens (rings, caches and page pools fill).
const WARMUP: Duration = Duration::from_millis(700);
/// How long the daemon may take to compile, load and attach.
const DAEMON_START: Duration = Duration::from_secs(30);
/// How long the daemon may take to detach after SIGTERM.
const DAEMON_STOP: Duration = Duration::from_secs(10);
/// How often bounded waits look again.
const POLL: Duration = Duration::from_millis(20);
/// `ETHTOOL_SGRO` from linux/ethtool.h (not in the libc crate).
const ETHTOOL_SGRO: u32 = 0x0000_002c;
/// The longest `comm` the kernel keeps for a task (TASK_COMM_LEN - 1).
const COMM_LEN: usize = 15;

/// Runs every setup for `seconds` each, same traffic, and returns one row per setup.
/// `egress_filter` is the path of the egress-filter binary to run as the filter under test.
pub fn measure(egress_filter: &Path, seconds: u64) -> anyhow::Result<Vec<ThroughputRow>> {
    ensure!(
        egress_filter.exists(),
        "{} is missing: build it first (cargo build -p filter-user)",
        egress_filter.display()
    );
    ensure!(
        (1..=60).contains(&seconds),
        "throughput: {seconds} s per setup is outside 1..=60"
    );
    let window = Duration::from_secs(seconds);
    let topo = Topology::new()?;
    let prefixes = policy_prefixes(PREFIXES)?;
    let target = traffic_destination(&prefixes)?;
    let work = TempDir::new(&format!("ef-bench-throughput-{}", topo.id))?;
    let files = PolicyFiles::write(&work.path, &prefixes, &topo.rx_dev)?;
    let frame = syn_frame(topo.rx_mac, topo.out_mac, SENDER_ADDR, target, DROPPED_PORT);

    let mut rows = Vec::new();
    for setup in Setup::ALL {
        let filter = setup.arrange(&topo, egress_filter, &files)?;
        let sample = run_traffic(&topo, &frame, window, filter.as_ref())?;
        drop(filter);
        let row = sample.row(setup, &topo)?;
        eprintln!(
            "bench: throughput {:24} {:>10.0} pps received, {:>10.0} pps per CPU-second ({})",
            row.setup, row.rx_pps, row.rx_pps_per_cpu, row.note
        );
        rows.push(row);
    }
    Ok(rows)
}

/// The policy, written once for every setup.
struct PolicyFiles {
    /// A directory with one rules file.
    rules: PathBuf,
    nft_forward: PathBuf,
    nft_ingress: PathBuf,
}

impl PolicyFiles {
    fn write(dir: &Path, prefixes: &[(u32, u8)], rx_dev: &str) -> anyhow::Result<Self> {
        let files = Self {
            rules: dir.join("rules"),
            nft_forward: dir.join("forward.nft"),
            nft_ingress: dir.join("ingress.nft"),
        };
        std::fs::create_dir(&files.rules).context("cannot create the rules directory")?;
        std::fs::write(files.rules.join("bench.toml"), rules_toml(prefixes))
            .context("cannot write the benchmark rules")?;
        std::fs::write(&files.nft_forward, nft_forward_ruleset(prefixes))
            .context("cannot write the nftables forward ruleset")?;
        std::fs::write(&files.nft_ingress, nft_ingress_ruleset(prefixes, rx_dev))
            .context("cannot write the nftables ingress ruleset")?;
        Ok(files)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Setup {
    NoFilter,
    Xdp,
    Tc,
    NftForward,
    NftIngress,
}

impl Setup {
    const ALL: [Self; 5] = [
        Self::NoFilter,
        Self::Xdp,
        Self::Tc,
        Self::NftForward,
        Self::NftIngress,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::NoFilter => "no filter",
            Self::Xdp => "egress-filter XDP",
            Self::Tc => "egress-filter TC",
            Self::NftForward => "nftables forward",
            Self::NftIngress => "nftables netdev ingress",
        }
    }

    /// Puts the filter of this setup in place; dropping the result removes it.
    fn arrange(
        self,
        topo: &Topology,
        binary: &Path,
        files: &PolicyFiles,
    ) -> anyhow::Result<Option<Filter>> {
        let pin_path = PathBuf::from(format!("/sys/fs/bpf/ef-bench-{}-{}", topo.id, self as u8));
        let daemon = |hook, dev| {
            FilterDaemon::start(binary, &topo.rtr.name, &files.rules, hook, dev, pin_path)
        };
        Ok(match self {
            Self::NoFilter => None,
            Self::Xdp => Some(Filter::Daemon(daemon("--xdp", &topo.rx_dev)?)),
            // TC egress sees what leaves an interface: the router's way out.
            Self::Tc => Some(Filter::Daemon(daemon("--tc", &topo.out_dev)?)),
            Self::NftForward => Some(Filter::Nft {
                _table: NftTable::load(&topo.rtr.name, &files.nft_forward, "inet")?,
            }),
            Self::NftIngress => Some(Filter::Nft {
                _table: NftTable::load(&topo.rtr.name, &files.nft_ingress, "netdev")?,
            }),
        })
    }
}

/// The filter under test; removed on drop.
enum Filter {
    Daemon(FilterDaemon),
    /// Held for its drop, which deletes the table.
    Nft {
        _table: NftTable,
    },
}

impl Filter {
    /// Packets the filter itself counted as dropped so far, where it counts them.
    fn drops(&self) -> anyhow::Result<Option<u64>> {
        match self {
            Self::Daemon(d) => d.drops().map(Some),
            Self::Nft { .. } => Ok(None),
        }
    }
}

/// One reading of everything a window is computed from.
struct Snapshot {
    at: Instant,
    counters: Counters,
    cpu_ns: u64,
    filter_drops: Option<u64>,
}

/// Two snapshots around the window.
struct Sample {
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
    fn row(&self, setup: Setup, topo: &Topology) -> anyhow::Result<ThroughputRow> {
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
fn run_traffic(
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

/// The traffic: a thread in the sender namespace running live-frame test runs of `tx_generator`
/// until told to stop (or `limit` passed).
struct Generator {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Generator {
    fn start(topo: &Topology, frame: Vec<u8>, limit: Duration) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, dev, cpu) = (topo.snd.name.clone(), topo.tx_dev.clone(), topo.tx_cpu);
        let stop_flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("tx-generator".into())
            .spawn(move || -> anyhow::Result<()> {
                enter_netns(&ns)?;
                pin_to_cpu(0, cpu)?;
                generate(&dev, &frame, limit, &stop_flag)
            })
            .context("cannot start the generator thread")?;
        Ok(Self { stop, handle })
    }

    fn running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Stops it, and says what went wrong if it had stopped already.
    fn stop(self) -> anyhow::Result<()> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))?
    }
}

/// The generator's loop, in the sender namespace: `ingress_ifindex` is resolved in the calling
/// thread's namespace, and `XDP_TX` in a live-frame run transmits out of that interface.
fn generate(dev: &str, frame: &[u8], limit: Duration, stop: &AtomicBool) -> anyhow::Result<()> {
    let ifindex = ifindex(dev)?;
    let mut ebpf = aya::EbpfLoader::new()
        .load(filter_user::loader::TX_GENERATOR_OBJECT)
        .context("cannot load the traffic generator object")?;
    let program: &mut Xdp = ebpf
        .program_mut("tx_generator")
        .context("tx_generator is missing from its object")?
        .try_into()?;
    program.load().context("the kernel refused tx_generator")?;
    // Also attached (generic mode) to the sending veth, which receives nothing: that keeps the
    // program in the kernel's XDP dispatcher, so a test run does not patch the dispatcher in
    // and out (an RCU grace period, about 20 ms here) every CHUNK frames. Detached when the
    // object is dropped, with this thread.
    program
        .attach(dev, XdpMode::Skb)
        .with_context(|| format!("cannot attach tx_generator to {dev}"))?;
    let ctx = xdp_md(ifindex, frame.len())?;
    let started = Instant::now();
    // Bounded in time (`limit`) and in count (a run of CHUNK frames takes more than 1 ms,
    // even at 30 Mpps).
    let max_runs = limit.as_millis();
    for _ in 0..max_runs {
        if stop.load(Ordering::Relaxed) || started.elapsed() >= limit {
            break;
        }
        program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: CHUNK,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            })
            .with_context(|| format!("live-frame test run out of {dev} failed"))?;
    }
    Ok(())
}

/// `struct xdp_md` for a live-frame run, built as bytes (a Rust struct could carry padding the
/// kernel rejects). The kernel wants `data` and `data_meta` 0 (no metadata), `rx_queue_index`
/// a queue the device has (0), `egress_ifindex` 0; `data_end` is the frame length (what the field
/// means; the kernel checks it against the data, and 6.18 also lets 0 through).
fn xdp_md(ingress_ifindex: u32, frame_len: usize) -> anyhow::Result<[u8; 24]> {
    let data_end = u32::try_from(frame_len).context("frame too long")?;
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&data_end.to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    Ok(ctx)
}

/// Moves the calling thread (only it) into the network namespace `/run/netns/NAME`.
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let ns = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // Safety: `ns` is an open namespace file for the duration of the call; setns changes only
    // the network namespace of the calling thread, a thread of ours that never goes back.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(
        rc == 0,
        "setns into {path}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// Restricts task `pid` (0: the calling thread) to `cpu`.
fn pin_to_cpu(pid: libc::pid_t, cpu: usize) -> anyhow::Result<()> {
    // Safety: cpu_set_t is a plain bit array; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // Safety: CPU_SET sets one bit inside `set` (it ignores CPUs beyond its size).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // Safety: `set` is a valid cpu_set_t of the size passed; the kernel only reads it.
    let rc = unsafe { libc::sched_setaffinity(pid, size_of_val(&set), &raw const set) };
    ensure!(
        rc == 0,
        "cannot pin task {pid} to CPU {cpu}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// The CPUs this process may use, in order.
fn usable_cpus() -> anyhow::Result<Vec<usize>> {
    // Safety: as in `pin_to_cpu`.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // Safety: the kernel writes at most the size passed into `set`, which has that size.
    let rc = unsafe { libc::sched_getaffinity(0, size_of_val(&set), &raw mut set) };
    ensure!(
        rc == 0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    let max = 8 * size_of_val(&set);
    // Safety: CPU_ISSET reads one bit of `set`, and `cpu` stays inside it.
    Ok((0..max)
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The index of interface `dev` in the calling thread's network namespace.
fn ifindex(dev: &str) -> anyhow::Result<u32> {
    let name = std::ffi::CString::new(dev).context("interface name")?;
    // Safety: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    ensure!(
        index != 0,
        "no interface {dev}: {}",
        std::io::Error::last_os_error()
    );
    Ok(index)
}

/// `struct ethtool_value` from linux/ethtool.h: two u32, no padding.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// Turns GRO on for `dev` in network namespace `ns` (SIOCETHTOOL, as `ethtool -K DEV gro on`
/// would; ethtool is not installed everywhere). On a veth this gives the device the NAPI context
/// that frames redirected into it need.
fn enable_gro(ns: &str, dev: &str) -> anyhow::Result<()> {
    let (ns, dev) = (ns.to_owned(), dev.to_owned());
    std::thread::spawn(move || -> anyhow::Result<()> {
        enter_netns(&ns)?;
        ensure!(
            dev.len() < libc::IFNAMSIZ,
            "interface name {dev} is too long"
        );
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")
            .context("cannot open a socket for the ethtool ioctl")?;
        let mut value = EthtoolValue {
            cmd: ETHTOOL_SGRO,
            data: 1,
        };
        // Safety: ifreq is plain data (a name and a union of integers and pointers); all
        // zeroes is valid and leaves the name NUL-terminated after the bytes copied below.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(dev.bytes()) {
            *dst = libc::c_char::from_ne_bytes([src]);
        }
        ifr.ifr_ifru.ifru_data = (&raw mut value).cast();
        // Safety: SIOCETHTOOL reads `ifr` and the ethtool_value it points to, both alive for
        // the call and laid out as the kernel's structs.
        let rc = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCETHTOOL, &raw mut ifr) };
        ensure!(
            rc == 0,
            "ethtool: cannot turn GRO on for {dev}: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the GRO thread panicked"))?
}

/// A network namespace, deleted (with the interfaces in it) on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn create(name: String) -> anyhow::Result<Self> {
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        // No IPv6 on the benchmark's interfaces: no DAD or solicitations in the counters.
        ns.exec(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.default.disable_ipv6=1",
            "net.ipv6.conf.all.disable_ipv6=1",
        ])?;
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Writes `value` to `path` as seen from the namespace (its own /sys).
    fn write(&self, path: &str, value: &str) -> anyhow::Result<()> {
        let mut tee = Command::new("ip")
            .args(["netns", "exec", &self.name, "tee", path])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run tee")?;
        let written = tee
            .stdin
            .take()
            .context("tee has no stdin")?
            .write_all(value.as_bytes());
        // Waited for even when the write failed: no child left behind.
        let status = tee.wait().context("tee")?;
        written.with_context(|| format!("cannot write {path}"))?;
        ensure!(status.success(), "cannot write {value:?} to {path}");
        Ok(())
    }

    /// A veth pair from `dev` here to `peer` in `other`, one queue each way (one NAPI context,
    /// one thread to account), both up.
    fn veth(&self, dev: &str, other: &Self, peer: &str) -> anyhow::Result<()> {
        let queues = ["numtxqueues", "1", "numrxqueues", "1"];
        let mut args = vec!["ip", "link", "add", dev, "netns", &self.name];
        args.extend(queues);
        args.extend(["type", "veth", "peer", "name", peer, "netns", &other.name]);
        args.extend(queues);
        sh(&args)?;
        self.exec(&["ip", "link", "set", dev, "up"])?;
        other.exec(&["ip", "link", "set", peer, "up"])?;
        Ok(())
    }

    fn mac(&self, dev: &str) -> anyhow::Result<[u8; 6]> {
        let out = self.exec(&["ip", "-j", "link", "show", "dev", dev])?;
        let links: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("ip -j link: not JSON")?;
        let text = links[0]["address"]
            .as_str()
            .with_context(|| format!("no MAC address for {dev}"))?;
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts.next().with_context(|| format!("bad MAC {text}"))?;
            *byte = u8::from_str_radix(part, 16).with_context(|| format!("bad MAC {text}"))?;
        }
        ensure!(parts.next().is_none(), "bad MAC {text}");
        Ok(mac)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _deleted = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Counters of the router.
struct Counters {
    /// Frames B's NAPI poll took off its ring.
    rx_packets: u64,
    /// Frames that found B's ring full (and anything else B dropped on receive).
    rx_dropped: u64,
    /// Frames sent out of O.
    forwarded: u64,
    /// Frames the router discarded for reasons no filter gives: not addressed to it, bad IP
    /// header (an expired TTL), no route.
    unexpected: u64,
}

/// The three namespaces, their veths, and the CPUs of sender and receiver.
struct Topology {
    id: String,
    snd: Netns,
    rtr: Netns,
    _snk: Netns,
    /// The sender's veth: the generator transmits out of it.
    tx_dev: String,
    /// The router's receiving veth (XDP, netdev ingress).
    rx_dev: String,
    rx_mac: [u8; 6],
    /// The router's way out (TC egress).
    out_dev: String,
    out_mac: [u8; 6],
    tx_cpu: usize,
    rx_cpu: usize,
}

impl Topology {
    fn new() -> anyhow::Result<Self> {
        let id = unique_id();
        let cpus = usable_cpus()?;
        let tx_cpu = *cpus.first().context("no usable CPU")?;
        let rx_cpu = cpus.get(1).copied().unwrap_or(tx_cpu);
        let snd = Netns::create(format!("ef-bench-{id}-snd"))?;
        let rtr = Netns::create(format!("ef-bench-{id}-rtr"))?;
        let snk = Netns::create(format!("ef-bench-{id}-snk"))?;
        // Short names: the NAPI thread is named after B and must stay recognisable in 15 bytes.
        let (tx_dev, rx_dev, out_dev, sink_dev) = (
            format!("eb{id}a"),
            format!("eb{id}b"),
            format!("eb{id}o"),
            format!("eb{id}s"),
        );
        snd.veth(&tx_dev, &rtr, &rx_dev)?;
        rtr.veth(&out_dev, &snk, &sink_dev)?;
        rtr.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        rtr.exec(&["ip", "addr", "add", ROUTER_LAN, "dev", &rx_dev])?;
        rtr.exec(&["ip", "addr", "add", ROUTER_WAN, "dev", &out_dev])?;
        let rx_mac = rtr.mac(&rx_dev)?;
        let out_mac = rtr.mac(&out_dev)?;
        // The next hop's MAC is B's (see `syn_frame`): forwarding writes back the Ethernet
        // header the frame came with, and the sink, which does not own that MAC, discards it
        // at layer 2.
        let next_hop_mac = rx_mac.map(|b| format!("{b:02x}")).join(":");
        rtr.exec(&[
            "ip",
            "neigh",
            "replace",
            NEXT_HOP,
            "lladdr",
            &next_hop_mac,
            "dev",
            &out_dev,
            "nud",
            "permanent",
        ])?;
        rtr.exec(&[
            "ip",
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            NEXT_HOP,
            "dev",
            &out_dev,
        ])?;
        enable_gro(&rtr.name, &rx_dev)?;
        // Threaded NAPI: the receiver's work runs in a kernel thread we can pin and account.
        rtr.write(&format!("/sys/class/net/{rx_dev}/threaded"), "1\n")?;
        Ok(Self {
            id,
            snd,
            rtr,
            _snk: snk,
            tx_dev,
            rx_dev,
            rx_mac,
            out_dev,
            out_mac,
            tx_cpu,
            rx_cpu,
        })
    }

    /// The threads the receiver's work runs in: B's NAPI thread (named `napi/DEV-ID`, cut to
    /// 15 bytes), then `ksoftirqd` of the receiving CPU.
    fn receiver_threads(&self) -> anyhow::Result<Vec<libc::pid_t>> {
        let napi = format!("napi/{}-", self.rx_dev);
        let napi = &napi[..napi.len().min(COMM_LEN)];
        let softirqd = format!("ksoftirqd/{}", self.rx_cpu);
        let mut threads = vec![find_task(|comm| comm.starts_with(napi))?
            .with_context(|| format!("no NAPI thread for {} ({napi}*)", self.rx_dev))?];
        threads.extend(find_task(|comm| comm == softirqd)?);
        Ok(threads)
    }

    fn counters(&self) -> anyhow::Result<Counters> {
        let out = self.rtr.exec(&["ip", "-s", "-s", "-j", "link", "show"])?;
        let links: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("ip -j link: not JSON")?;
        let stat = |dev: &str, dir: &str, field: &str| -> Option<u64> {
            links
                .as_array()?
                .iter()
                .find(|l| l["ifname"] == dev)?
                .get("stats64")?[dir][field]
                .as_u64()
        };
        let counter = |dev: &str, dir: &str, field: &str| -> anyhow::Result<u64> {
            stat(dev, dir, field).with_context(|| format!("no {dir} {field} counter for {dev}"))
        };
        let snmp = self.rtr.exec(&["cat", "/proc/net/snmp"])?;
        let snmp = String::from_utf8_lossy(&snmp.stdout);
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
        let (names, values) = (ip.next().unwrap_or(""), ip.next().unwrap_or(""));
        let ip_errors: u64 = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .filter(|(n, _)| matches!(*n, "InHdrErrors" | "InAddrErrors" | "InDiscards"))
            .filter_map(|(_, v)| v.parse::<u64>().ok())
            .sum();
        Ok(Counters {
            rx_packets: counter(&self.rx_dev, "rx", "packets")?,
            rx_dropped: counter(&self.rx_dev, "rx", "dropped")?,
            forwarded: counter(&self.out_dev, "tx", "packets")?,
            // `ip` shows this one only once the kernel counted some.
            unexpected: stat(&self.rx_dev, "rx", "otherhost").unwrap_or(0) + ip_errors,
        })
    }
}

/// The first task whose `comm` satisfies `matches`.
fn find_task(matches: impl Fn(&str) -> bool) -> anyhow::Result<Option<libc::pid_t>> {
    for entry in std::fs::read_dir("/proc").context("cannot list /proc")? {
        let entry = entry.context("cannot list /proc")?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // Tasks come and go while we look: one that vanished is simply not it.
        if let Ok(comm) = std::fs::read_to_string(entry.path().join("comm")) {
            if matches(comm.trim_end()) {
                return Ok(Some(pid));
            }
        }
    }
    Ok(None)
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

/// egress-filter running as the real daemon in the router namespace; stopped (SIGTERM, then
/// SIGKILL and `detach` if it will not go) on drop.
struct FilterDaemon {
    child: Child,
    binary: PathBuf,
    pin_path: PathBuf,
    logs: Arc<Mutex<Vec<String>>>,
}

impl FilterDaemon {
    fn start(
        binary: &Path,
        netns: &str,
        rules: &Path,
        hook: &str,
        dev: &str,
        pin_path: PathBuf,
    ) -> anyhow::Result<Self> {
        // nsenter, not `ip netns exec`: the latter mounts a fresh /sys without bpffs.
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{netns}"))
            .arg(binary)
            .arg("run")
            .arg("--rules")
            .arg(rules)
            .args([hook, dev, "--event-rate", "0", "--event-burst", "0"])
            .arg("--pin-path")
            .arg(&pin_path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start egress-filter")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take();
        // From here on, the guard stops the daemon whatever fails.
        let mut daemon = Self {
            child,
            binary: binary.to_owned(),
            pin_path,
            logs: Arc::clone(&logs),
        };
        let stderr = stderr.context("egress-filter stderr")?;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut lines) = logs.lock() {
                    lines.push(line);
                }
            }
        });
        daemon.wait_enforcing()?;
        Ok(daemon)
    }

    fn logs(&self) -> String {
        self.logs.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits (bounded) until it logs that it enforces.
    fn wait_enforcing(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + DAEMON_START;
        for _ in 0..DAEMON_START.as_millis() / POLL.as_millis() {
            if self
                .logs
                .lock()
                .is_ok_and(|lines| lines.iter().any(|l| l.contains("enforcing")))
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "egress-filter exited ({status}) before enforcing:\n{}",
                    self.logs()
                );
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        bail!(
            "egress-filter did not report enforcing within {DAEMON_START:?}:\n{}",
            self.logs()
        )
    }

    /// Packets its programs counted under a dropping reason, so far.
    fn drops(&self) -> anyhow::Result<u64> {
        let out = sh(&[
            &self.binary.to_string_lossy(),
            "stats",
            "--json",
            "--pin-path",
            &self.pin_path.to_string_lossy(),
        ])?;
        let stats: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("stats --json: not JSON")?;
        let reasons = stats["reasons"]
            .as_array()
            .context("stats --json: no reasons")?;
        Ok(reasons
            .iter()
            .filter(|r| r["verdict"] == "drop")
            .filter_map(|r| r["packets"].as_u64())
            .sum())
    }

    /// Waits (bounded) for the daemon to exit; whether it did.
    fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        for _ in 0..timeout.as_millis() / POLL.as_millis() {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return true;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
        false
    }
}

impl Drop for FilterDaemon {
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // Safety: `pid` is our own child, not yet reaped (we hold its Child), so the id
            // cannot have been reused; SIGTERM asks it to detach and exit.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if !self.wait_exit(DAEMON_STOP) {
            eprintln!("bench: egress-filter ignored SIGTERM; killing it and detaching");
            let _killed = self.child.kill();
            let _reaped = self.child.wait();
        }
        // A daemon that could not clean up leaves its programs pinned and attached.
        if self.pin_path.exists() {
            let _detached = Command::new(&self.binary)
                .arg("detach")
                .arg("--pin-path")
                .arg(&self.pin_path)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _removed = std::fs::remove_dir_all(&self.pin_path);
        }
    }
}

/// An nftables table loaded in a namespace, deleted on drop.
struct NftTable {
    netns: String,
    family: &'static str,
}

/// The name of both benchmark tables.
const NFT_TABLE: &str = "ef_bench";

impl NftTable {
    fn load(netns: &str, file: &Path, family: &'static str) -> anyhow::Result<Self> {
        sh(&[
            "ip",
            "netns",
            "exec",
            netns,
            "nft",
            "-f",
            &file.to_string_lossy(),
        ])?;
        Ok(Self {
            netns: netns.to_owned(),
            family,
        })
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _deleted = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "nft",
                "delete",
                "table",
                self.family,
                NFT_TABLE,
            ])
            .stderr(Stdio::null())
            .status();
    }
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new(name: &str) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(name);
        std::fs::create_dir(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.path);
    }
}

/// `count` disjoint IPv4 prefixes inside 10.0.0.0/8 as (network, length), with a spread of
/// lengths like a vendor feed: mostly /24 and /32, a few wide blocks down to /16. Wide blocks
/// are placed first so every block starts aligned; a random quarter of them is followed by a gap
/// of its own size, so the set is not one contiguous run.
fn policy_prefixes(count: usize) -> anyhow::Result<Vec<(u32, u8)>> {
    // Per mille of prefixes for each length /16 ..= /32.
    const WEIGHTS: [(u8, u64); 17] = [
        (16, 2),
        (17, 3),
        (18, 5),
        (19, 10),
        (20, 20),
        (21, 30),
        (22, 50),
        (23, 80),
        (24, 400),
        (25, 20),
        (26, 20),
        (27, 20),
        (28, 30),
        (29, 30),
        (30, 20),
        (31, 10),
        (32, 250),
    ];
    let mut rng = Rng::new(0x0005_eed0_fbe4_c0de);
    let mut lengths: Vec<u8> = (0..count)
        .map(|_| {
            let mut pick = rng.below(1000);
            WEIGHTS
                .iter()
                .find(|(_, w)| {
                    let hit = pick < *w;
                    pick = pick.saturating_sub(*w);
                    hit
                })
                .map_or(32, |(len, _)| *len)
        })
        .collect();
    lengths.sort_unstable();
    let (start, end) = (
        u64::from(u32::from(Ipv4Addr::new(10, 0, 0, 0))),
        11u64 << 24,
    );
    let mut cursor = start;
    let mut out = Vec::with_capacity(count);
    for len in lengths {
        let size = 1u64 << (32 - len);
        ensure!(
            cursor + size <= end,
            "{count} prefixes do not fit in 10.0.0.0/8"
        );
        out.push((u32::try_from(cursor)?, len));
        cursor += size;
        if rng.below(4) == 0 {
            cursor += size;
        }
    }
    Ok(out)
}

/// An address inside the middle /24 of the policy: covered, so only the port decides.
fn traffic_destination(prefixes: &[(u32, u8)]) -> anyhow::Result<Ipv4Addr> {
    let slash24: Vec<u32> = prefixes
        .iter()
        .filter(|(_, len)| *len == 24)
        .map(|(net, _)| *net)
        .collect();
    let net = slash24
        .get(slash24.len() / 2)
        .context("the policy holds no /24")?;
    Ok(Ipv4Addr::from(net + 0x17))
}

fn cidr((net, len): (u32, u8)) -> String {
    format!("{}/{len}", Ipv4Addr::from(net))
}

fn rules_toml(prefixes: &[(u32, u8)]) -> String {
    let mut toml = format!(
        "[[service]]\nname = \"bench-allow\"\ndescription = \"throughput benchmark: {} IPv4 \
         prefixes allowing TCP {ALLOWED_PORT}\"\nsource = \"generated by the benchmark\"\n\
         cidrs = [\n",
        prefixes.len()
    );
    for p in prefixes {
        let _ = writeln!(toml, "  \"{}\",", cidr(*p));
    }
    let _ = writeln!(toml, "]\ntcp = [{ALLOWED_PORT}]");
    toml
}

/// The sets both nftables tables use: the prefixes as an interval set, the ports as a set.
fn nft_sets(prefixes: &[(u32, u8)]) -> String {
    let elements: Vec<String> = prefixes.iter().map(|p| cidr(*p)).collect();
    format!(
        "  set allow4 {{\n    type ipv4_addr\n    flags interval\n    elements = {{ {} }}\n  }}\n\
         \x20 set tcp_ports {{\n    type inet_service\n    elements = {{ {ALLOWED_PORT} }}\n  }}\n",
        elements.join(", ")
    )
}

/// The policy in the forward chain of an inet table: accepted if listed, else dropped.
fn nft_forward_ruleset(prefixes: &[(u32, u8)]) -> String {
    format!(
        "table inet {NFT_TABLE} {{\n{}  chain forward {{\n    type filter hook forward priority \
         filter; policy drop;\n    ip daddr @allow4 tcp dport @tcp_ports accept\n  }}\n}}\n",
        nft_sets(prefixes)
    )
}

/// The policy in a netdev ingress chain on the receiving interface; ARP passes (as it does
/// through egress-filter), other frames must be accepted by the policy.
fn nft_ingress_ruleset(prefixes: &[(u32, u8)], dev: &str) -> String {
    format!(
        "table netdev {NFT_TABLE} {{\n{}  chain ingress {{\n    type filter hook ingress device \
         \"{dev}\" priority filter; policy drop;\n    meta protocol arp accept\n    \
         ip daddr @allow4 tcp dport @tcp_ports accept\n  }}\n}}\n",
        nft_sets(prefixes)
    )
}

/// An Ethernet + IPv4 + TCP SYN frame (54 bytes) with valid IPv4 and TCP checksums, TTL 255.
///
/// Live-frame test runs recycle their pages without copying the frame in again, so whatever the
/// receiver writes into a frame comes back in a later one. A router writes two things: the TTL
/// (bounded by CHUNK) and the Ethernet header, which it rewrites to next hop MAC + its out
/// interface's MAC. So the frame is built as that header already: to the receiving veth's MAC
/// (the router's neighbour entry for its next hop says the same) from the out interface's MAC.
fn syn_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4: version 4, IHL 5, total length 40, DF, TTL 255, TCP.
    f.extend_from_slice(&[0x45, 0, 0, 40, 0, 0, 0x40, 0, 255, 6, 0, 0]);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    let ip_sum = checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    // TCP: source port 40000, sequence 1, header 20 bytes, SYN, window 64240.
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&0u32.to_be_bytes());
    f.extend_from_slice(&[0x50, 0x02]);
    f.extend_from_slice(&64240u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    let tcp_sum = checksum(&f[34..54], sum16(&pseudo));
    f[50..52].copy_from_slice(&tcp_sum.to_be_bytes());
    f
}

/// The sum of `data` as big-endian 16-bit words (an odd last byte is padded with zero).
fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum()
}

/// The Internet checksum of `data`, starting from `initial` (a pseudo-header sum).
fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial + sum16(data);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
