//! A loaded filter whose programs run on crafted frames through `BPF_PROG_TEST_RUN`.

use anyhow::{ensure, Context as _};
use std::os::fd::AsFd as _;

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, RingBuf},
    programs::{SchedClassifier, TestRun as _, TestRunOptions, Xdp},
    Ebpf,
};
use filter_common::{maps as names, Config, DropEvent, EventCounter, PacketCount, Reason};
use filter_user::{
    counters::Counters,
    loader,
    maps::{FlowMaps, PolicyMaps, SourceMaps},
    table::{AllowTable, Grant},
};

/// The hook a frame is run through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp,
    Tc,
    /// XDP for layer-3 devices: the frame starts at the IP header. (Its TC twin cannot be test-run:
    /// the kernel's skb test run always reads an Ethernet header first. End-to-end tests on a TUN
    /// device cover it.)
    XdpL3,
    /// TC ingress on a pod's veth: TC with XDP's source check.
    TcIngress,
}

impl Hook {
    pub const BOTH: [Hook; 2] = [Hook::Xdp, Hook::Tc];
}

/// What a program returned, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Drop,
}

/// The interface a test run's frame arrives on: the loopback device.
pub const TEST_RUN_IFINDEX: u32 = 1;

/// The groups of the interfaces `groups` name, as a daemon on this host would find them for
/// test runs: only the loopback device, where their frames arrive.
#[must_use]
pub fn test_run_interface_groups(
    groups: &[filter_user::rules::Group],
) -> filter_user::maps::InterfaceGroups {
    filter_user::rules::interface_groups(groups, [(TEST_RUN_IFINDEX, "lo")]).0
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// TC_ACT_UNSPEC (-1), also TCX_NEXT: pass on to whatever comes next.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_SHOT: u32 = 2;

/// Both programs, verified and loaded, with their maps.
pub struct Filter {
    ebpf: Ebpf,
    pub maps: PolicyMaps,
    pub sources: SourceMaps,
    pub flows: FlowMaps,
    /// A second handle on the IPv4 trie, for writing what the daemon never would.
    raw_allow_v4: LpmTrie<MapData, [u8; 4], u32>,
    /// A second handle on the table state, to send IPv4 to that trie.
    raw_table_state: Array<MapData, filter_common::ranges::TableState>,
    raw_expired_addrs: HashMap<MapData, filter_common::flows::AddressKey, u64>,
}

impl Filter {
    /// Loads the object and writes the table compiled from `grants`, in enforce mode with
    /// default event limits.
    pub fn new(grants: &[Grant]) -> anyhow::Result<Self> {
        let mut filter = Self::empty()?;
        filter.maps.apply(&AllowTable::build(grants)?)?;
        Ok(filter)
    }

    /// Loads the object and writes what `rules` (a rules file's text, no hostnames resolved)
    /// compile to, client groups included, as the daemon would.
    pub fn from_rules(rules: &str) -> anyhow::Result<(Self, filter_user::rules::Rules)> {
        let rules = filter_user::rules::Rules::parse_sources(&[(
            std::path::Path::new("verdict-rules.toml"),
            rules,
        )])?;
        let mut filter = Self::empty()?;
        filter
            .maps
            .set_groups(&rules.groups, test_run_interface_groups(&rules.groups));
        filter.maps.apply(&filter_user::compile::compile(
            &rules,
            &filter_user::compile::Resolved::new(),
        )?)?;
        Ok((filter, rules))
    }

    /// Loads the object with empty policy maps, in enforce mode with default event limits.
    pub fn empty() -> anyhow::Result<Self> {
        ensure!(
            // Safety: geteuid has no preconditions.
            unsafe { libc::geteuid() } == 0,
            "verdict tests load BPF programs and must run as root (cargo xtask test does)"
        );
        let mut ebpf = loader::open()?;
        loader::load_programs(&mut ebpf)?;
        let raw_allow_v4 = match ebpf.map(names::ALLOW_V4) {
            Some(Map::LpmTrie(data)) => {
                let fd = data.fd().as_fd().try_clone_to_owned()?;
                LpmTrie::try_from(Map::from_map_data(MapData::from_fd(fd)?)?)?
            }
            _ => anyhow::bail!("ALLOW_V4 is missing or not an LPM trie"),
        };
        let raw_table_state = match ebpf.map(names::TABLE_STATE) {
            Some(Map::Array(data)) => {
                let fd = data.fd().as_fd().try_clone_to_owned()?;
                Array::try_from(Map::from_map_data(MapData::from_fd(fd)?)?)?
            }
            _ => anyhow::bail!("TABLE_STATE is missing or not an array"),
        };
        let raw_expired_addrs = match ebpf.map(names::EXPIRED_ADDRS) {
            Some(Map::LruHashMap(data)) => {
                let fd = data.fd().as_fd().try_clone_to_owned()?;
                HashMap::try_from(Map::from_map_data(MapData::from_fd(fd)?)?)?
            }
            _ => anyhow::bail!("EXPIRED_ADDRS is missing or not an LRU hash"),
        };
        let mut maps = PolicyMaps::take_from(&mut ebpf)?;
        let sources = SourceMaps::take_from(&mut ebpf)?;
        let flows = FlowMaps::take_from(&mut ebpf)?;
        maps.set_config(Config::new(filter_common::Mode::Enforce))?;
        Ok(Self {
            ebpf,
            maps,
            sources,
            flows,
            raw_allow_v4,
            raw_table_state,
            raw_expired_addrs,
        })
    }

    /// Runs `frame` through `hook` once.
    pub fn run(&mut self, hook: Hook, frame: &[u8]) -> anyhow::Result<Outcome> {
        let (raw, _) = self.run_repeated(hook, frame, 1)?;
        outcome(hook, raw)
    }

    /// The Ethernet XDP and TC egress programs, for a thread that runs frames through them
    /// while this one rewrites the policy maps: the two borrow different parts of the filter.
    pub fn concurrent(&mut self) -> anyhow::Result<(ConcurrentRunner<'_>, &mut PolicyMaps)> {
        let program = |name: &str| {
            self.ebpf
                .program(name)
                .with_context(|| format!("no program {name} in the object"))
        };
        let xdp: &Xdp = program(names::PROG_XDP)?.try_into()?;
        let tc: &SchedClassifier = program(names::PROG_TC)?.try_into()?;
        Ok((ConcurrentRunner { xdp, tc }, &mut self.maps))
    }

    /// Runs `frame` `repeat` times; returns the raw return code and the kernel's mean duration
    /// per run in nanoseconds.
    pub fn run_repeated(
        &mut self,
        hook: Hook,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, u128)> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let result = match hook {
            Hook::Xdp => {
                let program: &mut Xdp = loader::program(&mut self.ebpf, names::PROG_XDP)?;
                program.test_run(opts)
            }
            Hook::Tc => {
                let program: &mut SchedClassifier =
                    loader::program(&mut self.ebpf, names::PROG_TC)?;
                program.test_run(opts)
            }
            Hook::TcIngress => {
                let program: &mut SchedClassifier =
                    loader::program(&mut self.ebpf, names::PROG_TC_INGRESS)?;
                program.test_run(opts)
            }
            Hook::XdpL3 => {
                let program: &mut Xdp = loader::program(&mut self.ebpf, names::PROG_XDP_L3)?;
                program.test_run(opts)
            }
        }
        .with_context(|| {
            format!(
                "BPF_PROG_TEST_RUN of {hook:?} on a {}-byte frame",
                frame.len()
            )
        })?;
        Ok((result.return_value, result.duration.as_nanos()))
    }

    /// Loads an XDP program of the object that the loader leaves alone (the bench's cost-breakdown
    /// variants), so that [`Filter::run_xdp_named`] can run it on the same maps.
    pub fn load_extra_xdp(&mut self, name: &str) -> anyhow::Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the object"))?
            .try_into()?;
        program.load().with_context(|| format!("loading {name}"))?;
        Ok(())
    }

    /// Runs `frame` `repeat` times through the XDP program `name` (loaded); returns the raw
    /// return code and the kernel's mean duration per run in nanoseconds.
    pub fn run_xdp_named(
        &mut self,
        name: &str,
        frame: &[u8],
        repeat: u32,
    ) -> anyhow::Result<(u32, u128)> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .with_context(|| format!("no program {name} in the object"))?
            .try_into()?;
        let result = program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok((result.return_value, result.duration.as_nanos()))
    }

    /// Points an IPv4 prefix at `policy_id` directly, bypassing the writer: a damaged map. The
    /// prefix goes into the IPv4 trie, and IPv4 destinations are sent to the trie (the state a
    /// table too large for the range index leaves), until the next `apply`.
    pub fn point_prefix_at(
        &mut self,
        prefix: ipnet::Ipv4Net,
        policy_id: u32,
    ) -> anyhow::Result<()> {
        let key = Key::new(u32::from(prefix.prefix_len()), prefix.network().octets());
        self.raw_allow_v4.insert(&key, policy_id, 0)?;
        let mut state = self.raw_table_state.get(&0, 0)?;
        state.bits |= filter_common::ranges::state::V4_TRIE;
        self.raw_table_state.set(0, state, 0)?;
        Ok(())
    }

    /// Marks `address` as removed at `at_ns` without setting its `EXPIRED_FILTER` bit, bypassing
    /// the writer: a damaged filter.
    pub fn mark_behind_the_filter(
        &mut self,
        address: std::net::IpAddr,
        at_ns: u64,
    ) -> anyhow::Result<()> {
        self.raw_expired_addrs
            .insert(filter_user::maps::flows::address_key(address), at_ns, 0)?;
        Ok(())
    }

    /// The programs' log lines (aya-log), handed to `logger` at each `flush`.
    pub fn kernel_log<L: log::Log>(&mut self, logger: L) -> anyhow::Result<aya_log::EbpfLogger<L>> {
        Ok(aya_log::EbpfLogger::init_with_logger(
            &mut self.ebpf,
            logger,
        )?)
    }

    /// Second handles on the counter maps, as the daemon's metrics read them.
    pub fn counters(&self) -> anyhow::Result<Counters> {
        Counters::loaded(&self.ebpf)
    }

    /// Packets and bytes counted under each reason, summed over CPUs, interfaces and hooks.
    pub fn reason_counts(&self) -> anyhow::Result<Vec<PacketCount>> {
        let counters = Counters::loaded(&self.ebpf)?;
        Reason::ALL.iter().map(|r| counters.reason(*r)).collect()
    }

    /// Packets and bytes counted for a service, summed over CPUs.
    pub fn service_count(&self, service: u16) -> anyhow::Result<PacketCount> {
        Counters::loaded(&self.ebpf)?.service(u32::from(service))
    }

    /// An event counter, summed over CPUs.
    pub fn event_count(&self, counter: EventCounter) -> anyhow::Result<u64> {
        Counters::loaded(&self.ebpf)?.event(counter)
    }

    /// Every drop event waiting in the ring buffer.
    pub fn drain_events(&mut self) -> anyhow::Result<Vec<DropEvent>> {
        let mut ring = RingBuf::try_from(self.ebpf.map_mut(names::EVENTS).context("EVENTS")?)?;
        let mut events = Vec::new();
        while let Some(item) = ring.next() {
            ensure!(
                item.len() == size_of::<DropEvent>(),
                "event of {} bytes",
                item.len()
            );
            // Safety: the length matches and DropEvent is plain old data.
            events.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DropEvent>()) });
        }
        Ok(events)
    }

    /// Runs `frame` through `hook` and returns the outcome and the one reason whose packet
    /// counter moved. Fails if none or several moved.
    pub fn judge(&mut self, hook: Hook, frame: &[u8]) -> anyhow::Result<(Outcome, Reason)> {
        let before = self.reason_counts()?;
        let outcome = self.run(hook, frame)?;
        let after = self.reason_counts()?;
        let moved: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|r| after[*r as usize].packets != before[*r as usize].packets)
            .collect();
        match moved.as_slice() {
            [reason] => Ok((outcome, *reason)),
            _ => anyhow::bail!("expected exactly one reason counter to move, these did: {moved:?}"),
        }
    }
}

/// What a hook's return code means.
fn outcome(hook: Hook, raw: u32) -> anyhow::Result<Outcome> {
    match (hook, raw) {
        (Hook::Xdp | Hook::XdpL3, XDP_PASS) | (Hook::Tc | Hook::TcIngress, TC_ACT_UNSPEC) => {
            Ok(Outcome::Pass)
        }
        (Hook::Xdp | Hook::XdpL3, XDP_DROP) | (Hook::Tc | Hook::TcIngress, TC_ACT_SHOT) => {
            Ok(Outcome::Drop)
        }
        _ => anyhow::bail!("{hook:?} returned unexpected code {raw}"),
    }
}

/// Runs frames through a filter's programs from another thread ([`Filter::concurrent`]).
pub struct ConcurrentRunner<'a> {
    xdp: &'a Xdp,
    tc: &'a SchedClassifier,
}

impl ConcurrentRunner<'_> {
    /// Runs `frame` once through XDP (`Hook::Xdp`) or TC egress (any other hook).
    pub fn run(&self, hook: Hook, frame: &[u8]) -> anyhow::Result<Outcome> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let (hook, result) = match hook {
            Hook::Xdp => (Hook::Xdp, self.xdp.test_run(opts)),
            _ => (Hook::Tc, self.tc.test_run(opts)),
        };
        outcome(hook, result?.return_value)
    }
}

/// Pins the calling thread to its current CPU, for tests of per-CPU state (the event budget).
pub fn pin_to_current_cpu() -> anyhow::Result<()> {
    // Safety: sched_getcpu has no preconditions; the cpu_set_t is zeroed and filled by the libc
    // macros before use.
    unsafe {
        let cpu = usize::try_from(libc::sched_getcpu()).context("sched_getcpu failed")?;
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        ensure!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) == 0,
            "sched_setaffinity failed"
        );
    }
    Ok(())
}
