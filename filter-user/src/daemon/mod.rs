//! `egress-filter run`: the daemon. It compiles the rules, loads and attaches the programs with
//! pinned maps and links, keeps hostname-derived addresses fresh, learns from the DNS answers it
//! forwards, streams drop events, and reloads on SIGHUP. ARCHITECTURE.md draws the parts and
//! the data flow; this module is the loop that wires them. The loop's own steps live beside it:
//! `start` (resolve, load, fill, attach), `changes` (learning, writing updates, reloads) and
//! `publish` (the metrics snapshot and server, the state file). The parts:
//!
//! - [`rules_watch`]: what asks for a reload (SIGHUP, and with `--watch-rules` the rules'
//!   directory changing);
//! - [`attach`]: loading with pinned maps (adopting a previous daemon's), attaching, pinning;
//! - [`attachments`]: which interfaces to attach to, following links as they come and go
//!   (`links` is the loop's step for it);
//! - [`settings`]: mode, event budget and the XDP interfaces' source prefixes in the kernel;
//! - [`policy`]: keeping the maps equal to the allow table through failures;
//! - [`flows`]: connections kept past their address's expiry, marked before it goes;
//! - [`grants`]: what the rules, addresses and allowances put in the table;
//! - [`allowances`]: the host's own addresses on the failsafe ports, the resolvers on 53;
//! - [`hosts`]: hostname refresh with TTLs and grace; [`learning`]: what DNS answers open;
//! - [`event_stream`] and [`events`]: drop events to stdout; [`kernel_log`]: the programs'
//!   rare log lines into the daemon's logs;
//! - [`notify`]: systemd's readiness and watchdog; [`observe`]: metrics and health
//!   (`crate::metrics` serves them);
//! - `crate::state`: the state file `stats`, `learned` and a restart read; `crate::pins`: the
//!   pin path;
//! - [`interfaces`]: the links and their notifications, link types, the source prefixes routed
//!   out of an interface, and its addresses;
//! - [`dns_clients`]: where the forwarder may listen and whom it answers.

pub mod allowances;
pub mod attach;
pub mod attachments;
mod changes;
pub mod dns_clients;
pub mod event_stream;
pub mod events;
pub mod flows;
pub mod grants;
pub mod hosts;
pub mod interfaces;
pub mod kernel_log;
pub mod learning;
mod links;
pub mod notify;
pub mod observe;
pub mod options;
pub mod policy;
mod publish;
pub mod rules_watch;
pub mod settings;
mod start;

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};
use aya::{maps::RingBuf, Ebpf};
use filter_common::maps as names;
use tokio::{
    signal::unix::{signal, SignalKind},
    sync::{mpsc, watch},
    task::JoinSet,
};

pub use self::options::{DnsOptions, FlowOptions, RunOptions, XdpModeArg};
use self::{
    allowances::Allowances,
    attachments::Attachments,
    dns_clients::GuardedAddresses,
    event_stream::{stream_events, SuppressedReporter, SUPPRESSED_REPORT},
    events::Enricher,
    hosts::{record_answers, resolve_in_background, HostTable},
    interfaces::{LinkWatch, NetworkChange},
    learning::Learner,
    notify::Notifier,
    observe::Observer,
    policy::{PolicySync, Update},
    settings::Settings,
    start::FirstAttachments,
};
use crate::{
    dns::{
        forwarder::MAX_IN_FLIGHT, DnsCounters, LearnRequest, Listeners, NameMatcher, ServedClients,
        Shared,
    },
    maps::PolicyMaps,
    metrics::{self, CountedInterface},
    pins::PinDir,
    resolve::Resolver,
    rules::Rules,
    state::StateSaver,
};

/// How often the host's own addresses and the XDP interfaces' routes are read again.
const SELF_ADDRESS_CHECK: Duration = Duration::from_secs(30);
/// How often the state file is written when learned addresses or DNS counters changed: often
/// enough for `stats` and `learned` to be current, rarely enough to cost nothing under load.
const STATE_SAVE: Duration = Duration::from_secs(1);

/// Runs the filter until SIGINT or SIGTERM.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    ensure!(
        !opts.interfaces.is_empty(),
        "nothing to attach: give --xdp IFACE, --tc IFACE and/or --tc-ingress IFACE"
    );
    // Interfaces that are not there, or a DNS address that is not ours: fail before anything
    // is pinned.
    let watch = LinkWatch::subscribe()?;
    let links = interfaces::read_named_links().await?;
    let plan = attach::first_plan(&opts, &links)?;
    if let Some(dns) = opts.dns.as_ref().filter(|dns| !dns.listen_any) {
        let guarded: Vec<u32> = plan.attach.iter().map(|t| t.index).collect();
        GuardedAddresses::read(&guarded)
            .await?
            .check_listen(&dns.listen)?;
    }

    // Taken before anything is pinned: from here on a stop request ends the start cleanly.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let pins = PinDir::new(&opts.pin_path);
    let _lock = pins.lock()?;
    let adopting = pins.has_pinned_maps();
    // A DNS or metrics port in use must fail the start before anything is attached.
    let (listeners, metrics_listener) = match prepare_and_bind(&pins, &opts).await {
        Ok(bound) => bound,
        Err(err) => return Err(abandon(&pins, adopting, err)),
    };
    let verifying = match attach::VerifyingAhead::start(&pins, &plan.attach) {
        Ok(verifying) => verifying,
        Err(err) => return Err(abandon(&pins, adopting, err)),
    };
    // Whatever fails from here on waits for this before it removes the pins: the maps the
    // verifier's load pins meanwhile go with the rest.
    let maps_pinned = verifying.maps_pinned();
    let daemon_pins = pins.clone();
    let starting = async move {
        // Bad rules fail the start before anything is attached. Reading them blocks this
        // thread (most of a second for a million prefixes); a stop request is taken after it.
        let rules = Rules::load(&opts.rules)?;
        let first = FirstAttachments {
            watch,
            links,
            plan,
            verifying,
        };
        Daemon::start(
            opts,
            rules,
            daemon_pins,
            adopting,
            first,
            listeners,
            metrics_listener,
        )
        .await
    };
    let started = tokio::select! {
        started = starting => started,
        _ = term.recv() => Err(anyhow::anyhow!("stopped while starting")),
        _ = int.recv() => Err(anyhow::anyhow!("stopped while starting")),
    };
    // A stop request while starting (resolution can take seconds) must not leave half a filter
    // behind either.
    let mut daemon = match started {
        Ok(daemon) => daemon,
        Err(err) => {
            maps_pinned.await;
            return Err(abandon(&pins, adopting, err));
        }
    };
    let result = daemon.serve(&mut term, &mut int).await;
    daemon.notifier.stopping();
    if daemon.opts.keep_on_stop {
        tracing::info!(
            "stopping: the filter stays attached and pinned at {} (--keep-on-stop); the next run \
             adopts it, `egress-filter detach` removes it",
            daemon.pins.root().display()
        );
        return result;
    }
    tracing::info!("stopping: detaching and unpinning");
    daemon.pins.remove_all()?;
    result
}

/// The pin directories, and the DNS and metrics sockets bound.
async fn prepare_and_bind(
    pins: &PinDir,
    opts: &RunOptions,
) -> anyhow::Result<(Option<Listeners>, Option<tokio::net::TcpListener>)> {
    pins.prepare()?;
    let listeners = match &opts.dns {
        Some(dns) => Some(Listeners::bind(&dns.listen).await?),
        None => None,
    };
    let metrics_listener = match opts.metrics_listen {
        Some(address) => Some(metrics::server::bind(address).await?),
        None => None,
    };
    Ok((listeners, metrics_listener))
}

/// A start that failed: a fresh filter leaves nothing behind (pins, state, lock file); an
/// adopted one is left enforcing as it was.
fn abandon(pins: &PinDir, adopting: bool, err: anyhow::Error) -> anyhow::Error {
    if adopting {
        return err;
    }
    match pins.remove_all() {
        Ok(()) => err,
        Err(cleanup) => anyhow::anyhow!("{err:#}; cleaning up after it failed too: {cleanup:#}"),
    }
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
    /// Connections kept past their address's expiry.
    flows: flows::FlowKeeper,
    /// What drop events are enriched with; holds the allow table the maps mirror.
    enricher: Arc<RwLock<Enricher>>,
    /// Which services each DNS name belongs to, for the forwarder and for learning.
    matcher: watch::Sender<Arc<NameMatcher>>,
    /// Whom the forwarder answers, read again with the routes.
    served: watch::Sender<Arc<ServedClients>>,
    learner: Learner,
    /// What the learner holds, on disk as it changes (with `--dns-listen`).
    learned_store: Option<crate::learned_store::LearnedStore>,
    /// Bound at start, served once the policy is in place.
    listeners: Option<Listeners>,
    /// Answering DNS from the moment the maps hold the policy; stops when `serve` returns.
    forwarder: Option<JoinSet<()>>,
    /// What the forwarder asks to learn before an answer goes.
    learn_requests: mpsc::Receiver<LearnRequest>,
    dns_counters: Arc<DnsCounters>,
    saver: StateSaver,
    notifier: Notifier,
    observer: Observer,
    /// The interface names and patterns asked for, as the kernel's counters number them.
    counted: Vec<CountedInterface>,
    /// The interfaces attached to now.
    attachments: Attachments,
    /// Every link as last read, for the groups that name interfaces.
    links: Vec<attachments::NamedLink>,
    /// Interfaces already warned about for matching two groups' patterns.
    ambiguous_interfaces: std::collections::BTreeSet<String>,
    /// Link notifications; `None` once the subscription broke (the periodic check remains).
    link_watch: Option<LinkWatch>,
    /// Bound at start, served once the filter is attached.
    metrics_listener: Option<tokio::net::TcpListener>,
    /// Keeps the programs (and with them the links' fds) alive until the daemon stops.
    ebpf: Ebpf,
}

impl Daemon {
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
        // Dropping the set (when serve returns) stops the forwarder.
        let _forwarder = self.forwarder.take();
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
            let wake = [
                self.hosts.next_event(),
                self.learner.table().next_expiry(),
                self.settings.reread_due(),
            ]
            .into_iter()
            .flatten()
            .fold(next_self_check, Instant::min);
            let update = tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {
                    self.timers_fired(&resolved_tx, &mut next_self_check).await
                }
                Some(answers) = resolved_rx.recv() => {
                    self.observer.lookups(&answers);
                    let changes = record_answers(&mut self.hosts, &answers);
                    grants::changes(&self.rules, &changes, &[], &[])
                }
                Some(change) = network_change(self.link_watch.as_mut()) => {
                    if change.links {
                        self.follow_links().await;
                    }
                    if change.routes {
                        // The source check follows the routes out of the XDP interfaces.
                        self.settings.routes_changed(Instant::now());
                    }
                    Update::None
                }
                Some(request) = self.learn_requests.recv() => {
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

    /// What the loop's timers ask for: lookups due, hostnames and learned addresses expired, the
    /// periodic check, source prefixes to read again after route changes.
    async fn timers_fired(
        &mut self,
        resolved_tx: &mpsc::Sender<crate::resolve::Lookups>,
        next_self_check: &mut Instant,
    ) -> Update {
        let now = Instant::now();
        resolve_in_background(&mut self.hosts, &self.resolver, resolved_tx, now);
        let hosts_gone = self.hosts.expire(now);
        let learned_gone = self.learner.expire(now);
        self.saver.dirty |= !learned_gone.is_empty();
        let mut update = grants::changes(&self.rules, &hosts_gone, &[], &learned_gone);
        if now >= *next_self_check {
            *next_self_check = now + SELF_ADDRESS_CHECK;
            if self.check_links_and_addresses().await {
                update = Update::Full;
            }
        } else if self.settings.reread_due().is_some_and(|due| now >= due) {
            self.reread_sources().await;
        }
        update
    }

    /// The periodic check: the links (in case a notification was lost), the XDP interfaces'
    /// routes, the host's own addresses. True when the allowances changed.
    async fn check_links_and_addresses(&mut self) -> bool {
        self.check_link_watch();
        self.follow_links().await;
        self.reread_sources().await;
        self.reread_allowances()
    }

    /// Reads the source prefixes of the XDP interfaces attached to now, and whom the DNS
    /// forwarder answers: both follow the routes (a LAN's addresses come with its connected
    /// routes, often a moment after the link itself).
    async fn reread_sources(&mut self) {
        let checked = self.attachments.checked();
        self.settings.reread_sources(&self.opts, &checked).await;
        let guarded = self.attachments.indices();
        dns_clients::reread(&self.served, &self.opts, &guarded).await;
    }

    /// Subscribes to link notifications again if the subscription broke.
    fn check_link_watch(&mut self) {
        if self.link_watch.as_ref().is_some_and(LinkWatch::is_alive) {
            return;
        }
        match LinkWatch::subscribe() {
            Ok(watch) => self.link_watch = Some(watch),
            Err(err) => tracing::warn!(
                "no link notifications ({err:#}): interfaces are followed every {} s only",
                SELF_ADDRESS_CHECK.as_secs()
            ),
        }
    }

    /// Starts answering DNS, if asked to: once the maps hold the policy, since each answer's
    /// addresses are written to them before it goes.
    fn start_forwarder(&mut self) {
        let (learn, requests) = mpsc::channel::<LearnRequest>(MAX_IN_FLIGHT);
        // Without a forwarder the sender is dropped, and the loop never hears of a request.
        self.learn_requests = requests;
        let Some(listeners) = self.listeners.take() else {
            return;
        };
        let Some(dns) = self.opts.dns.as_ref() else {
            return;
        };
        tracing::info!("answering DNS on {}", dns.describe(&listeners));
        tracing::info!(
            "answering DNS clients from {}",
            dns_clients::describe(&self.served.borrow())
        );
        let seen = self.enricher.read().map(|e| Arc::clone(&e.seen));
        self.forwarder = Some(listeners.serve(
            dns.forwarder_config(),
            Shared {
                matcher: self.matcher.subscribe(),
                served: self.served.subscribe(),
                learn,
                counters: Arc::clone(&self.dns_counters),
                epoch: self.learner.epoch(),
                seen: seen.unwrap_or_default(),
            },
        ));
    }
}

/// The next link or route notifications; never, without a subscription (or once it ended:
/// `check_link_watch` subscribes again).
async fn network_change(watch: Option<&mut LinkWatch>) -> Option<NetworkChange> {
    match watch {
        Some(watch) => Some(watch.changed().await),
        None => std::future::pending().await,
    }
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
