//! Adopting maps a previous daemon left pinned: what they hold becomes this writer's
//! bookkeeping, so the first update after a restart changes only what differs (and writes
//! nothing when the rules are the same).

use std::collections::{BTreeMap, BTreeSet};

use filter_common::{
    maps as names,
    ranges::{state, CHUNKS, RANGES_PER_COPY},
    PolicyId,
};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{
    copies::{encode_v4, encode_v6, ranges_v4, ranges_v6},
    mmap_err, MapWriteError, PolicyMaps,
};
use crate::{
    ranges::{self, MappedArray},
    table::RuleSet,
};

impl PolicyMaps {
    /// Fills the bookkeeping from what the maps hold.
    pub(super) fn read_existing(&mut self) -> Result<(), MapWriteError> {
        let read_err = |name: &'static str| {
            move |source| MapWriteError::Write {
                name,
                what: "a read".into(),
                source,
            }
        };
        for entry in &self.allow_v4 {
            let (key, id) = entry.map_err(read_err(names::ALLOW_V4))?;
            if let Ok(net) = Ipv4Net::new(key.data().into(), key.prefix_len() as u8) {
                self.written_v4.insert(net, id);
            }
        }
        for entry in &self.allow_v6 {
            let (key, id) = entry.map_err(read_err(names::ALLOW_V6))?;
            if let Ok(net) = Ipv6Net::new(key.data().into(), key.prefix_len() as u8) {
                self.written_v6.insert(net, id);
            }
        }
        let mut ids: BTreeSet<PolicyId> = self
            .written_v4
            .values()
            .chain(self.written_v6.values())
            .copied()
            .collect();
        let active_ids = self.ids_in_active_copies()?;
        // Copies that name policies were written by an earlier writer: adopted.
        self.adopted = !active_ids.is_empty();
        ids.extend(active_ids);
        for id in ids {
            let policy = self
                .policies
                .get(&id, 0)
                .map_err(read_err(names::POLICIES))?;
            self.slots.adopt(id, RuleSet::from_policy(&policy));
        }
        Ok(())
    }

    /// The policy ids the copies packets read name.
    fn ids_in_active_copies(&self) -> Result<BTreeSet<PolicyId>, MapWriteError> {
        fn ids_of<R: Copy + Default>(
            index: &MappedArray<u64>,
            index_name: &'static str,
            ranges: &MappedArray<R>,
            ranges_name: &'static str,
            copy: u32,
            value: impl Fn(&R) -> u32,
            ids: &mut BTreeSet<PolicyId>,
        ) -> Result<(), MapWriteError> {
            let entries = index
                .read((copy * CHUNKS) as usize, CHUNKS as usize)
                .map_err(mmap_err(index_name))?;
            // Read only as far as the index names (nothing, for fresh maps).
            let used = entries
                .iter()
                .map(|entry| {
                    (*entry as u32).saturating_sub(copy * RANGES_PER_COPY) as usize
                        + (*entry >> 32) as usize
                })
                .max()
                .unwrap_or(0)
                .min(RANGES_PER_COPY as usize);
            let copy_ranges = ranges
                .read((copy * RANGES_PER_COPY) as usize, used)
                .map_err(mmap_err(ranges_name))?;
            for entry in entries {
                let first = (entry as u32).saturating_sub(copy * RANGES_PER_COPY) as usize;
                let count = (entry >> 32) as usize;
                for range in copy_ranges.get(first..first + count).unwrap_or(&[]) {
                    if let Some(id) = value(range).checked_sub(1) {
                        ids.insert(id);
                    }
                }
            }
            Ok(())
        }
        let mut ids = BTreeSet::new();
        ids_of(
            &self.index_v4,
            names::INDEX_V4,
            &self.ranges_v4,
            names::RANGES_V4,
            u32::from(self.state & state::V4_COPY_1 != 0),
            |range| *range as u32,
            &mut ids,
        )?;
        ids_of(
            &self.index_v6,
            names::INDEX_V6,
            &self.ranges_v6,
            names::RANGES_V6,
            u32::from(self.state & state::V6_COPY_1 != 0),
            |range| range.value,
            &mut ids,
        )?;
        Ok(ids)
    }

    /// Whether the copies packets read hold exactly these tables; then where their ranges end.
    pub(super) fn active_copies_hold(
        &self,
        wanted_v4: &BTreeMap<Ipv4Net, PolicyId>,
        wanted_v6: &BTreeMap<Ipv6Net, PolicyId>,
    ) -> Result<Option<(u32, u32)>, MapWriteError> {
        if self.state & (state::V4_TRIE | state::V6_TRIE) != 0 {
            return Ok(None);
        }
        let copy_v4 = u32::from(self.state & state::V4_COPY_1 != 0);
        let copy_v6 = u32::from(self.state & state::V6_COPY_1 != 0);
        let (Some(chunked_v4), Some(chunked_v6)) = (
            ranges::chunk(&ranges_v4(wanted_v4), 32, copy_v4),
            ranges::chunk(&ranges_v6(wanted_v6), 128, copy_v6),
        ) else {
            return Ok(None);
        };
        let encoded_v4 = encode_v4(&chunked_v4.ranges);
        let encoded_v6 = encode_v6(&chunked_v6.ranges);
        let tail_v4 = runs_match(
            &self.index_v4,
            &self.ranges_v4,
            copy_v4,
            &chunked_v4.index,
            &encoded_v4,
        )
        .map_err(mmap_err(names::RANGES_V4))?;
        let tail_v6 = runs_match(
            &self.index_v6,
            &self.ranges_v6,
            copy_v6,
            &chunked_v6.index,
            &encoded_v6,
        )
        .map_err(mmap_err(names::RANGES_V6))?;
        Ok(tail_v4.zip(tail_v6))
    }
}

/// Whether copy `copy` of an index and its ranges gives every chunk the run `index`/`ranges`
/// (built for the same copy) give it; then where the copy's ranges end.
fn runs_match<R: Copy + Default + PartialEq>(
    index: &MappedArray<u64>,
    ranges: &MappedArray<R>,
    copy: u32,
    wanted_index: &[u64],
    wanted_ranges: &[R],
) -> std::io::Result<Option<u32>> {
    let base = copy * RANGES_PER_COPY;
    let present_index = index.read((copy * CHUNKS) as usize, CHUNKS as usize)?;
    let tail = present_index
        .iter()
        .map(|entry| (*entry as u32).saturating_add((*entry >> 32) as u32))
        .max()
        .unwrap_or(base)
        .clamp(base, base + RANGES_PER_COPY);
    let present = ranges.read(base as usize, (tail - base) as usize)?;
    for (have, want) in present_index.iter().zip(wanted_index) {
        let run = |entry: u64, list: &[R]| {
            let first = (entry as u32).saturating_sub(base) as usize;
            list.get(first..first + (entry >> 32) as usize)
                .map(<[R]>::to_vec)
        };
        match (run(*have, &present), run(*want, wanted_ranges)) {
            (Some(have), Some(want)) if have == want => {}
            _ => return Ok(None),
        }
    }
    Ok(Some(tail))
}
