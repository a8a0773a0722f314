//! What changes the policy while the daemon runs: DNS answers to learn from, updates to write
//! (with what drop events are enriched with kept in step), reloads, and the host's own
//! addresses read again.

use std::{sync::Arc, time::Instant};

use super::{
    allowances::Allowances,
    flows::Cause,
    grants,
    policy::{Update, Written},
    service_names, Daemon,
};
use crate::{
    dns::{LearnRequest, NameMatcher},
    maps::ApplyStats,
    rules::Rules,
};

impl Daemon {
    /// Takes in a DNS answer the forwarder is about to pass on, writes what it opens, then lets
    /// the answer go: confirmed only if every address it asks for is in the maps.
    pub(super) fn learn(&mut self, request: LearnRequest) {
        let matcher = Arc::clone(&self.matcher.borrow());
        let learned = self.learner.learn(
            &self.rules,
            &matcher,
            &request.question,
            &request.learnable,
            Instant::now(),
        );
        // `stats` shows the learned table's size within a second; the state file no longer holds
        // the table itself, so this costs little.
        self.saver.dirty |= !learned.added.is_empty() || !learned.evicted.is_empty();
        let update = grants::changes(&self.rules, &[], &learned.added, &learned.evicted);
        let written = self.apply(update, false).is_ok();
        if written {
            self.journal_learned(&learned);
        } else {
            // Not in the maps: not learned either, so the next answer tries again.
            self.learner.forget(&learned.added);
        }
        // The answer may go to the client now: its addresses are in the maps.
        let _ = request.done.send(written && learned.complete);
    }

    /// Appends what an answer changed in the learned table to its journal, before the answer
    /// goes: a restart after a `kill -9` right after it still knows the answer's addresses (see
    /// `learned_store`). A failure is logged; the next fold writes the whole table again.
    fn journal_learned(&mut self, learned: &super::learning::Learned) {
        let Some(store) = self.learned_store.as_mut() else {
            return;
        };
        let now = Instant::now();
        let views = learned
            .touched
            .iter()
            .filter_map(|key| self.learner.table().view(key, now))
            .collect();
        if let Err(err) = store.record(views, &learned.evicted) {
            tracing::warn!("{err:#}");
        }
    }

    /// Writes an update to the maps (see [`PolicySync::apply`]) and brings what drop events are
    /// enriched with along. Logs the policy's size when a rebuild changed something, or always
    /// with `log_always` (at start).
    pub(super) fn apply(&mut self, update: Update, log_always: bool) -> anyhow::Result<()> {
        self.apply_as(update, log_always, Cause::Other)
    }

    /// [`Daemon::apply`], saying why a whole table is written: what happens to the connections
    /// whose destination it takes away depends on it (see `flows::fate`).
    pub(super) fn apply_as(
        &mut self,
        update: Update,
        log_always: bool,
        cause: Cause,
    ) -> anyhow::Result<()> {
        if let Update::Grants { remove, .. } = &update {
            if !remove.is_empty() {
                // Before the addresses go: no packet of a connection to them finds them gone
                // and unmarked.
                self.flows.before_removal(remove);
            }
        }
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
        let interfaces = matches!(update, Update::Full).then(|| self.interface_groups());
        let mut enricher = self
            .enricher
            .write()
            .map_err(|_| anyhow::anyhow!("enricher lock poisoned"))?;
        // What the maps hold now judges the flows before a whole table replaces it.
        let flows_before = matches!(update, Update::Full).then(|| {
            self.flows.before_update(
                &enricher.table,
                &enricher.groups,
                &enricher.service_names,
                cause,
            )
        });
        if matches!(update, Update::Full) {
            // Switched with the table, in one store: see `PolicyMaps::set_groups`.
            let interfaces = interfaces.unwrap_or_default();
            self.policy
                .writer()
                .set_groups(&self.rules.groups, interfaces);
        }
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
                release_freed_memory();
                enricher.refresh_all(service_names(&self.rules), &self.hosts, &self.learner);
                enricher.groups.clone_from(&self.rules.groups);
                if let Some(before) = flows_before {
                    self.flows.after_update(
                        before,
                        &enricher.table,
                        &enricher.groups,
                        &enricher.service_names,
                        cause,
                    );
                }
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
    pub(super) fn reload_and_apply(&mut self) {
        self.notifier.reloading();
        let reloaded = self.reload();
        // The new policy must be in the kernel before the reload counts as done.
        let written = reloaded.is_ok() && self.apply_as(Update::Full, false, Cause::Reload).is_ok();
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
    pub(super) fn reload(&mut self) -> Result<(), String> {
        let loaded = Rules::load(&self.opts.rules)
            .map_err(|err| err.to_string())
            .and_then(|rules| {
                let allowances = Allowances::read(&self.opts, rules.services.len())
                    .map_err(|err| format!("{err:#}"))?;
                Ok((rules, allowances))
            });
        let (mut rules, allowances) = match loaded {
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
        rules.keep_group_ids(&self.rules.group_ids());
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
    pub(super) fn reread_allowances(&mut self) -> bool {
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
}

/// Hands back to the kernel the memory a whole-table rebuild used and freed. Compiling and
/// writing a large table allocates far more than the daemon keeps (for 100k prefixes, a
/// peak of about 20 MB of which a few MB stay), and glibc's allocator keeps what is freed in
/// its heap for reuse: without this, the daemon's resident size would stay at the peak of its
/// largest rebuild for ever. musl's allocator (the static release) unmaps large frees itself.
pub(super) fn release_freed_memory() {
    #[cfg(target_env = "gnu")]
    // Safety: `malloc_trim` only returns the allocator's own free pages; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}
