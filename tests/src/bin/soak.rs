//! `cargo xtask soak --minutes N`: the gateway lab under sustained load and faults, with its
//! invariants checked all along. Needs root. Prints a summary table; exits non-zero when an
//! invariant broke.
//!
//! Load, from the client's namespace:
//! - lookup-then-connect cycles of distinct names at [`CYCLES_PER_SEC`]: an AAAA question for a
//!   name under a wildcard rule through the gateway's forwarder, then at once a TCP connection to
//!   the address it answered (each name its own address, expiring seconds later, so every cycle
//!   meets an address the filter learns from that very answer). A connection that takes longer
//!   than [`RETRANSMIT_AFTER`] had its first SYN dropped; one that fails, too.
//! - connections to a destination no rule allows, every [`BLOCKED_EVERY`]: none may complete.
//! - DNS at [`FLOOD_PER_SEC`] from a second client, [`FLOOD_CLIENT`]: listed, unlisted and
//!   malformed queries.
//!
//! Faults: a rules update every [`RELOAD_EVERY`], alternating a valid and a broken file, swapped
//! in the way a ConfigMap update does (a `..data` symlink replaced), with `--watch-rules`; a
//! `kill -9` and a restart every [`KILL_EVERY`]; the upstream DNS server stopped and started
//! again every [`UPSTREAM_EVERY`].
//!
//! Invariants: no blocked connection completes; no first SYN after a lookup is dropped; no
//! lookup goes unanswered unless a fault overlapped it; the cycles keep their pace, counted in
//! attempts (a lookup a fault leaves unanswered is still one the clients made); RSS,
//! open descriptors and the learned table stay flat after warm-up (the slope is reported); the
//! DNS gap around each `kill -9` (time without answers) is measured, goal ≤ 1 s.
#![expect(
    clippy::cast_precision_loss,
    reason = "counts become f64 only for rates and slopes in the report"
)]

use filter_user::dns::forwarder::UPSTREAM_TIMEOUT;
use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use filter_tests::{
    daemon::{query_json, Daemon},
    dns::DnsServer,
    lab::{enter_netns, Lab, DNS_V4, WEB_A_V4, WEB_B_V4},
};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{Name, RData, RecordType},
};

const CYCLES_PER_SEC: u64 = 200;
/// A first SYN that was dropped is sent again after one second.
const RETRANSMIT_AFTER: Duration = Duration::from_millis(900);
const BLOCKED_EVERY: Duration = Duration::from_millis(50);
const FLOOD_PER_SEC: u64 = 1_000;
const RELOAD_EVERY: Duration = Duration::from_secs(5);
const KILL_EVERY: Duration = Duration::from_mins(1);
const UPSTREAM_EVERY: Duration = Duration::from_secs(45);
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How far behind its pace a load thread may fall and still catch up.
const CATCH_UP: Duration = Duration::from_secs(5);
/// Distinct names (and addresses) the cycles go round: at 200 a second, an address comes back
/// after [`NAMES`] / 200 s, long after its learned entry expired.
const NAMES: usize = 20_000;
/// Where the cycles' names point: a /64 the internet namespace answers on every address of.
const CYCLE_NET: &str = "2001:db8:c::";
const CYCLE_PORT: u16 = 8443;
const FORWARDER: &str = "10.77.0.1:53";
/// The flood's own address on the LAN: a second client. The forwarder bounds what each client
/// address may have in flight, so from the cycles' address the flood would spend the cycles'
/// places whenever the daemon's loop is held up (a reload, say) and fail the cycles' lookups
/// by design of that bound, not by a fault of the forwarder.
const FLOOD_CLIENT: &str = "10.77.0.3";

const VALID_RULES: &str = r#"
[[service]]
name = "soak-cycles"
hosts = ["*.cyc.soak.test"]
tcp = [8443]

[[service]]
name = "soak-listed"
hosts = ["*.listed.soak.test"]
tcp = [443]
"#;

/// A file `check` refuses: the daemon must keep the policy it has.
const BROKEN_RULES: &str =
    "[[service]]\nname = \"soak-cycles\"\nhosts = [\"*.cyc.soak.test\"]\ntcp = [\"not a port\"]\n";

/// When the load began: the log lines' times count from it.
static STARTED: OnceLock<Instant> = OnceLock::new();

/// Time since the load began.
fn since_start() -> Duration {
    STARTED.get().map_or(Duration::ZERO, Instant::elapsed)
}

fn millis(time: Duration) -> u64 {
    u64::try_from(time.as_millis()).unwrap_or(u64::MAX)
}

/// What the load threads count.
#[derive(Default)]
struct Counts {
    /// Cycles whose lookup was answered.
    cycles: AtomicU64,
    /// Lookups unanswered that overlapped a fault (a kill until the forwarder answered again,
    /// the upstream server down).
    lookups_failed: AtomicU64,
    /// Lookups unanswered within [`UPSTREAM_TIMEOUT`] after the upstream came back, while
    /// queries the outage stranded may still hold the client's places (until the forwarder
    /// displaces them).
    lookups_failed_recovering: AtomicU64,
    /// Lookups unanswered with no fault going on from their start to their end.
    lookups_failed_calm: AtomicU64,
    /// Until when (ms since [`STARTED`]) the upstream is recovering.
    recovering_until_ms: AtomicU64,
    /// Odd while a fault is going on; each fault adds 2, so a lookup that sees it unchanged
    /// and even saw no fault.
    faults: AtomicU64,
    /// A lookup answered, then a connection that failed or took a retransmission.
    first_syn_dropped: AtomicU64,
    blocked_tries: AtomicU64,
    blocked_completed: AtomicU64,
    flood_asked: AtomicU64,
    flood_answered: AtomicU64,
}

/// The daemon's process figures at one moment.
struct Sample {
    at: Duration,
    rss_kib: u64,
    fds: u64,
    learned: u64,
}

struct Args {
    binary: PathBuf,
    minutes: u64,
}

fn args() -> anyhow::Result<Args> {
    let mut binary = None;
    let mut minutes = 30;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--egress-filter" => binary = it.next().map(PathBuf::from),
            "--minutes" => minutes = it.next().context("--minutes needs a number")?.parse()?,
            other => bail!("unknown argument {other}; use --egress-filter PATH --minutes N"),
        }
    }
    Ok(Args {
        binary: binary.context("--egress-filter PATH is required")?,
        minutes,
    })
}

/// The rules directory as a ConfigMap mounts it: files are symlinks into `..data`, itself a
/// symlink to the current version's directory, replaced in one rename.
struct ConfigMapDir {
    root: PathBuf,
    version: u64,
}

impl ConfigMapDir {
    fn new(root: PathBuf, rules: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&root)?;
        let mut dir = Self { root, version: 0 };
        dir.swap_in(rules)?;
        std::os::unix::fs::symlink("..data/soak.toml", dir.root.join("soak.toml"))?;
        Ok(dir)
    }

    fn swap_in(&mut self, rules: &str) -> anyhow::Result<()> {
        self.version += 1;
        let name = format!("..v{}", self.version);
        let versioned = self.root.join(&name);
        std::fs::create_dir_all(&versioned)?;
        std::fs::write(versioned.join("soak.toml"), rules)?;
        let tmp = self.root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp)?;
        std::fs::rename(&tmp, self.root.join("..data"))?;
        if self.version > 2 {
            let _ = std::fs::remove_dir_all(self.root.join(format!("..v{}", self.version - 2)));
        }
        Ok(())
    }
}

fn cycle_address(i: usize) -> Ipv6Addr {
    let base: Ipv6Addr = CYCLE_NET.parse().expect("a literal address");
    Ipv6Addr::from(u128::from(base) + 1 + i as u128)
}

fn dns_query(name: &str, kind: RecordType, id: u16) -> anyhow::Result<Vec<u8>> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name)?, kind));
    Ok(message.to_vec()?)
}

/// Asks the forwarder for `name`'s AAAA record; the first address, if answered in time.
fn look_up(socket: &UdpSocket, name: &str, id: u16) -> Option<Ipv6Addr> {
    socket
        .send(&dns_query(name, RecordType::AAAA, id).ok()?)
        .ok()?;
    let mut buffer = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        let len = socket.recv(&mut buffer).ok()?;
        let Ok(answer) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        if answer.metadata.id != id {
            continue;
        }
        return answer.answers.iter().find_map(|record| match &record.data {
            RData::AAAA(aaaa) => Some(aaaa.0),
            _ => None,
        });
    }
    None
}

/// Lookup-then-connect cycles, paced, until `stop`.
fn cycles(ns: &str, first: usize, step: usize, per_sec: u64, counts: &Counts, done: &AtomicBool) {
    if enter_netns(ns).is_err() {
        return;
    }
    let Ok(socket) = UdpSocket::bind("10.77.0.2:0") else {
        return;
    };
    let _ = socket.connect(FORWARDER);
    let _ = socket.set_read_timeout(Some(Duration::from_secs(1)));
    let interval = Duration::from_micros(1_000_000 / per_sec);
    let mut next = Instant::now();
    let mut i = first;
    while !done.load(Ordering::Relaxed) {
        let name = format!("c{}.cyc.soak.test", i % NAMES);
        let id = (i % 65_536) as u16;
        let faults = counts.faults.load(Ordering::SeqCst);
        match look_up(&socket, &name, id) {
            None => {
                let calm =
                    faults.is_multiple_of(2) && counts.faults.load(Ordering::SeqCst) == faults;
                let recovering =
                    millis(since_start()) < counts.recovering_until_ms.load(Ordering::SeqCst);
                if calm && recovering {
                    counts
                        .lookups_failed_recovering
                        .fetch_add(1, Ordering::Relaxed);
                } else if calm {
                    eprintln!(
                        "soak: {name} unanswered with no fault going on, at {:.2} s",
                        since_start().as_secs_f64()
                    );
                    counts.lookups_failed_calm.fetch_add(1, Ordering::Relaxed);
                } else {
                    counts.lookups_failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(address) => {
                let target = SocketAddr::new(IpAddr::V6(address), CYCLE_PORT);
                let started = Instant::now();
                let connected = TcpStream::connect_timeout(&target, Duration::from_secs(3)).is_ok();
                if !connected || started.elapsed() > RETRANSMIT_AFTER {
                    counts.first_syn_dropped.fetch_add(1, Ordering::Relaxed);
                    eprintln!(
                        "soak: first SYN dropped? {name} -> {address} after {:?}",
                        started.elapsed()
                    );
                }
                counts.cycles.fetch_add(1, Ordering::Relaxed);
            }
        }
        i += step;
        pace(&mut next, interval);
    }
}

/// Sleeps until the next slot `interval` after the last; a worker held up (a lookup timing out
/// while the daemon restarts) catches up on the slots of the last [`CATCH_UP`], no more.
fn pace(next: &mut Instant, interval: Duration) {
    *next += interval;
    let now = Instant::now();
    if let Some(wait) = next.checked_duration_since(now) {
        std::thread::sleep(wait);
    } else if now.duration_since(*next) > CATCH_UP {
        *next = now.checked_sub(CATCH_UP).unwrap_or(now);
    }
}

/// Tries the blocked destination until `stop`: web A, which no rule lists and no name the
/// forwarder answers points at (the flood's listed names point at web B).
fn blocked(ns: &str, counts: &Counts, stop: &AtomicBool) {
    if enter_netns(ns).is_err() {
        return;
    }
    let target = SocketAddr::new(WEB_A_V4.parse().expect("a literal address"), 443);
    while !stop.load(Ordering::Relaxed) {
        counts.blocked_tries.fetch_add(1, Ordering::Relaxed);
        if TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok() {
            counts.blocked_completed.fetch_add(1, Ordering::Relaxed);
            eprintln!("soak: a blocked connection completed");
        }
        std::thread::sleep(BLOCKED_EVERY);
    }
}

/// DNS at `per_sec`: listed, unlisted and malformed, answers read as they come.
fn flood(ns: &str, per_sec: u64, counts: &Counts, stop: &AtomicBool) {
    if enter_netns(ns).is_err() {
        return;
    }
    let Ok(socket) = UdpSocket::bind((FLOOD_CLIENT, 0)) else {
        return;
    };
    let _ = socket.connect(FORWARDER);
    let _ = socket.set_nonblocking(true);
    let interval = Duration::from_micros(1_000_000 / per_sec);
    let mut next = Instant::now();
    let mut buffer = [0u8; 1500];
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let packet = match i % 3 {
            0 => dns_query(
                &format!("l{}.listed.soak.test", i % 500),
                RecordType::A,
                i as u16,
            ),
            1 => dns_query(
                &format!("u{}.unlisted.soak.test", i % 500),
                RecordType::A,
                i as u16,
            ),
            _ => Ok(vec![0xde, 0xad, 0xbe, 0xef, (i % 251) as u8, 0, 1]),
        };
        // Counted whether or not it could be sent: while a restarted daemon has not bound the
        // port yet, sends are refused, and the load still asked.
        counts.flood_asked.fetch_add(1, Ordering::Relaxed);
        if let Ok(packet) = packet {
            let _ = socket.send(&packet);
        }
        while socket.recv(&mut buffer).is_ok() {
            counts.flood_answered.fetch_add(1, Ordering::Relaxed);
        }
        i += 1;
        pace(&mut next, interval);
    }
}

/// Accepts and closes connections on every address of the cycles' /64.
fn acceptor(ns: &str, stop: &AtomicBool) {
    if enter_netns(ns).is_err() {
        return;
    }
    let Ok(listener) = TcpListener::bind(("::", CYCLE_PORT)) else {
        eprintln!("soak: cannot listen on [::]:{CYCLE_PORT}");
        return;
    };
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => drop(stream),
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn sample(daemon: &Daemon, pin: &str, binary: &Path, at: Duration) -> Option<Sample> {
    let pid = daemon.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let learned = query_json(binary, "stats", pin)
        .ok()
        .and_then(|stats| stats["dns"]["learned_now"].as_u64())
        .unwrap_or(0);
    Some(Sample {
        at,
        rss_kib,
        fds,
        learned,
    })
}

/// Least-squares slope of `value` per minute over `samples`.
fn slope(samples: &[Sample], value: impl Fn(&Sample) -> f64) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let xs: Vec<f64> = samples.iter().map(|s| s.at.as_secs_f64() / 60.0).collect();
    let ys: Vec<f64> = samples.iter().map(value).collect();
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    if var == 0.0 {
        0.0
    } else {
        cov / var
    }
}

fn start_daemon(binary: &Path, lab: &Lab, rules: &Path) -> anyhow::Result<Daemon> {
    let upstream = format!("{DNS_V4}:53");
    let rules = rules.to_str().context("rules path")?;
    Daemon::start_binary(
        binary,
        &lab.gw.name,
        &lab.pin_path(),
        &[
            "--rules",
            rules,
            "--watch-rules",
            "--xdp",
            &lab.gw_lan,
            "--dns-listen",
            FORWARDER,
            "--dns-upstream",
            &upstream,
            "--resolver",
            &upstream,
            "--dns-min-ttl",
            "1",
            "--grace",
            "1",
        ],
    )
}

fn upstream(lab: &Lab, hosts: &Path) -> anyhow::Result<DnsServer> {
    DnsServer::start_with_options(
        hosts,
        1,
        format!("{DNS_V4}:53").parse()?,
        &lab.inet.name,
        &[format!("--address=/listed.soak.test/{WEB_B_V4}")],
    )
}

#[expect(
    clippy::too_many_lines,
    reason = "one run of the soak, in the order it happens"
)]
fn main() -> anyhow::Result<()> {
    let args = args()?;
    let lab = Lab::new(&[443])?;
    lab.inet.exec(&[
        "ip",
        "-6",
        "route",
        "add",
        "local",
        &format!("{CYCLE_NET}/64"),
        "dev",
        "lo",
    ])?;
    lab.client.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{FLOOD_CLIENT}/24"),
        "dev",
        &lab.client_dev(),
    ])?;
    let dir = std::env::temp_dir().join(format!("ef-soak-{}", lab.id));
    std::fs::create_dir_all(&dir)?;
    let hosts = dir.join("hosts");
    let mut text = String::new();
    for i in 0..NAMES {
        let _ = writeln!(text, "{} c{i}.cyc.soak.test", cycle_address(i));
    }
    std::fs::write(&hosts, text)?;
    let mut dns = Some(upstream(&lab, &hosts)?);
    let mut rules = ConfigMapDir::new(dir.join("rules"), VALID_RULES)?;
    let mut daemon = start_daemon(&args.binary, &lab, &rules.root)?;

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    // The listener outlives the load: a cycle still connecting when the load stops must not
    // meet a closed port, which would read as a dropped first SYN.
    let stop_accepting = Arc::new(AtomicBool::new(false));
    let accepting = {
        let (ns, stop) = (lab.inet.name.clone(), Arc::clone(&stop_accepting));
        std::thread::spawn(move || acceptor(&ns, &stop))
    };
    std::thread::sleep(Duration::from_millis(200));
    for worker in 0..2 {
        let (ns, counts, stop) = (
            lab.client.name.clone(),
            Arc::clone(&counts),
            Arc::clone(&stop),
        );
        threads.push(std::thread::spawn(move || {
            cycles(&ns, worker, 2, CYCLES_PER_SEC / 2, &counts, &stop);
        }));
    }
    {
        let (ns, counts, stop) = (
            lab.client.name.clone(),
            Arc::clone(&counts),
            Arc::clone(&stop),
        );
        threads.push(std::thread::spawn(move || blocked(&ns, &counts, &stop)));
    }
    {
        let (ns, counts, stop) = (
            lab.client.name.clone(),
            Arc::clone(&counts),
            Arc::clone(&stop),
        );
        threads.push(std::thread::spawn(move || {
            flood(&ns, FLOOD_PER_SEC, &counts, &stop);
        }));
    }

    let started = *STARTED.get_or_init(Instant::now);
    let end = started + Duration::from_secs(args.minutes * 60);
    let (mut next_reload, mut next_kill, mut next_upstream, mut next_sample) = (
        started + RELOAD_EVERY,
        started + KILL_EVERY,
        started + UPSTREAM_EVERY,
        started + SAMPLE_EVERY,
    );
    let mut valid_next = false;
    let mut reloads = 0;
    let mut kills = 0;
    let mut gaps: Vec<Duration> = Vec::new();
    let samples = Mutex::new(Vec::new());
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next_reload {
            rules.swap_in(if valid_next {
                VALID_RULES
            } else {
                BROKEN_RULES
            })?;
            valid_next = !valid_next;
            reloads += 1;
            next_reload += RELOAD_EVERY;
        }
        if now >= next_kill {
            counts.faults.fetch_add(1, Ordering::SeqCst);
            eprintln!("soak: kill -9 at {:.2} s", since_start().as_secs_f64());
            daemon.signal("KILL")?;
            daemon.wait_exit(Duration::from_secs(5))?;
            let killed = Instant::now();
            // Asked from the kill on, beside the restart: a restart may answer before it is
            // ready (attached), and that counts.
            let gap = dns_gap(&lab, killed);
            // The rules on disk may be the broken ones: start from valid ones, as an operator
            // would after a crash.
            rules.swap_in(VALID_RULES)?;
            valid_next = false;
            daemon = start_daemon(&args.binary, &lab, &rules.root)?;
            gaps.push(
                gap.join()
                    .map_err(|_| anyhow::anyhow!("the gap thread panicked"))??,
            );
            counts.faults.fetch_add(1, Ordering::SeqCst);
            eprintln!(
                "soak: answering again at {:.2} s",
                since_start().as_secs_f64()
            );
            kills += 1;
            next_kill += KILL_EVERY;
        }
        if now >= next_upstream {
            counts.faults.fetch_add(1, Ordering::SeqCst);
            eprintln!(
                "soak: upstream stopped at {:.2} s",
                since_start().as_secs_f64()
            );
            drop(dns.take());
            std::thread::sleep(Duration::from_secs(2));
            dns = Some(upstream(&lab, &hosts)?);
            counts.faults.fetch_add(1, Ordering::SeqCst);
            let recovered = since_start();
            counts
                .recovering_until_ms
                .store(millis(recovered + UPSTREAM_TIMEOUT), Ordering::SeqCst);
            eprintln!(
                "soak: upstream listening again at {:.2} s",
                recovered.as_secs_f64()
            );
            next_upstream += UPSTREAM_EVERY;
        }
        if now >= next_sample {
            if let Some(s) = sample(&daemon, &lab.pin_path(), &args.binary, now - started) {
                samples
                    .lock()
                    .map_err(|_| anyhow::anyhow!("poisoned"))?
                    .push(s);
            }
            next_sample += SAMPLE_EVERY;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The load's own duration: the rates below are over it, not over the wait for the threads.
    let seconds = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        let _ = thread.join();
    }
    stop_accepting.store(true, Ordering::Relaxed);
    let _ = accepting.join();
    let samples = samples
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    // Warm-up: the first fifth of the run.
    let warm: Vec<Sample> = samples
        .into_iter()
        .filter(|s| s.at.as_secs_f64() >= seconds / 5.0)
        .collect();
    let report = summary(&counts, seconds, reloads, kills, &gaps, &warm);
    print!("{}", report.text);
    drop(daemon);
    let _ = std::fs::remove_dir_all(&dir);
    if report.broken.is_empty() {
        Ok(())
    } else {
        bail!("invariants broken: {}", report.broken.join("; "))
    }
}

/// How long after `killed` the forwarder answered again, asked from the client every 10 ms on
/// a thread of its own (join it for the answer).
fn dns_gap(lab: &Lab, killed: Instant) -> std::thread::JoinHandle<anyhow::Result<Duration>> {
    let ns = lab.client.name.clone();
    std::thread::spawn(move || -> anyhow::Result<Duration> {
        enter_netns(&ns)?;
        let socket = UdpSocket::bind("10.77.0.2:0")?;
        socket.connect(FORWARDER)?;
        socket.set_read_timeout(Some(Duration::from_millis(10)))?;
        let mut id = 0u16;
        while killed.elapsed() < Duration::from_secs(30) {
            id = id.wrapping_add(1);
            let asked = Instant::now();
            if look_up(&socket, "c0.cyc.soak.test", id).is_some() {
                return Ok(killed.elapsed());
            }
            // A port nobody has bound yet refuses at once: keep to one question per 10 ms.
            std::thread::sleep(Duration::from_millis(10).saturating_sub(asked.elapsed()));
        }
        bail!("no answer within 30 s of the kill")
    })
}

struct Report {
    text: String,
    broken: Vec<String>,
}

fn summary(
    counts: &Counts,
    seconds: f64,
    reloads: u64,
    kills: u64,
    gaps: &[Duration],
    warm: &[Sample],
) -> Report {
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let cycles = get(&counts.cycles);
    let attempts = cycles
        + get(&counts.lookups_failed)
        + get(&counts.lookups_failed_recovering)
        + get(&counts.lookups_failed_calm);
    let mut broken = Vec::new();
    let mut text =
        String::from("| invariant or figure | value | goal | held |\n|---|---|---|---|\n");
    let mut row = |what: &str, value: String, goal: &str, held: Option<bool>| {
        let mark = match held {
            Some(true) => "yes",
            Some(false) => {
                broken.push(format!("{what}: {value} (goal {goal})"));
                "NO"
            }
            None => "-",
        };
        let _ = writeln!(text, "| {what} | {value} | {goal} | {mark} |");
    };
    // The pace is the attempts': a lookup the faults leave unanswered is still one the
    // clients made, and the soak's workers keep the pace through it (see `pace`).
    let rate = attempts as f64 / seconds;
    row(
        "lookup-then-connect cycles (answered, of attempts)",
        format!("{cycles} of {attempts} ({rate:.0} attempts/s)"),
        "≥ 10,000 at ≥ 200/s",
        // The rate as printed is what must reach the goal.
        Some(cycles >= 10_000 && rate.round() >= 200.0),
    );
    row(
        "first SYNs dropped after a lookup",
        get(&counts.first_syn_dropped).to_string(),
        "0",
        Some(get(&counts.first_syn_dropped) == 0),
    );
    unanswered_rows(&mut row, counts);
    row(
        "blocked connections completed",
        format!(
            "{} of {}",
            get(&counts.blocked_completed),
            get(&counts.blocked_tries)
        ),
        "0",
        Some(get(&counts.blocked_completed) == 0),
    );
    let flood = get(&counts.flood_asked) as f64 / seconds;
    row(
        "DNS flood (listed, unlisted, malformed)",
        format!(
            "{flood:.0} queries/s, {} answered",
            get(&counts.flood_answered)
        ),
        "≥ 1,000/s",
        Some(flood.round() >= 1000.0),
    );
    row(
        "rules swapped in (every other one broken)",
        reloads.to_string(),
        "",
        None,
    );
    let worst = gaps.iter().max().copied().unwrap_or_default();
    row(
        "kill -9 and restart: worst DNS gap",
        format!("{kills} kills, {:.2} s", worst.as_secs_f64()),
        "≤ 1 s",
        Some(worst <= Duration::from_secs(1)),
    );
    for (what, value, limit) in [
        (
            "RSS slope after warm-up",
            slope(warm, |s| s.rss_kib as f64),
            1024.0,
        ),
        ("open descriptors slope", slope(warm, |s| s.fds as f64), 2.0),
        (
            "learned entries slope",
            slope(warm, |s| s.learned as f64),
            50.0,
        ),
    ] {
        row(
            what,
            format!("{value:+.1}/min"),
            &format!("within ±{limit}/min"),
            Some(value.abs() <= limit),
        );
    }
    Report { text, broken }
}

/// The rows of the lookups left unanswered, by what was going on.
fn unanswered_rows(row: &mut impl FnMut(&str, String, &str, Option<bool>), counts: &Counts) {
    for (what, count, goal) in [
        (
            "lookups unanswered during faults (kills, upstream down)",
            &counts.lookups_failed,
            None,
        ),
        (
            "lookups unanswered within 3 s of the upstream's return (its bound held by stranded queries)",
            &counts.lookups_failed_recovering,
            None,
        ),
        (
            "lookups unanswered with no fault going on",
            &counts.lookups_failed_calm,
            Some(0),
        ),
    ] {
        let value = count.load(Ordering::Relaxed);
        row(
            what,
            value.to_string(),
            &goal.map(|g: u64| g.to_string()).unwrap_or_default(),
            goal.map(|g| value == g),
        );
    }
}
