//! Starting the daemon: resolve, load (adopting pins), number the counted interfaces, fill the
//! maps, answer DNS until the programs are verified (on a thread of their own since the pin
//! path was locked, see `attach::VerifyingAhead`), then attach (through the same step that
//! follows link changes later), so the programs never run on maps that do not hold the policy
//! yet and clients wait for the verifier only the first time.

use std::{
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use super::{
    allowances::Allowances,
    attach,
    attachments::{Attachments, NamedLink, Plan},
    dns_clients,
    events::Enricher,
    flows::{Cause, FlowKeeper},
    hosts::{record_answers, resolve_now, HostTable},
    interfaces::LinkWatch,
    learning::Learner,
    notify::Notifier,
    observe::Observer,
    policy::{PolicySync, Update},
    settings::Settings,
    Daemon, RunOptions,
};
use crate::{
    counters::Counters,
    dns::{DnsCounters, LearnPolicy, LearnedView, Listeners, NameMatcher},
    learned_store::{self, LearnedStore},
    loader,
    maps::{FlowMaps, PolicyMaps, SourceMaps},
    metrics::{self, Metrics},
    pins::PinDir,
    resolve::Resolver,
    rules::Rules,
    state::{State, StateSaver},
};

impl Daemon {
    /// Resolves, loads (adopting pins), fills the maps, then attaches: the programs never run
    /// on maps that do not hold the policy yet.
    pub(super) async fn start(
        opts: RunOptions,
        mut rules: Rules,
        pins: PinDir,
        adopting: bool,
        first: FirstAttachments,
        listeners: Option<Listeners>,
        metrics_listener: Option<tokio::net::TcpListener>,
    ) -> anyhow::Result<Self> {
        if adopting {
            tracing::info!("adopting the filter pinned at {}", pins.root().display());
        }
        let resolver = Resolver::new(opts.resolver)?;
        let mut hosts = HostTable::new(opts.refresh);
        let now = Instant::now();
        tracing::info!("resolving {} hostnames", rules.exact_hosts().len());
        hosts.set_names(rules.exact_hosts(), now);
        let matcher = Arc::new(NameMatcher::new(&rules));
        let mut learner = Learner::new(learn_policy(&opts));
        // A fresh filter has nothing attached yet, so answering early opens nothing too soon.
        let attached_read_our_maps = !adopting
            || seed_from_state(
                &pins,
                &opts,
                &mut rules,
                &matcher,
                &mut hosts,
                &mut learner,
                now,
            );
        let learned_store = opts
            .dns
            .as_ref()
            .and_then(|_| open_learned_store(&pins, &learner, now));
        let answers = resolve_now(&resolver, &mut hosts, now).await;
        record_answers(&mut hosts, &answers);
        tracing::info!(
            "{} of {} hostnames have addresses",
            hosts.resolved().len(),
            rules.exact_hosts().len()
        );

        // The verifier's load made (or adopted) the pinned maps: this load adopts the same.
        first.verifying.maps_pinned().await;
        let mut ebpf = attach::load_with_pins(&pins)?;
        let counted = metrics::number_interfaces(&opts.interfaces);
        // Counter slots are assigned as the interfaces are attached (`carry_out`).
        let kernel_counters = Counters::loaded(&ebpf)?;
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
        let flows = FlowKeeper::new(
            FlowMaps::take_from(&mut ebpf)?,
            opts.flows,
            Counters::loaded(&ebpf).ok(),
        );
        let settings = Settings::write(&mut maps, sources, &opts, &first.plan.checked()).await?;
        let allowances = Allowances::read(&opts, rules.services.len())?;
        let enricher = Arc::new(RwLock::new(Enricher::default()));
        let guarded = first.plan.indexes(|_| true);
        let served = dns_clients::read_served(&opts, &guarded).await?;
        let mut daemon = Self {
            opts,
            rules,
            pins,
            resolver,
            hosts,
            allowances,
            settings,
            policy: PolicySync::new(maps),
            flows,
            enricher,
            matcher: watch::Sender::new(matcher),
            served: watch::Sender::new(Arc::new(served)),
            learner,
            learned_store,
            listeners,
            forwarder: None,
            learn_requests: mpsc::channel(1).1,
            dns_counters,
            saver: StateSaver::new(Instant::now()),
            notifier: Notifier::from_env(),
            observer,
            counted,
            metrics_listener,
            attachments: Attachments::default(),
            links: first.links.clone(),
            ambiguous_interfaces: std::collections::BTreeSet::new(),
            link_watch: Some(first.watch),
            ebpf,
        };
        daemon
            .take_over(
                first.plan,
                &first.links,
                first.verifying,
                attached_read_our_maps,
            )
            .await?;
        Ok(daemon)
    }

    /// Writes the policy, then attaches; DNS is answered from the moment the maps hold the
    /// policy, while the programs are verified, when `attached_read_our_maps`: the programs
    /// attached now (an adopted filter's, still enforcing) were built from this very object,
    /// so what an answer teaches is where they look. Otherwise (a filter pinned by another
    /// build, whose programs may read the maps otherwise), DNS waits for this build's programs.
    async fn take_over(
        &mut self,
        plan: Plan,
        links: &[NamedLink],
        verifying: attach::VerifyingAhead,
        attached_read_our_maps: bool,
    ) -> anyhow::Result<()> {
        self.apply_as(Update::Full, true, Cause::Start)?;
        self.observer.policy_in_place(false);
        if attached_read_our_maps {
            self.start_forwarder();
        } else {
            tracing::info!(
                "the pinned filter was attached by another build: DNS is answered once this \
                 build's programs are attached"
            );
        }
        self.wait_for_verifier(verifying).await;
        // The verifier thread's allocations (its load of the object) came after the rebuild
        // handed its memory back.
        super::changes::release_freed_memory();
        self.carry_out(plan, links, true).await?;
        if !attached_read_our_maps {
            self.start_forwarder();
        }
        attach::remove_leftover_pins(&self.pins, &self.attachments.held)
    }

    /// Waits for the programs verified ahead (see [`attach::VerifyingAhead`]), learning what
    /// the forwarder's answers teach meanwhile: after a `kill -9`, clients wait for the maps
    /// only, not for the verifier too. The object loaded there (the maps it adopted by their
    /// pins are these very maps) replaces the one the maps were taken from.
    async fn wait_for_verifier(&mut self, verifying: attach::VerifyingAhead) {
        let verified = verifying.verified();
        tokio::pin!(verified);
        loop {
            tokio::select! {
                verified = &mut verified => {
                    if let Some(ebpf) = verified {
                        self.ebpf = ebpf;
                    }
                    return;
                }
                Some(request) = self.learn_requests.recv() => self.learn(request),
            }
        }
    }
}

/// What DNS answers may teach: nothing without `--dns-listen`.
fn learn_policy(opts: &RunOptions) -> LearnPolicy {
    opts.dns.as_ref().map_or(
        LearnPolicy {
            min_ttl: Duration::ZERO,
            grace: Duration::ZERO,
            capacity: 0,
        },
        |dns| dns.learn,
    )
}

/// Keeps what the last daemon had resolved and learned until fresh answers replace it: the
/// pinned maps still allow it, and clients still hold those answers. True when the state file
/// says the attached programs were built from this build's object.
fn seed_from_state(
    pins: &PinDir,
    opts: &RunOptions,
    rules: &mut Rules,
    matcher: &NameMatcher,
    hosts: &mut HostTable,
    learner: &mut Learner,
    now: Instant,
) -> bool {
    let Some(state) = State::take_back(&pins.state_file()) else {
        return false;
    };
    let same_programs = state.programs == loader::OBJECT_SHA256;
    // The pinned maps number the groups as the last daemon did.
    rules.keep_group_ids(&state.groups);
    for (name, addrs) in &state.hosts {
        hosts.seed(name, addrs, now + opts.refresh.grace);
    }
    if opts.dns.is_some() {
        learner.seed(rules, matcher, learned_before(pins, state), now);
    }
    same_programs
}

/// The learned store, with what was taken back as its first snapshot: from now on every answer
/// is journaled before it goes. `None` (and a warning) when it cannot be written.
fn open_learned_store(pins: &PinDir, learner: &Learner, now: Instant) -> Option<LearnedStore> {
    LearnedStore::create(&pins.state_file(), learner.table().views(now))
        .map_err(|err| {
            tracing::warn!("{err:#}; what DNS answers teach is not kept for a restart");
        })
        .ok()
}

/// What the last daemon had learned: its learned store (snapshot and journal), or the state
/// file's list where a daemon from before the store left one.
fn learned_before(pins: &PinDir, state: State) -> Vec<LearnedView> {
    match learned_store::load(&pins.state_file()) {
        Ok(Some(views)) => views,
        Ok(None) => {
            let elapsed = State::now_secs().saturating_sub(state.written_at);
            state
                .learned
                .into_iter()
                .filter_map(|mut view| {
                    view.expires_in_secs = view.expires_in_secs.checked_sub(elapsed)?;
                    Some(view)
                })
                .collect()
        }
        Err(err) => {
            tracing::warn!("{err:#}; starting without what it holds");
            Vec::new()
        }
    }
}

/// What the first attachments are, worked out before anything is loaded.
pub(super) struct FirstAttachments {
    /// Subscribed before `links` were read, so no change after the reading is missed.
    pub watch: LinkWatch,
    pub links: Vec<NamedLink>,
    pub plan: Plan,
    /// The programs `plan` needs, through the verifier while the rules are read and written.
    pub verifying: attach::VerifyingAhead,
}
