//! `egress-filter run`: the daemon. It compiles the rules, loads and attaches the programs with
//! pinned maps and links, keeps hostname-derived addresses fresh, streams drop events, and reloads
//! on SIGHUP. See DESIGN.md ("run behaviour users rely on") for the contract.

pub mod events;
pub mod hosts;
pub mod interfaces;
pub mod pins;
pub mod state;

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
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
    sync::{mpsc, watch},
    task::JoinSet,
};

use self::{
    events::{Enricher, EventFormat},
    hosts::{Change, HostTable, RefreshPolicy},
    interfaces::LinkLayer,
    pins::{HookKind, PinDir},
    state::{DnsStats, State},
};
use crate::{
    compile,
    dns::{
        forwarder::MAX_IN_FLIGHT, learned::LearnedKey, DnsCounters, ForwarderConfig, LearnPolicy,
        LearnRequest, LearnedTable, Listeners, NameMatcher,
    },
    loader::{self, OBJECT},
    maps::{InterfaceSource, PolicyMaps, SourceMaps},
    resolve::{Answer, Resolver},
    rules::{HostPattern, Rules, Service},
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
    /// What stays open to the host's own addresses (with `allow_self`).
    pub self_ports: Vec<PortSpec>,
    /// XDP drops sources that do not belong on their interface.
    pub check_sources: bool,
    pub events_per_sec: u32,
    pub event_burst: u32,
    /// The DNS forwarder, with `--dns-listen`.
    pub dns: Option<DnsOptions>,
}

/// `--dns-listen` and the options that go with it.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    pub listen: Vec<SocketAddr>,
    pub upstream: SocketAddr,
    pub block_unlisted: bool,
    pub learn: LearnPolicy,
}

/// How often the host's own addresses are read again.
const SELF_ADDRESS_CHECK: Duration = Duration::from_secs(30);
/// How often suppressed events are reported (when there were any).
const SUPPRESSED_REPORT: Duration = Duration::from_secs(10);
/// How often the state file is written when learned addresses or DNS counters changed: often
/// enough for `stats` and `learned` to be current, rarely enough to cost nothing under load.
const STATE_SAVE: Duration = Duration::from_secs(1);
/// The longest wait between rebuilds while writing the maps keeps failing.
const MAX_STALE_RETRY: Duration = Duration::from_mins(1);
/// How often the state file is written when only the DNS counters changed.
const COUNTERS_SAVE: Duration = Duration::from_secs(5);

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
        // A device the programs cannot parse is refused here, never attached blindly.
        let layer = LinkLayer::of(iface)?;
        ensure!(
            !(layer == LinkLayer::Ip
                && opts.xdp_mode == XdpModeArg::Native
                && opts.xdp.contains(iface)),
            "{iface} is a layer-3 device: XDP runs on it in generic mode only (drop --xdp-mode native)"
        );
    }

    let pins = PinDir::new(&opts.pin_path);
    let _lock = pins.lock()?;
    pins.prepare()?;
    let adopting = pins.has_pinned_maps();
    // A stop request while starting (resolution can take seconds) must not leave half a filter
    // behind: a fresh one is removed, an adopted one is left enforcing as it was.
    // A DNS port in use must fail the start before anything is attached.
    let listeners = match &opts.dns {
        Some(dns) => Some(Listeners::bind(&dns.listen).await?),
        None => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let started = tokio::select! {
        started = Daemon::start(opts, rules, pins.clone(), iface_names, listeners) => started,
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
    sources: SourceMaps,
    /// What `sources` holds: the source prefixes routed out of each XDP interface.
    written_sources: BTreeSet<InterfaceSource>,
    enricher: Arc<RwLock<Enricher>>,
    /// Which services each DNS name belongs to, for the forwarder and for learning.
    matcher: watch::Sender<Arc<NameMatcher>>,
    learned: LearnedTable,
    /// Bound at start, served once the policy is in place.
    listeners: Option<Listeners>,
    dns_counters: Arc<DnsCounters>,
    /// Bumped whenever learned entries may go before their time (see `dns::forwarder`).
    learned_epoch: Arc<AtomicU64>,
    /// Learned addresses changed since the state file was written.
    state_dirty: bool,
    /// The last write to the maps failed: they may hold less, or more, than the tables say.
    maps_stale: bool,
    /// When to try the full rebuild again, and the wait that doubles while it keeps failing.
    stale_retry_at: Instant,
    stale_retry: Duration,
    /// The last failure logged, so a repeating one is logged once.
    last_apply_error: Option<String>,
    last_saved_dns: Option<DnsStats>,
    last_saved: Instant,
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
        listeners: Option<Listeners>,
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
        let matcher = Arc::new(NameMatcher::new(&rules));
        let mut learned = LearnedTable::new(opts.dns.as_ref().map_or(
            LearnPolicy {
                min_ttl: Duration::ZERO,
                grace: Duration::ZERO,
                capacity: 0,
            },
            |dns| dns.learn,
        ));
        if adopting {
            // Keep what the last daemon had resolved and learned until fresh answers replace
            // it: the pinned maps still allow it, and clients still hold those answers.
            if let Ok(Some(state)) = State::load(&pins.state_file()) {
                for (name, addrs) in &state.hosts {
                    hosts.seed(name, addrs, now + opts.refresh.grace);
                }
                let elapsed = State::now_secs().saturating_sub(state.written_at);
                let learning = opts.dns.is_some();
                for mut view in state.learned.into_iter().filter(|_| learning) {
                    view.expires_in_secs = view.expires_in_secs.saturating_sub(elapsed);
                    if view.expires_in_secs > 0
                        && still_matches(&rules, &matcher, &view.service, &view.name)
                    {
                        learned.seed(now, &view);
                    }
                }
            }
        }
        let answers = resolve_now(&resolver, &mut hosts, now).await;
        record_answers(&mut hosts, &answers);
        tracing::info!(
            "{} of {} hostnames have addresses",
            hosts.resolved().len(),
            rules.exact_hosts().len()
        );

        let mut ebpf = load_with_pins(&pins)?;
        let mut maps = PolicyMaps::take_from(&mut ebpf)?;
        let mut sources = SourceMaps::take_from(&mut ebpf)?;
        let (mode, written_sources) = configure(&mut maps, &mut sources, &opts).await?;
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
            sources,
            written_sources,
            enricher,
            matcher: watch::Sender::new(matcher),
            learned,
            listeners,
            dns_counters: Arc::new(DnsCounters::default()),
            learned_epoch: Arc::default(),
            state_dirty: false,
            maps_stale: false,
            stale_retry_at: Instant::now(),
            stale_retry: Duration::ZERO,
            last_apply_error: None,
            last_saved_dns: None,
            last_saved: Instant::now(),
            ebpf,
        };
        daemon.apply_policy(true)?;
        attach_all(&mut daemon.ebpf, &daemon.pins, &daemon.opts)?;
        Ok(daemon)
    }

    /// Streams events, answers DNS and keeps the policy current until SIGINT or SIGTERM.
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
        let (learn_tx, mut learn_rx) = mpsc::channel::<LearnRequest>(MAX_IN_FLIGHT);
        // Dropping the set (when serve returns) stops the forwarder.
        let _forwarder = self.start_forwarder(learn_tx);
        // Lookups run beside the loop, so a slow resolver delays neither DNS answers nor signals.
        let (resolved_tx, mut resolved_rx) = mpsc::channel(4);
        let mut hup = signal(SignalKind::hangup())?;
        let mut suppressed = SuppressedReporter::new(&self.ebpf);
        let mut report_tick = tokio::time::interval(SUPPRESSED_REPORT);
        let mut state_tick = tokio::time::interval(STATE_SAVE);
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
            let wake = [self.hosts.next_event(), self.learned.next_expiry()]
                .into_iter()
                .flatten()
                .fold(next_self_check, Instant::min);
            let update = tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    self.resolve_in_background(&resolved_tx, now);
                    let hosts_gone = self.hosts.expire(now);
                    let learned_gone = self.learned.expire(now);
                    self.state_dirty |= !learned_gone.is_empty();
                    if now >= next_self_check {
                        next_self_check = now + SELF_ADDRESS_CHECK;
                        self.reread_sources().await;
                        if self.reread_extra()? {
                            Update::Full
                        } else {
                            self.grant_changes(&hosts_gone, &[], &learned_gone)
                        }
                    } else {
                        self.grant_changes(&hosts_gone, &[], &learned_gone)
                    }
                }
                Some(answers) = resolved_rx.recv() => {
                    let changes = record_answers(&mut self.hosts, &answers);
                    self.grant_changes(&changes, &[], &[])
                }
                Some(request) = learn_rx.recv() => {
                    let learning = self.learn(&request);
                    let written = self.apply(learning.update);
                    if !written {
                        // Not in the maps: not learned either, so the next answer tries again.
                        for key in &learning.added {
                            self.learned.forget(key);
                        }
                    }
                    // The answer may go to the client now: its addresses are in the maps.
                    let _ = request.done.send(written && learning.complete);
                    Update::None
                }
                _ = hup.recv() => if self.reload() { Update::Full } else { Update::None },
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = report_tick.tick() => {
                    suppressed.report();
                    Update::None
                }
                _ = state_tick.tick() => {
                    self.save_state_if_changed();
                    // A write that failed left the maps behind the tables: catch them up, less
                    // often while it keeps failing.
                    if self.maps_stale && Instant::now() >= self.stale_retry_at {
                        Update::Full
                    } else {
                        Update::None
                    }
                }
            };
            self.apply(update);
        }
        self.save_state();
        reader.abort();
        Ok(())
    }

    /// Starts answering DNS, if asked to.
    fn start_forwarder(&mut self, learn: mpsc::Sender<LearnRequest>) -> Option<JoinSet<()>> {
        let listeners = self.listeners.take()?;
        let dns = self.opts.dns.as_ref()?;
        tracing::info!(
            "answering DNS on {} (upstream {}{})",
            listeners
                .local_addresses()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            dns.upstream,
            if dns.block_unlisted {
                "; names no rule lists get NXDOMAIN"
            } else {
                ""
            }
        );
        Some(
            listeners.serve(
                ForwarderConfig {
                    min_ttl: dns.learn.min_ttl,
                    grace: dns.learn.grace,
                    ..ForwarderConfig::new(dns.upstream, dns.block_unlisted)
                },
                self.matcher.subscribe(),
                learn,
                Arc::clone(&self.dns_counters),
                Arc::clone(&self.learned_epoch),
                self.enricher
                    .read()
                    .map(|e| Arc::clone(&e.seen))
                    .unwrap_or_default(),
            ),
        )
    }

    /// Sends the names that are due to the resolver; their answers come back on `results`.
    fn resolve_in_background(&mut self, results: &mpsc::Sender<Answers>, now: Instant) {
        let due = self.hosts.take_due(now);
        if due.is_empty() {
            return;
        }
        let (resolver, results) = (self.resolver.clone(), results.clone());
        tokio::spawn(async move {
            let names: Vec<&str> = due.iter().map(String::as_str).collect();
            let _ = results.send(resolver.resolve_all(&names).await).await;
        });
    }

    /// Takes in a DNS answer the forwarder is about to pass on: every address on it is opened
    /// for every service a name on its chain belongs to. Returns what the maps need.
    fn learn(&mut self, request: &LearnRequest) -> Learning {
        let now = Instant::now();
        let matcher = Arc::clone(&self.matcher.borrow());
        // Each service once, with the first name of the chain that matched it.
        let mut services: Vec<(usize, &str)> = Vec::new();
        for name in &request.learnable.chain {
            for index in matcher.services(name) {
                if !services.iter().any(|(i, _)| *i == index) {
                    services.push((index, name));
                }
            }
        }
        let (mut added, mut removed, mut touched) = (Vec::new(), Vec::new(), Vec::new());
        for (address, ttl) in &request.learnable.addresses {
            for (index, name) in &services {
                let key = (*address, self.rules.services[*index].name.clone());
                touched.push(key.clone());
                let outcome = self.learned.learn(now, key, name, &request.question, *ttl);
                added.extend(outcome.added);
                if !outcome.evicted.is_empty() {
                    // Entries went before their time: what the forwarder knows open is void.
                    self.learned_epoch.fetch_add(1, Ordering::Release);
                    removed.extend(outcome.evicted);
                }
            }
        }
        self.state_dirty |= !added.is_empty() || !removed.is_empty();
        Learning {
            update: self.grant_changes(&[], &added, &removed),
            // An answer with more addresses than the table holds pushes out its own.
            complete: !touched.iter().any(|key| removed.contains(key)),
            added,
        }
    }

    /// The grants that resolved or learned addresses add and remove.
    fn grant_changes(
        &self,
        hosts: &[Change],
        learned_added: &[LearnedKey],
        learned_removed: &[LearnedKey],
    ) -> Update {
        let (mut add, mut remove) = (Vec::new(), Vec::new());
        for change in hosts {
            let pattern = HostPattern::Exact(change.name.clone());
            for service in self
                .rules
                .services
                .iter()
                .filter(|s| s.hosts.contains(&pattern))
            {
                let grant = host_grant(service, change.address);
                if change.added {
                    add.push(grant);
                } else {
                    remove.push(grant);
                }
            }
        }
        for (keys, grants) in [(learned_added, &mut add), (learned_removed, &mut remove)] {
            grants.extend(keys.iter().filter_map(|(address, service)| {
                Some(host_grant(self.service_named(service)?, *address))
            }));
        }
        if add.is_empty() && remove.is_empty() {
            Update::None
        } else {
            Update::Grants {
                add,
                remove,
                hosts_changed: !hosts.is_empty(),
            }
        }
    }

    fn service_named(&self, name: &str) -> Option<&Service> {
        self.rules.services.iter().find(|s| s.name == name)
    }

    /// Writes an update to the maps; on failure the running policy stays and is logged.
    /// Returns whether the update is in the maps.
    fn apply(&mut self, update: Update) -> bool {
        // After a failed write the in-memory table may be ahead of the maps: only a full
        // rebuild, diffed against what was really written, brings them together again.
        let update = match update {
            Update::Grants { .. } if self.maps_stale => Update::Full,
            other => other,
        };
        let (result, rebuilt) = match update {
            Update::None => (Ok(()), false),
            Update::Full => (self.apply_policy(false), true),
            Update::Grants {
                add,
                remove,
                hosts_changed,
            } => match self.apply_grants(&add, &remove, hosts_changed) {
                Ok(()) => (Ok(()), false),
                Err(err) => {
                    tracing::warn!("in-place update failed ({err:#}); rebuilding the table");
                    (self.apply_policy(false), true)
                }
            },
        };
        match &result {
            Err(err) => {
                // The same failure every second would drown the log: say each one once.
                let message = format!("{err:#}");
                if self.last_apply_error.as_deref() != Some(message.as_str()) {
                    tracing::error!("policy not updated, the running policy stays: {message}");
                    self.last_apply_error = Some(message);
                }
                self.maps_stale = true;
                self.stale_retry = (self.stale_retry * 2).clamp(STATE_SAVE, MAX_STALE_RETRY);
                self.stale_retry_at = Instant::now() + self.stale_retry;
            }
            Ok(()) if rebuilt => {
                if self.maps_stale {
                    tracing::info!("policy written again after an earlier failure");
                }
                self.maps_stale = false;
                self.last_apply_error = None;
                self.stale_retry = Duration::ZERO;
            }
            Ok(()) => {}
        }
        result.is_ok()
    }

    /// SIGHUP: reloads the rules; invalid rules leave everything as it is. Returns whether the
    /// rules changed. Learned addresses stay for names that still match their service.
    fn reload(&mut self) -> bool {
        let rules = match Rules::load(&self.opts.rules) {
            Ok(rules) => rules,
            Err(err) => {
                tracing::error!("reload refused, the running policy stays: {err}");
                return false;
            }
        };
        let extra = match ExtraAllowances::read(&self.opts, rules.services.len()) {
            Ok(extra) => extra,
            Err(err) => {
                tracing::error!("reload refused, the running policy stays: {err:#}");
                return false;
            }
        };
        tracing::info!("reloaded rules: {} services", rules.services.len());
        let matcher = Arc::new(NameMatcher::new(&rules));
        let forgotten = self
            .learned
            .retain(|service, name| still_matches(&rules, &matcher, service, name));
        self.learned_epoch.fetch_add(1, Ordering::Release);
        if forgotten > 0 {
            tracing::info!("forgot {forgotten} learned addresses whose names no rule lists now");
        }
        // New names are due at once and resolve in the background.
        self.hosts.set_names(rules.exact_hosts(), Instant::now());
        self.rules = rules;
        self.extra = extra;
        self.matcher.send_replace(matcher);
        self.state_dirty = true;
        true
    }

    /// Reads the routes out of the XDP interfaces again and writes what changed. On failure the
    /// tries keep what they hold: a client is never refused because a read went wrong.
    async fn reread_sources(&mut self) {
        if !self.opts.check_sources {
            return;
        }
        let result = xdp_sources(&self.opts.xdp).await.and_then(|wanted| {
            if wanted != self.written_sources {
                self.sources.set(&wanted)?;
                tracing::info!(
                    "source prefixes of the XDP interfaces changed: {} now",
                    wanted.len()
                );
                self.written_sources = wanted;
            }
            Ok(())
        });
        if let Err(err) = result {
            tracing::warn!("cannot update the source prefixes, the old ones stay: {err:#}");
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
        let table = build_table(&self.rules, &self.hosts, &self.learned, &self.extra)?;
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
            e.learned_names = self
                .learned
                .keys()
                .filter_map(|(address, _)| Some((address, self.learned.names_for(address)?)))
                .collect();
        }
        self.save_state();
        Ok(())
    }

    /// Addresses that came or went: only their host routes are recompiled and written
    /// (`AllowTable::update_hosts`, `PolicyMaps::apply_changes`), not the whole table.
    fn apply_grants(
        &mut self,
        add: &[Grant],
        remove: &[Grant],
        hosts_changed: bool,
    ) -> anyhow::Result<()> {
        let mut enricher = self
            .enricher
            .write()
            .map_err(|_| anyhow::anyhow!("enricher lock poisoned"))?;
        let touched = enricher.table.update_hosts(add, remove)?;
        let written = self.maps.apply_changes(&enricher.table, &touched)?;
        for grant in add.iter().chain(remove) {
            let address = grant.prefix.addr();
            match self.learned.names_for(address) {
                Some(names) => enricher.learned_names.insert(address, names),
                None => enricher.learned_names.remove(&address),
            };
        }
        if hosts_changed {
            enricher.hosts_by_address = self.hosts.names_by_address();
        }
        drop(enricher);
        if hosts_changed && written != crate::maps::ApplyStats::default() {
            tracing::info!(
                "resolved addresses changed: {} prefixes written, {} removed",
                written.prefixes_written,
                written.prefixes_deleted
            );
            self.save_state();
        }
        Ok(())
    }

    /// Writes the state file if learned addresses or DNS counters changed since last time.
    /// Learned entries that came or went are written within a second (a restart takes them
    /// back from here); counters alone, every few seconds.
    fn save_state_if_changed(&mut self) {
        let counters_due =
            self.dns_stats() != self.last_saved_dns && self.last_saved.elapsed() >= COUNTERS_SAVE;
        if self.state_dirty || counters_due {
            self.save_state();
        }
    }

    fn dns_stats(&self) -> Option<DnsStats> {
        self.opts.dns.as_ref().map(|_| DnsStats {
            forwarder: self.dns_counters.values(),
            learning: self.learned.counters(),
            learned_now: self.learned.len(),
        })
    }

    fn save_state(&mut self) {
        let dns = self.dns_stats();
        let saved = State {
            services: service_names(&self.rules),
            hosts: self.hosts.resolved(),
            written_at: State::now_secs(),
            mode: if self.mode == Mode::Audit {
                "audit".into()
            } else {
                "enforce".into()
            },
            learned: self.learned.views(Instant::now()),
            dns,
        };
        match saved.save(&self.pins.state_file()) {
            Ok(()) => {
                self.state_dirty = false;
                self.last_saved_dns = dns;
                self.last_saved = Instant::now();
            }
            Err(err) => {
                tracing::warn!("cannot save state (stats will lack service names): {err:#}");
            }
        }
    }
}

/// Fills the source tries, then writes the config (mode, event budget, source check). The tries
/// are written before the config asks XDP to check them, so no client is refused for a prefix
/// not yet written. Returns the mode and the sources written.
async fn configure(
    maps: &mut PolicyMaps,
    sources: &mut SourceMaps,
    opts: &RunOptions,
) -> anyhow::Result<(Mode, BTreeSet<InterfaceSource>)> {
    let mode = if opts.audit {
        Mode::Audit
    } else {
        Mode::Enforce
    };
    let written_sources = if opts.check_sources {
        let wanted = xdp_sources(&opts.xdp).await?;
        sources.set(&wanted)?;
        wanted
    } else {
        BTreeSet::new()
    };
    maps.set_config(Config {
        events_per_sec: opts.events_per_sec,
        event_burst: opts.event_burst,
        flags: if opts.check_sources {
            Config::CHECK_SOURCES
        } else {
            0
        },
        ..Config::new(mode)
    })?;
    Ok((mode, written_sources))
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
        let layer = LinkLayer::of(iface)?;
        let program: &mut Xdp = loader::program(
            ebpf,
            match layer {
                LinkLayer::Ethernet => names::PROG_XDP,
                LinkLayer::Ip => names::PROG_XDP_L3,
            },
        )?;
        if let Ok(old) = PinnedLink::from_pin(&path) {
            program
                .attach_to_link(XdpLink::try_from(FdLink::from(old))?)
                .with_context(|| format!("cannot update XDP on {iface}"))?;
            tracing::info!("XDP on {iface}: adopted the pinned link");
            continue;
        }
        let id = match (opts.xdp_mode, layer) {
            // A TUN device accepts a driver-mode program but runs it only on TAP frames: on a
            // layer-3 device only generic mode sees every packet.
            (XdpModeArg::Generic, _) | (_, LinkLayer::Ip) => program.attach(iface, XdpMode::Skb),
            (XdpModeArg::Native, LinkLayer::Ethernet) => program.attach(iface, XdpMode::Driver),
            (XdpModeArg::Auto, LinkLayer::Ethernet) => {
                program.attach(iface, XdpMode::Driver).or_else(|err| {
                    tracing::info!(
                        "XDP driver mode unavailable on {iface} ({err}); using generic mode"
                    );
                    program.attach(iface, XdpMode::Skb)
                })
            }
        }
        .with_context(|| format!("cannot attach XDP to {iface}"))?;
        pin_link(program.take_link(id)?, &path, "XDP (kernel < 5.9?)")?;
        tracing::info!("XDP attached to {iface}{}", layer_note(layer));
    }
    for iface in &opts.tc {
        let path = pins.link_path(HookKind::Tc, iface);
        wanted.insert(path.clone());
        let layer = LinkLayer::of(iface)?;
        let program: &mut SchedClassifier = loader::program(
            ebpf,
            match layer {
                LinkLayer::Ethernet => names::PROG_TC,
                LinkLayer::Ip => names::PROG_TC_L3,
            },
        )?;
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
        tracing::info!("TC egress attached to {iface}{}", layer_note(layer));
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

fn layer_note(layer: LinkLayer) -> &'static str {
    match layer {
        LinkLayer::Ethernet => "",
        LinkLayer::Ip => " (a layer-3 device: parsed from the IP header)",
    }
}

/// The source prefixes that belong on each XDP interface (see [`interfaces::sources_of`]).
async fn xdp_sources(xdp: &[String]) -> anyhow::Result<BTreeSet<InterfaceSource>> {
    let indices = xdp
        .iter()
        .map(|iface| {
            nix::net::if_::if_nametoindex(iface.as_str())
                .with_context(|| format!("no interface named {iface}"))
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    let (links, routes) = interfaces::read_links_and_routes().await?;
    Ok(interfaces::sources_of(&indices, &links, &routes))
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

/// Allowances the daemon adds on top of the rules: the host's own addresses on the failsafe ports
/// (so a gateway stays reachable from the LAN it filters, but a service on it cannot relay
/// further) and the resolvers it asks (so TC on an uplink does not cut off its own lookups).
#[derive(Clone, Debug, PartialEq, Eq)]
struct ExtraAllowances {
    own: Vec<IpAddr>,
    /// What stays open to `own`: the failsafe ports and the forwarder's.
    own_ports: Vec<PortSpec>,
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
        let mut own_ports = opts.self_ports.clone();
        for listen in opts.dns.iter().flat_map(|dns| &dns.listen) {
            let port = listen.port();
            own_ports.extend([PortSpec::Udp(port..=port), PortSpec::Tcp(port..=port)]);
        }
        // Only TC on an uplink sees the daemon's own lookups; on an XDP gateway this would
        // merely open the resolver to the LAN.
        let mut resolvers = match (opts.tc.is_empty(), opts.resolver) {
            (true, _) => Vec::new(),
            (false, Some(server)) => vec![server.ip()],
            (false, None) => system_resolvers(),
        };
        if let (false, Some(dns)) = (opts.tc.is_empty(), &opts.dns) {
            resolvers.push(dns.upstream.ip());
        }
        resolvers.sort();
        resolvers.dedup();
        let own_service = u16::try_from(services).context("too many services")?;
        Ok(Self {
            own,
            own_ports,
            resolvers,
            own_service,
            resolver_service: own_service + 1,
        })
    }

    fn grants(&self) -> impl Iterator<Item = Grant> + '_ {
        let own = self.own.iter().map(move |a| Grant {
            prefix: IpNet::from(*a),
            service: self.own_service,
            ports: self.own_ports.clone(),
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
    learned: &LearnedTable,
    extra: &ExtraAllowances,
) -> anyhow::Result<AllowTable> {
    let mut grants = compile::grants(rules, &hosts.resolved());
    grants.extend(learned.keys().filter_map(|(address, service)| {
        let service = rules.services.iter().find(|s| s.name == service)?;
        Some(host_grant(service, address))
    }));
    grants.extend(extra.grants());
    Ok(AllowTable::build(&grants)?)
}

/// A host route to `address` with `service`'s ports.
fn host_grant(service: &Service, address: IpAddr) -> Grant {
    Grant {
        prefix: IpNet::from(address),
        service: service.id,
        ports: service.ports.clone(),
    }
}

/// Whether a learned entry may stay under `rules`: its service still exists and its name still
/// matches that service.
fn still_matches(rules: &Rules, matcher: &NameMatcher, service: &str, name: &str) -> bool {
    matcher
        .services(name)
        .iter()
        .any(|i| rules.services[*i].name == service)
}

/// What taking in one DNS answer did.
struct Learning {
    update: Update,
    /// (address, service) entries new to the table.
    added: Vec<LearnedKey>,
    /// Whether every entry the answer asks for is in the table.
    complete: bool,
}

/// What a wake-up asks of the maps.
enum Update {
    None,
    /// Recompile everything (rules or the host's own addresses changed).
    Full,
    /// Only these host routes came or went.
    Grants {
        add: Vec<Grant>,
        remove: Vec<Grant>,
        /// Whether polled names changed (their addresses name events).
        hosts_changed: bool,
    },
}

/// A batch of lookups' outcomes, by name.
type Answers = std::collections::BTreeMap<String, Result<Answer, String>>;

/// Resolves every name that is due, waiting for the answers (at start).
async fn resolve_now(resolver: &Resolver, hosts: &mut HostTable, now: Instant) -> Answers {
    let due = hosts.take_due(now);
    let names: Vec<&str> = due.iter().map(String::as_str).collect();
    resolver.resolve_all(&names).await
}

/// Takes in a batch of lookups. Returns the addresses that came.
fn record_answers(hosts: &mut HostTable, answers: &Answers) -> Vec<Change> {
    let now = Instant::now();
    let mut changed = Vec::new();
    for (name, answer) in answers {
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
