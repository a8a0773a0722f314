//! The client-group table: which group each source address is in (`filter_common::groups`),
//! as sorted ranges and a chunk index over their window in two copies per family, written like
//! the destination index: the copy packets do not read, its count, then the switch, which is
//! the destination index's own.

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use filter_common::{
    groups::{
        chunk_entry, group_direct, group_run, group_window_entry, run_parts, GroupWindow,
        GROUP_CHUNKS, GROUP_CHUNK_BITS, GROUP_ENTRY_DIRECT, GROUP_INDEX_PER_COPY,
        GROUP_RANGES_PER_COPY, GROUP_WINDOW_ENTRIES,
    },
    maps as names,
    ranges::{state, RangeV6},
};
use ipnet::IpNet;

use super::{copies, mmap_err, take_map, take_mapped, MapWriteError};
use crate::{
    ranges::{self, MappedArray},
    rules::Group,
};

/// Range starts and the group from each, over one family's address space.
pub(super) type GroupRanges = Vec<(u128, u32)>;

/// The group ranges and their index. The copy bits and the windows live in `TABLE_STATE`, which
/// [`super::PolicyMaps`] writes and switches: this writes only the copies packets do not read.
pub(super) struct GroupMaps {
    ranges_v4: Array<MapData, u64>,
    ranges_v6: Array<MapData, RangeV6>,
    index_v4: MappedArray<u64>,
    index_v6: MappedArray<u64>,
    /// What the copies `TABLE_STATE` names hold, as far as this writer knows: `None` until it
    /// wrote them (adopted maps are rewritten once).
    in_use: Option<(GroupRanges, GroupRanges)>,
}

impl GroupMaps {
    /// Takes the group maps out of a loaded object.
    pub(super) fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        let mapped = |ebpf: &mut Ebpf, name| take_mapped(ebpf, name, 2 * GROUP_INDEX_PER_COPY);
        Ok(Self {
            ranges_v4: take_map(ebpf, names::GROUP_RANGES_V4)?,
            ranges_v6: take_map(ebpf, names::GROUP_RANGES_V6)?,
            index_v4: mapped(ebpf, names::GROUP_INDEX_V4)?,
            index_v6: mapped(ebpf, names::GROUP_INDEX_V6)?,
            in_use: None,
        })
    }

    /// Writes the ranges `groups` give into the copies `table_state` does not name, puts their
    /// windows into `windows` (the `TABLE_STATE` windows, for the caller to write), and returns
    /// the group bits of `TABLE_STATE` that name them; the bits of `table_state` and `windows`
    /// unchanged when the copies in use already hold those ranges. The caller has waited out
    /// the grace period of the last switch, writes the windows, and switches; then
    /// [`GroupMaps::switched`].
    pub(super) fn stage(
        &mut self,
        groups: &[Group],
        table_state: u32,
        windows: &mut [GroupWindow; GROUP_WINDOW_ENTRIES as usize],
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
            let width = if family == 4 { 32 } else { 128 };
            let index = group_index(in_use, width);
            let (index_map, index_name) = if family == 4 {
                for (offset, entry) in (0..).zip(copies::encode_v4(in_use)) {
                    set_entry(
                        &mut self.ranges_v4,
                        names::GROUP_RANGES_V4,
                        base + offset,
                        entry,
                    )?;
                }
                (&mut self.index_v4, names::GROUP_INDEX_V4)
            } else {
                for (offset, entry) in (0..).zip(copies::encode_v6(in_use)) {
                    set_entry(
                        &mut self.ranges_v6,
                        names::GROUP_RANGES_V6,
                        base + offset,
                        entry,
                    )?;
                }
                (&mut self.index_v6, names::GROUP_INDEX_V6)
            };
            let count = u32::try_from(in_use.len()).unwrap_or(u32::MAX);
            if count != 0 {
                index_map
                    .write(
                        (copy * GROUP_INDEX_PER_COPY) as usize,
                        &index.encode(base, in_use),
                    )
                    .map_err(mmap_err(index_name))?;
            }
            windows[group_window_entry(family, copy) as usize] = index.window(count);
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
}

/// Writes `value` at `index` of the array map `name`, naming both in the error.
fn set_entry<T: aya::Pod>(
    array: &mut Array<MapData, T>,
    name: &'static str,
    index: u32,
    value: T,
) -> Result<(), MapWriteError> {
    array
        .set(index, value, 0)
        .map_err(|source| MapWriteError::Write {
            name,
            what: format!("entry {index}"),
            source,
        })
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

/// Where a family's group chunks lie and which run of ranges each reads
/// (`filter_common::groups`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupIndex {
    /// The window's first address.
    pub base: u128,
    /// The window's last address.
    pub end: u128,
    /// The window's prefix length.
    pub shift: u32,
    /// The address space's width: 32 or 128.
    pub width: u32,
    /// Per chunk, the first range of its run (counted from the copy's first) and how many.
    pub runs: Vec<(u32, u32)>,
}

impl GroupIndex {
    /// The index entries of a copy holding `ranges`, whose first range is range `copy_base` of
    /// the array: a chunk inside one range holds that range's group, others their run.
    #[must_use]
    pub fn encode(&self, copy_base: u32, ranges: &[(u128, u32)]) -> Vec<u64> {
        let entry = |&(first, count): &(u32, u32)| {
            u64::from(if count == 1 {
                group_direct(ranges[first as usize].1)
            } else {
                group_run(copy_base + first, count)
            })
        };
        self.runs
            .chunks(2)
            .map(|pair| entry(&pair[0]) | entry(&pair[1]) << 32)
            .collect()
    }

    /// The window of a copy holding `count` ranges, as the kernel reads it.
    #[must_use]
    pub fn window(&self, count: u32) -> GroupWindow {
        let mask = !(u128::MAX >> self.shift) >> (128 - self.width);
        GroupWindow {
            mask_hi: (mask >> 64) as u64,
            mask_lo: mask as u64,
            base_hi: (self.base >> 64) as u64,
            base_lo: self.base as u64,
            end_hi: (self.end >> 64) as u64,
            end_lo: self.end as u64,
            shift: self.shift,
            count,
        }
    }
}

/// The chunk index of `ranges` (sorted, the first at 0) over an address space of `width` bits.
/// Its window is the smallest aligned block holding every range start but the first, widened
/// to leave [`GROUP_CHUNK_BITS`] bits below its prefix; each chunk's run starts with the range
/// holding the chunk's first address and ends with the last starting within the chunk.
#[must_use]
pub fn group_index(ranges: &[(u128, u32)], width: u32) -> GroupIndex {
    let space_end = u128::MAX >> (128 - width);
    let shift = match (ranges.get(1), ranges.last()) {
        (Some(&(low, _)), Some(&(high, _))) => {
            ((low ^ high).leading_zeros() - (128 - width)).min(width - GROUP_CHUNK_BITS)
        }
        // One range (or none): every source reads it, wherever the window lies.
        _ => 0,
    };
    let host_bits = space_end >> shift;
    let base = ranges.get(1).map_or(0, |&(low, _)| low & !host_bits);
    let chunk_bits = width - shift - GROUP_CHUNK_BITS;
    let runs = (0..u128::from(GROUP_CHUNKS))
        .map(|chunk| {
            let first_address = base + (chunk << chunk_bits);
            let last_address = first_address + ((1u128 << chunk_bits) - 1);
            let first = ranges
                .partition_point(|&(start, _)| start <= first_address)
                .saturating_sub(1);
            let end = ranges.partition_point(|&(start, _)| start <= last_address);
            (first as u32, end.saturating_sub(first) as u32)
        })
        .collect();
    GroupIndex {
        base,
        end: base | host_bits,
        shift,
        width,
        runs,
    }
}

/// The group of `address` the kernel's way, from the index `entries` of a copy starting at
/// range 0 ([`GroupIndex::encode`]): outside the window the first or the last range, inside
/// the group its chunk's entry holds or the run it names (`filter_common::groups`).
#[must_use]
pub fn find_group(
    index: &GroupIndex,
    entries: &[u64],
    ranges: &[(u128, u32)],
    address: u128,
    width: u32,
) -> u32 {
    let space_end = u128::MAX >> (128 - width);
    let (first, count) = if address < index.base {
        (0, 1)
    } else if address > index.end {
        (ranges.len() as u32 - 1, 1)
    } else {
        let chunk = (((address << index.shift) & space_end) >> (width - GROUP_CHUNK_BITS)) as u32;
        let entry = chunk_entry(entries[(chunk / 2) as usize], chunk);
        if entry & GROUP_ENTRY_DIRECT != 0 {
            return entry & !GROUP_ENTRY_DIRECT;
        }
        run_parts(entry)
    };
    let run = &ranges[first as usize..(first + count) as usize];
    assert!(
        run.first().is_some_and(|&(start, _)| start <= address),
        "the run of {address:#x} starts above it"
    );
    let at = run.partition_point(|&(start, _)| start <= address);
    run[at - 1].1
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

#[cfg(test)]
mod index_tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use ipnet::{Ipv4Net, Ipv6Net};

    use super::*;
    use crate::rules::groups::group_of;

    struct Random(u64);

    impl Random {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn wide(&mut self) -> u128 {
            u128::from(self.next()) << 64 | u128::from(self.next())
        }
    }

    /// `prefixes` spread over 40 groups (each prefix once).
    fn groups_of(prefixes: &[IpNet], random: &mut Random) -> Vec<Group> {
        let mut groups: Vec<Group> = (1..=40)
            .map(|id| Group::numbered(id, "random.toml"))
            .collect();
        let mut seen = std::collections::BTreeSet::new();
        for net in prefixes {
            if seen.insert(net.trunc()) {
                groups[(random.next() % 40) as usize]
                    .sources
                    .push(net.trunc());
            }
        }
        groups
    }

    fn address(family: u8, value: u128) -> IpAddr {
        if family == 4 {
            Ipv4Addr::from(value as u32).into()
        } else {
            Ipv6Addr::from(value).into()
        }
    }

    /// Every probe's group through the chunk index equals the slow definition: each prefix's
    /// edges and their neighbours, a random address inside, the window's edges and neighbours,
    /// the first and last address of some chunks and their neighbours, both ends of the space.
    fn check(groups: &[Group], random: &mut Random) -> usize {
        let mut checked = 0;
        for family in [4, 6] {
            let width = if family == 4 { 32 } else { 128 };
            let space_end = u128::MAX >> (128 - width);
            let ranges = group_ranges(groups, family);
            let index = group_index(&ranges, width);
            let entries = index.encode(0, &ranges);
            assert!(index.shift <= width - GROUP_CHUNK_BITS);
            assert_eq!(index.runs.len(), GROUP_CHUNKS as usize);
            let mut probes = vec![0, space_end, index.base, index.end];
            for net in groups.iter().flat_map(|g| &g.sources) {
                let (first, last) = match net {
                    IpNet::V4(n) if family == 4 => (
                        u128::from(u32::from(n.network())),
                        u128::from(u32::from(n.broadcast())),
                    ),
                    IpNet::V6(n) if family == 6 => {
                        (u128::from(n.network()), u128::from(n.broadcast()))
                    }
                    _ => continue,
                };
                probes.extend([
                    first,
                    last,
                    first + random.wide() % (last - first).saturating_add(1),
                ]);
            }
            let chunk_bits = width - index.shift - GROUP_CHUNK_BITS;
            for _ in 0..64 {
                let chunk = random.wide() % u128::from(GROUP_CHUNKS);
                let first = index.base + (chunk << chunk_bits);
                probes.extend([first, first + ((1u128 << chunk_bits) - 1)]);
            }
            for probe in probes.clone() {
                probes.extend([
                    probe.wrapping_sub(1) & space_end,
                    probe.wrapping_add(1) & space_end,
                ]);
            }
            for probe in probes {
                let address = address(family, probe);
                let expected = group_of(groups, address);
                let found = if ranges.iter().all(|&(_, group)| group == 0) {
                    // What the kernel does for a copy without ranges.
                    0
                } else {
                    find_group(&index, &entries, &ranges, probe, width)
                };
                assert_eq!(found, expected, "source {address}, window {index:?}");
                checked += 1;
            }
        }
        checked
    }

    fn v4(address: u32, len: u32) -> IpNet {
        IpNet::V4(Ipv4Net::new(address.into(), len as u8).expect("length"))
    }

    fn v6(address: u128, len: u32) -> IpNet {
        IpNet::V6(Ipv6Net::new(address.into(), len as u8).expect("length"))
    }

    #[test]
    fn the_chunk_index_gives_the_longest_prefix_for_nested_random_prefixes() {
        let mut random = Random(0x9e37_79b9_7f4a_7c15);
        for round in 0..40 {
            let mut prefixes = Vec::new();
            let count = 1 + random.next() % 300;
            for _ in 0..count {
                // Inside one site prefix (nested and disjoint ones), or anywhere.
                let anywhere = round % 4 == 3;
                let a4 = if anywhere {
                    random.next() as u32
                } else {
                    0x0a00_0000 | (random.next() as u32 & 0x00ff_ffff)
                };
                let a6 = if anywhere {
                    random.wide()
                } else {
                    0xfd00_u128 << 112 | u128::from(random.next()) << 48
                };
                prefixes.push(v4(
                    a4,
                    if anywhere { 1 } else { 9 } + (random.next() % 24) as u32,
                ));
                prefixes.push(v6(
                    a6,
                    if anywhere { 1 } else { 17 } + (random.next() % 112) as u32,
                ));
            }
            let groups = groups_of(&prefixes, &mut random);
            assert!(check(&groups, &mut random) > 0);
        }
    }

    #[test]
    fn the_chunk_index_handles_whole_spaces_single_addresses_and_chunk_edges() {
        let mut random = Random(0x2545_f491_4f6c_dd1d);
        let site6 = 0x2001_0db8_0012_u128 << 80;
        let cases: Vec<Vec<IpNet>> = vec![
            // /0 alone, and /0 around nested prefixes.
            vec![v4(0, 0), v6(0, 0)],
            vec![
                v4(0, 0),
                v4(0x0a00_0000, 8),
                v4(0x0a01_0203, 32),
                v6(0, 0),
                v6(site6, 48),
            ],
            // Single addresses, adjacent and at both ends of the space.
            vec![
                v4(0, 32),
                v4(0x0a00_0001, 32),
                v4(0x0a00_0002, 32),
                v4(u32::MAX, 32),
                v6(0, 128),
                v6(site6 | 1, 128),
                v6(site6 | 2, 128),
                v6(u128::MAX, 128),
            ],
            // One prefix: the window is as narrow as it gets.
            vec![v4(0xc000_0280, 25), v6(site6, 64)],
            // Prefixes ending exactly on chunk edges of a /16 window (IPv4) and a /48's (IPv6),
            // and the top half of the space.
            vec![
                v4(0xc0a8_0000, 16),
                v4(0xc0a8_0100, 24),
                v4(0xc0a8_0200, 31),
                v4(0xc0a8_ffff, 32),
                v4(0x8000_0000, 1),
                v6(site6, 48),
                v6(site6 | 1 << 64, 64),
                v6(site6 | 2 << 64, 127),
                v6(site6 | 0xffff << 64, 64),
                v6(1 << 127, 1),
            ],
        ];
        for prefixes in cases {
            let groups = groups_of(&prefixes, &mut random);
            assert!(check(&groups, &mut random) > 0);
        }
    }
}
