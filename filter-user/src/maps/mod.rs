//! Writes an [`AllowTable`] into the kernel maps, and keeps them in step with later tables.
//!
//! Packets find their destination's policy in the range index (`filter_common::ranges`): two
//! copies per family, one read by packets and one free for the writer. An update:
//! 1. waits until no packet can still be reading the free copy or a released policy slot (a
//!    grace period, started after the previous switch and usually long over);
//! 2. gives rule sets new to the kernel free policy slots, written before anything points there;
//! 3. writes the whole table into the free copy, through a memory mapping;
//! 4. switches `TABLE_STATE` to it: one map update, so a packet reads the old table or the new
//!    one, never a mix;
//! 5. returns slots neither copy points at to the free list (reused only after step 1 of a later
//!    update), and starts the grace period on a thread.
//!
//! Host-route changes (resolved and learned addresses, [`PolicyMaps::apply_changes`]) take a
//! shorter path that waits for nothing: each chunk they touch gets a new run of ranges appended
//! behind the ranges of the copy packets read, then its index entry is switched with one aligned
//! 64-bit store. Old runs stay as they were until a whole update rewrites that copy, and no slot
//! is released on this path.
//!
//! A family whose table outgrows a copy is written into its LPM trie instead, one prefix per
//! map update, each atomic; the state then sends that family's packets to the trie.
//!
//! A failed step leaves the maps with everything written so far and the writer's bookkeeping
//! in step with the kernel, so the next `apply` can retry from there.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::Hash,
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, Map, MapData, MapError},
    Ebpf,
};
use filter_common::{
    maps::{self as names, MAX_POLICIES},
    ranges::{index_entry, range_v4, state, RangeV6, CHUNKS, RANGES_PER_COPY},
    Config, Ipv4KeyBytes, Ipv6KeyBytes, Policy, PolicyId,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{
    ranges::{self, MappedArray},
    table::{AllowTable, RuleSet},
};

mod sources;

pub use self::sources::{InterfaceSource, SourceMaps};

/// Why the maps could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum MapWriteError {
    #[error("map {0} is missing from the loaded object")]
    Missing(&'static str),
    #[error("map {name} has an unexpected type or layout")]
    Layout {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("writing {what} to map {name} failed")]
    Write {
        name: &'static str,
        what: String,
        #[source]
        source: MapError,
    },
    #[error("no free policy slot: all {MAX_POLICIES} are in use")]
    PoliciesFull,
    #[error("cannot map {name} into memory")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What one [`PolicyMaps::apply`] changed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub prefixes_written: usize,
    pub prefixes_deleted: usize,
    pub policies_written: usize,
    pub policies_released: usize,
}

/// The maps that hold the policy, and what this writer last put in them.
pub struct PolicyMaps {
    allow_v4: LpmTrie<MapData, Ipv4KeyBytes, PolicyId>,
    allow_v6: LpmTrie<MapData, Ipv6KeyBytes, PolicyId>,
    index_v4: MappedArray<u64>,
    ranges_v4: MappedArray<u64>,
    index_v6: MappedArray<u64>,
    ranges_v6: MappedArray<RangeV6>,
    table_state: Array<MapData, u32>,
    /// What `TABLE_STATE` holds.
    state: u32,
    /// The grace period after the last switch, running on a thread.
    grace: Option<std::thread::JoinHandle<()>>,
    policies: Array<MapData, Policy>,
    config: Array<MapData, Config>,
    slots: PolicySlots,
    /// What the tries hold (empty unless a family outgrew the index).
    written_v4: BTreeMap<Ipv4Net, PolicyId>,
    written_v6: BTreeMap<Ipv6Net, PolicyId>,
    /// What the copies packets read hold, per family.
    current_v4: BTreeMap<Ipv4Net, PolicyId>,
    current_v6: BTreeMap<Ipv6Net, PolicyId>,
    /// Where free space starts in the ranges of the copy packets read, per family: host updates
    /// append a chunk's new run there. `None` until this writer wrote the copy.
    tail_v4: Option<u32>,
    tail_v6: Option<u32>,
    /// The maps were adopted and not yet written by this writer.
    adopted: bool,
}

impl PolicyMaps {
    /// Takes the policy maps out of a loaded object, and learns what they already hold: a fresh
    /// object's maps are empty, maps adopted from pins carry the last daemon's policy, which the
    /// next [`PolicyMaps::apply`] then changes only where it differs.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        fn take<T: TryFrom<Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, MapWriteError> {
            let map = ebpf.take_map(name).ok_or(MapWriteError::Missing(name))?;
            T::try_from(map).map_err(|source| MapWriteError::Layout { name, source })
        }
        fn mapped<T: Copy>(
            ebpf: &mut Ebpf,
            name: &'static str,
            len: u32,
        ) -> Result<MappedArray<T>, MapWriteError> {
            let map = ebpf.take_map(name).ok_or(MapWriteError::Missing(name))?;
            let Map::Array(data) = map else {
                return Err(MapWriteError::Layout {
                    name,
                    source: MapError::InvalidName {
                        name: name.to_owned(),
                    },
                });
            };
            MappedArray::new(data, len as usize)
                .map_err(|source| MapWriteError::Mmap { name, source })
        }
        let table_state: Array<MapData, u32> = take(ebpf, names::TABLE_STATE)?;
        let state = table_state.get(&0, 0).unwrap_or(0);
        let mut maps = Self {
            allow_v4: take(ebpf, names::ALLOW_V4)?,
            allow_v6: take(ebpf, names::ALLOW_V6)?,
            index_v4: mapped(ebpf, names::INDEX_V4, 2 * CHUNKS)?,
            ranges_v4: mapped(ebpf, names::RANGES_V4, 2 * RANGES_PER_COPY)?,
            index_v6: mapped(ebpf, names::INDEX_V6, 2 * CHUNKS)?,
            ranges_v6: mapped(ebpf, names::RANGES_V6, 2 * RANGES_PER_COPY)?,
            table_state,
            state,
            // Adopted maps: the last writer may have switched copies a moment ago.
            grace: Some(std::thread::spawn(ranges::wait_for_running_programs)),
            policies: take(ebpf, names::POLICIES)?,
            config: take(ebpf, names::CONFIG)?,
            slots: PolicySlots::default(),
            written_v4: BTreeMap::new(),
            written_v6: BTreeMap::new(),
            current_v4: BTreeMap::new(),
            current_v6: BTreeMap::new(),
            tail_v4: None,
            tail_v6: None,
            adopted: false,
        };
        maps.read_existing()?;
        Ok(maps)
    }

    /// Fills the bookkeeping from what the maps hold.
    fn read_existing(&mut self) -> Result<(), MapWriteError> {
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

    /// Writes the runtime configuration (mode, event budget).
    pub fn set_config(&mut self, config: Config) -> Result<(), MapWriteError> {
        self.config
            .set(0, config, 0)
            .map_err(|source| MapWriteError::Write {
                name: names::CONFIG,
                what: format!("{config:?}"),
                source,
            })
    }

    /// Makes the kernel's view equal to `table`.
    pub fn apply(&mut self, table: &AllowTable) -> Result<ApplyStats, MapWriteError> {
        self.apply_counting(table, true)
    }

    /// [`PolicyMaps::apply`]; counts the prefixes that differ only when `count_prefixes`.
    fn apply_counting(
        &mut self,
        table: &AllowTable,
        count_prefixes: bool,
    ) -> Result<ApplyStats, MapWriteError> {
        // 1. No packet may still read the free copies or a slot released last time.
        if let Some(grace) = self.grace.take() {
            let _ = grace.join();
        }
        let mut stats = ApplyStats::default();

        // 2. Policies first, so every id a range or prefix is about to name holds its rules.
        for rules in table.distinct_rule_sets() {
            if self.slots.id_of(rules).is_none() {
                self.write_policy(rules)?;
                stats.policies_written += 1;
            }
        }
        let slots = &self.slots;
        let wanted_v4: BTreeMap<Ipv4Net, PolicyId> = table
            .v4
            .iter()
            .map(|(net, rules)| {
                (
                    *net,
                    slots.id_of(rules).expect("step 2 allocated every rule set"),
                )
            })
            .collect();
        let wanted_v6: BTreeMap<Ipv6Net, PolicyId> = table
            .v6
            .iter()
            .map(|(net, rules)| {
                (
                    *net,
                    slots.id_of(rules).expect("step 2 allocated every rule set"),
                )
            })
            .collect();
        // Adopted maps that already hold this table (a restart with the same rules) are left
        // as they are: nothing to write, nothing to switch.
        if std::mem::take(&mut self.adopted) {
            if let Some((tail_v4, tail_v6)) = self.active_copies_hold(&wanted_v4, &wanted_v6)? {
                self.current_v4 = wanted_v4;
                self.current_v6 = wanted_v6;
                self.tail_v4 = Some(tail_v4);
                self.tail_v6 = Some(tail_v6);
                stats.policies_released = self.release_unreferenced();
                return Ok(stats);
            }
        }
        if count_prefixes {
            count_changes(&self.current_v4, &wanted_v4, &mut stats);
            count_changes(&self.current_v6, &wanted_v6, &mut stats);
        }

        // 3. The free copies (or the tries, for a family that outgrew its index).
        let new_state = self.write_v4(&wanted_v4, table)?;
        let new_state = self.write_v6(&wanted_v6, table, new_state)?;

        // 4. The switch.
        self.table_state
            .set(0, new_state, 0)
            .map_err(|source| MapWriteError::Write {
                name: names::TABLE_STATE,
                what: format!("state {new_state:#x}"),
                source,
            })?;
        self.state = new_state;
        self.current_v4 = wanted_v4;
        self.current_v6 = wanted_v6;
        // A family back on its index leaves its trie unread: empty it.
        if new_state & state::V4_TRIE == 0 {
            sync_family(
                &mut self.allow_v4,
                names::ALLOW_V4,
                &mut self.written_v4,
                &BTreeMap::new(),
                &self.slots,
                key_v4,
            )?;
        }
        if new_state & state::V6_TRIE == 0 {
            sync_family(
                &mut self.allow_v6,
                names::ALLOW_V6,
                &mut self.written_v6,
                &BTreeMap::new(),
                &self.slots,
                key_v6,
            )?;
        }

        // 5. Slots nothing reads any more, once no packet can still hold the old copy.
        stats.policies_released = self.release_unreferenced();
        self.grace = Some(std::thread::spawn(ranges::wait_for_running_programs));
        Ok(stats)
    }

    /// Writes IPv4's free copy (or its trie, when the table outgrew a copy); returns the state
    /// that switches to it.
    fn write_v4(
        &mut self,
        wanted_v4: &BTreeMap<Ipv4Net, PolicyId>,
        table: &AllowTable,
    ) -> Result<u32, MapWriteError> {
        let mut new_state = self.state;
        let v4_ranges = ranges::build(
            wanted_v4.iter().map(|(net, id)| {
                (
                    u128::from(u32::from(net.network())),
                    u128::from(u32::from(net.broadcast())),
                    id + 1,
                )
            }),
            32,
        );
        let v4_copy = u32::from(self.state & state::V4_COPY_1 == 0);
        if let Some(chunked) = ranges::chunk(&v4_ranges, 32, v4_copy) {
            let entries: Vec<u64> = chunked
                .ranges
                .iter()
                .map(|&(start, value)| range_v4(start as u32, value))
                .collect();
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
    fn write_v6(
        &mut self,
        wanted_v6: &BTreeMap<Ipv6Net, PolicyId>,
        table: &AllowTable,
        mut new_state: u32,
    ) -> Result<u32, MapWriteError> {
        let v6_ranges = ranges::build(
            wanted_v6.iter().map(|(net, id)| {
                (
                    u128::from(net.network()),
                    u128::from(net.broadcast()),
                    id + 1,
                )
            }),
            128,
        );
        let v6_copy = u32::from(self.state & state::V6_COPY_1 == 0);
        if let Some(chunked) = ranges::chunk(&v6_ranges, 128, v6_copy) {
            let entries: Vec<RangeV6> = chunked
                .ranges
                .iter()
                .map(|&(start, value)| RangeV6 {
                    start_hi: (start >> 64) as u64,
                    start_lo: start as u64,
                    value,
                    _pad: 0,
                })
                .collect();
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
            let entries: Vec<u64> = run
                .iter()
                .map(|&(start, value)| range_v4(start as u32, value))
                .collect();
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
            let entries: Vec<RangeV6> = run
                .iter()
                .map(|&(start, value)| RangeV6 {
                    start_hi: (start >> 64) as u64,
                    start_lo: start as u64,
                    value,
                    _pad: 0,
                })
                .collect();
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
    fn active_copies_hold(
        &self,
        wanted_v4: &BTreeMap<Ipv4Net, PolicyId>,
        wanted_v6: &BTreeMap<Ipv6Net, PolicyId>,
    ) -> Result<Option<(u32, u32)>, MapWriteError> {
        if self.state & (state::V4_TRIE | state::V6_TRIE) != 0 {
            return Ok(None);
        }
        let copy_v4 = u32::from(self.state & state::V4_COPY_1 != 0);
        let copy_v6 = u32::from(self.state & state::V6_COPY_1 != 0);
        let ranges_v4 = ranges::build(
            wanted_v4.iter().map(|(net, id)| {
                (
                    u128::from(u32::from(net.network())),
                    u128::from(u32::from(net.broadcast())),
                    id + 1,
                )
            }),
            32,
        );
        let ranges_v6 = ranges::build(
            wanted_v6.iter().map(|(net, id)| {
                (
                    u128::from(net.network()),
                    u128::from(net.broadcast()),
                    id + 1,
                )
            }),
            128,
        );
        let (Some(chunked_v4), Some(chunked_v6)) = (
            ranges::chunk(&ranges_v4, 32, copy_v4),
            ranges::chunk(&ranges_v6, 128, copy_v6),
        ) else {
            return Ok(None);
        };
        let encoded_v4: Vec<u64> = chunked_v4
            .ranges
            .iter()
            .map(|&(start, value)| range_v4(start as u32, value))
            .collect();
        let encoded_v6: Vec<RangeV6> = chunked_v6
            .ranges
            .iter()
            .map(|&(start, value)| RangeV6 {
                start_hi: (start >> 64) as u64,
                start_lo: start as u64,
                value,
                _pad: 0,
            })
            .collect();
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

    /// Waits for the grace period the last update started (see the module docs). `apply` waits
    /// for it itself when it must; this lets a caller take that wait out of a timed update.
    pub fn settle(&mut self) {
        if let Some(grace) = self.grace.take() {
            let _ = grace.join();
        }
    }

    /// Gives a new rule set a slot and writes it there, before anything points at it.
    fn write_policy(&mut self, rules: &RuleSet) -> Result<PolicyId, MapWriteError> {
        let id = self.slots.allocate(rules.clone())?;
        if let Err(source) = self.policies.set(id, to_policy(rules), 0) {
            self.slots.release_id(id);
            return Err(MapWriteError::Write {
                name: names::POLICIES,
                what: format!("policy {id} ({rules})"),
                source,
            });
        }
        Ok(id)
    }

    fn release_unreferenced(&mut self) -> usize {
        // One flag per slot: the ids are below MAX_POLICIES, and a set of 100k values would cost
        // more than the rest of a small update.
        let mut referenced = vec![false; MAX_POLICIES as usize];
        for id in self
            .written_v4
            .values()
            .chain(self.written_v6.values())
            .chain(self.current_v4.values())
            .chain(self.current_v6.values())
        {
            if let Some(flag) = referenced.get_mut(*id as usize) {
                *flag = true;
            }
        }
        self.slots
            .retain_ids(|id| referenced.get(id as usize).copied().unwrap_or(false))
    }

    /// The prefixes this writer has in the kernel, per family.
    #[must_use]
    pub fn prefix_counts(&self) -> (usize, usize) {
        (self.current_v4.len(), self.current_v6.len())
    }
}

/// Inserts new and changed prefixes of one family, then deletes the ones gone.
fn sync_family<N, K>(
    trie: &mut LpmTrie<MapData, K, PolicyId>,
    name: &'static str,
    written: &mut BTreeMap<N, PolicyId>,
    wanted: &BTreeMap<N, RuleSet>,
    slots: &PolicySlots,
    key_of: impl Fn(N) -> Key<K>,
) -> Result<(), MapWriteError>
where
    N: Ord + Copy + std::fmt::Display,
    K: aya::Pod,
{
    for (prefix, rules) in wanted {
        let id = slots.id_of(rules).expect("step 1 allocated every rule set");
        if written.get(prefix) != Some(&id) {
            point_prefix(trie, name, written, *prefix, id, &key_of)?;
        }
    }
    let gone: Vec<N> = written
        .keys()
        .filter(|prefix| !wanted.contains_key(prefix))
        .copied()
        .collect();
    for prefix in gone {
        delete_prefix(trie, name, written, prefix, &key_of)?;
    }
    Ok(())
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

fn mmap_err(name: &'static str) -> impl Fn(std::io::Error) -> MapWriteError {
    move |source| MapWriteError::Mmap { name, source }
}

/// Counts the prefixes `wanted` adds or points elsewhere, and the ones it drops.
fn count_changes<N: Ord>(
    current: &BTreeMap<N, PolicyId>,
    wanted: &BTreeMap<N, PolicyId>,
    stats: &mut ApplyStats,
) {
    stats.prefixes_written += wanted
        .iter()
        .filter(|(prefix, id)| current.get(prefix) != Some(id))
        .count();
    stats.prefixes_deleted += current
        .keys()
        .filter(|prefix| !wanted.contains_key(prefix))
        .count();
}

/// Points one prefix at a policy (insert or overwrite: one atomic map update).
fn point_prefix<N, K>(
    trie: &mut LpmTrie<MapData, K, PolicyId>,
    name: &'static str,
    written: &mut BTreeMap<N, PolicyId>,
    prefix: N,
    id: PolicyId,
    key_of: &impl Fn(N) -> Key<K>,
) -> Result<(), MapWriteError>
where
    N: Ord + Copy + std::fmt::Display,
    K: aya::Pod,
{
    trie.insert(&key_of(prefix), id, 0)
        .map_err(|source| MapWriteError::Write {
            name,
            what: format!("prefix {prefix}"),
            source,
        })?;
    written.insert(prefix, id);
    Ok(())
}

/// Deletes one prefix; one already absent in the kernel is the state wanted.
fn delete_prefix<N, K>(
    trie: &mut LpmTrie<MapData, K, PolicyId>,
    name: &'static str,
    written: &mut BTreeMap<N, PolicyId>,
    prefix: N,
    key_of: &impl Fn(N) -> Key<K>,
) -> Result<(), MapWriteError>
where
    N: Ord + Copy + std::fmt::Display,
    K: aya::Pod,
{
    match trie.remove(&key_of(prefix)) {
        Ok(()) | Err(MapError::KeyNotFound) => {}
        Err(source) => {
            return Err(MapWriteError::Write {
                name,
                what: format!("deletion of prefix {prefix}"),
                source,
            })
        }
    }
    written.remove(&prefix);
    Ok(())
}

fn key_v4(net: Ipv4Net) -> Key<Ipv4KeyBytes> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

fn key_v6(net: Ipv6Net) -> Key<Ipv6KeyBytes> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

fn to_policy(rules: &RuleSet) -> Policy {
    let mut policy = Policy::default();
    // `AllowTable::build` guarantees the bound; `zip` keeps this safe regardless.
    for (slot, rule) in policy.rules.iter_mut().zip(rules.rules()) {
        *slot = *rule;
    }
    policy.rule_count = rules.rules().len().min(policy.rules.len()) as u32;
    policy
}

/// Which policy slot holds which rule set.
#[derive(Default)]
struct PolicySlots {
    by_rules: HashMap<RuleSet, PolicyId>,
    by_id: HashMap<PolicyId, RuleSet>,
    /// Slots released earlier, reused before new ones.
    free: Vec<PolicyId>,
    /// Slots below this have been handed out at some point.
    high_water: PolicyId,
}

impl PolicySlots {
    fn id_of(&self, rules: &RuleSet) -> Option<PolicyId> {
        self.by_rules.get(rules).copied()
    }

    fn allocate(&mut self, rules: RuleSet) -> Result<PolicyId, MapWriteError> {
        let id = match self.free.pop() {
            Some(id) => id,
            None if self.high_water < MAX_POLICIES => {
                self.high_water += 1;
                self.high_water - 1
            }
            None => return Err(MapWriteError::PoliciesFull),
        };
        insert_both(&mut self.by_rules, &mut self.by_id, rules, id);
        Ok(id)
    }

    /// Records a slot found in use in adopted maps.
    fn adopt(&mut self, id: PolicyId, rules: RuleSet) {
        self.high_water = self.high_water.max(id + 1);
        self.free.retain(|free| *free != id);
        if self.by_rules.contains_key(&rules) {
            // Two slots with equal rules (cannot come from this writer): keep the first; the
            // second is released once nothing points at it.
            self.by_id.insert(id, rules);
            return;
        }
        insert_both(&mut self.by_rules, &mut self.by_id, rules, id);
    }

    fn release_id(&mut self, id: PolicyId) {
        if let Some(rules) = self.by_id.remove(&id) {
            if self.by_rules.get(&rules) == Some(&id) {
                self.by_rules.remove(&rules);
            }
            self.free.push(id);
        }
    }

    /// Releases every id for which `keep` is false; returns how many.
    fn retain_ids(&mut self, keep: impl Fn(PolicyId) -> bool) -> usize {
        let unused: Vec<PolicyId> = self.by_id.keys().copied().filter(|id| !keep(*id)).collect();
        for id in &unused {
            self.release_id(*id);
        }
        unused.len()
    }
}

fn insert_both<A: Hash + Eq + Clone, B: Hash + Eq + Copy>(
    forward: &mut HashMap<A, B>,
    backward: &mut HashMap<B, A>,
    a: A,
    b: B,
) {
    backward.insert(b, a.clone());
    forward.insert(a, b);
}

#[cfg(test)]
mod tests {
    use filter_common::{PortRule, RuleProto};

    use super::*;
    use crate::table::{Grant, PortSpec};

    #[test]
    fn slots_are_reused_after_release() {
        let mut slots = PolicySlots::default();
        let a = RuleSet::default();
        let b = AllowTable::build(&[Grant {
            prefix: "192.0.2.0/24".parse().unwrap(),
            service: 0,
            ports: vec![PortSpec::Tcp(443..=443)],
        }])
        .unwrap()
        .v4
        .into_values()
        .next()
        .unwrap();
        let id_a = slots.allocate(a.clone()).unwrap();
        let id_b = slots.allocate(b.clone()).unwrap();
        assert_ne!(id_a, id_b);
        assert_eq!(
            slots.retain_ids(|id| id == id_b),
            1,
            "only a is unreferenced"
        );
        assert_eq!(slots.id_of(&a), None);
        let id_c = slots.allocate(a).unwrap();
        assert_eq!(id_c, id_a, "the released slot is reused before a new one");
        assert_eq!(slots.id_of(&b), Some(id_b));
    }

    #[test]
    fn slots_run_out_with_a_clear_error() {
        let mut slots = PolicySlots {
            high_water: MAX_POLICIES,
            ..PolicySlots::default()
        };
        assert!(matches!(
            slots.allocate(RuleSet::default()),
            Err(MapWriteError::PoliciesFull)
        ));
    }

    #[test]
    fn policy_value_holds_the_rules_in_order() {
        let table = AllowTable::build(&[Grant {
            prefix: "2001:db8::/32".parse().unwrap(),
            service: 7,
            ports: vec![
                PortSpec::Udp(3544..=3544),
                PortSpec::Tcp(80..=80),
                PortSpec::Tcp(443..=443),
            ],
        }])
        .unwrap();
        let policy = to_policy(table.v6.values().next().unwrap());
        assert_eq!(policy.rule_count, 3);
        assert_eq!(
            policy.active_rules(),
            [
                PortRule::new(RuleProto::Tcp, 80, 80, 7),
                PortRule::new(RuleProto::Tcp, 443, 443, 7),
                PortRule::new(RuleProto::Udp, 3544, 3544, 7),
            ]
        );
        assert!(
            policy.rules[3..].iter().all(|r| *r == PortRule::default()),
            "unused slots are zero"
        );
    }
}
