//! Writes an [`AllowTable`] into the kernel maps, and keeps them in step with later tables.
//!
//! Packets find their destination's policy in the range index (`filter_common::ranges`): two
//! copies per family, one read by packets and one free for the writer. An update:
//! 1. waits until no packet can still be reading the free copy or a released policy slot (a
//!    grace period, started after the previous switch and usually long over);
//! 2. gives rule sets new to the kernel free policy slots, written before anything points there;
//! 3. writes the whole table into the free copy, through a memory mapping;
//! 4. switches `TABLE_STATE` to it: one map update that changes one byte, so a packet reads the
//!    old table or the new one, never a mix (the client groups' windows, which `TABLE_STATE`
//!    holds too, are written in an update of their own before);
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

use std::collections::BTreeMap;

use aya::{
    maps::{Array, LpmTrie, Map, MapData, MapError},
    Ebpf,
};
use filter_common::{
    groups::{GroupWindow, GROUP_WINDOW_ENTRIES},
    maps::{self as names, MAX_POLICIES},
    ranges::{state, RangeV6, TableState, CHUNKS, RANGES_PER_COPY},
    Config, Ipv4KeyBytes, Ipv6KeyBytes, Policy, PolicyId,
};
use ipnet::{Ipv4Net, Ipv6Net};

use crate::{
    ranges::{self, MappedArray},
    rules::Group,
    table::AllowTable,
};

mod adopt;
mod copies;
pub mod flows;
mod groups;
mod interface_groups;
mod patch;
mod slots;
mod sources;
mod tries;

pub use self::{
    flows::FlowMaps,
    groups::{find_group, group_index, group_ranges, GroupIndex},
    interface_groups::InterfaceGroups,
    sources::{InterfaceSource, SourceMaps},
};
use self::{
    groups::GroupMaps,
    interface_groups::InterfaceGroupMaps,
    slots::PolicySlots,
    tries::{key_v4, key_v6, sync_family},
};

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
    table_state: Array<MapData, TableState>,
    /// What `TABLE_STATE` holds: its bits.
    state: u32,
    /// What `TABLE_STATE` holds: its group windows.
    group_windows: [GroupWindow; GROUP_WINDOW_ENTRIES as usize],
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
    /// Which client group each source is in: switched with the destination copies.
    groups: GroupMaps,
    /// The client groups the next [`PolicyMaps::apply`] puts in force.
    wanted_groups: Vec<Group>,
    /// Which client group the interfaces groups name are in: switched with the rest.
    interface_groups: InterfaceGroupMaps,
    /// The interfaces' groups the next [`PolicyMaps::apply`] puts in force.
    wanted_interface_groups: InterfaceGroups,
}

impl PolicyMaps {
    /// Takes the policy maps out of a loaded object, and learns what they already hold: a fresh
    /// object's maps are empty, maps adopted from pins carry the last daemon's policy, which the
    /// next [`PolicyMaps::apply`] then changes only where it differs.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        let table_state: Array<MapData, TableState> = take_map(ebpf, names::TABLE_STATE)?;
        let held = table_state.get(&0, 0).unwrap_or_default();
        let mut maps = Self {
            allow_v4: take_map(ebpf, names::ALLOW_V4)?,
            allow_v6: take_map(ebpf, names::ALLOW_V6)?,
            index_v4: take_mapped(ebpf, names::INDEX_V4, 2 * CHUNKS)?,
            ranges_v4: take_mapped(ebpf, names::RANGES_V4, 2 * RANGES_PER_COPY)?,
            index_v6: take_mapped(ebpf, names::INDEX_V6, 2 * CHUNKS)?,
            ranges_v6: take_mapped(ebpf, names::RANGES_V6, 2 * RANGES_PER_COPY)?,
            table_state,
            state: held.bits,
            group_windows: held.group_windows,
            // Adopted maps: the last writer may have switched copies a moment ago.
            grace: Some(std::thread::spawn(ranges::wait_for_running_programs)),
            policies: take_map(ebpf, names::POLICIES)?,
            config: take_map(ebpf, names::CONFIG)?,
            slots: PolicySlots::default(),
            written_v4: BTreeMap::new(),
            written_v6: BTreeMap::new(),
            current_v4: BTreeMap::new(),
            current_v6: BTreeMap::new(),
            tail_v4: None,
            tail_v6: None,
            adopted: false,
            groups: GroupMaps::take_from(ebpf)?,
            wanted_groups: Vec::new(),
            interface_groups: InterfaceGroupMaps::take_from(ebpf)?,
            wanted_interface_groups: InterfaceGroups::new(),
        };
        maps.read_existing()?;
        Ok(maps)
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

    /// The client groups the next [`PolicyMaps::apply`] puts in force, in the same switch as its
    /// table (rules without groups: none), with the group of each interface their interface
    /// patterns match now ([`crate::rules::interface_groups`]).
    pub fn set_groups(&mut self, groups: &[Group], interfaces: InterfaceGroups) {
        self.wanted_groups = groups.to_vec();
        self.wanted_interface_groups = interfaces;
    }

    /// The interfaces the groups name, after links came or went: written into the copy packets
    /// read, entry by entry, without waiting for a reload. A new interface's entry is there
    /// before the caller attaches to it.
    pub fn follow_interface_groups(
        &mut self,
        interfaces: InterfaceGroups,
    ) -> Result<(), MapWriteError> {
        self.interface_groups.follow(&interfaces, self.state)?;
        self.wanted_interface_groups = interfaces;
        Ok(())
    }

    /// The state bits of the client groups once [`PolicyMaps::apply`] switched to what
    /// `group_bits` and `interface_bits` name.
    fn with_group_bits(state: u32, group_bits: u32, interface_bits: u32) -> u32 {
        (state & !(state::GROUPS | state::INTERFACE_GROUPS)) | group_bits | interface_bits
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
        // The client groups' free copies, switched with the destination's below.
        let mut group_windows = self.group_windows;
        let (group_bits, staged_groups) =
            self.groups
                .stage(&self.wanted_groups, self.state, &mut group_windows)?;
        if staged_groups.is_some() {
            // The windows of the copies about to be switched in, before the switch names them.
            self.write_state(self.state, group_windows)?;
        }
        let grouped_interfaces = self.wanted_groups.iter().any(|g| !g.interfaces.is_empty());
        let (interface_bits, staged_interfaces) = self.interface_groups.stage(
            &self.wanted_interface_groups,
            grouped_interfaces,
            self.state,
        )?;
        // Adopted maps that already hold this table (a restart with the same rules) are left
        // as they are: nothing to write, and a switch only when the groups changed.
        if std::mem::take(&mut self.adopted) {
            if let Some((tail_v4, tail_v6)) = self.active_copies_hold(&wanted_v4, &wanted_v6)? {
                self.current_v4 = wanted_v4;
                self.current_v6 = wanted_v6;
                self.tail_v4 = Some(tail_v4);
                self.tail_v6 = Some(tail_v6);
                if staged_groups.is_some() || staged_interfaces.is_some() {
                    self.switch(Self::with_group_bits(
                        self.state,
                        group_bits,
                        interface_bits,
                    ))?;
                    self.groups.switched(staged_groups);
                    self.interface_groups.switched(staged_interfaces);
                    self.grace = Some(std::thread::spawn(ranges::wait_for_running_programs));
                }
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

        // 4. The switch: destinations and client groups in one store.
        self.switch(Self::with_group_bits(new_state, group_bits, interface_bits))?;
        self.groups.switched(staged_groups);
        self.interface_groups.switched(staged_interfaces);
        let new_state = self.state;
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

    /// Switches `TABLE_STATE` to `new_state`'s bits: the value rewritten with one byte changed
    /// ([`TableState`]), so a packet reads the old tables or the new.
    fn switch(&mut self, new_state: u32) -> Result<(), MapWriteError> {
        self.write_state(new_state, self.group_windows)
    }

    /// Writes `TABLE_STATE`. Only the bits or only the windows of copies not in use may change
    /// in one write: what a packet reads is then the same bytes before and after, but for one.
    fn write_state(
        &mut self,
        bits: u32,
        group_windows: [GroupWindow; GROUP_WINDOW_ENTRIES as usize],
    ) -> Result<(), MapWriteError> {
        let value = TableState {
            bits,
            _pad: 0,
            group_windows,
        };
        self.table_state
            .set(0, value, 0)
            .map_err(|source| MapWriteError::Write {
                name: names::TABLE_STATE,
                what: format!("state {bits:#x}"),
                source,
            })?;
        self.state = bits;
        self.group_windows = group_windows;
        Ok(())
    }

    /// Waits for the grace period the last update started (see the module docs). `apply` waits
    /// for it itself when it must; this lets a caller take that wait out of a timed update.
    pub fn settle(&mut self) {
        if let Some(grace) = self.grace.take() {
            let _ = grace.join();
        }
    }

    /// The prefixes this writer has in the kernel, per family.
    #[must_use]
    pub fn prefix_counts(&self) -> (usize, usize) {
        (self.current_v4.len(), self.current_v6.len())
    }
}

/// Takes the map `name` out of a loaded object, as the type its writer needs.
pub(crate) fn take_map<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<T, MapWriteError> {
    let map = ebpf.take_map(name).ok_or(MapWriteError::Missing(name))?;
    T::try_from(map).map_err(|source| MapWriteError::Layout { name, source })
}

/// Takes the mmapable array `name`, of `len` elements, out of a loaded object, to be written as
/// memory.
pub(crate) fn take_mapped<T: Copy>(
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
    MappedArray::new(data, len as usize).map_err(mmap_err(name))
}

/// Whether a map operation failed because the key is not there: the kernel's `ENOENT`, which
/// aya reports as a failed syscall.
pub(crate) fn is_missing_key(err: &MapError) -> bool {
    match err {
        MapError::KeyNotFound => true,
        MapError::SyscallError(err) => err.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
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
