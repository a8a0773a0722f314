//! Writing a whole table into the free copy of a family's range index (steps 3 and 4 of the
//! update in the module docs of [`super`]), or into its trie when it outgrew a copy; and the
//! encoding of ranges both this and the other writers of the index share.

use std::collections::BTreeMap;

use filter_common::{
    maps as names,
    ranges::{range_v4, state, RangeV6, CHUNKS, RANGES_PER_COPY},
    PolicyId,
};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{key_v4, key_v6, mmap_err, sync_family, MapWriteError, PolicyMaps};
use crate::{ranges, table::AllowTable};

impl PolicyMaps {
    /// Writes IPv4's free copy (or its trie, when the table outgrew a copy); returns the state
    /// that switches to it.
    pub(super) fn write_v4(
        &mut self,
        wanted_v4: &BTreeMap<Ipv4Net, PolicyId>,
        table: &AllowTable,
    ) -> Result<u32, MapWriteError> {
        let mut new_state = self.state;
        let v4_ranges = ranges_v4(wanted_v4);
        let v4_copy = u32::from(self.state & state::V4_COPY_1 == 0);
        if let Some(chunked) = ranges::chunk(&v4_ranges, 32, v4_copy) {
            let entries = encode_v4(&chunked.ranges);
            self.ranges_v4
                .write((v4_copy * RANGES_PER_COPY) as usize, &entries)
                .map_err(mmap_err(names::RANGES_V4))?;
            self.index_v4
                .write((v4_copy * CHUNKS) as usize, &chunked.index)
                .map_err(mmap_err(names::INDEX_V4))?;
            new_state = (new_state & !(state::V4_COPY_1 | state::V4_TRIE))
                | if v4_copy == 1 { state::V4_COPY_1 } else { 0 };
            self.tail_v4 = Some(v4_copy * RANGES_PER_COPY + chunked.ranges.len() as u32);
        } else {
            self.tail_v4 = None;
            sync_family(
                &mut self.allow_v4,
                names::ALLOW_V4,
                &mut self.written_v4,
                &table.v4,
                &self.slots,
                key_v4,
            )?;
            new_state |= state::V4_TRIE;
        }
        Ok(new_state)
    }

    /// Writes IPv6's free copy (or its trie); returns `new_state` switched to it.
    pub(super) fn write_v6(
        &mut self,
        wanted_v6: &BTreeMap<Ipv6Net, PolicyId>,
        table: &AllowTable,
        mut new_state: u32,
    ) -> Result<u32, MapWriteError> {
        let v6_ranges = ranges_v6(wanted_v6);
        let v6_copy = u32::from(self.state & state::V6_COPY_1 == 0);
        if let Some(chunked) = ranges::chunk(&v6_ranges, 128, v6_copy) {
            let entries = encode_v6(&chunked.ranges);
            self.ranges_v6
                .write((v6_copy * RANGES_PER_COPY) as usize, &entries)
                .map_err(mmap_err(names::RANGES_V6))?;
            self.index_v6
                .write((v6_copy * CHUNKS) as usize, &chunked.index)
                .map_err(mmap_err(names::INDEX_V6))?;
            new_state = (new_state & !(state::V6_COPY_1 | state::V6_TRIE))
                | if v6_copy == 1 { state::V6_COPY_1 } else { 0 };
            self.tail_v6 = Some(v6_copy * RANGES_PER_COPY + chunked.ranges.len() as u32);
        } else {
            self.tail_v6 = None;
            sync_family(
                &mut self.allow_v6,
                names::ALLOW_V6,
                &mut self.written_v6,
                &table.v6,
                &self.slots,
                key_v6,
            )?;
            new_state |= state::V6_TRIE;
        }
        Ok(new_state)
    }
}

/// IPv4 prefixes as the ranges of the index, each valued its policy id + 1 (0: no policy).
pub(super) fn ranges_v4(wanted: &BTreeMap<Ipv4Net, PolicyId>) -> Vec<(u128, u32)> {
    ranges::build(
        wanted.iter().map(|(net, id)| {
            (
                u128::from(u32::from(net.network())),
                u128::from(u32::from(net.broadcast())),
                id + 1,
            )
        }),
        32,
    )
}

/// The same for IPv6.
pub(super) fn ranges_v6(wanted: &BTreeMap<Ipv6Net, PolicyId>) -> Vec<(u128, u32)> {
    ranges::build(
        wanted.iter().map(|(net, id)| {
            (
                u128::from(net.network()),
                u128::from(net.broadcast()),
                id + 1,
            )
        }),
        128,
    )
}

/// IPv4 ranges as the entries of `RANGES_V4`.
pub(super) fn encode_v4(ranges: &[(u128, u32)]) -> Vec<u64> {
    ranges
        .iter()
        .map(|&(start, value)| range_v4(start as u32, value))
        .collect()
}

/// IPv6 ranges as the entries of `RANGES_V6`.
pub(super) fn encode_v6(ranges: &[(u128, u32)]) -> Vec<RangeV6> {
    ranges
        .iter()
        .map(|&(start, value)| RangeV6 {
            start_hi: (start >> 64) as u64,
            start_lo: start as u64,
            value,
            _pad: 0,
        })
        .collect()
}
