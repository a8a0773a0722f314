//! The client-group table: which group each source address is in (`filter_common::groups`),
//! as sorted ranges in two copies per family, written like the destination index: the copy
//! packets do not read, its count, then the switch, which is the destination index's own.

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use filter_common::{
    groups::{group_count_entry, GROUP_RANGES_PER_COPY},
    maps as names,
    ranges::{state, RangeV6},
};
use ipnet::IpNet;

use super::{copies, take_map, MapWriteError};
use crate::{ranges, rules::Group};

/// Range starts and the group from each, over one family's address space.
pub(super) type GroupRanges = Vec<(u128, u32)>;

/// The group ranges and their counts. The copy bits live in `TABLE_STATE`, which
/// [`super::PolicyMaps`] switches: this writes only the copies packets do not read.
pub(super) struct GroupMaps {
    ranges_v4: Array<MapData, u64>,
    ranges_v6: Array<MapData, RangeV6>,
    counts: Array<MapData, u32>,
    /// What the copies `TABLE_STATE` names hold, as far as this writer knows: `None` until it
    /// wrote them (adopted maps are rewritten once).
    in_use: Option<(GroupRanges, GroupRanges)>,
}

impl GroupMaps {
    /// Takes the group maps out of a loaded object.
    pub(super) fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        Ok(Self {
            ranges_v4: take_map(ebpf, names::GROUP_RANGES_V4)?,
            ranges_v6: take_map(ebpf, names::GROUP_RANGES_V6)?,
            counts: take_map(ebpf, names::GROUP_STATE)?,
            in_use: None,
        })
    }

    /// Writes the ranges `groups` give into the copies `table_state` does not name, and returns
    /// the group bits of `TABLE_STATE` that name them; the bits of `table_state` unchanged when
    /// the copies in use already hold those ranges. The caller has waited out the grace period
    /// of the last switch, and switches; then [`GroupMaps::switched`].
    pub(super) fn stage(
        &mut self,
        groups: &[Group],
        table_state: u32,
    ) -> Result<(u32, Option<(GroupRanges, GroupRanges)>), MapWriteError> {
        let wanted = (group_ranges(groups, 4), group_ranges(groups, 6));
        let bits = table_state & state::GROUPS;
        if self.in_use.as_ref() == Some(&wanted) {
            return Ok((bits, None));
        }
        let mut new_bits = bits;
        for (family, ranges, copy_bit) in [
            (4, &wanted.0, state::GROUPS_V4_COPY_1),
            (6, &wanted.1, state::GROUPS_V6_COPY_1),
        ] {
            let copy = u32::from(bits & copy_bit == 0);
            let base = copy * GROUP_RANGES_PER_COPY;
            // Rules without groups: no range at all, and the kernel skips the search.
            let in_use = if ranges.iter().all(|&(_, group)| group == 0) {
                &[][..]
            } else {
                &ranges[..]
            };
            if family == 4 {
                for (offset, entry) in (0..).zip(copies::encode_v4(in_use)) {
                    self.write_v4(base + offset, entry)?;
                }
            } else {
                for (offset, entry) in (0..).zip(copies::encode_v6(in_use)) {
                    self.write_v6(base + offset, entry)?;
                }
            }
            let count = u32::try_from(in_use.len()).unwrap_or(u32::MAX);
            self.write_count(group_count_entry(family, copy), count)?;
            new_bits ^= copy_bit;
        }
        Ok((new_bits, Some(wanted)))
    }

    /// After the switch to what [`GroupMaps::stage`] wrote.
    pub(super) fn switched(&mut self, staged: Option<(GroupRanges, GroupRanges)>) {
        if let Some(staged) = staged {
            self.in_use = Some(staged);
        }
    }

    fn write_count(&mut self, index: u32, value: u32) -> Result<(), MapWriteError> {
        self.counts
            .set(index, value, 0)
            .map_err(|source| MapWriteError::Write {
                name: names::GROUP_STATE,
                what: format!("entry {index} = {value}"),
                source,
            })
    }

    fn write_v4(&mut self, index: u32, entry: u64) -> Result<(), MapWriteError> {
        self.ranges_v4
            .set(index, entry, 0)
            .map_err(|source| MapWriteError::Write {
                name: names::GROUP_RANGES_V4,
                what: format!("range {index}"),
                source,
            })
    }

    fn write_v6(&mut self, index: u32, entry: RangeV6) -> Result<(), MapWriteError> {
        self.ranges_v6
            .set(index, entry, 0)
            .map_err(|source| MapWriteError::Write {
                name: names::GROUP_RANGES_V6,
                what: format!("range {index}"),
                source,
            })
    }
}

/// The ranges of one family's group prefixes, each valued its group's number.
#[must_use]
pub fn group_ranges(groups: &[Group], family: u8) -> GroupRanges {
    let mut prefixes: Vec<(u128, u128, u8, u32)> = groups
        .iter()
        .flat_map(|group| group.sources.iter().map(move |net| (net, group.id)))
        .filter_map(|(net, id)| match (family, net) {
            (4, IpNet::V4(net)) => Some((
                u128::from(u32::from(net.network())),
                u128::from(u32::from(net.broadcast())),
                net.prefix_len(),
                id,
            )),
            (6, IpNet::V6(net)) => Some((
                u128::from(net.network()),
                u128::from(net.broadcast()),
                net.prefix_len(),
                id,
            )),
            _ => None,
        })
        .collect();
    // What the range builder asks: by first address, the shorter (outer) prefix first.
    prefixes.sort_unstable_by_key(|&(first, _, len, _)| (first, len));
    ranges::build(
        prefixes
            .into_iter()
            .map(|(first, last, _, id)| (first, last, id)),
        if family == 4 { 32 } else { 128 },
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::rules::Rules;

    fn groups(text: &str) -> Vec<Group> {
        Rules::parse_sources(&[(Path::new("g.toml"), text)])
            .expect("valid rules")
            .groups
    }

    #[test]
    fn the_longest_group_prefix_decides_and_other_sources_are_default() {
        let groups = groups(
            "[[group]]\nname = \"lan\"\nsources = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n\
             [[group]]\nname = \"lab\"\nsources = [\"10.9.0.0/16\"]\n\
             [[service]]\nname = \"s\"\ncidrs = [\"192.0.2.0/24\"]\ntcp = [443]\n",
        );
        let v4 = |a: [u8; 4]| u128::from(u32::from_be_bytes(a));
        assert_eq!(
            group_ranges(&groups, 4),
            vec![
                (0, 0),
                (v4([10, 0, 0, 0]), 1),
                (v4([10, 9, 0, 0]), 2),
                (v4([10, 10, 0, 0]), 1),
                (v4([11, 0, 0, 0]), 0),
            ]
        );
        let v6 = group_ranges(&groups, 6);
        assert_eq!(v6.len(), 3, "{v6:?}");
        assert_eq!(v6[1].1, 1);
    }
}
