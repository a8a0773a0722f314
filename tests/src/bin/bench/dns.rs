//! The DNS forwarder (issue 6, part 5): the latency it adds over asking the upstream directly,
//! and the queries per second it answers, on this machine; with its answer cache (the default)
//! and without it (`--dns-cache 0`), each on a daemon started afresh.
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
//! - the same names again: known open; with the cache, answered from it, without it forwarded
//!   and the answer sent at once;
//! - unlisted names: nothing learned; with the cache, answered from it after the first ask of
//!   each of the [`UNLISTED`] names, without it forwarded.
//!
//! Added latency = the forwarder's percentile minus the direct one in the same row. Throughput:
//! [`LOAD_CLIENTS`] threads, each from its own loopback address keeping [`WINDOW`] queries in
//! flight (a new one as each is answered), for [`QPS_SECONDS`] or [`MAX_LOAD_QUERIES`] queries,
//! through each daemon and directly; only answers that answer count. The daemon, dnsmasq and
//! the load share this machine's two cores.

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
/// Load clients, each from its own address, each a thread.
pub(crate) const LOAD_CLIENTS: usize = 4;
/// Queries each load client keeps in flight: the forwarder's bound per client address
/// (`MAX_QUERIES_PER_CLIENT`), so none is refused for it.
pub(crate) const WINDOW: usize = filter_user::dns::forwarder::MAX_QUERIES_PER_CLIENT;
pub(crate) const QPS_SECONDS: u64 = 3;
/// Queries one load client sends at most, whatever the time left.
const MAX_LOAD_QUERIES: usize = 2_000_000;
/// A load client that hears nothing this long counts its queries in flight as failed.
const LOAD_RECEIVE_TIMEOUT: Duration = Duration::from_millis(200);
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

/// What one daemon measured: with its answer cache (the default) or without (`--dns-cache 0`,
/// every query forwarded).
pub(crate) struct Run {
    pub cache: bool,
    pub rows: Vec<LatencyRow>,
    pub forwarder_load: Load,
    /// The daemon's CPU time (user and system, all threads) per query answered under the
    /// forwarder's load: what the forwarder costs, whatever else the machine runs.
    pub daemon_cpu_per_query: Duration,
    /// Addresses the daemon reports it learned: the map-write path was taken.
    pub learned: u64,
}

pub(crate) struct DnsFigures {
    pub runs: Vec<Run>,
    pub direct_load: Load,
}

/// The daemon with its cache, then without; dnsmasq's own throughput last.
pub(crate) fn measure(binary: &Path) -> anyhow::Result<DnsFigures> {
    let (cached, _) = measure_run(binary, true)?;
    let (forwarded, setup) = measure_run(binary, false)?;
    let direct_load = load(&setup.ns, UPSTREAM.parse()?)?;
    Ok(DnsFigures {
        runs: vec![cached, forwarded],
        direct_load,
    })
}

/// The latency rows and the load through one daemon, with or without its cache; returns the
/// setup (dnsmasq and that daemon) still running.
fn measure_run(binary: &Path, cache: bool) -> anyhow::Result<(Run, Setup)> {
    let extra: &[&str] = if cache { &[] } else { &["--dns-cache", "0"] };
    let setup = Setup::start(binary, extra)?;
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
        let (again, other) = if cache {
            (
                "listed name, asked again (from the cache)",
                "unlisted name (250 cycled: from the cache after the first ask of each)",
            )
        } else {
            (
                "listed name, asked again (known open, forwarded)",
                "unlisted name (forwarded only)",
            )
        };
        // Warm dnsmasq's answers up, then measure.
        timed(&[upstream], &listed, "warm-up")?;
        Ok(vec![
            paired(
                upstream,
                forwarder,
                &listed,
                "listed name, first answer (map write)",
            )?,
            paired(upstream, forwarder, &listed, again)?,
            paired(upstream, forwarder, &unlisted, other)?,
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
    let cpu_before = setup.daemon_cpu()?;
    let started = Instant::now();
    let forwarder_load = load(&setup.ns, FORWARDER.parse()?)?;
    let answered = forwarder_load.answered_per_second * started.elapsed().as_secs_f64();
    let daemon_cpu_per_query = setup
        .daemon_cpu()?
        .saturating_sub(cpu_before)
        .div_f64(answered.max(1.0));
    Ok((
        Run {
            cache,
            rows,
            forwarder_load,
            daemon_cpu_per_query,
            learned,
        },
        setup,
    ))
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

/// What a load run got: answers that answer (NOERROR with records, under a query's ID), the
/// rest, and how long each good answer took under that load.
pub(crate) struct Load {
    pub answered_per_second: f64,
    /// Anything else that came back (SERVFAIL for a bound, say), and queries that got nothing
    /// within [`LOAD_RECEIVE_TIMEOUT`].
    pub failed: u64,
    pub latency: Latency,
}

/// Answers per second, with [`LOAD_CLIENTS`] threads, each its own client address (the
/// forwarder bounds the queries in flight per address) keeping [`WINDOW`] queries in flight:
/// a new query goes as soon as one is answered. Bounded in time ([`QPS_SECONDS`]) and in count
/// ([`MAX_LOAD_QUERIES`] per client).
fn load(ns: &str, server: SocketAddr) -> anyhow::Result<Load> {
    let deadline = Instant::now() + Duration::from_secs(QPS_SECONDS);
    let started = Instant::now();
    let clients: Vec<_> = (0..LOAD_CLIENTS)
        .map(|client| {
            let ns = ns.to_owned();
            std::thread::spawn(move || load_client(&ns, server, client, deadline))
        })
        .collect();
    let (mut answered, mut failed, mut samples) = (0, 0, Vec::new());
    for client in clients {
        let (good, bad, times) = client
            .join()
            .map_err(|_| anyhow::anyhow!("load thread panicked"))??;
        answered += good;
        failed += bad;
        samples.extend(times);
    }
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(!samples.is_empty(), "no query of the load was answered");
    samples.sort_unstable();
    Ok(Load {
        answered_per_second: answered as f64 / elapsed,
        failed,
        latency: Latency {
            p50: samples[samples.len() / 2],
            p99: samples[samples.len() * 99 / 100],
        },
    })
}

/// One load client: from 127.0.0.(10 + `client`), over its own share of [`NAMES`] (so no two
/// queries in flight ask the same and the forwarder merges none). Returns the good answers,
/// the rest, and the good answers' times.
fn load_client(
    ns: &str,
    server: SocketAddr,
    client: usize,
    deadline: Instant,
) -> anyhow::Result<(u64, u64, Vec<Duration>)> {
    enter_netns(ns)?;
    let socket = UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, 10 + client as u8), 0))?;
    socket.connect(server)?;
    socket.set_read_timeout(Some(LOAD_RECEIVE_TIMEOUT))?;
    let share = NAMES / LOAD_CLIENTS;
    let queries: Vec<Vec<u8>> = (0..share)
        .map(|i| {
            let name = format!("n{}.cdn.bench.test.", client * share + i);
            query(&name, RecordType::AAAA, 0)
        })
        .collect();
    // Sent at, by ID; the ID is the sequence number, and the window is far below 65,536.
    let mut sent_at: Vec<Option<Instant>> = vec![None; 65_536];
    let mut next = 0usize;
    for _ in 0..WINDOW {
        send_next(&socket, &queries, &mut next, &mut sent_at)?;
    }
    let (mut good, mut bad, mut times) = (0u64, 0u64, Vec::new());
    let mut buffer = vec![0u8; 4096];
    while Instant::now() < deadline && next < MAX_LOAD_QUERIES {
        let Ok(len) = socket.recv(&mut buffer) else {
            // Nothing for a while: count what is outstanding as failed and start again.
            bad += sent_at.iter().filter(|s| s.is_some()).count() as u64;
            sent_at.fill(None);
            for _ in 0..WINDOW {
                send_next(&socket, &queries, &mut next, &mut sent_at)?;
            }
            continue;
        };
        let Ok(answer) = Message::from_vec(&buffer[..len]) else {
            bad += 1;
            continue;
        };
        let Some(sent) = sent_at[usize::from(answer.metadata.id)].take() else {
            continue;
        };
        if answer.metadata.response_code == ResponseCode::NoError && !answer.answers.is_empty() {
            good += 1;
            times.push(sent.elapsed());
        } else {
            bad += 1;
        }
        send_next(&socket, &queries, &mut next, &mut sent_at)?;
    }
    Ok((good, bad, times))
}

/// Sends query number `next` (a name of `queries`, in turn) under the ID `next` mod 65,536.
fn send_next(
    socket: &UdpSocket,
    queries: &[Vec<u8>],
    next: &mut usize,
    sent_at: &mut [Option<Instant>],
) -> std::io::Result<()> {
    let id = (*next % 65_536) as u16;
    let mut bytes = queries[*next % queries.len()].clone();
    bytes[..2].copy_from_slice(&id.to_be_bytes());
    *next += 1;
    sent_at[usize::from(id)] = Some(Instant::now());
    socket.send(&bytes).map(|_| ())
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
    /// dnsmasq and the daemon, run with `extra` arguments.
    fn start(binary: &Path, extra: &[&str]) -> anyhow::Result<Self> {
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
            .args(extra)
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

    /// The daemon's CPU time so far, user and system, all threads (`/proc/PID/stat`, in clock
    /// ticks of 10 ms).
    fn daemon_cpu(&self) -> anyhow::Result<Duration> {
        let pid = self.daemon.as_ref().context("no daemon")?.id();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The fields after the command name (which may hold spaces) and its closing parenthesis.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .context("a stat line")?
            .1
            .split_whitespace()
            .collect();
        // utime and stime: fields 14 and 15 of the line, 12 and 13 after the name.
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        Ok(Duration::from_millis(ticks * 10))
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
         (`--dns-listen`, one rule `*.cdn.bench.test`), interleaved; the daemon with its answer \
         cache (the default) and, started afresh, without it (`--dns-cache 0`: every query \
         forwarded). Added = the forwarder's percentile minus dnsmasq's own in the same row. \
         Goal: ≤ 1 ms added at p99, ≥ 40k queries/s.\n\n\
         | daemon | query | direct p50 / p99 µs | forwarded p50 / p99 µs | added p50 µs | added p99 µs | goal |\n\
         |---|---|---|---|---|---|---|\n"
    );
    let daemon = |run: &Run| {
        if run.cache {
            "cache on (default)"
        } else {
            "cache off (`--dns-cache 0`)"
        }
    };
    for run in &f.runs {
        for row in &run.rows {
            let (d, w) = (&row.direct, &row.forwarded);
            let (a50, a99) = (us(w.p50) - us(d.p50), us(w.p99) - us(d.p99));
            let _ = writeln!(
                t,
                "| {} | {} | {:.0} / {:.0} | {:.0} / {:.0} | {a50:.0} | {a99:.0} | ≤ 1000 µs: {} |",
                daemon(run),
                row.label,
                us(d.p50),
                us(d.p99),
                us(w.p50),
                us(w.p99),
                crate::verdict(a99 <= 1000.0)
            );
        }
    }
    let _ = writeln!(
        t,
        "\nThroughput: {LOAD_CLIENTS} client threads, each from its own address with {WINDOW} \
         queries in flight (the forwarder's bound per client), a new one sent as each is \
         answered, {QPS_SECONDS} s, the {NAMES} listed names again (known open; with the cache \
         on, answered from it); only NOERROR answers with records count. Daemon CPU = its CPU \
         time (`/proc`, all threads) over the load divided by the answers. The clients, the \
         daemon and dnsmasq share the machine's cores.\n\n\
         | server | queries/s | goal ≥ 40k | failed or unanswered | p50 / p99 µs under load | daemon CPU per query | addresses learned (`stats`) |\n\
         |---|---|---|---|---|---|---|"
    );
    for run in &f.runs {
        let w = &run.forwarder_load;
        let _ = writeln!(
            t,
            "| forwarder, {} | {:.0} | {} | {} | {:.0} / {:.0} | {:.1} µs | {} |",
            daemon(run),
            w.answered_per_second,
            crate::verdict(w.answered_per_second >= 40_000.0),
            w.failed,
            us(w.latency.p50),
            us(w.latency.p99),
            us(run.daemon_cpu_per_query),
            run.learned
        );
    }
    let d = &f.direct_load;
    let _ = writeln!(
        t,
        "| dnsmasq directly | {:.0} | - | {} | {:.0} / {:.0} | - | - |",
        d.answered_per_second,
        d.failed,
        us(d.latency.p50),
        us(d.latency.p99),
    );
    t
}
