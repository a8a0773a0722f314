//! Differential test: the kernel's verdict (through `BPF_PROG_TEST_RUN`) equals the userspace
//! reference, [`AllowTable::lookup`], for thousands of random destinations and ports over random
//! tables of nested and overlapping prefixes with random port sets: after the initial load, after
//! incremental host-route updates, and after whole-table replacements. Needs root.
//!
//! A second test runs probes without pause on another thread while the table is rewritten: a
//! packet judged during an update gets the old policy's verdict or the new one's, never one
//! that neither gives.
//!
//! The seed comes from `DIFFERENTIAL_SEED` when set, the clock otherwise; a failure prints it with
//! the address, the port and both answers, so the run can be repeated exactly.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::atomic::{AtomicBool, AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use filter_common::{Reason, RuleProto};
use filter_tests::{
    harness::{ConcurrentRunner, Filter, Hook, Outcome},
    packet::Pkt,
};
use filter_user::table::{AllowTable, Grant, PortSpec};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Addresses checked after each step.
const PROBES: usize = 2_000;

/// xorshift64*: reproducible from the printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn u128(&mut self) -> u128 {
        u128::from(self.next()) << 64 | u128::from(self.next())
    }
}

fn seed() -> u64 {
    std::env::var("DIFFERENTIAL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        .max(1)
}

fn random_ports(rng: &mut Rng) -> Vec<PortSpec> {
    (0..=rng.below(3))
        .map(|_| {
            let lo = 1 + rng.below(65_000) as u16;
            let hi = lo.saturating_add(rng.below(4) as u16 * rng.below(300) as u16);
            match rng.below(5) {
                0 => PortSpec::Icmp,
                1 => PortSpec::Udp(lo..=hi),
                _ => PortSpec::Tcp(lo..=hi),
            }
        })
        .collect()
}

/// A prefix of `width` bits: inside `parent` (longer than it) or anywhere.
fn random_prefix(rng: &mut Rng, width: u8, parent: Option<(u128, u8)>) -> (u128, u8) {
    let (base, min_len) = parent.unwrap_or((0, 0));
    // Unnested prefixes are mostly long, so that random overlaps stay within a policy's rule
    // capacity; one in a hundred is short and covers many others.
    let shortest = match parent {
        Some(_) => min_len + 1,
        None if rng.below(100) == 0 => width / 4,
        None => width / 2,
    };
    let len = shortest + rng.below(u64::from(width - shortest) + 1) as u8;
    let len = len.min(width);
    let inside_parent_mask = if min_len == 0 {
        u128::MAX
    } else {
        u128::MAX >> min_len
    };
    let address = (base & !inside_parent_mask) | (rng.u128() & inside_parent_mask);
    let address = if width == 32 { address >> 96 } else { address };
    (address, len)
}

fn to_net(width: u8, address: u128, len: u8) -> IpNet {
    if width == 32 {
        IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(address as u32), len)
                .expect("length ≤ 32")
                .trunc(),
        )
    } else {
        IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(address), len)
                .expect("length ≤ 128")
                .trunc(),
        )
    }
}

/// Nesting depth a grant may reach (a prefix inside one inside one ...): deeper chains unite
/// more rules than a policy holds.
const MAX_DEPTH: u8 = 3;
/// Distinct (service, port set) pairs in a random table.
const TEMPLATES: u16 = 12;

/// `count` grants per family, about a third nested in an earlier one.
fn random_grants(rng: &mut Rng, count: usize) -> Vec<Grant> {
    let mut grants = Vec::with_capacity(2 * count);
    // Services and port sets come from a small pool, as in real rules: the kernel holds up to
    // 4096 distinct unions of them.
    let templates: Vec<(u16, Vec<PortSpec>)> = (0..TEMPLATES)
        .map(|service| (service, random_ports(rng)))
        .collect();
    for width in [32u8, 128] {
        // (address, length, depth) of every prefix placed so far.
        let mut placed: Vec<(u128, u8, u8)> = Vec::new();
        for _ in 0..count {
            let parent = (!placed.is_empty() && rng.below(3) == 0)
                .then(|| placed[rng.below(placed.len() as u64) as usize])
                .filter(|(_, len, depth)| *len < width && *depth < MAX_DEPTH);
            // A parent's address is stored in the family's own width; lift IPv4 to the top bits.
            let lifted = parent.map(|(a, l, _)| if width == 32 { (a << 96, l) } else { (a, l) });
            let (address, len) = random_prefix(rng, width, lifted);
            placed.push((address, len, parent.map_or(0, |(_, _, depth)| depth + 1)));
            let (service, ports) = templates[rng.below(templates.len() as u64) as usize].clone();
            grants.push(Grant {
                prefix: to_net(width, address, len),
                service,
                ports,
                groups: filter_common::groups::ALL_GROUPS,
            });
        }
    }
    grants
}

/// Destinations no router forwards are judged before the table (link-scoped reasons).
fn link_scoped(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_broadcast() || (a.octets()[..3] == [224, 0, 0]),
        IpAddr::V6(a) => {
            let s = a.segments();
            s[0] & 0xffc0 == 0xfe80 || s[0] == 0xff02
        }
    }
}

/// An address inside, at the edge of, or outside the table's prefixes.
fn probe_address(rng: &mut Rng, table: &AllowTable) -> IpAddr {
    let v6 = rng.below(2) == 0;
    let nets: Vec<IpNet> = if v6 {
        table.v6.keys().map(|n| IpNet::V6(*n)).collect()
    } else {
        table.v4.keys().map(|n| IpNet::V4(*n)).collect()
    };
    if nets.is_empty() || rng.below(4) == 0 {
        return if v6 {
            IpAddr::V6(Ipv6Addr::from(rng.u128()))
        } else {
            IpAddr::V4(Ipv4Addr::from(rng.next() as u32))
        };
    }
    let net = nets[rng.below(nets.len() as u64) as usize];
    match (net, rng.below(4)) {
        (IpNet::V4(n), 0) => IpAddr::V4(Ipv4Addr::from(u32::from(n.network()).wrapping_sub(1))),
        (IpNet::V4(n), 1) => IpAddr::V4(Ipv4Addr::from(u32::from(n.broadcast()).wrapping_add(1))),
        (IpNet::V4(n), _) => {
            let host = rng.next() as u32 & !u32::from(n.netmask());
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
        }
        (IpNet::V6(n), 0) => IpAddr::V6(Ipv6Addr::from(u128::from(n.network()).wrapping_sub(1))),
        (IpNet::V6(n), 1) => IpAddr::V6(Ipv6Addr::from(u128::from(n.broadcast()).wrapping_add(1))),
        (IpNet::V6(n), _) => {
            let host = rng.u128() & !u128::from(n.netmask());
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
        }
    }
}

/// What the reference says of a TCP packet to `addr`:`port`.
fn reference(table: &AllowTable, addr: IpAddr, port: u16) -> Reason {
    match table.lookup(addr) {
        None => Reason::NoService,
        Some((_, rules)) if rules.find(RuleProto::Tcp, port).is_some() => Reason::Allowed,
        Some((_, rules))
            if rules
                .rules()
                .iter()
                .any(|r| r.proto == RuleProto::Tcp as u8) =>
        {
            Reason::PortNotAllowed
        }
        Some(_) => Reason::ProtocolNotAllowed,
    }
}

/// A port that the reference allows at `addr` half of the time, a random one otherwise.
fn probe_port(rng: &mut Rng, table: &AllowTable, addr: IpAddr) -> u16 {
    let allowed = table.lookup(addr).and_then(|(_, rules)| {
        let tcp: Vec<_> = rules
            .rules()
            .iter()
            .filter(|r| r.proto == RuleProto::Tcp as u8)
            .collect();
        (!tcp.is_empty()).then(|| tcp[rng.below(tcp.len() as u64) as usize])
    });
    match allowed {
        Some(rule) if rng.below(2) == 0 => {
            rule.port_lo + rng.below(u64::from(rule.port_hi - rule.port_lo) + 1) as u16
        }
        _ => 1 + rng.below(65_535) as u16,
    }
}

/// Runs `PROBES` random packets through XDP and TC and compares each verdict with the reference.
fn check(
    filter: &mut Filter,
    table: &AllowTable,
    rng: &mut Rng,
    seed: u64,
    step: &str,
) -> anyhow::Result<()> {
    let src = |addr: IpAddr| {
        if addr.is_ipv4() {
            "192.0.2.1"
        } else {
            "2001:db8::1"
        }
    };
    let mut checked = 0;
    let (mut allowed, mut uncovered) = (0, 0);
    while checked < PROBES {
        let addr = probe_address(rng, table);
        if link_scoped(addr) {
            continue;
        }
        let port = probe_port(rng, table, addr);
        let want = reference(table, addr, port);
        let frame = Pkt::ip(src(addr), &addr.to_string()).tcp(port).build();
        for hook in Hook::BOTH {
            let got = filter.judge(hook, &frame)?;
            let want_outcome = if want.passes() {
                Outcome::Pass
            } else {
                Outcome::Drop
            };
            anyhow::ensure!(
                got == (want_outcome, want),
                "seed {seed}, {step}: {hook:?} judged TCP to {addr} port {port} as {got:?}; the \
                 reference (AllowTable::lookup: {:?}) says {want:?}",
                table
                    .lookup(addr)
                    .map(|(net, rules)| format!("{net} → {rules}"))
            );
        }
        checked += 1;
        allowed += usize::from(want == Reason::Allowed);
        uncovered += usize::from(want == Reason::NoService);
    }
    // A table that allowed everything or nothing would agree with a broken lookup too often.
    if table.prefix_count() > 10 {
        anyhow::ensure!(
            allowed > PROBES / 20 && uncovered > PROBES / 20,
            "seed {seed}, {step}: probes too one-sided ({allowed} allowed, {uncovered} uncovered \
             of {PROBES})"
        );
    }
    Ok(())
}

fn host_grant(rng: &mut Rng) -> Grant {
    let prefix = if rng.below(2) == 0 {
        IpNet::V4(Ipv4Net::new(Ipv4Addr::from(rng.next() as u32), 32).expect("/32"))
    } else {
        IpNet::V6(Ipv6Net::new(Ipv6Addr::from(rng.u128()), 128).expect("/128"))
    };
    Grant {
        prefix,
        service: TEMPLATES + rng.below(4) as u16,
        ports: random_ports(rng),
        groups: filter_common::groups::ALL_GROUPS,
    }
}

fn run(seed: u64, per_family: usize) -> anyhow::Result<()> {
    let mut rng = Rng(seed);
    let mut table = AllowTable::build(&random_grants(&mut rng, per_family))?;
    let mut filter = Filter::empty()?;
    filter.maps.apply(&table)?;
    check(&mut filter, &table, &mut rng, seed, "initial load")?;

    // Incremental: resolved addresses come and go, some inside table prefixes.
    let mut hosts: Vec<Grant> = Vec::new();
    for round in 0..3 {
        let added: Vec<Grant> = (0..200).map(|_| host_grant(&mut rng)).collect();
        let keep = hosts.len() / 2;
        let removed: Vec<Grant> = hosts.split_off(keep);
        let changed = table.update_hosts(&added, &removed)?;
        filter.maps.apply_changes(&table, &changed)?;
        hosts.extend(added);
        check(
            &mut filter,
            &table,
            &mut rng,
            seed,
            &format!("host update {round}"),
        )?;
    }

    // Whole-table replacements: a new random table, then a tiny one, then a new large one.
    for (round, size) in [per_family, 3, per_family / 2].into_iter().enumerate() {
        table = AllowTable::build(&random_grants(&mut rng, size))?;
        filter.maps.apply(&table)?;
        check(
            &mut filter,
            &table,
            &mut rng,
            seed,
            &format!("replacement {round} ({size} per family)"),
        )?;
    }
    Ok(())
}

#[test]
fn kernel_verdicts_equal_the_reference_on_random_tables() -> anyhow::Result<()> {
    let seed = seed();
    eprintln!("differential: seed {seed} (DIFFERENTIAL_SEED={seed} repeats this run)");
    run(seed, 20_000)
}

#[test]
fn kernel_verdicts_equal_the_reference_on_a_100k_table() -> anyhow::Result<()> {
    let seed = seed() ^ 0x1000;
    eprintln!("differential: seed {seed} (DIFFERENTIAL_SEED={seed} repeats this run)");
    run(seed, 100_000)
}

/// A frame and the outcome it must get whichever of the tables an update moves between is in
/// force: probes whose outcome differs between them are run but not checked.
struct SteadyProbe {
    frame: Vec<u8>,
    what: String,
    outcome: Option<Outcome>,
}

/// `PROBES` frames drawn from each of `states` in turn, each with the outcome every state gives
/// it, if they agree.
fn steady_probes(rng: &mut Rng, states: &[&AllowTable]) -> Vec<SteadyProbe> {
    let mut probes = Vec::new();
    while probes.len() < PROBES {
        let table = states[probes.len() % states.len()];
        let addr = probe_address(rng, table);
        if link_scoped(addr) {
            continue;
        }
        let port = probe_port(rng, table, addr);
        let outcomes: Vec<Outcome> = states
            .iter()
            .map(|t| {
                if reference(t, addr, port).passes() {
                    Outcome::Pass
                } else {
                    Outcome::Drop
                }
            })
            .collect();
        let src = if addr.is_ipv4() {
            "192.0.2.1"
        } else {
            "2001:db8::1"
        };
        probes.push(SteadyProbe {
            frame: Pkt::ip(src, &addr.to_string()).tcp(port).build(),
            what: format!("TCP to {addr} port {port}"),
            outcome: outcomes
                .iter()
                .all(|o| *o == outcomes[0])
                .then_some(outcomes[0]),
        });
    }
    probes
}

/// Runs `probes` round and round, alternating XDP and TC, while `updating` holds (at most two
/// minutes); returns what got an outcome other than the one it must have (the first 20).
fn judge_while(
    runner: &ConcurrentRunner<'_>,
    probes: &[SteadyProbe],
    updating: &AtomicBool,
    judged: &AtomicUsize,
) -> anyhow::Result<Vec<String>> {
    let mut wrong = Vec::new();
    let deadline = Instant::now() + Duration::from_mins(2);
    for round in 0.. {
        for (i, probe) in probes.iter().enumerate() {
            if !updating.load(Ordering::Relaxed) || Instant::now() > deadline {
                return Ok(wrong);
            }
            let hook = if (round + i) % 2 == 0 {
                Hook::Xdp
            } else {
                Hook::Tc
            };
            let got = runner.run(hook, &probe.frame)?;
            judged.fetch_add(1, Ordering::Relaxed);
            if probe.outcome.is_some_and(|wanted| wanted != got) && wrong.len() < 20 {
                wrong.push(format!("{hook:?} judged {} as {got:?}", probe.what));
            }
        }
    }
    Ok(wrong)
}

/// Rounds of updates: each switches to a second table and back whole, then adds and removes
/// host routes in place.
const UPDATE_ROUNDS: usize = 8;

#[test]
fn packets_judged_during_updates_get_the_old_or_the_new_verdict() -> anyhow::Result<()> {
    let seed = seed() ^ 0x2000;
    eprintln!("differential: seed {seed} (DIFFERENTIAL_SEED={seed} repeats this run)");
    let mut rng = Rng(seed);
    // The second table keeps most of the first's grants and adds others: most verdicts stay
    // the same while every range, chunk and policy id of the new copy is written afresh.
    let first_grants = random_grants(&mut rng, 20_000);
    let mut second_grants: Vec<Grant> = first_grants
        .iter()
        .filter(|_| rng.below(10) != 0)
        .cloned()
        .collect();
    second_grants.extend(random_grants(&mut rng, 2_000));
    let first = AllowTable::build(&first_grants)?;
    let second = AllowTable::build(&second_grants)?;
    let hosts: Vec<Grant> = (0..200).map(|_| host_grant(&mut rng)).collect();
    let mut with_hosts = first.clone();
    with_hosts.update_hosts(&hosts, &[])?;
    let states = [&first, &second, &with_hosts];

    let probes = steady_probes(&mut rng, &states);
    let steady = |wanted: Outcome| probes.iter().filter(|p| p.outcome == Some(wanted)).count();
    // Both kinds, or a writer that opened or closed everything would go unnoticed.
    anyhow::ensure!(
        steady(Outcome::Pass) > PROBES / 20 && steady(Outcome::Drop) > PROBES / 20,
        "seed {seed}: probes too one-sided ({} always pass, {} always drop of {PROBES})",
        steady(Outcome::Pass),
        steady(Outcome::Drop)
    );

    let mut filter = Filter::empty()?;
    let (runner, maps) = filter.concurrent()?;
    maps.apply(&first)?;
    let updating = AtomicBool::new(true);
    let judged_during_updates = AtomicUsize::new(0);
    let mut violations: Vec<String> = Vec::new();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let judge =
            scope.spawn(|| judge_while(&runner, &probes, &updating, &judged_during_updates));
        let result = (|| -> anyhow::Result<()> {
            let mut table = first.clone();
            for _ in 0..UPDATE_ROUNDS {
                maps.apply(&second)?;
                maps.apply(&table)?;
                let added = table.update_hosts(&hosts, &[])?;
                maps.apply_changes(&table, &added)?;
                let removed = table.update_hosts(&[], &hosts)?;
                maps.apply_changes(&table, &removed)?;
            }
            Ok(())
        })();
        updating.store(false, Ordering::Relaxed);
        violations = judge
            .join()
            .map_err(|_| anyhow::anyhow!("the judging thread panicked"))??;
        result
    })?;
    let judged = judged_during_updates.load(Ordering::Relaxed);
    anyhow::ensure!(
        violations.is_empty(),
        "seed {seed}: during updates a packet got a verdict neither table gives: {violations:#?}"
    );
    // Each round writes two whole tables of 20k prefixes per family: thousands of packets
    // must have met a write in progress, or the test showed nothing.
    anyhow::ensure!(
        judged >= 2 * PROBES,
        "seed {seed}: only {judged} packets were judged while the tables were rewritten"
    );
    eprintln!("differential: {judged} packets judged during {UPDATE_ROUNDS} rounds of updates");
    Ok(())
}
