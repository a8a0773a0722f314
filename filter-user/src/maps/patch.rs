//! Host-route changes (resolved and learned addresses) written in place: a new run per chunk
//! they touch, appended behind the ranges packets read and switched in with one aligned store,
//! so no packet waits for a grace period (see the module docs of [`super`]).

use std::collections::{BTreeMap, BTreeSet};

use filter_common::{
    maps as names,
    ranges::{index_entry, state, CHUNKS, RANGES_PER_COPY},
    PolicyId,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    copies::{encode_v4, encode_v6},
    mmap_err, ApplyStats, MapWriteError, PolicyMaps,
};
use crate::{ranges, table::AllowTable};

impl PolicyMaps {
    /// Brings the kernel's view to `table` after [`AllowTable::update_hosts`] changed the
    /// prefixes in `changed`. The index is rewritten whole (a copy is written as memory, far
    /// cheaper than the map updates it replaces), so this is [`PolicyMaps::apply`]; the stats
    /// count what differs, as before.
    pub fn apply_changes(
        &mut self,
        table: &AllowTable,
        changed: &[IpNet],
    ) -> Result<ApplyStats, MapWriteError> {
        let (written, deleted) = changed
            .iter()
            .partition::<Vec<&IpNet>, _>(|prefix| table.entry(**prefix).is_some());
        let stats = match self.patch_hosts(table, changed)? {
            Some(stats) => stats,
            None => self.apply_counting(table, false)?,
        };
        Ok(ApplyStats {
            prefixes_written: written.len(),
            prefixes_deleted: deleted.len(),
            ..stats
        })
    }

    /// Host routes changed: each chunk they fall in gets a new run appended behind the ranges of
    /// the copy packets read, and its index entry is switched to it with one aligned store. No
    /// packet waits and no copy is rewritten; the old runs stay untouched until the next whole
    /// update rewrites the copy (after a grace period). Slots are not released here, so none is
    /// reused while a packet may still read an old run. `None` when this cannot be done (a
    /// family on its trie, a copy not written by this writer, no room left): then `apply`.
    fn patch_hosts(
        &mut self,
        table: &AllowTable,
        changed: &[IpNet],
    ) -> Result<Option<ApplyStats>, MapWriteError> {
        let (Some(mut tail_v4), Some(mut tail_v6)) = (self.tail_v4, self.tail_v6) else {
            return Ok(None);
        };
        if self.state & (state::V4_TRIE | state::V6_TRIE) != 0 {
            return Ok(None);
        }
        let mut stats = ApplyStats::default();
        for prefix in changed {
            if let Some(rules) = table.entry(*prefix) {
                if self.slots.id_of(rules).is_none() {
                    // A free slot may be one the last whole update released: reuse it only
                    // once no packet can still read the runs that named it.
                    self.settle();
                    self.write_policy(rules)?;
                    stats.policies_written += 1;
                }
            }
        }
        let mut chunks_v4 = BTreeSet::new();
        let mut chunks_v6 = BTreeSet::new();
        for prefix in changed {
            let id = table
                .entry(*prefix)
                .and_then(|rules| self.slots.id_of(rules));
            match *prefix {
                IpNet::V4(net) => {
                    match id {
                        Some(id) => self.current_v4.insert(net, id),
                        None => self.current_v4.remove(&net),
                    };
                    chunks_v4.insert(u128::from(u32::from(net.network())) >> 16);
                }
                IpNet::V6(net) => {
                    match id {
                        Some(id) => self.current_v6.insert(net, id),
                        None => self.current_v6.remove(&net),
                    };
                    chunks_v6.insert(u128::from(net.network()) >> 112);
                }
            }
        }
        let v4_copy = u32::from(self.state & state::V4_COPY_1 != 0);
        for chunk in chunks_v4 {
            let run = ranges::chunk_run(
                entries_in_chunk_v4(&self.current_v4, chunk as u32),
                32,
                chunk,
            );
            let end = tail_v4 + run.len() as u32;
            if end > (v4_copy + 1) * RANGES_PER_COPY {
                return Ok(None);
            }
            let entries = encode_v4(&run);
            self.ranges_v4
                .write(tail_v4 as usize, &entries)
                .map_err(mmap_err(names::RANGES_V4))?;
            self.index_v4
                .store(
                    (v4_copy * CHUNKS) as usize + chunk as usize,
                    index_entry(tail_v4, run.len() as u32),
                )
                .map_err(mmap_err(names::INDEX_V4))?;
            tail_v4 = end;
            self.tail_v4 = Some(tail_v4);
        }
        let v6_copy = u32::from(self.state & state::V6_COPY_1 != 0);
        for chunk in chunks_v6 {
            let run = ranges::chunk_run(
                entries_in_chunk_v6(&self.current_v6, chunk as u16),
                128,
                chunk,
            );
            let end = tail_v6 + run.len() as u32;
            if end > (v6_copy + 1) * RANGES_PER_COPY {
                return Ok(None);
            }
            let entries = encode_v6(&run);
            self.ranges_v6
                .write(tail_v6 as usize, &entries)
                .map_err(mmap_err(names::RANGES_V6))?;
            self.index_v6
                .store(
                    (v6_copy * CHUNKS) as usize + chunk as usize,
                    index_entry(tail_v6, run.len() as u32),
                )
                .map_err(mmap_err(names::INDEX_V6))?;
            tail_v6 = end;
            self.tail_v6 = Some(tail_v6);
        }
        Ok(Some(stats))
    }
}

/// Every IPv4 prefix overlapping chunk `chunk` (the top 16 bits), as (first, last, value): the
/// ones inside it and the longest one covering all of it.
fn entries_in_chunk_v4(
    current: &BTreeMap<Ipv4Net, PolicyId>,
    chunk: u32,
) -> Vec<(u128, u128, u32)> {
    let start = std::net::Ipv4Addr::from(chunk << 16);
    let last = std::net::Ipv4Addr::from(chunk << 16 | 0xffff);
    let covering = (0..16u8)
        .rev()
        .filter_map(|len| Ipv4Net::new(start, len).ok().map(|n| n.trunc()))
        .find(|net| current.contains_key(net));
    let inside =
        current.range(Ipv4Net::new(start, 0).expect("/0")..=Ipv4Net::new(last, 32).expect("/32"));
    covering
        .and_then(|net| current.get(&net).map(|id| (net, *id)))
        .into_iter()
        .chain(inside.map(|(net, id)| (*net, *id)))
        .map(|(net, id)| {
            (
                u128::from(u32::from(net.network())),
                u128::from(u32::from(net.broadcast())),
                id + 1,
            )
        })
        .collect()
}

/// The same for IPv6.
fn entries_in_chunk_v6(
    current: &BTreeMap<Ipv6Net, PolicyId>,
    chunk: u16,
) -> Vec<(u128, u128, u32)> {
    let start = std::net::Ipv6Addr::from(u128::from(chunk) << 112);
    let last = std::net::Ipv6Addr::from(u128::from(chunk) << 112 | (u128::MAX >> 16));
    let covering = (0..16u8)
        .rev()
        .filter_map(|len| Ipv6Net::new(start, len).ok().map(|n| n.trunc()))
        .find(|net| current.contains_key(net));
    let inside =
        current.range(Ipv6Net::new(start, 0).expect("/0")..=Ipv6Net::new(last, 128).expect("/128"));
    covering
        .and_then(|net| current.get(&net).map(|id| (net, *id)))
        .into_iter()
        .chain(inside.map(|(net, id)| (*net, *id)))
        .map(|(net, id)| {
            (
                u128::from(net.network()),
                u128::from(net.broadcast()),
                id + 1,
            )
        })
        .collect()
}
