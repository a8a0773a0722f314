//! What the daemon tells those who watch it, besides its log and systemd: the metrics' loop
//! counters and published snapshot, and the health `/healthz` reports. The loop calls in at each
//! event; this module decides what each means for the metrics and the health.

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::{
    metrics::{CountedInterface, Health, Metrics, Published},
    resolve::Lookups,
    state::InterfaceReport,
};

/// The metrics (with `--metrics-listen`) and what the health depends on.
pub struct Observer {
    metrics: Option<Arc<Metrics>>,
    /// Why the running policy is not the one the rules on disk ask for: a refused reload.
    refused_reload: Option<String>,
}

/// What the loop knows when it publishes.
pub struct Snapshot {
    pub attached: bool,
    /// Why the maps may differ from the table (a failed write), if they may.
    pub policy_behind: Option<String>,
    pub audit: bool,
    pub services: Vec<String>,
    pub groups: Vec<(u32, String)>,
    pub interfaces: Vec<CountedInterface>,
    /// Why some interface asked for is not filtered (missing, or its attachment failed).
    pub interface_trouble: Option<String>,
    pub attachments: InterfaceReport,
    pub prefixes: (usize, usize),
    pub hostnames_resolved: usize,
    pub hostnames_failing: usize,
    pub learning: Option<(crate::dns::LearnCounters, usize)>,
}

impl Observer {
    #[must_use]
    pub fn new(metrics: Option<Arc<Metrics>>) -> Self {
        Self {
            metrics,
            refused_reload: None,
        }
    }

    #[must_use]
    pub fn metrics(&self) -> Option<&Arc<Metrics>> {
        self.metrics.as_ref()
    }

    /// A batch of hostname lookups came back.
    pub fn lookups(&self, answers: &Lookups) {
        let Some(metrics) = &self.metrics else { return };
        let mut any_success = false;
        for answer in answers.values() {
            let result = if answer.is_ok() { "success" } else { "failure" };
            any_success |= answer.is_ok();
            metrics.counters.lookups.with_label_values(&[result]).inc();
        }
        if any_success {
            metrics.counters.last_lookup_success.set(unix_now());
        }
    }

    /// The policy of the rules now loaded reached the kernel (at start, or after a reload).
    pub fn policy_in_place(&mut self, reload: bool) {
        self.refused_reload = None;
        if let Some(metrics) = &self.metrics {
            if reload {
                metrics
                    .counters
                    .reloads
                    .with_label_values(&["success"])
                    .inc();
            }
            metrics.counters.last_reload_success.set(unix_now());
        }
    }

    /// A reload was refused (`why`) or its policy could not be written.
    pub fn reload_failed(&mut self, why: Option<String>) {
        if why.is_some() {
            self.refused_reload = why;
        }
        if let Some(metrics) = &self.metrics {
            metrics
                .counters
                .reloads
                .with_label_values(&["failure"])
                .inc();
        }
    }

    /// A map write failed.
    pub fn write_failed(&self) {
        if let Some(metrics) = &self.metrics {
            metrics.counters.policy_write_failures.inc();
        }
    }

    /// Publishes what the loop knows now.
    pub fn publish(&self, snapshot: Snapshot) {
        let Some(metrics) = &self.metrics else { return };
        let health = health(
            snapshot.attached,
            snapshot.policy_behind.as_deref(),
            self.refused_reload.as_deref(),
            snapshot.interface_trouble.as_deref(),
        );
        metrics.publish(|published| {
            *published = Published {
                at: Some(std::time::Instant::now()),
                health,
                audit: snapshot.audit,
                services: snapshot.services,
                groups: snapshot.groups,
                interfaces: snapshot.interfaces,
                attachments: snapshot.attachments,
                prefixes_v4: snapshot.prefixes.0,
                prefixes_v6: snapshot.prefixes.1,
                hostnames_resolved: snapshot.hostnames_resolved,
                hostnames_failing: snapshot.hostnames_failing,
                learning: snapshot.learning,
            };
        });
    }
}

/// Enforcing only when attached to every interface asked for, with the maps holding the table,
/// compiled from the rules on disk. A refused reload keeps the old policy running (the filter is
/// safe), but it is not what the operator asked for: degraded, with the reason, until a reload
/// succeeds. An interface named exactly that does not exist, or one whose attachment failed, is
/// degraded too: whatever comes through it once it is back would not be filtered otherwise.
fn health(
    attached: bool,
    policy_behind: Option<&str>,
    refused_reload: Option<&str>,
    interface_trouble: Option<&str>,
) -> Health {
    match (attached, policy_behind, refused_reload, interface_trouble) {
        (false, ..) => Health::Starting,
        (true, Some(why), ..) => Health::Degraded(format!("maps behind the policy: {why}")),
        (true, None, Some(why), _) => {
            Health::Degraded(format!("reload refused, the previous policy runs: {why}"))
        }
        (true, None, None, Some(why)) => Health::Degraded(format!("interfaces: {why}")),
        (true, None, None, None) => Health::Enforcing,
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_enforcing_only_with_the_intended_policy_in_the_kernel() {
        assert_eq!(health(false, None, None, None), Health::Starting);
        assert_eq!(health(true, None, None, None), Health::Enforcing);
        assert!(matches!(
            health(true, Some("ENOMEM"), None, None),
            Health::Degraded(why) if why.contains("ENOMEM")
        ));
        assert!(matches!(
            health(true, None, Some("a.toml:3:1: unknown field"), None),
            Health::Degraded(why) if why.contains("a.toml:3:1")
        ));
        assert!(matches!(
            health(true, None, None, Some("lan0 (--xdp) does not exist")),
            Health::Degraded(why) if why == "interfaces: lan0 (--xdp) does not exist"
        ));
    }

    #[test]
    fn a_successful_reload_clears_a_refused_one() {
        let mut observer = Observer::new(None);
        observer.reload_failed(Some("bad rules".into()));
        assert_eq!(observer.refused_reload.as_deref(), Some("bad rules"));
        // A reload whose policy merely failed to write keeps the refusal's reason.
        observer.reload_failed(None);
        assert_eq!(observer.refused_reload.as_deref(), Some("bad rules"));
        observer.policy_in_place(true);
        assert_eq!(observer.refused_reload, None);
    }
}
