//! `egress-filter run`: the daemon. It compiles the rules, loads and attaches the programs with
//! pinned maps and links, keeps hostname-derived addresses fresh, learns from the DNS answers it
//! forwards, streams drop events, and reloads on SIGHUP. ARCHITECTURE.md draws the parts and
//! the data flow; this module is the loop that wires them:
//!
//! - [`attach`]: loading with pinned maps (adopting a previous daemon's), attaching, pinning;
//! - [`settings`]: mode, event budget and the XDP interfaces' source prefixes in the kernel;
//! - [`policy`]: keeping the maps equal to the allow table through failures;
//! - [`grants`]: what the rules, addresses and allowances put in the table;
//! - [`allowances`]: the host's own addresses on the failsafe ports, the resolvers on 53;
//! - [`hosts`]: hostname refresh with TTLs and grace; [`learning`]: what DNS answers open;
//! - [`event_stream`] and [`events`]: drop events to stdout; [`kernel_log`]: the programs'
//!   rare log lines into the daemon's logs;
//! - [`notify`]: systemd's readiness and watchdog; [`observe`]: metrics and health
//!   (`crate::metrics` serves them);
//! - `crate::state`: the state file `stats`, `learned` and a restart read; `crate::pins`: the
//!   pin path;
//! - [`interfaces`]: link types and the source prefixes routed out of an interface.

pub mod allowances;
pub mod attach;
pub mod event_stream;
pub mod events;
pub mod grants;
pub mod hosts;
pub mod interfaces;
pub mod kernel_log;
pub mod learning;
pub mod notify;
pub mod observe;
pub mod options;
pub mod policy;
pub mod rules_watch;
pub mod settings;

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use aya::{maps::RingBuf, Ebpf};
use filter_common::{maps as names, Mode};
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
    task::JoinSet,
};

pub use self::options::{DnsOptions, RunOptions, XdpModeArg};
use self::{
    allowances::Allowances,
    event_stream::{stream_events, SuppressedReporter, SUPPRESSED_REPORT},
    events::Enricher,
    hosts::{record_answers, resolve_in_background, resolve_now, HostTable},
    learning::Learner,
    notify::Notifier,
    observe::{Observer, Snapshot},
    policy::{PolicySync, Update, Written},
    settings::Settings,
};
use crate::{
    counters::Counters,
    dns::{
        forwarder::MAX_IN_FLIGHT, DnsCounters, LearnPolicy, LearnRequest, Listeners, NameMatcher,
    },
    maps::{ApplyStats, PolicyMaps, SourceMaps},
    metrics::{self, CountedInterface, Metrics},
    pins::PinDir,
    resolve::Resolver,
    rules::Rules,
    state::{DnsStats, State, StateSaver},
};

/// How often the host's own addresses and the XDP interfaces' routes are read again.
const SELF_ADDRESS_CHECK: Duration = Duration::from_secs(30);
/// How often the state file is written when learned addresses or DNS counters changed: often
/// enough for `stats` and `learned` to be current, rarely enough to cost nothing under load.
const STATE_SAVE: Duration = Duration::from_secs(1);

/// Runs the filter until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    ensure!(
        !opts.xdp.is_empty() || !opts.tc.is_empty(),
        "nothing to attach: give --xdp IFACE and/or --tc IFACE"
    );
    // Bad rules or interfaces: fail before anything is attached or pinned.
    let rules = Rules::load(&opts.rules)?;
    let interfaces = attach::check_interfaces(&opts)?;

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
    let metrics_listener = match opts.metrics_listen {
        Some(address) => Some(metrics::server::bind(address).await?),
        None => None,
    };
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let started = tokio::select! {
        started = Daemon::start(opts, rules, pins.clone(), interfaces, listeners, metrics_listener)
            => started,
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
    daemon.notifier.stopping();
    tracing::info!("stopping: detaching and unpinning");
    daemon.pins.remove_all()?;
    result
}

/// A running filter: its rules and what it knows, and the parts that keep the kernel in step.
struct Daemon {
    opts: RunOptions,
    rules: Rules,
    pins: PinDir,
    resolver: Resolver,
    hosts: HostTable,
    allowances: Allowances,
    settings: Settings,
    policy: PolicySync<PolicyMaps>,
    /// What drop events are enriched with; holds the allow table the maps mirror.
    enricher: Arc<RwLock<Enricher>>,
    /// Which services each DNS name belongs to, for the forwarder and for learning.
    matcher: watch::Sender<Arc<NameMatcher>>,
    learner: Learner,
    /// Bound at start, served once the policy is in place.
    listeners: Option<Listeners>,
    dns_counters: Arc<DnsCounters>,
    saver: StateSaver,
    notifier: Notifier,
    observer: Observer,
    /// The interfaces attached to, as the kernel's counters number them.
    counted: Vec<CountedInterface>,
    /// Bound at start, served once the filter is attached.
    metrics_listener: Option<tokio::net::TcpListener>,
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
        interfaces: attach::Interfaces,
        listeners: Option<Listeners>,
        metrics_listener: Option<tokio::net::TcpListener>,
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
        let mut learner = Learner::new(opts.dns.as_ref().map_or(
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
            if let Some(state) = State::take_back(&pins.state_file()) {
                for (name, addrs) in &state.hosts {
                    hosts.seed(name, addrs, now + opts.refresh.grace);
                }
                let elapsed = State::now_secs().saturating_sub(state.written_at);
                let views = state.learned.into_iter().filter(|_| opts.dns.is_some());
                let views = views.map(|mut view| {
                    view.expires_in_secs = view.expires_in_secs.saturating_sub(elapsed);
                    view
                });
                learner.seed(&rules, &matcher, views, now);
            }
        }
        let answers = resolve_now(&resolver, &mut hosts, now).await;
        record_answers(&mut hosts, &answers);
        tracing::info!(
            "{} of {} hostnames have addresses",
            hosts.resolved().len(),
            rules.exact_hosts().len()
        );

        let mut ebpf = attach::load_with_pins(&pins)?;
        let counted = metrics::number_interfaces(&opts.xdp, &opts.tc);
        let mut kernel_counters = Counters::loaded(&ebpf)?;
        kernel_counters.assign_slots(&ebpf, &counter_slots(&counted, &interfaces.names))?;
        let dns_counters = Arc::new(DnsCounters::default());
        let metrics = match metrics_listener {
            Some(_) => Some(Arc::new(Metrics::new(
                kernel_counters,
                opts.dns.as_ref().map(|_| Arc::clone(&dns_counters)),
            )?)),
            None => None,
        };
        let observer = Observer::new(metrics);
        observer.lookups(&answers);
        let mut maps = PolicyMaps::take_from(&mut ebpf)?;
        let sources = SourceMaps::take_from(&mut ebpf)?;
        let settings = Settings::write(&mut maps, sources, &opts).await?;
        let allowances = Allowances::read(&opts, rules.services.len())?;
        let enricher = Arc::new(RwLock::new(Enricher {
            iface_names: interfaces.names,
            ..Enricher::default()
        }));
        let mut daemon = Self {
            opts,
            rules,
            pins,
            resolver,
            hosts,
            allowances,
            settings,
            policy: PolicySync::new(maps),
            enricher,
            matcher: watch::Sender::new(matcher),
            learner,
            listeners,
            dns_counters,
            saver: StateSaver::new(Instant::now()),
            notifier: Notifier::from_env(),
            observer,
            counted,
            metrics_listener,
            ebpf,
        };
        daemon.apply(Update::Full, true)?;
        daemon.observer.policy_in_place(false);
        attach::attach_all(
            &mut daemon.ebpf,
            &daemon.pins,
            &daemon.opts,
            &interfaces.layers,
        )?;
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
        let _kernel_log = kernel_log::forward(&mut self.ebpf).map(AbortOnDrop);
        let (learn_tx, mut learn_rx) = mpsc::channel::<LearnRequest>(MAX_IN_FLIGHT);
        // Dropping the set (when serve returns) stops the forwarder.
        let _forwarder = self.start_forwarder(learn_tx);
        // Lookups run beside the loop, so a slow resolver delays neither DNS answers nor signals.
        let (resolved_tx, mut resolved_rx) = mpsc::channel(4);
        // SIGHUP, and with --watch-rules a change of the rules on disk.
        let mut hup = rules_watch::ReloadRequests::new(&self.opts.rules, self.opts.watch_rules)?;
        let mut suppressed = SuppressedReporter::new(&self.ebpf);
        let mut report_tick = tokio::time::interval(SUPPRESSED_REPORT);
        let mut state_tick = tokio::time::interval(STATE_SAVE);
        let mut next_self_check = Instant::now() + SELF_ADDRESS_CHECK;
        // Dropping the handle does not stop a task: the guard aborts the server when serve ends.
        let _metrics_server = self.start_metrics_server().map(AbortOnDrop);
        let mut watchdog = self.notifier.watchdog_interval().map(tokio::time::interval);
        let enforcing = format!(
            "enforcing{}",
            if self.opts.audit {
                " in audit mode (nothing is dropped)"
            } else {
                ""
            }
        );
        tracing::info!("{enforcing}");
        self.publish();
        self.notifier.ready(&enforcing);
        loop {
            let wake = [self.hosts.next_event(), self.learner.table().next_expiry()]
                .into_iter()
                .flatten()
                .fold(next_self_check, Instant::min);
            let update = tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {
                    let now = Instant::now();
                    resolve_in_background(&mut self.hosts, &self.resolver, &resolved_tx, now);
                    let hosts_gone = self.hosts.expire(now);
                    let learned_gone = self.learner.expire(now);
                    self.saver.dirty |= !learned_gone.is_empty();
                    let mut update = grants::changes(&self.rules, &hosts_gone, &[], &learned_gone);
                    if now >= next_self_check {
                        next_self_check = now + SELF_ADDRESS_CHECK;
                        self.settings.reread_sources(&self.opts).await;
                        if self.reread_allowances() {
                            update = Update::Full;
                        }
                    }
                    update
                }
                Some(answers) = resolved_rx.recv() => {
                    self.observer.lookups(&answers);
                    let changes = record_answers(&mut self.hosts, &answers);
                    grants::changes(&self.rules, &changes, &[], &[])
                }
                Some(request) = learn_rx.recv() => {
                    self.learn(request);
                    Update::None
                }
                _ = hup.recv() => {
                    self.reload_and_apply();
                    Update::None
                }
                Some(_) = tick(watchdog.as_mut()) => {
                    self.notifier.alive();
                    Update::None
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = report_tick.tick() => {
                    suppressed.report();
                    Update::None
                }
                _ = state_tick.tick() => {
                    self.save_state_if_changed();
                    self.publish();
                    // A write that failed left the maps behind the tables: catch them up, less
                    // often while it keeps failing.
                    if self.policy.retry_due(Instant::now()) {
                        Update::Full
                    } else {
                        Update::None
                    }
                }
            };
            // A failure is logged and retried by `PolicySync`; the running policy stays.
            if self.apply(update, false).is_err() {
                self.observer.write_failed();
            }
        }
        self.save_state();
        reader.abort();
        Ok(())
    }

    /// Starts serving the metrics, if asked to.
    fn start_metrics_server(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        let listener = self.metrics_listener.take()?;
        let metrics = Arc::clone(self.observer.metrics()?);
        if let Ok(address) = listener.local_addr() {
            tracing::info!("serving /metrics and /healthz on http://{address}");
        }
        Some(tokio::spawn(metrics::server::serve(listener, metrics)))
    }

    /// Publishes what the loop knows for the metrics and the health.
    fn publish(&self) {
        if self.observer.metrics().is_none() {
            return;
        }
        let (v4, v6) = self
            .enricher
            .read()
            .map_or((0, 0), |e| (e.table.v4.len(), e.table.v6.len()));
        self.observer.publish(Snapshot {
            attached: true,
            policy_behind: self.policy.behind().map(str::to_owned),
            audit: self.settings.mode == Mode::Audit,
            services: service_names(&self.rules),
            interfaces: self.counted.clone(),
            prefixes: (v4, v6),
            hostnames_resolved: self.hosts.resolved_count(),
            hostnames_failing: self.hosts.failing().len(),
            learning: self.opts.dns.as_ref().map(|_| {
                let table = self.learner.table();
                (table.counters(), table.len())
            }),
        });
    }

    /// Starts answering DNS, if asked to.
    fn start_forwarder(&mut self, learn: mpsc::Sender<LearnRequest>) -> Option<JoinSet<()>> {
        let listeners = self.listeners.take()?;
        let dns = self.opts.dns.as_ref()?;
        tracing::info!("answering DNS on {}", dns.describe(&listeners));
        let seen = self.enricher.read().map(|e| Arc::clone(&e.seen));
        Some(listeners.serve(
            dns.forwarder_config(),
            self.matcher.subscribe(),
            learn,
            Arc::clone(&self.dns_counters),
            self.learner.epoch(),
            seen.unwrap_or_default(),
        ))
    }

    /// Takes in a DNS answer the forwarder is about to pass on, writes what it opens, then lets
    /// the answer go: confirmed only if every address it asks for is in the maps.
    fn learn(&mut self, request: LearnRequest) {
        let matcher = Arc::clone(&self.matcher.borrow());
        let learned = self.learner.learn(
            &self.rules,
            &matcher,
            &request.question,
            &request.learnable,
            Instant::now(),
        );
        self.saver.dirty |= !learned.added.is_empty() || !learned.evicted.is_empty();
        let update = grants::changes(&self.rules, &[], &learned.added, &learned.evicted);
        let written = self.apply(update, false).is_ok();
        if !written {
            // Not in the maps: not learned either, so the next answer tries again.
            self.learner.forget(&learned.added);
        }
        // The answer may go to the client now: its addresses are in the maps.
        let _ = request.done.send(written && learned.complete);
    }

    /// Writes an update to the maps (see [`PolicySync::apply`]) and brings what drop events are
    /// enriched with along. Logs the policy's size when a rebuild changed something, or always
    /// with `log_always` (at start).
    fn apply(&mut self, update: Update, log_always: bool) -> anyhow::Result<()> {
        let touched: Vec<std::net::IpAddr> = match &update {
            Update::Grants { add, remove, .. } => {
                add.iter().chain(remove).map(|g| g.prefix.addr()).collect()
            }
            _ => Vec::new(),
        };
        let hosts_changed = matches!(
            update,
            Update::Grants {
                hosts_changed: true,
                ..
            }
        );
        let mut enricher = self
            .enricher
            .write()
            .map_err(|_| anyhow::anyhow!("enricher lock poisoned"))?;
        let (rules, hosts, learner, allowances) =
            (&self.rules, &self.hosts, &self.learner, &self.allowances);
        let written = self.policy.apply(
            update,
            &mut enricher.table,
            || grants::build_table(rules, hosts, learner.table(), allowances),
            Instant::now(),
        )?;
        match written {
            Written::Nothing => {}
            Written::Rebuilt(stats) => {
                enricher.refresh_all(service_names(&self.rules), &self.hosts, &self.learner);
                if log_always || stats != ApplyStats::default() {
                    tracing::info!(
                        services = self.rules.services.len(),
                        v4 = enricher.table.v4.len(),
                        v6 = enricher.table.v6.len(),
                        written = stats.prefixes_written,
                        removed = stats.prefixes_deleted,
                        "policy: {} services, {} IPv4 and {} IPv6 prefixes ({} written, {} removed)",
                        self.rules.services.len(),
                        enricher.table.v4.len(),
                        enricher.table.v6.len(),
                        stats.prefixes_written,
                        stats.prefixes_deleted
                    );
                }
                drop(enricher);
                self.save_state();
            }
            Written::Changed(stats) => {
                enricher.refresh_addresses(&touched, &self.learner);
                if hosts_changed {
                    enricher.hosts_by_address = self.hosts.names_by_address();
                }
                drop(enricher);
                if hosts_changed && stats != ApplyStats::default() {
                    tracing::info!(
                        written = stats.prefixes_written,
                        removed = stats.prefixes_deleted,
                        "resolved addresses changed: {} prefixes written, {} removed",
                        stats.prefixes_written,
                        stats.prefixes_deleted
                    );
                    self.save_state();
                }
            }
        }
        Ok(())
    }

    /// SIGHUP: reloads the rules and writes their policy, telling systemd and the health.
    fn reload_and_apply(&mut self) {
        self.notifier.reloading();
        let reloaded = self.reload();
        // The new policy must be in the kernel before the reload counts as done.
        let written = reloaded.is_ok() && self.apply(Update::Full, false).is_ok();
        let status = match (reloaded, written) {
            (Ok(()), true) => {
                self.observer.policy_in_place(true);
                "enforcing the reloaded rules"
            }
            (Ok(()), false) => {
                self.observer.reload_failed(None);
                "reloaded rules not written yet; the old policy stays"
            }
            (Err(why), _) => {
                self.observer.reload_failed(Some(why));
                "reload refused; the old policy stays"
            }
        };
        self.publish();
        self.notifier.ready(status);
    }

    /// Reloads the rules; invalid rules leave everything as it is (the error says why).
    /// Learned addresses stay for names that still match their service.
    fn reload(&mut self) -> Result<(), String> {
        let loaded = Rules::load(&self.opts.rules)
            .map_err(|err| err.to_string())
            .and_then(|rules| {
                let allowances = Allowances::read(&self.opts, rules.services.len())
                    .map_err(|err| format!("{err:#}"))?;
                Ok((rules, allowances))
            });
        let (rules, allowances) = match loaded {
            Ok(loaded) => loaded,
            Err(why) => {
                tracing::error!("reload refused, the running policy stays: {why}");
                return Err(why);
            }
        };
        tracing::info!(
            services = rules.services.len(),
            "reloaded rules: {} services",
            rules.services.len()
        );
        let matcher = Arc::new(NameMatcher::new(&rules));
        let forgotten = self.learner.keep_matching(&rules, &matcher);
        if forgotten > 0 {
            tracing::info!(
                forgotten,
                "forgot {forgotten} learned addresses whose names no rule lists now"
            );
        }
        // New names are due at once and resolve in the background.
        self.hosts.set_names(rules.exact_hosts(), Instant::now());
        self.rules = rules;
        self.allowances = allowances;
        self.matcher.send_replace(matcher);
        self.saver.dirty = true;
        Ok(())
    }

    /// Reads the host's addresses again; returns whether they changed. A failed read keeps the
    /// allowances as they are.
    fn reread_allowances(&mut self) -> bool {
        match Allowances::read(&self.opts, self.rules.services.len()) {
            Ok(fresh) if fresh != self.allowances => {
                self.allowances = fresh;
                true
            }
            Ok(_) => false,
            Err(err) => {
                tracing::warn!("cannot read the host's addresses, the old ones stay: {err:#}");
                false
            }
        }
    }

    /// Writes the state file if learned addresses or DNS counters changed since last time.
    fn save_state_if_changed(&mut self) {
        if self.saver.due(self.dns_stats().as_ref(), Instant::now()) {
            self.save_state();
        }
    }

    fn dns_stats(&self) -> Option<DnsStats> {
        self.opts.dns.as_ref().map(|_| DnsStats {
            forwarder: self.dns_counters.values(),
            learning: self.learner.table().counters(),
            learned_now: self.learner.table().len(),
        })
    }

    fn save_state(&mut self) {
        let state = State {
            services: service_names(&self.rules),
            hosts: self.hosts.resolved(),
            written_at: State::now_secs(),
            mode: if self.settings.mode == Mode::Audit {
                "audit".into()
            } else {
                "enforce".into()
            },
            learned: self.learner.table().views(Instant::now()),
            dns: self.dns_stats(),
        };
        self.saver.save(&self.pins.state_file(), &state);
    }
}

/// (Interface index, counter slot) for each numbered interface.
fn counter_slots(
    counted: &[CountedInterface],
    names: &std::collections::BTreeMap<u32, String>,
) -> Vec<(u32, u32)> {
    names
        .iter()
        .filter_map(|(index, name)| {
            let slot = counted.iter().find(|c| &c.name == name)?.slot;
            Some((*index, slot))
        })
        .collect()
}

/// The next tick of an optional interval; never, without one.
async fn tick(interval: Option<&mut tokio::time::Interval>) -> Option<Instant> {
    match interval {
        Some(interval) => Some(interval.tick().await.into_std()),
        None => std::future::pending().await,
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Service names by id: the rules' own, then the allowances'.
fn service_names(rules: &Rules) -> Vec<String> {
    let own = rules.services.iter().map(|s| s.name.clone());
    own.chain(allowances::SERVICE_NAMES.map(str::to_owned))
        .collect()
}
