//! Connections that outlive their address (`filter_common::flows`): the daemon marks an address
//! before it removes it, which lets the flows the programs recorded to it go on; and after a
//! whole-table update (a reload, a change of the host's own addresses, the start) it settles what
//! happens to the flows whose destination the update took away.

use filter_common::flows::{FlowCounter, FlowKey};

use super::FlowOptions;
use crate::{
    counters::Counters,
    maps::{
        flows::{flow_addresses, monotonic_ns, table_allows},
        FlowMaps,
    },
    rules::Group,
    table::{AllowTable, Grant},
};

/// Why the whole table was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The daemon started, maybe adopting a previous one's maps and flows.
    Start,
    /// The rules were reloaded.
    Reload,
    /// Anything else: the host's own addresses changed, or a failed write is caught up.
    Other,
}

/// What a whole-table update does to one flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Nothing changes for it: still allowed, or already living on its address's mark.
    Leave,
    /// Its destination went: mark the address, as an expiry would.
    MarkExpired,
    /// A reload took away what allowed it: close it.
    Close,
}

/// A flow as it stood before a whole-table update.
#[derive(Clone, Debug)]
pub struct Before {
    pub key: FlowKey,
    /// The name of the service that allowed it.
    pub service: Option<String>,
    /// Whether the table then allowed it.
    pub allowed: bool,
}

/// The fate of a flow across a whole-table update. A reload closes the flows it takes the
/// destination from, and those whose service it removes, unless told to keep them; any other
/// update treats a destination it takes away as expired. A daemon that starts cannot know what
/// its predecessor allowed, so it treats every flow its table does not allow as expired (the
/// flow was recorded only because an allowed packet started it).
#[must_use]
pub fn fate(
    before: &Before,
    allowed_now: bool,
    service_kept: bool,
    cause: Cause,
    keep_on_reload: bool,
) -> Fate {
    if allowed_now {
        return Fate::Leave;
    }
    match cause {
        Cause::Reload if !keep_on_reload && (before.allowed || !service_kept) => Fate::Close,
        Cause::Start => Fate::MarkExpired,
        _ if before.allowed => Fate::MarkExpired,
        _ => Fate::Leave,
    }
}

/// The flow maps and what the daemon was told about them.
pub struct FlowKeeper {
    maps: FlowMaps,
    options: FlowOptions,
    counters: Option<Counters>,
}

impl FlowKeeper {
    #[must_use]
    pub fn new(maps: FlowMaps, options: FlowOptions, counters: Option<Counters>) -> Self {
        Self {
            maps,
            options,
            counters,
        }
    }

    /// Before host routes are removed: marks their addresses, so the flows to them go on.
    pub fn before_removal(&mut self, removed: &[Grant]) {
        let addresses = removed
            .iter()
            .filter(|g| g.prefix.prefix_len() == g.prefix.max_prefix_len())
            .map(|g| g.prefix.addr());
        if let Err(err) = self.maps.mark_expired(addresses, monotonic_ns()) {
            tracing::warn!("cannot mark removed addresses for their connections: {err}");
        }
    }

    /// The flows as `table` (what the maps hold now) judges them, before a whole-table update.
    /// Marks the destinations of the flows it allows: a flow whose destination the update takes
    /// away must not find it gone and unmarked before [`FlowKeeper::after_update`] settles its
    /// fate (a mark on an address still allowed changes nothing).
    pub fn before_update(
        &mut self,
        table: &AllowTable,
        groups: &[Group],
        service_names: &[String],
        cause: Cause,
    ) -> Vec<Before> {
        let before: Vec<Before> = self
            .maps
            .flows()
            .into_iter()
            .map(|(key, state)| Before {
                allowed: table_allows(table, groups, &key),
                service: service_names.get(usize::from(state.service_id)).cloned(),
                key,
            })
            .collect();
        // A reload that closes what it removes needs no marks (and must not flood the bounded
        // marks with addresses that stay allowed).
        if cause == Cause::Reload && !self.options.keep_on_reload {
            return before;
        }
        let mut allowed: Vec<_> = before
            .iter()
            .filter(|flow| flow.allowed)
            .map(|flow| flow_addresses(&flow.key).1)
            .collect();
        allowed.sort_unstable();
        allowed.dedup();
        if let Err(err) = self.maps.mark_expired(allowed, monotonic_ns()) {
            tracing::warn!("cannot mark addresses for their connections: {err}");
        }
        before
    }

    /// After a whole-table update to `table`: closes or marks the flows it took the destination
    /// from (see [`fate`]), and points kept flows at their service's new id. Returns how many
    /// flows were closed.
    pub fn after_update(
        &mut self,
        before: Vec<Before>,
        table: &AllowTable,
        groups: &[Group],
        service_names: &[String],
        cause: Cause,
    ) -> usize {
        let now = monotonic_ns();
        let mut closed = 0;
        let mut to_mark = Vec::new();
        for flow in before {
            let new_id = flow
                .service
                .as_ref()
                .and_then(|name| service_names.iter().position(|n| n == name));
            let allowed_now = table_allows(table, groups, &flow.key);
            match fate(
                &flow,
                allowed_now,
                new_id.is_some(),
                cause,
                self.options.keep_on_reload,
            ) {
                Fate::Close => {
                    if self.maps.remove(&flow.key) {
                        closed += 1;
                    }
                    continue;
                }
                Fate::MarkExpired => {
                    let (_, dst) = flow_addresses(&flow.key);
                    // A mark already there (an address that expired before a restart) keeps
                    // its time: a restart must not lengthen a flow's idle window.
                    if cause != Cause::Start || self.maps.expired_at(dst).is_none() {
                        to_mark.push(dst);
                    }
                }
                Fate::Leave => {}
            }
            if let (Some(id), Some(mut state)) = (new_id, self.maps.get(&flow.key)) {
                if usize::from(state.service_id) != id {
                    state.service_id = u16::try_from(id).unwrap_or(u16::MAX);
                    let _ = self.maps.insert(flow.key, state);
                }
            }
        }
        to_mark.sort_unstable();
        to_mark.dedup();
        if let Err(err) = self.maps.mark_expired(to_mark, now) {
            tracing::warn!("cannot mark removed addresses for their connections: {err}");
        }
        if closed > 0 {
            tracing::info!(
                closed,
                "the reload closed {closed} connections to what it removed"
            );
            if let Some(counters) = &mut self.counters {
                if let Err(err) = counters.add_flow(FlowCounter::ClosedByReload, closed as u64) {
                    tracing::warn!("cannot count the connections a reload closed: {err:#}");
                }
            }
        }
        closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_across_whole_table_updates() {
        use Cause::{Other, Reload, Start};
        use Fate::{Close, Leave, MarkExpired};
        // (allowed before, allowed now, its service still there, cause, keep on reload, fate)
        let cases = [
            // Still allowed: nothing to do, whatever the cause.
            (true, true, true, Start, false, Leave),
            (true, true, true, Reload, false, Leave),
            (true, true, true, Other, false, Leave),
            // A reload that takes the destination away closes, unless told to keep.
            (true, false, true, Reload, false, Close),
            (true, false, true, Reload, true, MarkExpired),
            // Already kept past its address's expiry: its service going closes it; its service
            // staying, or keeping flows, leaves it as it was.
            (false, false, false, Reload, false, Close),
            (false, false, true, Reload, false, Leave),
            (false, false, false, Reload, true, Leave),
            // Other updates treat a destination they take away as expired.
            (true, false, true, Other, false, MarkExpired),
            (false, false, true, Other, false, Leave),
            // A start cannot know what its predecessor allowed: what it does not allow expired.
            (false, false, true, Start, false, MarkExpired),
        ];
        for (allowed, allowed_now, service_kept, cause, keep, want) in cases {
            let before = Before {
                key: FlowKey::default(),
                service: Some("push".into()),
                allowed,
            };
            assert_eq!(
                fate(&before, allowed_now, service_kept, cause, keep),
                want,
                "allowed {allowed} -> {allowed_now}, service kept {service_kept}, {cause:?}, \
                 keep {keep}"
            );
        }
    }
}
