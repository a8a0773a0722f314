//! The traffic: live-frame `BPF_PROG_TEST_RUN`s of a program returning `XDP_TX`, on a thread in
//! the sender namespace, of one TCP SYN built to survive being recycled (see [`super`]).

use std::{
    net::Ipv4Addr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp, XdpMode};
use filter_tests::lab::enter_netns;

use super::topology::Topology;

/// Frames per live-frame test run: 128 batches (see the module docs on recycled frames).
const CHUNK: u32 = 32_768;
/// Frames the kernel sends per batch in live-frame mode: the most it takes. The run's page
/// pool keeps as many pages for recycling, so fewer are freed and allocated again.
const BATCH: u32 = 256;
// A page carries at most one frame per batch, and each forwarding takes one off TTL 255.
const _: () = assert!(CHUNK / BATCH < 255 - 1);

/// The traffic: a thread in the sender namespace running live-frame test runs of `tx_generator`
/// until told to stop (or `limit` passed).
pub(super) struct Generator {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Generator {
    pub(super) fn start(topo: &Topology, frame: Vec<u8>, limit: Duration) -> anyhow::Result<Self> {
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

    pub(super) fn running(&self) -> bool {
        !self.handle.is_finished()
    }

    /// Stops it, and says what went wrong if it had stopped already.
    pub(super) fn stop(self) -> anyhow::Result<()> {
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

/// Restricts task `pid` (0: the calling thread) to `cpu`.
pub(super) fn pin_to_cpu(pid: libc::pid_t, cpu: usize) -> anyhow::Result<()> {
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

/// An Ethernet + IPv4 + TCP SYN frame (54 bytes) with valid IPv4 and TCP checksums, TTL 255.
///
/// Live-frame test runs recycle their pages without copying the frame in again, so whatever the
/// receiver writes into a frame comes back in a later one. A router writes two things: the TTL
/// (bounded by CHUNK) and the Ethernet header, which it rewrites to next hop MAC + its out
/// interface's MAC. So the frame is built as that header already: to the receiving veth's MAC
/// (the router's neighbour entry for its next hop says the same) from the out interface's MAC.
pub(super) fn syn_frame(
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
