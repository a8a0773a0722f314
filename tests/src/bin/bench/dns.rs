//! The DNS forwarder (issue 6, part 5): the latency it adds over asking the upstream directly,
//! and the queries per second it answers, on this machine.
//!
//! One namespace holds dnsmasq on 127.0.0.1:5300 (the upstream, answering from a hosts file)
//! and the real daemon (`run --dns-listen 127.0.0.1:5353 --dns-upstream 127.0.0.1:5300`, XDP on
//! an idle veth) with one rule, `*.cdn.bench.test`. The load comes from threads of this process
//! that entered the namespace, with plain blocking sockets.
//!
//! Latency: one query at a time, each timed from send to its answer, each query asked of dnsmasq
//! directly and then through the forwarder (interleaved, so both see the same machine), for:
//! - a listed name answered for the first time: the forwarder writes a new host route to the
//!   kernel map before it answers (every one of [`NAMES`] names has its own address);
//! - the same names again: known open, the answer goes at once and the entry is extended;
//! - unlisted names: forwarded and answered, nothing learned.
//!
//! Added latency = the forwarder's percentile minus the direct one in the same row. Throughput: two threads,
//! each keeping [`WINDOW`] queries in flight, for [`QPS_SECONDS`], through the forwarder and
//! directly. The daemon, dnsmasq and the load share this machine's two cores.

use std::{
    fmt::Write as _,
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    str::FromStr as _,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};
use filter_tests::{
    dns::DnsServer,
    lab::{enter_netns, sh},
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, RecordType},
};

/// Distinct listed names, each with its own IPv6 address: as many map writes.
pub(crate) const NAMES: usize = 5_000;
/// Unlisted names (A records), cycled.
const UNLISTED: usize = 250;
/// Queries each load thread keeps in flight.
pub(crate) const WINDOW: usize = 128;
pub(crate) const QPS_SECONDS: u64 = 3;
const UPSTREAM: &str = "127.0.0.1:5300";
const FORWARDER: &str = "127.0.0.1:5353";

/// Latency percentiles.
pub(crate) struct Latency {
    pub p50: Duration,
    pub p99: Duration,
}

/// One kind of query, asked directly and through the forwarder.
pub(crate) struct LatencyRow {
    pub label: &'static str,
    pub direct: Latency,
    pub forwarded: Latency,
}

pub(crate) struct DnsFigures {
    pub rows: Vec<LatencyRow>,
    pub qps_direct: f64,
    pub qps_forwarder: f64,
    /// Addresses the daemon reports it learned: the map-write path was taken.
    pub learned: u64,
}

pub(crate) fn measure(binary: &Path) -> anyhow::Result<DnsFigures> {
    let setup = Setup::start(binary)?;
    let ns = setup.ns.clone();
    // One thread in the namespace does the latency runs, in order.
    let latency = std::thread::spawn(move || -> anyhow::Result<_> {
        enter_netns(&ns)?;
        let upstream: SocketAddr = UPSTREAM.parse()?;
        let forwarder: SocketAddr = FORWARDER.parse()?;
        let listed: Vec<Vec<u8>> = (0..NAMES)
            .map(|i| query(&format!("n{i}.cdn.bench.test."), RecordType::AAAA, i))
            .collect();
        let unlisted: Vec<Vec<u8>> = (0..NAMES)
            .map(|i| {
                query(
                    &format!("u{}.other.bench.test.", i % UNLISTED),
                    RecordType::A,
                    i,
                )
            })
            .collect();
        // Warm dnsmasq's answers up, then measure.
        timed(&[upstream], &listed, "warm-up")?;
        Ok(vec![
            paired(
                upstream,
                forwarder,
                &listed,
                "listed name, first answer (map write)",
            )?,
            paired(
                upstream,
                forwarder,
                &listed,
                "listed name, asked again (known open)",
            )?,
            paired(
                upstream,
                forwarder,
                &unlisted,
                "unlisted name (forwarded only)",
            )?,
        ])
    });
    let rows = latency
        .join()
        .map_err(|_| anyhow::anyhow!("latency thread panicked"))??;
    let learned = setup.learned()?;
    ensure!(
        learned >= NAMES as u64,
        "the daemon learned {learned} addresses, fewer than the {NAMES} names asked"
    );
    let qps_forwarder = qps(&setup.ns, FORWARDER.parse()?)?;
    let qps_direct = qps(&setup.ns, UPSTREAM.parse()?)?;
    Ok(DnsFigures {
        rows,
        qps_direct,
        qps_forwarder,
        learned,
    })
}

fn query(name: &str, kind: RecordType, id: usize) -> Vec<u8> {
    let mut m = Message::new(id as u16, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(
        Name::from_str(name).expect("valid name"),
        kind,
    ));
    m.to_vec().expect("a query encodes")
}

fn paired(
    direct: SocketAddr,
    forwarder: SocketAddr,
    queries: &[Vec<u8>],
    label: &'static str,
) -> anyhow::Result<LatencyRow> {
    let mut both = timed(&[direct, forwarder], queries, label)?.into_iter();
    let (Some(asked_directly), Some(asked_through)) = (both.next(), both.next()) else {
        bail!("{label}: two series expected");
    };
    Ok(LatencyRow {
        label,
        direct: asked_directly,
        forwarded: asked_through,
    })
}

/// Sends each query to each server in turn and waits for its answer; checks the answer carries
/// a record. One latency series per server.
fn timed(
    servers: &[SocketAddr],
    queries: &[Vec<u8>],
    label: &'static str,
) -> anyhow::Result<Vec<Latency>> {
    let mut buffer = vec![0u8; 4096];
    let mut series = Vec::new();
    for server in servers {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(Duration::from_secs(2)))?;
        series.push((socket, Vec::with_capacity(queries.len())));
    }
    for (i, bytes) in queries.iter().enumerate() {
        for (socket, samples) in &mut series {
            samples.push(ask(socket, bytes, i, &mut buffer, label)?);
        }
    }
    Ok(series
        .into_iter()
        .map(|(_, mut samples)| {
            samples.sort_unstable();
            Latency {
                p50: samples[samples.len() / 2],
                p99: samples[samples.len() * 99 / 100],
            }
        })
        .collect())
}

/// One query, timed to its answer.
fn ask(
    socket: &UdpSocket,
    bytes: &[u8],
    i: usize,
    buffer: &mut [u8],
    label: &str,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    socket.send(bytes)?;
    loop {
        let len = socket
            .recv(buffer)
            .with_context(|| format!("{label}: no answer to query {i}"))?;
        let answer = Message::from_vec(&buffer[..len])?;
        if usize::from(answer.metadata.id) == i % 65_536 {
            ensure!(
                answer.metadata.response_code == ResponseCode::NoError
                    && !answer.answers.is_empty(),
                "{label}: query {i} got {:?} with {} answers",
                answer.metadata.response_code,
                answer.answers.len()
            );
            return Ok(started.elapsed());
        }
    }
}

/// Answers per second with two threads each keeping [`WINDOW`] queries in flight.
fn qps(ns: &str, server: SocketAddr) -> anyhow::Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(QPS_SECONDS);
    let threads: Vec<_> = (0..2)
        .map(|t| {
            let ns = ns.to_owned();
            std::thread::spawn(move || -> anyhow::Result<u64> {
                enter_netns(&ns)?;
                let socket = UdpSocket::bind("127.0.0.1:0")?;
                socket.connect(server)?;
                socket.set_read_timeout(Some(Duration::from_millis(200)))?;
                let queries: Vec<Vec<u8>> = (0..WINDOW)
                    .map(|i| {
                        let name = format!("n{}.cdn.bench.test.", (t * WINDOW + i) % NAMES);
                        query(&name, RecordType::AAAA, i)
                    })
                    .collect();
                let mut buffer = vec![0u8; 4096];
                let mut answered = 0;
                while Instant::now() < deadline {
                    for bytes in &queries {
                        socket.send(bytes)?;
                    }
                    for _ in 0..WINDOW {
                        if socket.recv(&mut buffer).is_err() {
                            break;
                        }
                        answered += 1;
                    }
                }
                Ok(answered)
            })
        })
        .collect();
    let started = Instant::now();
    let mut answered = 0;
    for thread in threads {
        answered += thread
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
    }
    Ok(answered as f64 / started.elapsed().as_secs_f64())
}

/// The namespace, dnsmasq and the daemon; all removed on drop.
struct Setup {
    ns: String,
    pin: String,
    dir: std::path::PathBuf,
    binary: std::path::PathBuf,
    daemon: Option<Child>,
    upstream: Option<DnsServer>,
}

impl Setup {
    fn start(binary: &Path) -> anyhow::Result<Self> {
        let id = format!("{:x}", std::process::id());
        let mut setup = Self {
            ns: format!("ef-bench-dns-{id}"),
            pin: format!("/sys/fs/bpf/ef-bench-dns-{id}"),
            dir: std::env::temp_dir().join(format!("ef-bench-dns-{id}")),
            binary: binary.to_owned(),
            daemon: None,
            upstream: None,
        };
        std::fs::create_dir_all(&setup.dir)?;
        sh(&["ip", "netns", "add", &setup.ns])?;
        sh(&["ip", "-n", &setup.ns, "link", "set", "lo", "up"])?;
        sh(&[
            "ip", "-n", &setup.ns, "link", "add", "bd0", "type", "veth", "peer", "name", "bd1",
        ])?;
        sh(&["ip", "-n", &setup.ns, "link", "set", "bd0", "up"])?;
        let mut hosts = String::new();
        for i in 0..NAMES {
            let _ = writeln!(hosts, "2001:db8:b::{i:x} n{i}.cdn.bench.test");
        }
        for i in 0..UNLISTED {
            let _ = writeln!(hosts, "192.0.2.{} u{i}.other.bench.test", i % 250 + 1);
        }
        let hosts_file = setup.dir.join("hosts");
        std::fs::write(&hosts_file, hosts)?;
        std::fs::write(
            setup.dir.join("bench.toml"),
            "[[service]]\nname = \"bench-cdn\"\nhosts = [\"*.cdn.bench.test\"]\ntcp = [443]\n",
        )?;
        setup.upstream = Some(DnsServer::start_with_options(
            &hosts_file,
            300,
            UPSTREAM.parse()?,
            &setup.ns,
            &[],
        )?);
        let mut child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", setup.ns))
            .arg(binary)
            .args(["run", "--rules"])
            .arg(setup.dir.join("bench.toml"))
            .args(["--xdp", "bd0", "--no-self-allow", "--pin-path", &setup.pin])
            .args(["--dns-listen", FORWARDER, "--dns-upstream", UPSTREAM])
            .env("RUST_LOG", "warn,filter_user::daemon=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start egress-filter")?;
        let ready = crate::stderr_line(&mut child, "answering DNS")?;
        setup.daemon = Some(child);
        if ready.recv_timeout(Duration::from_secs(30)).is_err() {
            bail!("the daemon did not start answering DNS");
        }
        // The forwarder starts with the serve loop, a moment after the log line.
        std::thread::sleep(Duration::from_millis(200));
        Ok(setup)
    }

    /// `stats --json`: how many addresses the daemon learned (the state file is written every
    /// second, so wait for it).
    fn learned(&self) -> anyhow::Result<u64> {
        std::thread::sleep(Duration::from_millis(1_500));
        let out = Command::new(&self.binary)
            .args(["stats", "--json", "--pin-path", &self.pin])
            .output()?;
        ensure!(out.status.success(), "stats failed");
        let stats: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        stats["dns"]["learned"]
            .as_u64()
            .context("stats has no dns.learned")
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _term = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _exited = child.wait();
        }
        self.upstream = None;
        let _deleted = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _removed = std::fs::remove_dir_all(&self.dir);
        let _unpinned = std::fs::remove_dir_all(&self.pin);
    }
}

/// The BENCHMARKS.md section.
pub(crate) fn table(f: &DnsFigures) -> String {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut t = format!(
        "## DNS forwarder\n\nOne query at a time over loopback in a namespace, {NAMES} queries per row, \
         each asked of dnsmasq directly and then through the real daemon's forwarder \
         (`--dns-listen`, one rule `*.cdn.bench.test`), interleaved. Added = the forwarder's \
         percentile minus dnsmasq's own in the same row. Goal: ≤ 1 ms added at p99, ≥ 20k \
         queries/s.\n\n\
         | query | direct p50 / p99 µs | forwarded p50 / p99 µs | added p50 µs | added p99 µs | goal |\n\
         |---|---|---|---|---|---|\n"
    );
    for row in &f.rows {
        let (d, w) = (&row.direct, &row.forwarded);
        let (a50, a99) = (us(w.p50) - us(d.p50), us(w.p99) - us(d.p99));
        let _ = writeln!(
            t,
            "| {} | {:.0} / {:.0} | {:.0} / {:.0} | {a50:.0} | {a99:.0} | ≤ 1000 µs: {} |",
            row.label,
            us(d.p50),
            us(d.p99),
            us(w.p50),
            us(w.p99),
            crate::verdict(a99 <= 1000.0)
        );
    }
    let _ = writeln!(
        t,
        "\nThroughput (2 client threads × {WINDOW} queries in flight, {QPS_SECONDS} s, listed names): \
         through the forwarder {:.0} queries/s (≥ 20k: {}); dnsmasq directly {:.0} queries/s. \
         The daemon learned {} addresses during the run (`stats`).",
        f.qps_forwarder,
        crate::verdict(f.qps_forwarder >= 20_000.0),
        f.qps_direct,
        f.learned
    );
    t
}
