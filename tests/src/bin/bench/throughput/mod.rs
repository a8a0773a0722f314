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
//!
//! The parts: [`topology`] builds the namespaces and reads the router's counters, [`traffic`]
//! generates the frames, [`policy`] writes the policy for each filter, [`setups`] puts each filter
//! in place, and [`measurement`] turns two readings around a window into a row of the report.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use anyhow::ensure;

mod measurement;
mod policy;
mod setups;
mod topology;
mod traffic;

use self::{
    measurement::run_traffic,
    policy::{policy_prefixes, traffic_destination, PolicyFiles, TempDir},
    setups::Setup,
    topology::Topology,
    traffic::syn_frame,
};

#[derive(Debug)]
pub(crate) struct ThroughputRow {
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
/// The port the traffic goes to: covered destination, port not allowed.
const DROPPED_PORT: u16 = 22;
const SENDER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Runs every setup for `seconds` each, same traffic, and returns one row per setup.
/// `egress_filter` is the path of the egress-filter binary to run as the filter under test.
pub(crate) fn measure(egress_filter: &Path, seconds: u64) -> anyhow::Result<Vec<ThroughputRow>> {
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
