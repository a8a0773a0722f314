//! Frame differential: the kernel programs (through `BPF_PROG_TEST_RUN`) against an independent
//! model of the verdict ([`filter_tests::model`]: etherparse for the headers, the README's reason
//! table for the rest, `AllowTable::lookup` for the policy), on random and mutated frames: the
//! verdict table's frames with byte flips, truncated at every offset, and generated frames with
//! random VLAN stacks, IPv4 options, IPv6 extension chains of random length and kind, fragments
//! with random offsets and bogus lengths. Every verdict and every reason must agree, on XDP, TC
//! and the layer-3 XDP program. Needs root.
//!
//! `FRAMES_PER_HOOK` sets how many frames each hook judges (200,000 unless told), or
//! `FRAMES_SECONDS` how long to run instead (`cargo xtask fuzz`). The seed comes from
//! `FRAMES_SEED` when set, the clock otherwise; a disagreement prints the frame as hex, both
//! answers and the seed.
//!
//! The programs keep state in flow tables; the run is stateless all the same: flows are recorded
//! (the config keeps flows, so that path runs on every odd frame too), but a flow changes a
//! verdict only once the daemon marks its destination as expired, and nothing here marks one.
//! The test checks that the expired-address map is still empty at the end.

// The verdict table's policy and frames, shared with the `verdicts` suite.
#[path = "verdicts/cases/mod.rs"]
mod cases;
#[path = "verdicts/common.rs"]
mod common;

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use filter_common::{Config, Mode, Reason};
use filter_tests::{
    harness::{Filter, Hook, Outcome},
    model::{self, Link},
};
use filter_user::{counters::Counters, table::AllowTable};

use crate::common::{grants, outcome_of, ALLOWED4, ALLOWED6, UNLISTED4, UNLISTED6};

/// Frames each hook judges in a bounded run (`cargo xtask test`).
const DEFAULT_FRAMES_PER_HOOK: usize = 200_000;
/// One frame in this many is judged the slow way, checking that exactly one reason counter
/// moved (the fast way reads only the counter the model names).
const FULL_CHECK_EVERY: usize = 997;
/// Examples kept of each kind of disagreement (hook, kernel's reason, model's reason).
const EXAMPLES_PER_KIND: usize = 3;

/// The hooks and what their frames start with.
const HOOKS: [(Hook, Link); 3] = [
    (Hook::Xdp, Link::Ethernet),
    (Hook::Tc, Link::Ethernet),
    (Hook::XdpL3, Link::Ip),
];

/// The kernel's test run refuses frames shorter than an Ethernet header, whatever the program.
const MIN_TEST_RUN_LEN: usize = 14;
/// Longest frame sent: a full-size Ethernet frame. Long extension chains are cut there (the test
/// run takes at most a page, less headroom).
const MAX_FRAME_LEN: usize = 1514;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
}

fn seed() -> u64 {
    std::env::var("FRAMES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        .max(1)
}

/// How long the run goes on.
#[derive(Clone, Copy, Debug)]
enum Budget {
    Frames(usize),
    Time(Duration),
}

fn budget() -> Budget {
    let env = |name| std::env::var(name).ok().and_then(|s| s.parse::<u64>().ok());
    match (env("FRAMES_SECONDS"), env("FRAMES_PER_HOOK")) {
        (Some(seconds), _) => Budget::Time(Duration::from_secs(seconds)),
        (None, Some(frames)) => Budget::Frames(frames as usize),
        (None, None) => Budget::Frames(DEFAULT_FRAMES_PER_HOOK),
    }
}

// ---------------------------------------------------------------------------------------------
// Frames

/// A frame and where its IP header starts (what the layer-3 program is given).
struct Frame {
    bytes: Vec<u8>,
    l3_at: usize,
}

const VLAN_TPIDS: [u16; 3] = [0x8100, 0x88a8, 0x9100];
const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;

/// Where the IP header of an Ethernet frame starts, past any VLAN tags (a guess for mutated
/// frames: the layer-3 program gets whatever lies there).
fn l3_offset(frame: &[u8]) -> usize {
    let mut at = 12;
    while at < 12 + 4 * 3
        && frame
            .get(at..at + 2)
            .is_some_and(|t| VLAN_TPIDS.contains(&u16::from_be_bytes([t[0], t[1]])))
    {
        at += 4;
    }
    at + 2
}

/// Destinations worth aiming at: inside, at the edges of and outside the policy's prefixes,
/// link-scoped ones, the host's own link-local address, and random ones.
fn destination(rng: &mut Rng, v6: bool) -> IpAddr {
    if v6 {
        let fixed: [&str; 12] = [
            ALLOWED6,
            UNLISTED6,
            "2001:db8:1:2::9",
            "2001:db8:1:ffff:ffff:ffff:ffff:ffff",
            "2001:db8:3::1",
            "2001:db8:0:ffff:ffff:ffff:ffff:ffff",
            "fe80::1",
            "fe80::2",
            "febf::1",
            "ff02::1",
            "ff02::1:ff00:1",
            "ff05::2",
        ];
        if rng.chance(85) {
            return rng.pick(&fixed).parse().expect("test address");
        }
        IpAddr::V6(Ipv6Addr::from(
            u128::from(rng.next()) << 64 | u128::from(rng.next()),
        ))
    } else {
        let fixed: [&str; 14] = [
            ALLOWED4,
            UNLISTED4,
            "17.1.2.3",
            "17.200.0.1",
            "198.51.100.0",
            "198.51.100.255",
            "203.0.113.9",
            "169.254.169.254",
            "169.254.1.1",
            "255.255.255.255",
            "224.0.0.1",
            "224.0.0.255",
            "224.0.1.1",
            "0.0.0.0",
        ];
        if rng.chance(85) {
            return rng.pick(&fixed).parse().expect("test address");
        }
        IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
    }
}

/// Ports the policy lists, their neighbours, DHCP's, and random ones.
fn port(rng: &mut Rng) -> u16 {
    const PORTS: [u16; 18] = [
        443, 80, 5223, 1000, 1500, 2000, 2001, 999, 3544, 5000, 5010, 5011, 8443, 22, 67, 547, 53,
        0,
    ];
    if rng.chance(80) {
        rng.pick(&PORTS)
    } else {
        rng.next() as u16
    }
}

/// The transport part: (protocol, bytes).
fn transport(rng: &mut Rng, v6: bool) -> (u8, Vec<u8>) {
    let icmp = if v6 { 58 } else { 1 };
    match rng.below(10) {
        0..=3 => {
            let (sport, dport) = (rng.next() as u16, port(rng));
            let mut h = Vec::with_capacity(20);
            h.extend(sport.to_be_bytes());
            h.extend(dport.to_be_bytes());
            h.extend([0, 0, 0, 1, 0, 0, 0, 0]);
            // Data offset: 5 mostly, anything sometimes; flags: SYN, ACK, FIN, RST or random.
            let offset = if rng.chance(90) {
                0x50
            } else {
                rng.byte() & 0xf0
            };
            let random = rng.byte();
            let flags = rng.pick(&[0x02, 0x10, 0x12, 0x01, 0x04, random]);
            h.extend([offset, flags, 0xff, 0xff, 0, 0, 0, 0]);
            (6, h)
        }
        4..=6 => {
            let (sport, dport) = match rng.below(5) {
                0 => (68, 67),
                1 => (546, 547),
                _ => (rng.next() as u16, port(rng)),
            };
            let mut h = Vec::with_capacity(8);
            h.extend(sport.to_be_bytes());
            h.extend(dport.to_be_bytes());
            h.extend(8u16.to_be_bytes());
            h.extend([0, 0]);
            (17, h)
        }
        7 | 8 => {
            // Errors, echo, ND and MLD types, random ones.
            let kinds: &[u8] = if v6 {
                &[
                    1, 2, 3, 4, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 143, 5, 127,
                ]
            } else {
                &[0, 3, 4, 5, 8, 11, 12, 13, 14, 30]
            };
            let kind = if rng.chance(90) {
                rng.pick(kinds)
            } else {
                rng.byte()
            };
            let proto = if rng.chance(5) { 1 + 58 - icmp } else { icmp };
            (proto, vec![kind, 0, 0, 0, 0, 0, 0, 1])
        }
        _ => {
            // Tunnels, ESP, AH-less others, random numbers.
            let proto = if rng.chance(70) {
                rng.pick(&[4, 41, 47, 97, 98, 115, 137, 50, 132, 136, 59, 2, 0])
            } else {
                rng.byte()
            };
            (proto, (0..rng.below(24)).map(|_| rng.byte()).collect())
        }
    }
}

/// IPv4 options: none, the kinds clients send, random bytes, or a source route somewhere.
fn ipv4_options(rng: &mut Rng) -> Vec<u8> {
    let mut options = match rng.below(6) {
        0..=2 => Vec::new(),
        // Router alert, then no-ops and end of options.
        3 => vec![148, 4, 0, 0, 1, 1, 1, 0],
        // Record route, zero-filled, or a timestamp.
        4 => {
            let len = 4 * (1 + rng.below(9));
            let kind = rng.pick(&[7, 68, 131, 137]);
            let mut o = vec![kind, len as u8, 4];
            o.resize(len, 0);
            o
        }
        _ => (0..4 * (1 + rng.below(10))).map(|_| rng.byte()).collect(),
    };
    while options.len() % 4 != 0 {
        options.push(0);
    }
    options.truncate(40);
    options
}

fn ipv4(rng: &mut Rng) -> Vec<u8> {
    let (src, dst) = (
        Ipv4Addr::new(192, 0, 2, 10),
        match destination(rng, false) {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => unreachable!("asked for IPv4"),
        },
    );
    let options = ipv4_options(rng);
    let (proto, payload) = transport(rng, false);
    let header_len = 20 + options.len();
    let total = header_len + payload.len();
    let fragment: u16 = if rng.chance(75) {
        0
    } else {
        let random = rng.next() as u16 & 0x1fff;
        let offset = rng.pick(&[0, 1, 2, 185, 8191, random]);
        let more = u16::from(rng.chance(50)) << 13;
        offset | more
    };
    let random = rng.byte();
    let ttl = rng.pick(&[64, 1, 255, random]);
    let mut h = Vec::with_capacity(total);
    h.push(0x40 | (header_len / 4) as u8);
    h.push(0);
    h.extend((total as u16).to_be_bytes());
    h.extend([0x12, 0x34]);
    h.extend(fragment.to_be_bytes());
    h.extend([ttl, proto, 0, 0]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h.extend(options);
    h.extend(payload);
    h
}

/// One IPv6 extension header of `kind` naming `next`.
fn extension(rng: &mut Rng, kind: u8, next: u8) -> Vec<u8> {
    // Mostly short; now and then long enough that the chain passes byte 512.
    let units = if rng.chance(90) {
        rng.below(3) as u8
    } else {
        rng.byte()
    };
    match kind {
        44 => {
            let offset = if rng.chance(50) {
                0
            } else {
                {
                    let random = rng.next() as u16 & 0x1fff;
                    rng.pick(&[1, 2, 8191, random])
                }
            };
            let field = (offset << 3) | u16::from(rng.chance(50));
            let mut h = vec![next, 0];
            h.extend(field.to_be_bytes());
            h.extend([0, 0, 0, 42]);
            h
        }
        51 => {
            let len_field = units;
            let mut h = vec![next, len_field, 0, 0];
            h.resize((usize::from(len_field) + 2) * 4, 0);
            h
        }
        _ => {
            let (routing_type, segments_left) = if kind == 43 {
                (
                    rng.pick(&[0, 2, 4]),
                    if rng.chance(70) { 0 } else { rng.byte() },
                )
            } else {
                // PadN filling the rest, as real options headers do (its length wraps in the
                // long headers, which nothing here reads).
                (1, units.wrapping_mul(8).wrapping_add(4))
            };
            let mut h = vec![next, units, routing_type, segments_left];
            h.resize(8 * (usize::from(units) + 1), 0);
            h
        }
    }
}

/// One long header putting the transport header a few bytes either side of byte 512, the
/// `headers-too-long` limit: at 504 to 520 from the IP header (the frame's start on layer-3
/// devices), 14 bytes and the tags further on Ethernet. Returns the header's number and bytes.
fn boundary_chain(rng: &mut Rng, upper: u8) -> (u8, Vec<u8>) {
    let len: usize = rng.pick(&[448, 452, 456, 460, 464, 468, 472, 476, 480]);
    let mut h = if len.is_multiple_of(8) && rng.chance(50) {
        // Destination options: 8-octet units after the first 8, padded with Pad1 (zeros).
        vec![60, (len / 8 - 1) as u8, 0, 0]
    } else {
        // AH: 4-octet units, minus 2.
        vec![51, (len / 4 - 2) as u8, 0, 0]
    };
    let kind = h[0];
    h[0] = upper;
    h.resize(len, 0);
    (kind, h)
}

fn ipv6(rng: &mut Rng) -> Vec<u8> {
    let src: Ipv6Addr = "2001:db8:ff::10".parse().expect("test address");
    let dst = match destination(rng, true) {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => unreachable!("asked for IPv6"),
    };
    let (upper, payload) = transport(rng, true);
    // Chains of random length and kind: the walked kinds, and some the filter does not walk.
    let count = match rng.below(10) {
        0..=3 => 0,
        4..=7 => 1 + rng.below(3),
        _ => rng.below(11),
    };
    let kinds: Vec<u8> = (0..count)
        .map(|_| {
            if rng.chance(90) {
                rng.pick(&[0, 43, 44, 51, 60])
            } else {
                rng.pick(&[135, 139, 140, 253, 254, 50, 59])
            }
        })
        .collect();
    let mut chain = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        let next = kinds.get(i + 1).copied().unwrap_or(upper);
        chain.extend(extension(rng, *kind, next));
    }
    let mut first = kinds.first().copied().unwrap_or(upper);
    if rng.chance(5) {
        (first, chain) = boundary_chain(rng, upper);
    }
    let random = rng.byte();
    let hop_limit = rng.pick(&[255, 1, 64, random]);
    let mut h = Vec::with_capacity(40 + chain.len() + payload.len());
    h.extend([0x60, 0, 0, 0]);
    h.extend(((chain.len() + payload.len()) as u16).to_be_bytes());
    h.extend([first, hop_limit]);
    h.extend(src.octets());
    h.extend(dst.octets());
    h.extend(chain);
    h.extend(payload);
    h
}

/// A frame built from scratch: VLAN stack, ethertype, IP packet.
fn generated(rng: &mut Rng) -> Frame {
    let mut bytes = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
    let tags = match rng.below(20) {
        0..=9 => 0,
        10..=13 => 1,
        14..=17 => 2,
        _ => 3 + rng.below(2),
    };
    for _ in 0..tags {
        bytes.extend(rng.pick(&VLAN_TPIDS).to_be_bytes());
        bytes.extend((rng.next() as u16).to_be_bytes());
    }
    let (ether_type, payload) = match rng.below(20) {
        0..=8 => (ETH_IPV4, ipv4(rng)),
        9..=17 => (ETH_IPV6, ipv6(rng)),
        // The family's ethertype on the other family's packet.
        18 if rng.chance(50) => (ETH_IPV4, ipv6(rng)),
        18 => (ETH_IPV6, ipv4(rng)),
        // ARP, PPPoE session and discovery, MPLS, LLDP, an 802.3 length, random.
        _ => {
            let random = rng.next() as u16;
            let ether_type = rng.pick(&[
                0x0806, 0x8864, 0x8863, 0x8847, 0x8848, 0x88cc, 0x0042, random,
            ]);
            (ether_type, ipv4(rng))
        }
    };
    bytes.extend(ether_type.to_be_bytes());
    let l3_at = bytes.len();
    bytes.extend(payload);
    Frame { bytes, l3_at }
}

/// Changes `frame` in one of the ways that find parser bugs.
fn mutate(rng: &mut Rng, frame: &mut Frame) {
    let bytes = &mut frame.bytes;
    let l3 = frame.l3_at;
    match rng.below(8) {
        // Byte flips, mostly in the headers.
        0..=2 => {
            for _ in 0..=rng.below(3) {
                let span = bytes
                    .len()
                    .min(if rng.chance(80) { 100 } else { usize::MAX });
                let at = rng.below(span);
                bytes[at] ^= 1 + rng.below(255) as u8;
            }
        }
        // A byte set to a value that means something to a parser.
        3 => {
            let at = rng.below(bytes.len());
            bytes[at] = rng.pick(&[
                0, 0xff, 131, 137, 43, 44, 51, 60, 0x81, 0x88, 0x86, 0x45, 0x4f, 0x60, 6, 17, 58,
            ]);
        }
        // Truncated anywhere from the Ethernet header on.
        4 => {
            let len =
                MIN_TEST_RUN_LEN + rng.below(bytes.len().saturating_sub(MIN_TEST_RUN_LEN) + 1);
            bytes.truncate(len);
        }
        // Bogus lengths: IPv4 total length or IHL, IPv6 payload length, an extension's length.
        5 => {
            let field = l3 + rng.pick(&[0, 2, 3, 4, 5, 41, 49]);
            if let Some(b) = bytes.get_mut(field) {
                *b = if field == l3 {
                    0x40 | (rng.byte() & 0x0f)
                } else {
                    rng.byte()
                };
            }
        }
        // Trailing bytes.
        6 => bytes.extend((0..=rng.below(40)).map(|_| rng.next() as u8)),
        // One more VLAN tag in front.
        _ => {
            let tag = [0x81, 0x00, 0, rng.byte()];
            bytes.splice(12..12, tag);
            frame.l3_at += 4;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Running

/// What the kernel answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Answer {
    outcome: Outcome,
    reason: Reason,
}

/// The filter with a fast way to read which reason a frame was counted under.
struct Kernel {
    filter: Filter,
    counters: Counters,
    /// Packets seen so far under each hook (by [`counter_index`]) and reason in counter slot 0,
    /// where the test run's interface counts.
    seen: [Vec<u64>; 2],
    judged: usize,
}

/// The counters a hook counts in: the layer-3 XDP program counts as XDP.
const COUNTER_HOOKS: [filter_common::Hook; 2] = [filter_common::Hook::Xdp, filter_common::Hook::Tc];

fn counter_index(hook: Hook) -> usize {
    match hook {
        Hook::Xdp | Hook::XdpL3 => 0,
        Hook::Tc | Hook::TcIngress => 1,
    }
}

impl Kernel {
    fn new(table: &AllowTable) -> anyhow::Result<Self> {
        let mut filter = Filter::empty()?;
        filter.maps.apply(table)?;
        // Flows are recorded, so that code runs on these frames too; none is ever kept, since
        // no address is marked as expired (checked at the end).
        filter.maps.set_config(Config {
            established_idle_secs: 600,
            established_max_secs: 3600,
            ..Config::new(Mode::Enforce)
        })?;
        let counters = filter.counters()?;
        let mut kernel = Self {
            filter,
            counters,
            seen: [vec![0; Reason::ALL.len()], vec![0; Reason::ALL.len()]],
            judged: 0,
        };
        kernel.refresh()?;
        Ok(kernel)
    }

    fn refresh(&mut self) -> anyhow::Result<()> {
        for (index, hook) in COUNTER_HOOKS.into_iter().enumerate() {
            for reason in Reason::ALL {
                self.seen[index][reason as usize] =
                    self.counters.reason_at(0, hook, reason)?.packets;
            }
        }
        Ok(())
    }

    /// The kernel's answer on `frame`; `expected` is the model's reason, read first. `None` if
    /// the test run refused the frame.
    fn judge(
        &mut self,
        hook: Hook,
        frame: &[u8],
        expected: Reason,
    ) -> anyhow::Result<Option<Answer>> {
        self.judged += 1;
        if self.judged.is_multiple_of(FULL_CHECK_EVERY) {
            // The slow way: fails unless exactly one reason counter moved.
            let (outcome, reason) = match self.filter.judge(hook, frame) {
                Ok(answer) => answer,
                Err(_) if test_run_refuses(hook, frame) => return Ok(None),
                Err(err) => return Err(err),
            };
            self.refresh()?;
            return Ok(Some(Answer { outcome, reason }));
        }
        let outcome = match self.filter.run(hook, frame) {
            Ok(outcome) => outcome,
            Err(_) if test_run_refuses(hook, frame) => return Ok(None),
            Err(err) => return Err(err),
        };
        let index = counter_index(hook);
        let now = self
            .counters
            .reason_at(0, COUNTER_HOOKS[index], expected)?
            .packets;
        let before = std::mem::replace(&mut self.seen[index][expected as usize], now);
        if now == before + 1 {
            return Ok(Some(Answer {
                outcome,
                reason: expected,
            }));
        }
        // Another counter moved: run the frame again the slow way to learn which (the verdict
        // depends on the frame alone: see the module docs).
        let (outcome, reason) = self.filter.judge(hook, frame)?;
        self.refresh()?;
        Ok(Some(Answer { outcome, reason }))
    }
}

/// The kernel's skb test run pulls a whole IPv4 or IPv6 header for an untagged frame of that
/// ethertype and refuses the frame (EINVAL) when it is shorter; TC never sees those frames
/// (XDP's identical parser does).
fn test_run_refuses(hook: Hook, frame: &[u8]) -> bool {
    let ether_type = frame.get(12..14).map(|t| u16::from_be_bytes([t[0], t[1]]));
    hook == Hook::Tc
        && match ether_type {
            Some(ETH_IPV4) => frame.len() < 14 + 20,
            Some(ETH_IPV6) => frame.len() < 14 + 40,
            _ => false,
        }
}

/// What one hook saw.
struct Tally {
    frames: usize,
    /// Frames the kernel's test run would not take (shorter than an Ethernet header, or see
    /// `test_run_refuses`).
    refused: usize,
    /// How often the model predicted each reason (by number).
    predicted: Vec<usize>,
}

struct Disagreement {
    hook: Hook,
    frame: Vec<u8>,
    kernel: Answer,
    model: Reason,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Reasons a hook must have been asked about in a run: everything but what needs state, the
/// source check or a damaged map, and what the hook's link type cannot produce.
fn required_reasons(link: Link) -> Vec<Reason> {
    let never = [
        Reason::PolicyMissing,
        Reason::SpoofedSource,
        Reason::EstablishedFlow,
    ];
    let not_on_link: &[Reason] = match link {
        Link::Ethernet => &[Reason::NotIpOnL3Device],
        // The version nibble picks the family, so a wrong IPv6 version cannot be met there.
        Link::Ip => &[
            Reason::MalformedIpv6,
            Reason::Arp,
            Reason::NotIp,
            Reason::TruncatedL2,
            Reason::TooManyVlanTags,
            Reason::Encapsulated,
        ],
    };
    Reason::ALL
        .into_iter()
        .filter(|r| !never.contains(r) && !not_on_link.contains(r))
        .collect()
}

struct Run {
    table: AllowTable,
    kernel: Kernel,
    tallies: Vec<Tally>,
    disagreements: Vec<Disagreement>,
    disagreement_count: usize,
}

impl Run {
    /// Judges `frame` on every hook and compares.
    fn check(&mut self, frame: &Frame) -> anyhow::Result<()> {
        for (index, (hook, link)) in HOOKS.into_iter().enumerate() {
            let bytes = match link {
                Link::Ethernet => &frame.bytes[..],
                Link::Ip => frame.bytes.get(frame.l3_at..).unwrap_or_default(),
            };
            let tally = &mut self.tallies[index];
            tally.frames += 1;
            if bytes.len() < MIN_TEST_RUN_LEN {
                tally.refused += 1;
                continue;
            }
            let model = model::judge(&self.table, bytes, link);
            let Some(kernel) = self.kernel.judge(hook, bytes, model)? else {
                tally.refused += 1;
                continue;
            };
            tally.predicted[model as usize] += 1;
            if kernel.reason != model || kernel.outcome != outcome_of(model) {
                self.disagreement_count += 1;
                let same_kind = self
                    .disagreements
                    .iter()
                    .filter(|d| {
                        d.hook == hook && d.kernel.reason == kernel.reason && d.model == model
                    })
                    .count();
                if same_kind < EXAMPLES_PER_KIND {
                    self.disagreements.push(Disagreement {
                        hook,
                        frame: bytes.to_vec(),
                        kernel,
                        model,
                    });
                }
            }
        }
        Ok(())
    }

    fn frames_per_hook(&self) -> usize {
        self.tallies.iter().map(|t| t.frames).min().unwrap_or(0)
    }
}

/// The frames of the verdict table, the seeds of the mutations.
fn table_frames() -> Vec<Frame> {
    cases::cases()
        .into_iter()
        .map(|(_, bytes, _)| Frame {
            l3_at: l3_offset(&bytes),
            bytes,
        })
        .collect()
}

impl Run {
    /// Every table frame cut at every offset from the Ethernet header on, then random frames
    /// (table frames mutated, generated ones, some mutated) until the budget is spent.
    fn fuzz(&mut self, rng: &mut Rng, budget: Budget) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let seeds = table_frames();
        for case in &seeds {
            for len in MIN_TEST_RUN_LEN..=case.bytes.len() {
                self.check(&Frame {
                    bytes: case.bytes[..len].to_vec(),
                    l3_at: case.l3_at,
                })?;
            }
        }
        let done = |run: &Run| match budget {
            Budget::Frames(n) => run.frames_per_hook() >= n,
            Budget::Time(limit) => started.elapsed() >= limit,
        };
        while !done(self) {
            let mut frame = if rng.chance(30) {
                let case = &seeds[rng.below(seeds.len())];
                Frame {
                    bytes: case.bytes.clone(),
                    l3_at: case.l3_at,
                }
            } else {
                generated(rng)
            };
            let mutations = match rng.below(10) {
                0..=3 => 0,
                4..=7 => 1,
                _ => 2 + rng.below(3),
            };
            for _ in 0..mutations {
                mutate(rng, &mut frame);
            }
            frame.bytes.truncate(MAX_FRAME_LEN);
            self.check(&frame)?;
        }
        Ok(started.elapsed())
    }

    /// Prints what ran, so that a run checking nothing is seen (it fails in [`Run::verify`]).
    fn print(&self, elapsed: Duration) {
        eprintln!(
            "frames: {} per hook in {:.1} s",
            self.frames_per_hook(),
            elapsed.as_secs_f64()
        );
        for ((hook, _), tally) in HOOKS.iter().zip(&self.tallies) {
            let reasons: Vec<String> = Reason::ALL
                .iter()
                .filter(|r| tally.predicted[**r as usize] > 0)
                .map(|r| format!("{r:?} {}", tally.predicted[*r as usize]))
                .collect();
            eprintln!(
                "frames: {hook:?}: {} frames, {} refused by the test run; model predicted: {}",
                tally.frames,
                tally.refused,
                reasons.join(", ")
            );
        }
    }

    /// Fails on any disagreement (printing examples of each kind), on a reason class no frame
    /// reached, and if a recorded flow could have changed a verdict.
    fn verify(&self, seed: u64) -> anyhow::Result<()> {
        let mut report = String::new();
        for d in &self.disagreements {
            let _ = writeln!(
                report,
                "{:?}: kernel {:?}/{:?}, model {:?}/{:?}\n  frame {}",
                d.hook,
                d.kernel.outcome,
                d.kernel.reason,
                outcome_of(d.model),
                d.model,
                hex(&d.frame)
            );
        }
        anyhow::ensure!(
            self.disagreement_count == 0,
            "seed {seed}: {} disagreements between the kernel and the model; examples:\n{report}",
            self.disagreement_count
        );
        for ((hook, link), tally) in HOOKS.iter().zip(&self.tallies) {
            let missing: Vec<Reason> = required_reasons(*link)
                .into_iter()
                .filter(|r| tally.predicted[*r as usize] == 0)
                .collect();
            anyhow::ensure!(
                missing.is_empty(),
                "seed {seed}: {hook:?} was never given a frame the model counts under \
                 {missing:?}: the generator has lost a case"
            );
            anyhow::ensure!(
                tally.frames > tally.refused,
                "{hook:?}: the test run refused every frame"
            );
        }
        // Statelessness: flows were recorded, but none to an address marked as expired, so
        // none could have turned a drop into `established-flow`.
        let flows = self.kernel.filter.flows.flows();
        eprintln!("frames: {} flows recorded along the way", flows.len());
        let kept = flows
            .iter()
            .filter(|(key, _)| {
                let (_, dst) = filter_user::maps::flows::flow_addresses(key);
                self.kernel.filter.flows.expired_at(dst).is_some()
            })
            .count();
        anyhow::ensure!(
            kept == 0,
            "{kept} flows to an address marked as expired: the run was not stateless"
        );
        Ok(())
    }
}

#[test]
fn kernel_and_model_agree_on_random_and_mutated_frames() -> anyhow::Result<()> {
    let seed = seed();
    let budget = budget();
    eprintln!("frames: seed {seed} (FRAMES_SEED={seed} repeats this run), budget {budget:?}");
    let table = AllowTable::build(&grants())?;
    let kernel = Kernel::new(&table)?;
    let mut run = Run {
        table,
        kernel,
        tallies: HOOKS
            .iter()
            .map(|_| Tally {
                frames: 0,
                refused: 0,
                predicted: vec![0; Reason::ALL.len()],
            })
            .collect(),
        disagreements: Vec::new(),
        disagreement_count: 0,
    };
    let elapsed = run.fuzz(&mut Rng(seed), budget)?;
    run.print(elapsed);
    run.verify(seed)
}

/// The model against the reasons people wrote down: every case of the verdict table, on
/// Ethernet and (IP cases) from the IP header on, gets the reason its row names. No kernel here.
#[test]
fn the_model_gives_every_table_case_its_reason() {
    let table = AllowTable::build(&grants()).expect("the verdict table's policy builds");
    let mut failures = Vec::new();
    let mut checked = 0;
    for (name, frame, expected) in cases::cases() {
        let got = model::judge(&table, &frame, Link::Ethernet);
        if got != expected {
            failures.push(format!(
                "{name}: expected {expected:?}, the model says {got:?}"
            ));
        }
        // As a layer-3 device carries it: an untagged frame whose ethertype agrees with its
        // version.
        let ether_type = u16::from_be_bytes([frame[12], frame[13]]);
        let version = frame.get(14).map(|b| b >> 4);
        if (ether_type, version) == (ETH_IPV4, Some(4))
            || (ether_type, version) == (ETH_IPV6, Some(6))
        {
            let got = model::judge(&table, &frame[14..], Link::Ip);
            if got != expected {
                failures.push(format!(
                    "{name} (layer 3): expected {expected:?}, the model says {got:?}"
                ));
            }
        }
        checked += 1;
    }
    assert!(checked > 50, "only {checked} table cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
