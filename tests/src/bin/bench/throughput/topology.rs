//! The three namespaces and their veths, the receiver's GRO and threaded NAPI, and the router's
//! counters a window is measured with.

use std::{
    io::Write as _,
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
};

use anyhow::{ensure, Context as _};
use filter_tests::lab::{enter_netns, sh, unique_id, Netns};

const ROUTER_LAN: &str = "192.0.2.1/24";
const ROUTER_WAN: &str = "198.51.100.1/24";
const NEXT_HOP: &str = "198.51.100.2";

/// `ETHTOOL_SGRO` from linux/ethtool.h (not in the libc crate).
const ETHTOOL_SGRO: u32 = 0x0000_002c;
/// The longest `comm` the kernel keeps for a task (TASK_COMM_LEN - 1).
const COMM_LEN: usize = 15;

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

/// A namespace of the benchmark's own: no IPv6 on its interfaces, so no DAD or solicitations in
/// the counters.
fn bench_netns(name: String) -> anyhow::Result<Netns> {
    let ns = Netns::create(name)?;
    ns.exec(&[
        "sysctl",
        "-qw",
        "net.ipv6.conf.default.disable_ipv6=1",
        "net.ipv6.conf.all.disable_ipv6=1",
    ])?;
    Ok(ns)
}

/// Writes `value` to `path` as seen from namespace `ns` (its own /sys).
fn write_in(ns: &Netns, path: &str, value: &str) -> anyhow::Result<()> {
    let mut tee = Command::new("ip")
        .args(["netns", "exec", &ns.name, "tee", path])
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

/// A veth pair from `dev` in `ns` to `peer` in `other`, one queue each way (one NAPI context,
/// one thread to account), both up.
fn veth(ns: &Netns, dev: &str, other: &Netns, peer: &str) -> anyhow::Result<()> {
    let queues = ["numtxqueues", "1", "numrxqueues", "1"];
    let mut args = vec!["ip", "link", "add", dev, "netns", &ns.name];
    args.extend(queues);
    args.extend(["type", "veth", "peer", "name", peer, "netns", &other.name]);
    args.extend(queues);
    sh(&args)?;
    ns.exec(&["ip", "link", "set", dev, "up"])?;
    other.exec(&["ip", "link", "set", peer, "up"])?;
    Ok(())
}

/// The MAC address of `dev` in `ns`.
fn mac(ns: &Netns, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.exec(&["ip", "-j", "link", "show", "dev", dev])?;
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
/// Counters of the router.
pub(super) struct Counters {
    /// Frames B's NAPI poll took off its ring.
    pub(super) rx_packets: u64,
    /// Frames that found B's ring full (and anything else B dropped on receive).
    pub(super) rx_dropped: u64,
    /// Frames sent out of O.
    pub(super) forwarded: u64,
    /// Frames the router discarded for reasons no filter gives: not addressed to it, bad IP
    /// header (an expired TTL), no route.
    pub(super) unexpected: u64,
}

/// The three namespaces, their veths, and the CPUs of sender and receiver.
pub(super) struct Topology {
    pub(super) id: String,
    pub(super) snd: Netns,
    pub(super) rtr: Netns,
    _snk: Netns,
    /// The sender's veth: the generator transmits out of it.
    pub(super) tx_dev: String,
    /// The router's receiving veth (XDP, netdev ingress).
    pub(super) rx_dev: String,
    pub(super) rx_mac: [u8; 6],
    /// The router's way out (TC egress).
    pub(super) out_dev: String,
    pub(super) out_mac: [u8; 6],
    pub(super) tx_cpu: usize,
    pub(super) rx_cpu: usize,
}

impl Topology {
    pub(super) fn new() -> anyhow::Result<Self> {
        let id = unique_id();
        let cpus = usable_cpus()?;
        let tx_cpu = *cpus.first().context("no usable CPU")?;
        let rx_cpu = cpus.get(1).copied().unwrap_or(tx_cpu);
        let snd = bench_netns(format!("ef-bench-{id}-snd"))?;
        let rtr = bench_netns(format!("ef-bench-{id}-rtr"))?;
        let snk = bench_netns(format!("ef-bench-{id}-snk"))?;
        // Short names: the NAPI thread is named after B and must stay recognisable in 15 bytes.
        let (tx_dev, rx_dev, out_dev, sink_dev) = (
            format!("eb{id}a"),
            format!("eb{id}b"),
            format!("eb{id}o"),
            format!("eb{id}s"),
        );
        veth(&snd, &tx_dev, &rtr, &rx_dev)?;
        veth(&rtr, &out_dev, &snk, &sink_dev)?;
        rtr.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        rtr.exec(&["ip", "addr", "add", ROUTER_LAN, "dev", &rx_dev])?;
        rtr.exec(&["ip", "addr", "add", ROUTER_WAN, "dev", &out_dev])?;
        let rx_mac = mac(&rtr, &rx_dev)?;
        let out_mac = mac(&rtr, &out_dev)?;
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
        write_in(&rtr, &format!("/sys/class/net/{rx_dev}/threaded"), "1\n")?;
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
    pub(super) fn receiver_threads(&self) -> anyhow::Result<Vec<libc::pid_t>> {
        let napi = format!("napi/{}-", self.rx_dev);
        let napi = &napi[..napi.len().min(COMM_LEN)];
        let softirqd = format!("ksoftirqd/{}", self.rx_cpu);
        let mut threads = vec![find_task(|comm| comm.starts_with(napi))?
            .with_context(|| format!("no NAPI thread for {} ({napi}*)", self.rx_dev))?];
        threads.extend(find_task(|comm| comm == softirqd)?);
        Ok(threads)
    }

    pub(super) fn counters(&self) -> anyhow::Result<Counters> {
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
