//! `egress-filter run`: the daemon. It compiles the rules, loads and attaches the programs with
//! pinned maps and links, keeps hostname-derived addresses fresh, streams drop events, and reloads
//! on SIGHUP. See DESIGN.md ("run behaviour users rely on") for the contract.

pub mod events;
pub mod hosts;
pub mod pins;
pub mod state;
pub mod stats;

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use aya::{
    maps::{MapData, RingBuf},
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use filter_common::{
    maps::{self as names, ALL_MAPS},
    Config, DropEvent, EventCounter, Mode,
};
use ipnet::IpNet;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use self::{
    events::{Enricher, EventFormat},
    hosts::{Change, HostTable, RefreshPolicy},
    pins::{HookKind, PinDir},
    state::State,
};
use crate::{
    compile,
    loader::{self, OBJECT},
    maps::PolicyMaps,
    resolve::Resolver,
    rules::{HostPattern, Rules},
    table::{AllowTable, Grant, PortSpec},
};

/// How XDP is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Driver (native) mode where the device supports it, generic otherwise.
    Auto,
    /// Driver mode only; fail if the device lacks it.
    Native,
    /// Generic (skb) mode: works on every device, slower.
    Generic,
}

/// Everything `run` is told on the command line.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub rules: Vec<PathBuf>,
    pub xdp: Vec<String>,
    pub tc: Vec<String>,
    pub xdp_mode: XdpModeArg,
    pub audit: bool,
    pub events: EventFormat,
    pub resolver: Option<SocketAddr>,
    pub refresh: RefreshPolicy,
    pub pin_path: PathBuf,
    pub allow_self: bool,
    pub events_per_sec: u32,
    pub event_burst: u32,
}

/// How often the host's own addresses are read again.
const SELF_ADDRESS_CHECK: Duration = Duration::from_secs(30);
/// How often suppressed events are reported (when there were any).
const SUPPRESSED_REPORT: Duration = Duration::from_secs(10);

/// Runs the filter until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    ensure!(
        !opts.xdp.is_empty() || !opts.tc.is_empty(),
        "nothing to attach: give --xdp IFACE and/or --tc IFACE"
    );
    // Bad rules or interfaces: fail before anything is attached or pinned.
    let rules = Rules::load(&opts.rules)?;
    let mut iface_names = std::collections::BTreeMap::new();
    for iface in opts.xdp.iter().chain(&opts.tc) {
        let index = nix::net::if_::if_nametoindex(iface.as_str())
            .with_context(|| format!("no interface named {iface}"))?;
        iface_names.insert(index, iface.clone());
    }

    let pins = PinDir::new(&opts.pin_path);
    let _lock = pins.lock()?;
    pins.prepare()?;
    let adopting = pins.has_pinned_maps();
    // A stop request while starting (resolution can take seconds) must not leave half a filter
    // behind: a fresh one is removed, an adopted one is left enforcing as it was.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let started = tokio::select! {
        started = Daemon::start(opts, rules, pins.clone(), iface_names) => started,
        _ = term.recv() => Err(anyhow::anyhow!("stopped while starting")),
        _ = int.recv() => Err(anyhow::anyhow!("stopped while starting")),
    };
    let mut daemon = match started {
        Ok(daemon) => daemon,
        Err(err) => {
            if !adopting {
                pins.remove_all()?;
            }
            return Err(err);
        }
    };
    let result = daemon.serve(&mut term, &mut int).await;
    tracing::info!("stopping: detaching and unpinning");
    daemon.pins.remove_all()?;
    result
}

/// A running filter: its rules, hostnames, maps and the allowances it adds.
struct Daemon {
    opts: RunOptions,
    rules: Rules,
    pins: PinDir,
    resolver: Resolver,
    hosts: HostTable,
    extra: ExtraAllowances,
    mode: Mode,
    maps: PolicyMaps,
    enricher: Arc<RwLock<Enricher>>,
    /// Keeps the programs (and with them the links' fds) alive until the daemon stops.
    ebpf: Ebpf,
}

impl Daemon {
    /// Resolves, loads (adopting pins), fills the maps, then attaches: the programs never run
    /// on maps that do not hold the policy yet.
    async fn start(
        opts: RunOptions,
        rules: Rules,
        pins: PinDir,
        iface_names: std::collections::BTreeMap<u32, String>,
    ) -> anyhow::Result<Self> {
        let adopting = pins.has_pinned_maps();
        if adopting {
            tracing::info!("adopting the filter pinned at {}", pins.root().display());
        }
        let resolver = Resolver::new(opts.resolver)?;
        let mut hosts = HostTable::new(opts.refresh);
        let now = Instant::now();
        tracing::info!("resolving {} hostnames", rules.exact_hosts().len());
        hosts.set_names(rules.exact_hosts(), now);
        if adopting {
            // Keep what the last daemon had resolved until fresh answers replace it.
            if let Ok(Some(state)) = State::load(&pins.state_file()) {
                for (name, addrs) in &state.hosts {
                    hosts.seed(name, addrs, now + opts.refresh.grace);
                }
            }
        }
        resolve_due(&resolver, &mut hosts).await;
        tracing::info!(
            "{} of {} hostnames have addresses",
            hosts.resolved().len(),
            rules.exact_hosts().len()
        );

        let mut ebpf = load_with_pins(&pins)?;
        let mut maps = PolicyMaps::take_from(&mut ebpf)?;
        let mode = if opts.audit {
            Mode::Audit
        } else {
            Mode::Enforce
        };
        maps.set_config(Config {
            events_per_sec: opts.events_per_sec,
            event_burst: opts.event_burst,
            ..Config::new(mode)
        })?;
        let extra = ExtraAllowances::read(&opts, rules.services.len())?;
        let enricher = Arc::new(RwLock::new(Enricher {
            iface_names,
            ..Enricher::default()
        }));
        let mut daemon = Self {
            opts,
            rules,
            pins,
            resolver,
            hosts,
            extra,
            mode,
            maps,
            enricher,
            ebpf,
        };
        daemon.apply_policy(true)?;
        attach_all(&mut daemon.ebpf, &daemon.pins, &daemon.opts)?;
        Ok(daemon)
    }

    /// Streams events and keeps the policy current until SIGINT or SIGTERM.
    async fn serve(
        &mut self,
        term: &mut tokio::signal::unix::Signal,
        int: &mut tokio::signal::unix::Signal,
    ) -> anyhow::Result<()> {
        let ring = RingBuf::try_from(
            self.ebpf
                .take_map(names::EVENTS)
                .context("map EVENTS missing")?,
        )?;
        let reader = tokio::spawn(stream_events(
            ring,
            Arc::clone(&self.enricher),
            self.opts.events,
        ));
        let mut hup = signal(SignalKind::hangup())?;
        let mut suppressed = SuppressedReporter::new(&self.ebpf);
        let mut report_tick = tokio::time::interval(SUPPRESSED_REPORT);
        let mut next_self_check = Instant::now() + SELF_ADDRESS_CHECK;
        tracing::info!(
            "enforcing{}",
            if self.opts.audit {
                " in audit mode (nothing is dropped)"
            } else {
                ""
            }
        );
        loop {
            let wake = self
                .hosts
                .next_event()
                .map_or(next_self_check, |t| t.min(next_self_check));
            let update = tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {
                    let mut changes = resolve_due(&self.resolver, &mut self.hosts).await;
                    changes.extend(self.hosts.expire(Instant::now()));
                    let mut full = false;
                    if Instant::now() >= next_self_check {
                        next_self_check = Instant::now() + SELF_ADDRESS_CHECK;
                        full = self.reread_extra()?;
                    }
                    if full { Update::Full } else { Update::Hosts(changes) }
                }
                _ = hup.recv() => if self.reload().await? { Update::Full } else { Update::Hosts(Vec::new()) },
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = report_tick.tick() => {
                    suppressed.report();
                    Update::Hosts(Vec::new())
                }
            };
            let result = match update {
                Update::Full => self.apply_policy(false),
                Update::Hosts(changes) if changes.is_empty() => Ok(()),
                Update::Hosts(changes) => self.apply_host_changes(&changes).or_else(|err| {
                    tracing::warn!("in-place update failed ({err:#}); rebuilding the table");
                    self.apply_policy(false)
                }),
            };
            if let Err(err) = result {
                tracing::error!("policy not updated, the running policy stays: {err:#}");
            }
        }
        reader.abort();
        Ok(())
    }

    /// SIGHUP: reloads the rules; invalid rules leave everything as it is.
    async fn reload(&mut self) -> anyhow::Result<bool> {
        match Rules::load(&self.opts.rules) {
            Ok(rules) => {
                tracing::info!("reloaded rules: {} services", rules.services.len());
                self.rules = rules;
                self.hosts
                    .set_names(self.rules.exact_hosts(), Instant::now());
                resolve_due(&self.resolver, &mut self.hosts).await;
                self.extra = ExtraAllowances::read(&self.opts, self.rules.services.len())?;
                Ok(true)
            }
            Err(err) => {
                tracing::error!("reload refused, the running policy stays: {err}");
                Ok(false)
            }
        }
    }

    /// Reads the host's addresses again; returns whether they changed.
    fn reread_extra(&mut self) -> anyhow::Result<bool> {
        let fresh = ExtraAllowances::read(&self.opts, self.rules.services.len())?;
        let changed = fresh != self.extra;
        self.extra = fresh;
        Ok(changed)
    }

    /// Compiles the current rules, addresses and allowances and writes what differs.
    /// Logs the result when something changed, or always with `log_always` (at start).
    fn apply_policy(&mut self, log_always: bool) -> anyhow::Result<()> {
        let table = build_table(&self.rules, &self.hosts, &self.extra)?;
        let written = self.maps.apply(&table)?;
        if log_always || written != crate::maps::ApplyStats::default() {
            tracing::info!(
                "policy: {} services, {} IPv4 and {} IPv6 prefixes ({} written, {} removed)",
                self.rules.services.len(),
                table.v4.len(),
                table.v6.len(),
                written.prefixes_written,
                written.prefixes_deleted
            );
        }
        if let Ok(mut e) = self.enricher.write() {
            e.table = table;
            e.service_names = service_names(&self.rules);
            e.hosts_by_address = self.hosts.names_by_address();
        }
        self.save_state();
        Ok(())
    }

    /// Resolved addresses that came or went: only their host routes are recompiled and written
    /// (`AllowTable::update_hosts`, `PolicyMaps::apply_changes`), not the whole table.
    fn apply_host_changes(&mut self, changes: &[Change]) -> anyhow::Result<()> {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for change in changes {
            let pattern = HostPattern::Exact(change.name.clone());
            for service in self
                .rules
                .services
                .iter()
                .filter(|s| s.hosts.contains(&pattern))
            {
                let grant = Grant {
                    prefix: IpNet::from(change.address),
                    service: service.id,
                    ports: service.ports.clone(),
                };
                if change.added {
                    add.push(grant);
                } else {
                    remove.push(grant);
                }
            }
        }
        let mut enricher = self
            .enricher
            .write()
            .map_err(|_| anyhow::anyhow!("enricher lock poisoned"))?;
        let touched = enricher.table.update_hosts(&add, &remove)?;
        let written = self.maps.apply_changes(&enricher.table, &touched)?;
        enricher.hosts_by_address = self.hosts.names_by_address();
        drop(enricher);
        if written != crate::maps::ApplyStats::default() {
            tracing::info!(
                "resolved addresses changed: {} prefixes written, {} removed",
                written.prefixes_written,
                written.prefixes_deleted
            );
        }
        self.save_state();
        Ok(())
    }

    fn save_state(&self) {
        let saved = State {
            services: service_names(&self.rules),
            hosts: self.hosts.resolved(),
            written_at: State::now_secs(),
            mode: if self.mode == Mode::Audit {
                "audit".into()
            } else {
                "enforce".into()
            },
        };
        if let Err(err) = saved.save(&self.pins.state_file()) {
            tracing::warn!("cannot save state (stats will lack service names): {err:#}");
        }
    }
}

/// Loads the object with every map pinned under the pin path (reused when already there).
fn load_with_pins(pins: &PinDir) -> anyhow::Result<Ebpf> {
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pins.map_path(m))).collect();
    for (map, path) in &paths {
        loader.map_pin_path(map, path.as_path());
    }
    let mut ebpf = loader
        .load(OBJECT)
        .context("cannot create or adopt the pinned maps")?;
    loader::load_programs(&mut ebpf)?;
    Ok(ebpf)
}

/// Attaches every requested hook, adopting pinned links (atomically swapping in the new program)
/// and pinning new ones; then removes pinned links nobody asked for.
fn attach_all(ebpf: &mut Ebpf, pins: &PinDir, opts: &RunOptions) -> anyhow::Result<()> {
    let mut wanted = BTreeSet::new();
    for iface in &opts.xdp {
        let path = pins.link_path(HookKind::Xdp, iface);
        wanted.insert(path.clone());
        let program: &mut Xdp = loader::program(ebpf, names::PROG_XDP)?;
        if let Ok(old) = PinnedLink::from_pin(&path) {
            program
                .attach_to_link(XdpLink::try_from(FdLink::from(old))?)
                .with_context(|| format!("cannot update XDP on {iface}"))?;
            tracing::info!("XDP on {iface}: adopted the pinned link");
            continue;
        }
        let id = match opts.xdp_mode {
            XdpModeArg::Native => program.attach(iface, XdpMode::Driver),
            XdpModeArg::Generic => program.attach(iface, XdpMode::Skb),
            XdpModeArg::Auto => program.attach(iface, XdpMode::Driver).or_else(|err| {
                tracing::info!(
                    "XDP driver mode unavailable on {iface} ({err}); using generic mode"
                );
                program.attach(iface, XdpMode::Skb)
            }),
        }
        .with_context(|| format!("cannot attach XDP to {iface}"))?;
        pin_link(program.take_link(id)?, &path, "XDP (kernel < 5.9?)")?;
        tracing::info!("XDP attached to {iface}");
    }
    for iface in &opts.tc {
        let path = pins.link_path(HookKind::Tc, iface);
        wanted.insert(path.clone());
        let program: &mut SchedClassifier = loader::program(ebpf, names::PROG_TC)?;
        if let Ok(old) = PinnedLink::from_pin(&path) {
            program
                .attach_to_link(SchedClassifierLink::try_from(FdLink::from(old))?)
                .with_context(|| format!("cannot update TC on {iface}"))?;
            tracing::info!("TC egress on {iface}: adopted the pinned link");
            continue;
        }
        // aya picks TCX on kernels ≥ 6.6 (a pinnable bpf_link) and clsact before that.
        let id = program
            .attach(iface, TcAttachType::Egress)
            .with_context(|| format!("cannot attach TC egress to {iface}"))?;
        pin_link(program.take_link(id)?, &path, "TC (kernel < 6.6?)")?;
        tracing::info!("TC egress attached to {iface}");
    }
    for (_, iface, path) in pins.pinned_links() {
        if !wanted.contains(&path) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot unpin {}", path.display()))?;
            tracing::info!("detached the leftover filter on {iface}");
        }
    }
    Ok(())
}

/// Pins a freshly attached link so it outlives the daemon. Only bpf_links can be pinned; a
/// netlink attachment (old kernels) is refused, since it could not be adopted or detached later.
fn pin_link<L>(link: L, path: &std::path::Path, what: &str) -> anyhow::Result<()>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let link =
        FdLink::try_from(link).with_context(|| format!("{what} attached without a bpf_link"))?;
    link.pin(path)
        .with_context(|| format!("cannot pin {}", path.display()))?;
    Ok(())
}

/// Allowances the daemon adds on top of the rules: the host's own addresses (so a gateway stays
/// reachable from the LAN it filters) and the resolvers it asks (so TC on an uplink does not cut
/// off its own lookups).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ExtraAllowances {
    own: Vec<IpAddr>,
    resolvers: Vec<IpAddr>,
    own_service: u16,
    resolver_service: u16,
}

impl ExtraAllowances {
    fn read(opts: &RunOptions, services: usize) -> anyhow::Result<Self> {
        let mut own = Vec::new();
        if opts.allow_self {
            for ifaddr in nix::ifaddrs::getifaddrs().context("cannot list the host's addresses")? {
                let Some(addr) = ifaddr.address else { continue };
                if let Some(v4) = addr.as_sockaddr_in() {
                    own.push(IpAddr::V4(v4.ip()));
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    own.push(IpAddr::V6(v6.ip()));
                }
            }
        }
        own.sort();
        own.dedup();
        // Only TC on an uplink sees the daemon's own lookups; on an XDP gateway this would
        // merely open the resolver to the LAN.
        let mut resolvers = match (opts.tc.is_empty(), opts.resolver) {
            (true, _) => Vec::new(),
            (false, Some(server)) => vec![server.ip()],
            (false, None) => system_resolvers(),
        };
        resolvers.sort();
        let own_service = u16::try_from(services).context("too many services")?;
        Ok(Self {
            own,
            resolvers,
            own_service,
            resolver_service: own_service + 1,
        })
    }

    fn grants(&self) -> impl Iterator<Item = Grant> + '_ {
        let all = vec![
            PortSpec::Tcp(0..=u16::MAX),
            PortSpec::Udp(0..=u16::MAX),
            PortSpec::Icmp,
        ];
        let own = self.own.iter().map(move |a| Grant {
            prefix: IpNet::from(*a),
            service: self.own_service,
            ports: all.clone(),
        });
        let dns = self.resolvers.iter().map(|a| Grant {
            prefix: IpNet::from(*a),
            service: self.resolver_service,
            ports: vec![PortSpec::Udp(53..=53), PortSpec::Tcp(53..=53)],
        });
        own.chain(dns)
    }
}

fn system_resolvers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

fn build_table(
    rules: &Rules,
    hosts: &HostTable,
    extra: &ExtraAllowances,
) -> anyhow::Result<AllowTable> {
    let mut grants = compile::grants(rules, &hosts.resolved());
    grants.extend(extra.grants());
    Ok(AllowTable::build(&grants)?)
}

/// What a wake-up asks of the maps.
enum Update {
    /// Recompile everything (rules or the host's own addresses changed).
    Full,
    /// Only these resolved addresses came or went.
    Hosts(Vec<Change>),
}

/// Resolves every name that is due. Returns the addresses that came.
async fn resolve_due(resolver: &Resolver, hosts: &mut HostTable) -> Vec<Change> {
    let due = hosts.due(Instant::now());
    if due.is_empty() {
        return Vec::new();
    }
    let names: Vec<&str> = due.iter().map(String::as_str).collect();
    let answers = resolver.resolve_all(&names).await;
    let now = Instant::now();
    let mut changed = Vec::new();
    for (name, answer) in &answers {
        changed.extend(hosts.record(name, answer, now));
    }
    let failed: Vec<(&String, &String)> = answers
        .iter()
        .filter_map(|(n, a)| Some((n, a.as_ref().err()?)))
        .collect();
    if let Some((_, error)) = failed.first() {
        let names: Vec<&str> = failed.iter().take(5).map(|(n, _)| n.as_str()).collect();
        tracing::warn!(
            "cannot resolve {} name(s) ({}{}): {error}; their last addresses stay allowed",
            failed.len(),
            names.join(", "),
            if failed.len() > names.len() {
                ", …"
            } else {
                ""
            }
        );
    }
    changed
}

fn service_names(rules: &Rules) -> Vec<String> {
    let mut names: Vec<String> = rules.services.iter().map(|s| s.name.clone()).collect();
    names.push("(this host)".into());
    names.push("(resolver)".into());
    names
}

/// Reads the ring buffer as it fills and prints one line per event.
async fn stream_events(
    ring: RingBuf<MapData>,
    enricher: Arc<RwLock<Enricher>>,
    format: EventFormat,
) -> anyhow::Result<()> {
    let boot = events::boot_time();
    // Safety: the ring buffer owns its map fd and keeps it open, unchanged, for as long as the
    // AsyncFd holds the ring.
    let mut fd = unsafe { AsyncFd::register(ring)? };
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<DropEvent>() {
                continue;
            }
            // Safety: the kernel wrote a whole DropEvent (checked length); it is plain data.
            let event: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            let record = match enricher.read() {
                Ok(e) => e.record(&event, boot),
                Err(_) => continue,
            };
            let line = match format {
                EventFormat::Text => record.to_text(),
                EventFormat::Json => serde_json::to_string(&record)?,
            };
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        guard.clear_ready();
    }
}

/// Reports events the kernel held back, so none is lost silently.
struct SuppressedReporter {
    map: Option<aya::maps::PerCpuArray<MapData, u64>>,
    last: (u64, u64),
}

impl SuppressedReporter {
    fn new(ebpf: &Ebpf) -> Self {
        let map = ebpf.map(names::EVENT_STATS).and_then(|m| match m {
            aya::maps::Map::PerCpuArray(data) => {
                let fd = std::os::fd::AsFd::as_fd(data.fd())
                    .try_clone_to_owned()
                    .ok()?;
                let data = MapData::from_fd(fd).ok()?;
                aya::maps::PerCpuArray::try_from(aya::maps::Map::from_map_data(data).ok()?).ok()
            }
            _ => None,
        });
        Self { map, last: (0, 0) }
    }

    fn report(&mut self) {
        let Some(map) = &self.map else { return };
        let read = |c: EventCounter| map.get(&(c as u32), 0).map_or(0, |v| v.iter().sum::<u64>());
        let now = (
            read(EventCounter::RateLimited),
            read(EventCounter::RingFull),
        );
        let (limited, full) = (
            now.0.saturating_sub(self.last.0),
            now.1.saturating_sub(self.last.1),
        );
        if limited + full > 0 {
            tracing::warn!("{limited} drop events suppressed by the rate limit and {full} lost to a full ring in the last {}s (stats has the totals)", SUPPRESSED_REPORT.as_secs());
        }
        self.last = now;
    }
}

/// `egress-filter detach`: removes a filter left pinned (a crashed or killed daemon's).
pub fn detach(pin_path: &std::path::Path) -> anyhow::Result<String> {
    let pins = PinDir::new(pin_path);
    let _lock = pins.lock()?;
    let links = pins.pinned_links();
    ensure!(
        !links.is_empty() || pins.has_pinned_maps(),
        "nothing is pinned at {}",
        pin_path.display()
    );
    pins.remove_all()?;
    Ok(format!(
        "detached {} attachment(s) and removed the maps pinned at {}",
        links.len(),
        pin_path.display()
    ))
}
