//! What the daemon's loop makes known outside it: the metrics server and the snapshot it serves,
//! and the state file `stats`, `learned`, `explain` and a restart read.

use std::{sync::Arc, time::Instant};

use filter_common::Mode;

use super::{observe::Snapshot, service_names, Daemon};
use crate::{
    metrics,
    state::{DnsStats, State},
};

impl Daemon {
    /// Starts serving the metrics, if asked to.
    pub(super) fn start_metrics_server(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        let listener = self.metrics_listener.take()?;
        let metrics = Arc::clone(self.observer.metrics()?);
        if let Ok(address) = listener.local_addr() {
            tracing::info!("serving /metrics and /healthz on http://{address}");
        }
        Some(tokio::spawn(metrics::server::serve(listener, metrics)))
    }

    /// Publishes what the loop knows for the metrics and the health.
    pub(super) fn publish(&self) {
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
            groups: if self.rules.groups.is_empty() {
                Vec::new()
            } else {
                self.rules.every_group()
            },
            interfaces: self.counted.clone(),
            interface_trouble: self.attachments.trouble(),
            attachments: self.attachments.report(),
            prefixes: (v4, v6),
            hostnames_resolved: self.hosts.resolved_count(),
            hostnames_failing: self.hosts.failing().len(),
            learning: self.opts.dns.as_ref().map(|_| {
                let table = self.learner.table();
                (table.counters(), table.len())
            }),
        });
    }

    /// Writes the state file if what it shows changed since last time, and folds the learned
    /// journal into a new snapshot once it outgrew the last.
    pub(super) fn save_state_if_changed(&mut self) {
        if self.saver.due(self.dns_stats().as_ref(), Instant::now()) {
            self.save_state();
        }
        if let Some(store) = self.learned_store.as_mut() {
            if store.fold_due() {
                if let Err(err) = store.fold(self.learner.table().views(Instant::now())) {
                    tracing::warn!("{err:#}");
                }
            }
        }
    }

    pub(super) fn dns_stats(&self) -> Option<DnsStats> {
        self.opts.dns.as_ref().map(|_| DnsStats {
            forwarder: self.dns_counters.values(),
            learning: self.learner.table().counters(),
            learned_now: self.learner.table().len(),
        })
    }

    pub(super) fn save_state(&mut self) {
        let state = State {
            services: service_names(&self.rules),
            hosts: self.hosts.resolved(),
            written_at: State::now_secs(),
            mode: if self.settings.mode == Mode::Audit {
                "audit".into()
            } else {
                "enforce".into()
            },
            // In the learned store, written as it changes.
            learned: Vec::new(),
            dns: self.dns_stats(),
            interfaces: self.attachments.report(),
            groups: self.rules.group_ids(),
            programs: crate::loader::OBJECT_SHA256.to_owned(),
        };
        self.saver.save(&self.pins.state_file(), &state);
    }
}
