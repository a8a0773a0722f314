//! What a running filter's pinned maps say about one destination: the policy the programs find
//! for it now, read the way they read it (the table state, then the range index's copy or the
//! trie it names, then the policy slot). `explain` answers from this, so it reports what the
//! kernel will do, not what the rules on disk would compile to.

use std::net::IpAddr;

use anyhow::Context as _;
use aya::maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData};
use filter_common::{
    maps as names,
    ranges::{state, RangeV6, TableState, CHUNKS, CHUNK_BITS},
    Ipv4KeyBytes, Ipv6KeyBytes, Policy, PolicyId,
};

use crate::{pins::PinDir, ranges::MappedArray, table::RuleSet};

/// Read-only handles on the pinned destination maps.
pub struct PinnedPolicy {
    table_state: Array<MapData, TableState>,
    index_v4: MappedArray<u64>,
    ranges_v4: MappedArray<u64>,
    index_v6: MappedArray<u64>,
    ranges_v6: MappedArray<RangeV6>,
    allow_v4: LpmTrie<MapData, Ipv4KeyBytes, PolicyId>,
    allow_v6: LpmTrie<MapData, Ipv6KeyBytes, PolicyId>,
    policies: Array<MapData, Policy>,
}

impl PinnedPolicy {
    /// Opens the maps of the filter pinned at `pins`.
    pub fn open(pins: &PinDir) -> anyhow::Result<Self> {
        let open = |name: &str| {
            MapData::from_pin(pins.map_path(name)).with_context(|| {
                format!(
                    "no filter is pinned at {} (map {name})",
                    pins.root().display()
                )
            })
        };
        let mapped = |name: &str| -> anyhow::Result<MappedArray<u64>> {
            let data = open(name)?;
            let len = data.info()?.max_entries() as usize;
            Ok(MappedArray::new(data, len)?)
        };
        let ranges_v6 = {
            let data = open(names::RANGES_V6)?;
            let len = data.info()?.max_entries() as usize;
            MappedArray::new(data, len)?
        };
        Ok(Self {
            table_state: Array::try_from(Map::Array(open(names::TABLE_STATE)?))?,
            index_v4: mapped(names::INDEX_V4)?,
            ranges_v4: mapped(names::RANGES_V4)?,
            index_v6: mapped(names::INDEX_V6)?,
            ranges_v6,
            allow_v4: LpmTrie::try_from(Map::LpmTrie(open(names::ALLOW_V4)?))?,
            allow_v6: LpmTrie::try_from(Map::LpmTrie(open(names::ALLOW_V6)?))?,
            policies: Array::try_from(Map::Array(open(names::POLICIES)?))?,
        })
    }

    /// The policy the programs find for `destination` now, with the rules in its slot; `None`
    /// where nothing covers it.
    pub fn lookup(&self, destination: IpAddr) -> anyhow::Result<Option<(PolicyId, RuleSet)>> {
        let table_state = self.table_state.get(&0, 0)?.bits;
        let policy = match destination {
            IpAddr::V4(address) if table_state & state::V4_TRIE != 0 => {
                self.allow_v4.get(&Key::new(32, address.octets()), 0).ok()
            }
            IpAddr::V4(address) => {
                let copy = u32::from(table_state & state::V4_COPY_1 != 0);
                let dst = u32::from(address);
                let run = run(&self.index_v4, copy, dst >> (32 - CHUNK_BITS))?;
                let ranges = read_run(&self.ranges_v4, run)?;
                let at = ranges.partition_point(|range| (range >> 32) as u32 <= dst);
                ranges
                    .get(at.wrapping_sub(1))
                    .and_then(|range| (*range as u32).checked_sub(1))
            }
            IpAddr::V6(address) if table_state & state::V6_TRIE != 0 => {
                self.allow_v6.get(&Key::new(128, address.octets()), 0).ok()
            }
            IpAddr::V6(address) => {
                let copy = u32::from(table_state & state::V6_COPY_1 != 0);
                let dst = u128::from(address);
                let run = run(&self.index_v6, copy, (dst >> (128 - CHUNK_BITS)) as u32)?;
                let ranges = read_run(&self.ranges_v6, run)?;
                let start = |r: &RangeV6| u128::from(r.start_hi) << 64 | u128::from(r.start_lo);
                let at = ranges.partition_point(|range| start(range) <= dst);
                ranges
                    .get(at.wrapping_sub(1))
                    .and_then(|range| range.value.checked_sub(1))
            }
        };
        let Some(id) = policy else { return Ok(None) };
        let slot = self
            .policies
            .get(&id, 0)
            .with_context(|| format!("policy slot {id} cannot be read"))?;
        Ok(Some((id, RuleSet::from_policy(&slot))))
    }
}

/// The run of ranges (first, count) that `copy`'s index names for `chunk`.
fn run(index: &MappedArray<u64>, copy: u32, chunk: u32) -> anyhow::Result<(usize, usize)> {
    let entry = index.read((copy * CHUNKS + chunk) as usize, 1)?[0];
    Ok(((entry as u32) as usize, (entry >> 32) as usize))
}

/// The ranges of a run, or an error when the index points outside the array (a damaged map:
/// the programs would find nothing there and drop).
fn read_run<T: Copy + Default>(
    ranges: &MappedArray<T>,
    (first, count): (usize, usize),
) -> anyhow::Result<Vec<T>> {
    anyhow::ensure!(
        first
            .checked_add(count)
            .is_some_and(|end| end <= ranges.len()),
        "the range index points past its array ({first} + {count}): the map is damaged"
    );
    Ok(ranges.read(first, count)?)
}
