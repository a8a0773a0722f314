//! The loop's step when links change: read them, plan (see [`super::attachments`]), then let go
//! of what vanished and attach what appeared, with its counter slot and (for XDP) its source
//! prefixes written first, so that a new interface's first packet already meets the whole filter.

use std::time::Instant;

use super::{
    attach,
    attachments::{self, NamedLink, Plan, Target},
    dns_clients, interfaces, Daemon,
};
use crate::{counters::Counters, maps::InterfaceGroups, metrics, rules, state::XdpModeView};

impl Daemon {
    /// Reads the links and brings the attachments in line with them. Failures are logged and
    /// counted, never fatal: the next notification or check tries again.
    pub(super) async fn follow_links(&mut self) {
        let started = Instant::now();
        let links = match interfaces::read_named_links().await {
            Ok(links) => links,
            Err(err) => {
                tracing::warn!("cannot read the links, the attachments stay as they are: {err:#}");
                return;
            }
        };
        self.links.clone_from(&links);
        // A new interface's group first, so that its first packet already meets it.
        let interfaces = self.interface_groups();
        if let Err(err) = self.policy.writer().follow_interface_groups(interfaces) {
            tracing::warn!(
                "the interfaces' client groups: {:#}",
                anyhow::Error::new(err)
            );
        }
        let plan = attachments::plan(&self.opts.interfaces, &links, &self.attachments.held);
        let changed = !plan.changes_nothing();
        if let Err(err) = self.carry_out(plan, &links, false).await {
            tracing::warn!("{err:#}");
        }
        if changed {
            // A guarded network that came or went changes whom the DNS forwarder answers.
            let guarded = self.attachments.indices();
            dns_clients::reread(&self.served, &self.opts, &guarded).await;
            tracing::debug!(elapsed = ?started.elapsed(), "attachments follow the links");
        }
    }

    /// The client group of each link some group's interfaces name; warns once about each
    /// interface that patterns of two groups match.
    pub(super) fn interface_groups(&mut self) -> InterfaceGroups {
        let (groups, ambiguous) = rules::interface_groups(
            &self.rules.groups,
            self.links.iter().map(|l| (l.index, l.name.as_str())),
        );
        for rules::AmbiguousInterface {
            interface: name,
            chosen,
            other,
        } in ambiguous
        {
            if self.ambiguous_interfaces.insert(name.clone()) {
                tracing::warn!(
                    iface = %name,
                    "interface {name} matches the interfaces of groups {chosen:?} and {other:?}: \
                     it is in {chosen:?}, defined first; name it exactly to choose"
                );
            }
        }
        groups
    }

    /// Carries out `plan`. With `strict` (at start), failing to attach an interface named
    /// exactly fails the whole start; otherwise failures are kept in `attachments.failed`, which
    /// the health reports, and retried at the next check.
    pub(super) async fn carry_out(
        &mut self,
        plan: Plan,
        links: &[NamedLink],
        strict: bool,
    ) -> anyhow::Result<()> {
        self.note_missing_and_unsupported(&plan);
        // `stats` shows the attachments: the state file follows them.
        self.saver.dirty |= !plan.changes_nothing();
        for key in &plan.release {
            let Some(index) = self.attachments.held.remove(key) else {
                continue;
            };
            self.attachments.xdp_modes.remove(key);
            let (hook, name) = key;
            let why = if links.iter().any(|l| l.index == index) {
                "renamed, or no longer matches"
            } else {
                "vanished"
            };
            if let Err(err) = attach::release(&self.pins, key) {
                tracing::warn!("{err:#}");
            }
            self.attachments.counts.released += 1;
            self.attachments.failed.remove(key);
            if let Ok(mut enricher) = self.enricher.write() {
                enricher.iface_names.remove(&index);
            }
            tracing::info!(iface = %name, hook = hook.name(), ifindex = index, "{} on {name} let go: the interface {why}", hook.title());
        }
        if plan.attach.is_empty() {
            return Ok(());
        }
        // Counter slots and source prefixes for the interfaces about to be attached, first.
        let mut indices: Vec<(String, u32)> = self
            .attachments
            .held
            .iter()
            .map(|((_, name), index)| (name.clone(), *index))
            .collect();
        indices.extend(plan.attach.iter().map(|t| (t.name.clone(), t.index)));
        let slots: Vec<(u32, u32)> = indices
            .iter()
            .map(|(name, index)| {
                let slot = metrics::slot_of(name, &self.opts.interfaces, &self.counted);
                (*index, slot)
            })
            .collect();
        Counters::loaded(&self.ebpf)?.assign_slots(&self.ebpf, &slots)?;
        let new = plan.checked();
        if !new.lans.is_empty() || !new.pods.is_empty() {
            let mut checked = self.attachments.checked();
            checked.lans.extend(new.lans);
            checked.pods.extend(new.pods);
            self.settings.reread_sources(&self.opts, &checked).await;
        }
        for target in &plan.attach {
            let key = target.key();
            match attach::attach_one(&mut self.ebpf, &self.pins, self.opts.xdp_mode, target) {
                Ok(why) => {
                    if let Some(why) = why {
                        let mode = xdp_mode_of(target, why).await;
                        self.attachments.xdp_modes.insert(key.clone(), mode);
                    }
                    self.attachments.held.insert(key.clone(), target.index);
                    self.attachments.failed.remove(&key);
                    self.attachments.counts.attached += 1;
                    if let Ok(mut enricher) = self.enricher.write() {
                        enricher
                            .iface_names
                            .insert(target.index, target.name.clone());
                    }
                }
                Err(err) => {
                    self.attachments.counts.failed += 1;
                    let exact =
                        self.opts.interfaces.iter().any(|p| {
                            p.hook == target.hook && p.is_exact() && p.text == target.name
                        });
                    if strict && exact {
                        return Err(err);
                    }
                    tracing::error!(
                        iface = %target.name,
                        hook = target.hook.name(),
                        "{err:#}; trying again at the next link change or check"
                    );
                    self.attachments.failed.insert(key, format!("{err:#}"));
                }
            }
        }
        Ok(())
    }

    /// Logs exact names that went missing or came back, and unparseable matches once each.
    fn note_missing_and_unsupported(&mut self, plan: &Plan) {
        for (hook, name) in plan.missing.difference(&self.attachments.missing) {
            tracing::error!(
                iface = %name,
                hook = hook.name(),
                "interface {name} ({}) does not exist: nothing is filtered there until it \
                 appears again",
                hook.option()
            );
        }
        for (hook, name) in self.attachments.missing.difference(&plan.missing) {
            tracing::info!(iface = %name, hook = hook.name(), "interface {name} ({}) is back", hook.option());
        }
        self.attachments.missing.clone_from(&plan.missing);
        for (key, why) in &plan.unsupported {
            if self.attachments.unsupported_seen.insert(key.clone()) {
                tracing::warn!(iface = %key.1, "{} matches {}, which is left alone: {why}", key.0.option(), key.1);
            }
        }
    }
}

/// The mode the kernel reports XDP running in on `target`, logged with why: which mode a
/// gateway's LAN runs in decides what filtering costs there.
async fn xdp_mode_of(target: &Target, mut why: String) -> XdpModeView {
    let mode = match interfaces::xdp_mode(target.index).await {
        Ok(Some(mode)) => mode,
        Ok(None) => {
            why.push_str(" (the kernel reports no XDP program on it)");
            "unknown"
        }
        Err(err) => {
            tracing::warn!("{err:#}");
            "unknown"
        }
    }
    .to_owned();
    let name = &target.name;
    tracing::info!(iface = %name, mode = %mode, "XDP on {name} runs in {mode} mode: {why}");
    XdpModeView { mode, why }
}
