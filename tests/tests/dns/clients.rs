//! The forwarder answers only the clients it serves, and no more than they need: the attacks of
//! the outside review, each shown to fail through the gateway. A query from the WAN side gets
//! nothing (even with the forwarder listening everywhere), a listen address on the WAN side is
//! refused, a client claiming a 65,535-byte EDNS size gets at most 1,232 bytes, one client
//! holding TCP connections does not shut out another, and one answer of 4,000 addresses does
//! not evict another service's learned entries.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    process::Command,
    str::FromStr as _,
    time::Duration,
};

use filter_tests::{
    daemon::Daemon,
    flood::{in_netns, joined},
    lab::{Lab, RulesDir, DNS_V4, WEB_A_V4},
};
use hickory_proto::{
    op::{Edns, Message, Query, ResponseCode},
    rr::{Name, RecordType},
};

use crate::common::{
    dns_stats_until, gateway, gateway_args, learned_entry, query, Upstream, RULES,
};

/// The gateway's LAN address, where the lab's clients ask.
const GW_LAN: &str = "10.77.0.1";
/// The gateway's and the internet host's addresses on the WAN link.
const GW_WAN: &str = "192.0.2.1";
const INET: &str = "192.0.2.2";
/// A second client address on the LAN (added by the test that needs it).
const OTHER_CLIENT: &str = "10.77.0.3";
/// Addresses in one answer: about 64 KB of A records, as much as one TCP message holds.
const BULK: u32 = 4000;

/// A type-A query for `name`, with EDNS claiming `udp_size` if given.
fn dns_query(name: &str, id: u16, udp_size: Option<u16>) -> anyhow::Result<Vec<u8>> {
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_str(name)?, RecordType::A));
    if let Some(size) = udp_size {
        let mut edns = Edns::new();
        edns.set_max_payload(size);
        message.set_edns(edns);
    }
    Ok(message.to_vec()?)
}

/// Sends `query` over UDP from `bind` inside `netns` to `server` (three times, a second apart at
/// most) and returns the first reply, or `None` if none came.
fn ask_udp(
    netns: &str,
    bind: &str,
    server: SocketAddr,
    query: Vec<u8>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let bind: SocketAddr = format!("{bind}:0").parse()?;
    joined(in_netns(netns, move || {
        let socket = UdpSocket::bind(bind)?;
        socket.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut buffer = vec![0u8; 65535];
        for _ in 0..3 {
            socket.send_to(&query, server)?;
            if let Ok((len, _)) = socket.recv_from(&mut buffer) {
                return Ok(Some(buffer[..len].to_vec()));
            }
        }
        Ok(None)
    }))
}

/// Sends `query` over TCP from `bind` inside `netns` and returns the reply, or `None` if the
/// connection closed (or stayed silent for 3 s) without one.
fn ask_tcp(
    netns: &str,
    bind: &str,
    server: SocketAddr,
    query: Vec<u8>,
) -> anyhow::Result<Option<Vec<u8>>> {
    let bind = bind.to_owned();
    joined(in_netns(netns, move || {
        let mut stream = connect_from(&bind, server)?;
        stream.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut framed = u16::try_from(query.len())?.to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        // A closed connection may refuse the write: that is no reply either.
        if stream.write_all(&framed).is_err() {
            return Ok(None);
        }
        let mut len = [0u8; 2];
        if stream.read_exact(&mut len).is_err() {
            return Ok(None);
        }
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply)?;
        Ok(Some(reply))
    }))
}

/// A TCP connection to `server` from the address `bind` (in the caller's namespace).
fn connect_from(bind: &str, server: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&format!("{bind}:0").parse::<SocketAddr>()?.into())?;
    socket.connect_timeout(&server.into(), Duration::from_secs(3))?;
    Ok(socket.into())
}

fn parsed(reply: &[u8]) -> anyhow::Result<Message> {
    Ok(Message::from_vec(reply)?)
}

fn at(address: &str, port: u16) -> SocketAddr {
    SocketAddr::new(address.parse().expect("lab address"), port)
}

#[test]
fn from_the_wan_side_nothing_is_answered_even_listening_everywhere_and_it_is_counted(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let rules = RulesDir::new(&lab, RULES)?;
    // The operator insists on a wildcard too: whom it answers still holds.
    let _daemon = gateway(
        &lab,
        &rules,
        &[
            "--dns-listen",
            "0.0.0.0:5300",
            "--dns-listen-any",
            "--metrics-listen",
            "127.0.0.1:9469",
        ],
    )?;
    let name = "device.cdn.example.test.";
    // From the LAN: answered, on both listeners.
    for server in [at(GW_LAN, 53), at(GW_LAN, 5300)] {
        let reply = ask_udp(
            &lab.client.name,
            "10.77.0.2",
            server,
            dns_query(name, 1, None)?,
        )?
        .ok_or_else(|| anyhow::anyhow!("the LAN client got no answer from {server}"))?;
        let reply = parsed(&reply)?;
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1, "{server}");
    }
    // From the WAN side, to the LAN address and to the WAN address: silence, over UDP and TCP.
    for server in [at(GW_LAN, 53), at(GW_WAN, 5300)] {
        let reply = ask_udp(
            &lab.inet.name,
            INET,
            server,
            dns_query(name, 2, Some(4096))?,
        )?;
        assert_eq!(reply, None, "a WAN source answered by {server}");
    }
    let reply = ask_tcp(
        &lab.inet.name,
        INET,
        at(GW_WAN, 5300),
        dns_query(name, 3, None)?,
    )?;
    assert_eq!(reply, None, "a WAN source answered over TCP");
    // 3 datagrams to each listener and one connection, all counted; none asked upstream.
    dns_stats_until(&lab, |dns| {
        dns["unserved"].as_u64() >= Some(7) && dns["queries"].as_u64() == Some(2)
    })?;
    // And in the metrics, read at scrape time.
    let scraped = lab
        .gw
        .exec(&["curl", "-s", "-m", "5", "http://127.0.0.1:9469/metrics"])?;
    let exposition = String::from_utf8_lossy(&scraped.stdout);
    let unserved = exposition
        .lines()
        .find_map(|l| l.strip_prefix("egress_filter_dns_queries_total{outcome=\"unserved\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    assert!(unserved >= Some(7), "{exposition}");
    Ok(())
}

#[test]
fn a_listen_address_on_the_wan_side_is_refused_unless_asked_for() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let rules = RulesDir::new(&lab, RULES)?;
    let upstream = format!("{DNS_V4}:53");
    let wan_listen = format!("{GW_WAN}:53");
    let args = gateway_args(&lab, &rules, &wan_listen, &upstream);
    let refused = Daemon::spawn(&lab.gw.name, &lab.pin_path(), &args)?;
    assert!(!refused.wait_exit(Duration::from_secs(10))?, "it must fail");
    let logs = refused.logs().join("\n");
    assert!(
        logs.contains("--dns-listen 192.0.2.1:53") && logs.contains("--dns-listen-any"),
        "names the address and the way to insist: {logs}"
    );
    assert!(
        !std::path::Path::new(&lab.pin_path()).exists(),
        "nothing attached or pinned"
    );
    let wildcard = gateway_args(&lab, &rules, "0.0.0.0:53", &upstream);
    let refused = Daemon::spawn(&lab.gw.name, &lab.pin_path(), &wildcard)?;
    assert!(!refused.wait_exit(Duration::from_secs(10))?);
    assert!(
        refused.logs().join("\n").contains("open resolver"),
        "{:?}",
        refused.logs()
    );
    // Its port taken: refused once the lock is held, and the lock file goes with the rest.
    let lan_listen = format!("{GW_LAN}:53");
    let mut holder = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.gw.name,
            "nc",
            "-u",
            "-l",
            GW_LAN,
            "53",
        ])
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let taken = gateway_args(&lab, &rules, &lan_listen, &upstream);
    let refused = Daemon::spawn(&lab.gw.name, &lab.pin_path(), &taken)?;
    let exited = refused.wait_exit(Duration::from_secs(10));
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(!exited?, "it must fail");
    assert!(
        refused
            .logs()
            .join("\n")
            .contains("cannot listen for DNS on udp 10.77.0.1:53"),
        "{:?}",
        refused.logs()
    );
    let lock = filter_user::pins::PinDir::new(lab.pin_path()).lock_file();
    assert!(
        !lock.exists() && !std::path::Path::new(&lab.pin_path()).exists(),
        "a failed start leaves nothing behind ({})",
        lock.display()
    );
    // Asked for, it starts.
    let insisted = [&args[..], &["--dns-listen-any"]].concat();
    let _daemon = Daemon::start(&lab.gw.name, &lab.pin_path(), &insisted)?;
    Ok(())
}

/// A service whose one name answers [`BULK`] addresses, added to [`RULES`]: the portal's
/// learned entry must survive it.
const BULK_SERVICE: &str = r#"
[[service]]
name = "lab-bulk"
source = "test"
hosts = ["*.bulk.example.test"]
tcp = [443]
"#;

/// An upstream answering `many.bulk.example.test` with [`BULK`] private addresses (10.78/16,
/// inside the lab) and `one.mdm.example.test` with web A.
fn bulk_upstream(lab: &Lab) -> anyhow::Result<Upstream> {
    use std::fmt::Write as _;
    let mut hosts = format!("{WEB_A_V4} one.mdm.example.test\n");
    for i in 0..BULK {
        let [_, _, x, y] = i.to_be_bytes();
        writeln!(hosts, "10.78.{x}.{y} many.bulk.example.test")?;
    }
    Upstream::with_hosts(lab, 300, &hosts, &[])
}

#[test]
fn a_client_claiming_65535_bytes_gets_a_truncated_reply_within_1232_and_the_rest_over_tcp(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = bulk_upstream(&lab)?;
    let rules = RulesDir::new(&lab, &format!("{RULES}{BULK_SERVICE}"))?;
    let _daemon = gateway(&lab, &rules, &[])?;
    let name = "many.bulk.example.test.";
    let reply = ask_udp(
        &lab.client.name,
        "10.77.0.2",
        at(GW_LAN, 53),
        dns_query(name, 7, Some(u16::MAX))?,
    )?
    .ok_or_else(|| anyhow::anyhow!("no reply at all to a huge answer over UDP"))?;
    eprintln!("UDP reply to an EDNS 65535 query: {} bytes", reply.len());
    assert!(reply.len() <= 1232, "{} bytes", reply.len());
    let message = parsed(&reply)?;
    assert!(message.metadata.truncation, "TC set");
    assert_eq!(message.metadata.id, 7);
    let full = ask_tcp(
        &lab.client.name,
        "10.77.0.2",
        at(GW_LAN, 53),
        dns_query(name, 8, None)?,
    )?
    .ok_or_else(|| anyhow::anyhow!("no answer over TCP"))?;
    let full_len = full.len();
    let full = parsed(&full)?;
    eprintln!(
        "the same over TCP: {full_len} bytes, {} records, TC {}",
        full.answers.len(),
        full.metadata.truncation
    );
    // hickory-proto compresses only the first 120 names of a message, so 4,000 records do not
    // fit one 65,535-byte TCP message: what fits goes (about 1,790), far past what UDP carries.
    assert!(full.answers.len() > 1000, "{}", full.answers.len());
    dns_stats_until(&lab, |dns| dns["truncated"].as_u64() >= Some(1))?;
    Ok(())
}

#[test]
fn an_answer_of_4000_addresses_does_not_evict_another_services_learned_entries(
) -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = bulk_upstream(&lab)?;
    let rules = RulesDir::new(&lab, &format!("{RULES}{BULK_SERVICE}"))?;
    let _daemon = gateway(&lab, &rules, &["--dns-max-learned", "1000"])?;
    // The portal is looked up first, so it is the entry learned longest ago.
    let reply = ask_udp(
        &lab.client.name,
        "10.77.0.2",
        at(GW_LAN, 53),
        dns_query("one.mdm.example.test.", 1, None)?,
    )?
    .ok_or_else(|| anyhow::anyhow!("the portal got no answer"))?;
    assert_eq!(parsed(&reply)?.answers.len(), 1);
    learned_entry(&lab, |e| {
        e["address"] == WEB_A_V4 && e["service"] == "lab-portal"
    })?;
    let full = ask_tcp(
        &lab.client.name,
        "10.77.0.2",
        at(GW_LAN, 53),
        dns_query("many.bulk.example.test.", 2, None)?,
    )?
    .ok_or_else(|| anyhow::anyhow!("no answer over TCP"))?;
    assert!(parsed(&full)?.answers.len() > 1000);
    // The bulk answer pushed out its own entries, and only those.
    dns_stats_until(&lab, |dns| {
        dns["evicted"].as_u64() >= Some(u64::from(BULK) - 1000)
    })?;
    let learned = query(&lab, "learned")?;
    let entries = learned.as_array().map_or(&[][..], Vec::as_slice);
    let portal = entries
        .iter()
        .filter(|e| e["service"] == "lab-portal")
        .count();
    let bulk = entries
        .iter()
        .filter(|e| e["service"] == "lab-bulk")
        .count();
    eprintln!("learned after the bulk answer: {bulk} lab-bulk, {portal} lab-portal");
    assert_eq!(portal, 1, "the portal's entry stays");
    assert!(bulk <= 999, "{bulk}");
    assert!(
        lab.client.connects(WEB_A_V4, 443, 2),
        "the portal's address is still open"
    );
    Ok(())
}

#[test]
fn one_client_holding_tcp_connections_does_not_shut_out_another() -> anyhow::Result<()> {
    const HELD: usize = 64;
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let _daemon = gateway(&lab, &rules, &[])?;
    let client_dev = format!("e{}c", lab.id);
    lab.client.exec(&[
        "ip",
        "addr",
        "add",
        &format!("{OTHER_CLIENT}/24"),
        "dev",
        &client_dev,
        "nodad",
    ])?;
    // One client opens as many connections as the forwarder has slots, and says nothing.
    let server = at(GW_LAN, 53);
    let hog = in_netns(&lab.client.name, move || {
        let mut held = Vec::new();
        for _ in 0..HELD {
            held.push(connect_from("10.77.0.2", server)?);
        }
        Ok(held)
    });
    let held = joined(hog)?;
    // Let the forwarder take (or close) each of them.
    std::thread::sleep(Duration::from_millis(500));
    let reply = ask_tcp(
        &lab.client.name,
        OTHER_CLIENT,
        server,
        dns_query("other.cdn.example.test.", 9, None)?,
    )?
    .ok_or_else(|| anyhow::anyhow!("the other client was shut out"))?;
    assert_eq!(parsed(&reply)?.answers.len(), 1);
    dns_stats_until(&lab, |dns| {
        dns["tcp_client_limited"].as_u64() >= Some(HELD as u64 - 8)
            && dns["tcp_full"].as_u64() == Some(0)
    })?;
    drop(held);
    Ok(())
}

#[test]
fn a_lan_created_again_is_answered_again_once_it_has_its_addresses() -> anyhow::Result<()> {
    let lab = Lab::new(&[443])?;
    let _upstream = Upstream::start(&lab, 60)?;
    let rules = RulesDir::new(&lab, RULES)?;
    let pattern = format!("e{}l*", lab.id);
    let upstream = format!("{DNS_V4}:53");
    // The LAN by pattern, the forwarder on every address: the LAN's own goes with the LAN.
    let mut args = gateway_args(&lab, &rules, "0.0.0.0:5300", &upstream);
    args[3] = &pattern;
    args.push("--dns-listen-any");
    let _daemon = Daemon::start(&lab.gw.name, &lab.pin_path(), &args)?;
    let server = at(GW_LAN, 5300);
    let name = "again.cdn.example.test.";
    let answered = || {
        ask_udp(
            &lab.client.name,
            "10.77.0.2",
            server,
            dns_query(name, 5, None)?,
        )
        .map(|reply| reply.is_some())
    };
    assert!(answered()?, "answered before");
    lab.delete_lan()?;
    lab.create_lan_again()?;
    let created = std::time::Instant::now();
    // The link comes first and its addresses a moment later: whom the forwarder answers
    // follows the routes they bring, not only the 30 s check.
    let mut again = false;
    while !again && created.elapsed() < Duration::from_secs(10) {
        again = answered()?;
    }
    eprintln!(
        "answered again {:?} after the LAN's re-creation",
        created.elapsed()
    );
    assert!(again && created.elapsed() < Duration::from_secs(5));
    Ok(())
}
