//! Connections outlive their learned address: a TCP connection and a UDP flow that exchange a
//! message every second keep working long after the address they reach expired (and across a
//! `kill -9` and restart of the daemon), while a new connection to that address is blocked.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use filter_tests::{
    daemon::binary,
    lab::{enter_netns, eventually, Lab, RulesDir, WEB_A_V4},
};

use crate::common::{dns_stats_until, gateway, query, resolve, Upstream};

/// The CDN wildcard on TCP and UDP 443.
const RULES: &str = r#"
[[service]]
name = "lab-cdn"
source = "test"
hosts = ["*.cdn.example.test"]
tcp = [443]
udp = [443]
"#;

/// How long the exchanges run: enough to outlive the address's expiry (TTL 1 s + grace 2 s,
/// plus the daemon's next tick) by well over 30 s.
const ROUNDS: u32 = 45;
/// The longest any test thread runs, whatever happens.
const HARD_STOP: Duration = Duration::from_mins(2);

/// Echoes TCP and UDP on WEB_A_V4:443 in the lab's internet namespace until stopped.
fn echo_servers(lab: &Lab, stop: &Arc<AtomicBool>) -> anyhow::Result<JoinHandle<()>> {
    let inet = lab.inet.name.clone();
    let stop = Arc::clone(stop);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let bound = (|| {
            enter_netns(&inet)?;
            let address: SocketAddr = format!("{WEB_A_V4}:443").parse()?;
            let tcp = TcpListener::bind(address)?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind(address)?;
            udp.set_read_timeout(Some(Duration::from_millis(50)))?;
            anyhow::Ok((tcp, udp))
        })();
        let (tcp, udp) = match bound {
            Ok(sockets) => {
                let _ = ready_tx.send(Ok(()));
                sockets
            }
            Err(err) => {
                let _ = ready_tx.send(Err(err));
                return;
            }
        };
        let started = Instant::now();
        let mut buf = [0u8; 64];
        while !stop.load(Ordering::Relaxed) && started.elapsed() < HARD_STOP {
            if let Ok((stream, _)) = tcp.accept() {
                std::thread::spawn(move || echo_tcp(stream));
            }
            if let Ok((len, from)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(&buf[..len], from);
            }
        }
    });
    ready_rx.recv()??;
    Ok(handle)
}

fn echo_tcp(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 64];
    let started = Instant::now();
    while started.elapsed() < HARD_STOP {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(len) => {
                if stream.write_all(&buf[..len]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A message every second over one TCP connection and one UDP flow from the client, each
/// answered within 3 s; returns when each round trip last worked, and what failed.
struct Exchange {
    handle: JoinHandle<anyhow::Result<Vec<String>>>,
}

impl Exchange {
    fn start(lab: &Lab, rounds: u32) -> anyhow::Result<Self> {
        let client = lab.client.name.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            let opened = (|| {
                enter_netns(&client)?;
                let server: SocketAddr = format!("{WEB_A_V4}:443").parse()?;
                let tcp = TcpStream::connect_timeout(&server, Duration::from_secs(3))?;
                tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
                let udp = UdpSocket::bind("0.0.0.0:0")?;
                udp.connect(server)?;
                udp.set_read_timeout(Some(Duration::from_secs(3)))?;
                anyhow::Ok((tcp, udp))
            })();
            let (mut tcp, udp) = match opened {
                Ok(sockets) => {
                    let _ = ready_tx.send(Ok(()));
                    sockets
                }
                Err(err) => {
                    let _ = ready_tx.send(Err(err));
                    return Ok(Vec::new());
                }
            };
            let mut failures = Vec::new();
            let mut buf = [0u8; 64];
            let started = Instant::now();
            for round in 0..rounds {
                let message = format!("round {round}");
                let tcp_ok = tcp.write_all(message.as_bytes()).is_ok()
                    && tcp.read_exact(&mut buf[..message.len()]).is_ok()
                    && &buf[..message.len()] == message.as_bytes();
                if !tcp_ok {
                    failures.push(format!("tcp round {round} at {:?}", started.elapsed()));
                    // A connection that lost a round is broken for good: stop here.
                    break;
                }
                let udp_ok = udp.send(message.as_bytes()).is_ok()
                    && udp
                        .recv(&mut buf)
                        .is_ok_and(|len| &buf[..len] == message.as_bytes());
                if !udp_ok {
                    failures.push(format!("udp round {round} at {:?}", started.elapsed()));
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            Ok(failures)
        });
        ready_rx.recv()??;
        Ok(Self { handle })
    }

    fn failures(self) -> anyhow::Result<Vec<String>> {
        self.handle
            .join()
            .map_err(|_| anyhow::anyhow!("the exchange panicked"))?
    }
}

/// Whether a UDP datagram to WEB_A_V4:443 from a fresh port is answered.
fn new_udp_flow_answered(lab: &Lab) -> anyhow::Result<bool> {
    let client = lab.client.name.clone();
    std::thread::spawn(move || {
        enter_netns(&client)?;
        let udp = UdpSocket::bind("0.0.0.0:0")?;
        udp.connect(format!("{WEB_A_V4}:443"))?;
        udp.set_read_timeout(Some(Duration::from_secs(1)))?;
        udp.send(b"new")?;
        let mut buf = [0u8; 8];
        anyhow::Ok(udp.recv(&mut buf).is_ok())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the probe panicked"))?
}

fn flows_stats(lab: &Lab) -> anyhow::Result<serde_json::Value> {
    Ok(query(lab, "stats")?["flows"].clone())
}

#[test]
fn connections_outlive_their_learned_address_and_new_ones_are_blocked() -> anyhow::Result<()> {
    let lab = Lab::new(&[])?;
    let _upstream = Upstream::start(&lab, 1)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let args = [
        "--dns-min-ttl",
        "1",
        "--grace",
        "2",
        "--established-idle",
        "20",
    ];
    let first = gateway(&lab, &rules, &args)?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers = echo_servers(&lab, &stop)?;

    assert_eq!(resolve(&lab, "push.cdn.example.test"), [WEB_A_V4]);
    let exchange = Exchange::start(&lab, ROUNDS)?;

    // TTL 1 s + grace 2 s: the address expires while the exchange goes on.
    assert!(
        eventually(Duration::from_secs(10), || !lab
            .client
            .connects(WEB_A_V4, 443, 1)),
        "a new connection is blocked after TTL plus grace"
    );
    let expired = Instant::now();
    dns_stats_until(&lab, |dns| dns["expired"].as_u64() >= Some(1))?;
    assert!(!new_udp_flow_answered(&lab)?, "a new UDP flow is blocked");
    let event = first.wait_for_event(
        |l| l.contains(WEB_A_V4) && l.contains("\"dport\":443"),
        Duration::from_secs(3),
    )?;
    assert!(event.contains("no-service"), "{event}");

    // What the operator sees: both connections kept.
    assert!(
        eventually(Duration::from_secs(5), || flows_stats(&lab)
            .is_ok_and(|f| f["kept"].as_u64() >= Some(2))),
        "{:?}",
        flows_stats(&lab)
    );
    let explain = std::process::Command::new(binary()?)
        .args(["explain", WEB_A_V4, "tcp/443", "--rules", rules.path()])
        .args(["--pin-path", &lab.pin_path(), "--json"])
        .output()?;
    let explain: serde_json::Value = serde_json::from_slice(&explain.stdout)?;
    assert_eq!(explain["reason"], "no-service", "{explain}");
    assert!(
        explain["flows"].as_array().is_some_and(|f| f
            .iter()
            .any(|f| f["state"] == "kept" && f["service"] == "lab-cdn")),
        "{explain}"
    );

    // kill -9 and a restart: the pinned flow tables and marks are adopted.
    std::thread::sleep(Duration::from_secs(5));
    first.signal("KILL")?;
    first.wait_exit(Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_secs(2));
    let _second = gateway(&lab, &rules, &args)?;
    assert!(
        !lab.client.connects(WEB_A_V4, 443, 1),
        "still blocked for new connections after the restart"
    );

    let failures = exchange.failures()?;
    let outlived = expired.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = servers.join();
    assert!(failures.is_empty(), "exchanges failed: {failures:?}");
    assert!(
        outlived >= Duration::from_secs(30),
        "the exchange outlived the address by only {outlived:?}"
    );
    eprintln!("the exchanges outlived their address by {outlived:?}");
    let flows = flows_stats(&lab)?;
    assert!(flows["kept"].as_u64() >= Some(2), "{flows}");
    Ok(())
}

#[test]
fn a_reload_that_removes_the_service_closes_its_connections_unless_told_to_keep_them(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let stop = Arc::new(AtomicBool::new(false));
    let servers = echo_servers(&lab, &stop)?;
    for keep in [false, true] {
        let rules = RulesDir::new(&lab, RULES)?;
        let mut args = vec!["--dns-min-ttl", "60"];
        if keep {
            args.push("--keep-flows-on-reload");
        }
        let daemon = gateway(&lab, &rules, &args)?;
        assert_eq!(resolve(&lab, "push.cdn.example.test"), [WEB_A_V4]);
        let exchange = Exchange::start(&lab, 8)?;
        std::thread::sleep(Duration::from_secs(2));
        // The service goes: renamed, its wildcard no longer matching the name asked.
        let without_cdn = RULES
            .replace("lab-cdn", "lab-other")
            .replace("*.cdn.example.test", "*.other.example.test");
        std::fs::write(rules.0.join("lab.toml"), without_cdn)?;
        assert_eq!(daemon.reload()?, "enforcing the reloaded rules");
        assert!(
            eventually(Duration::from_secs(3), || !lab
                .client
                .connects(WEB_A_V4, 443, 1)),
            "the address is closed to new connections (keep: {keep})"
        );
        let failures = exchange.failures()?;
        let flows = flows_stats(&lab)?;
        if keep {
            assert!(failures.is_empty(), "kept: {failures:?}");
            assert_eq!(flows["closed_by_reload"], 0, "{flows}");
            assert!(flows["kept"].as_u64() >= Some(2), "{flows}");
        } else {
            assert!(
                failures.iter().any(|f| f.starts_with("tcp")),
                "the reload closed the TCP connection: {failures:?}"
            );
            assert!(flows["closed_by_reload"].as_u64() >= Some(2), "{flows}");
            daemon.wait_for_log("the reload closed 2 connections", Duration::from_secs(1))?;
        }
        drop(daemon);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = servers.join();
    Ok(())
}
