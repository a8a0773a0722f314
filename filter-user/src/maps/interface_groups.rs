//! The interfaces client groups name (`filter_common::groups::group_interface_key`): which
//! group a packet is in by the interface it arrived on, in two copies, the free one written at
//! a reload and switched with the rest of the policy. Interfaces that come and go between
//! reloads change the copy in use one entry at a time: each entry is atomic, and only that
//! interface's packets read it.

use std::collections::BTreeMap;

use aya::maps::{HashMap, MapData};
use filter_common::{
    groups::{group_interface_key, MAX_GROUP_INTERFACES},
    maps as names,
    ranges::state,
};

use super::MapWriteError;

/// Interface index → group.
pub type InterfaceGroups = BTreeMap<u32, u32>;

/// The `GROUP_IFACES` map and what its copy in use holds.
pub(super) struct InterfaceGroupMaps {
    map: HashMap<MapData, u32, u32>,
    /// What the copy `TABLE_STATE` names holds, and whether it is switched on; `None` until
    /// this writer wrote it (adopted maps are rewritten once).
    in_use: Option<(bool, InterfaceGroups)>,
}

/// What [`InterfaceGroupMaps::stage`] wrote, for [`InterfaceGroupMaps::switched`].
pub(super) type Staged = Option<(bool, InterfaceGroups)>;

impl InterfaceGroupMaps {
    pub(super) fn take_from(ebpf: &mut aya::Ebpf) -> Result<Self, MapWriteError> {
        Ok(Self {
            map: super::take_map(ebpf, names::GROUP_IFACES)?,
            in_use: None,
        })
    }

    /// Writes `wanted` into the copy `table_state` does not name and returns the interface
    /// bits of `TABLE_STATE` that name it, switched on when `on` (the rules group some
    /// interface, matching or not); the bits of `table_state` unchanged when the copy in use
    /// already holds that. The caller switches, then [`InterfaceGroupMaps::switched`].
    pub(super) fn stage(
        &mut self,
        wanted: &InterfaceGroups,
        on: bool,
        table_state: u32,
    ) -> Result<(u32, Staged), MapWriteError> {
        let bits = table_state & state::INTERFACE_GROUPS;
        let wanted = (on, capped(wanted));
        if self.in_use.as_ref() == Some(&wanted) {
            return Ok((bits, None));
        }
        let free = u32::from(bits & state::INTERFACE_GROUPS_COPY_1 == 0);
        self.clear_copy(free)?;
        for (&ifindex, &group) in &wanted.1 {
            self.write(group_interface_key(free, ifindex), group)?;
        }
        let mut new_bits = (bits ^ state::INTERFACE_GROUPS_COPY_1) & state::INTERFACE_GROUPS_COPY_1;
        if wanted.0 {
            new_bits |= state::INTERFACE_GROUPS_ON;
        }
        Ok((new_bits, Some(wanted)))
    }

    /// After the switch to what [`InterfaceGroupMaps::stage`] wrote.
    pub(super) fn switched(&mut self, staged: Staged) {
        if let Some(staged) = staged {
            self.in_use = Some(staged);
        }
    }

    /// Brings the copy `table_state` names in line with `wanted` in place, entry by entry: an
    /// interface that appeared is added before the caller attaches to it, one that vanished is
    /// removed. Nothing happens before the first [`InterfaceGroupMaps::stage`] (that writes it
    /// whole) or when no group names an interface.
    pub(super) fn follow(
        &mut self,
        wanted: &InterfaceGroups,
        table_state: u32,
    ) -> Result<(), MapWriteError> {
        let Some((true, in_use)) = &self.in_use else {
            return Ok(());
        };
        let wanted = capped(wanted);
        let copy = u32::from(table_state & state::INTERFACE_GROUPS_COPY_1 != 0);
        let gone: Vec<u32> = in_use
            .keys()
            .filter(|ifindex| !wanted.contains_key(ifindex))
            .copied()
            .collect();
        let changed: Vec<(u32, u32)> = wanted
            .iter()
            .filter(|(ifindex, group)| in_use.get(ifindex) != Some(group))
            .map(|(&ifindex, &group)| (ifindex, group))
            .collect();
        for (ifindex, group) in changed {
            self.write(group_interface_key(copy, ifindex), group)?;
        }
        for ifindex in gone {
            self.remove(group_interface_key(copy, ifindex))?;
        }
        self.in_use = Some((true, wanted));
        Ok(())
    }

    /// Removes every entry of `copy`, whatever wrote it (an adopted map may hold anything).
    fn clear_copy(&mut self, copy: u32) -> Result<(), MapWriteError> {
        let keys: Vec<u32> = self
            .map
            .keys()
            .filter_map(Result::ok)
            .filter(|key| key >> 31 == copy)
            .collect();
        keys.into_iter().try_for_each(|key| self.remove(key))
    }

    fn write(&mut self, key: u32, group: u32) -> Result<(), MapWriteError> {
        self.map
            .insert(key, group, 0)
            .map_err(|source| MapWriteError::Write {
                name: names::GROUP_IFACES,
                what: format!("interface {} = group {group}", key & !(1 << 31)),
                source,
            })
    }

    fn remove(&mut self, key: u32) -> Result<(), MapWriteError> {
        match self.map.remove(&key) {
            Ok(()) => Ok(()),
            // Already gone: what the removal wanted.
            Err(err) if super::is_missing_key(&err) => Ok(()),
            Err(source) => Err(MapWriteError::Write {
                name: names::GROUP_IFACES,
                what: format!("removing interface {}", key & !(1 << 31)),
                source,
            }),
        }
    }
}

/// `wanted` as far as a copy holds it: the interfaces past [`MAX_GROUP_INTERFACES`] (the
/// highest indices, the newest) are grouped by their source addresses instead, with a warning.
fn capped(wanted: &InterfaceGroups) -> InterfaceGroups {
    if wanted.len() <= MAX_GROUP_INTERFACES as usize {
        return wanted.clone();
    }
    tracing::warn!(
        interfaces = wanted.len(),
        "more interfaces match the groups' interface patterns than the {MAX_GROUP_INTERFACES} \
         the kernel holds; the newest are grouped by their source addresses"
    );
    wanted
        .iter()
        .take(MAX_GROUP_INTERFACES as usize)
        .map(|(&k, &v)| (k, v))
        .collect()
}
