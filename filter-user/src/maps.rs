//! Writes an [`AllowTable`] into the kernel maps, and keeps them in step with later tables.
//!
//! Updates are incremental and ordered so that no packet sees a half-written policy:
//! 1. rule sets new to the kernel get free policy slots, written before anything points there;
//! 2. prefixes that are new or whose rule set changed are inserted or overwritten (one atomic
//!    map update each: a packet sees the old or the new value, never none);
//! 3. prefixes gone from the table are deleted;
//! 4. slots no prefix points at any more return to the free list. They are not zeroed, so a
//!    packet that looked up a prefix just before its deletion still reads the rules it found.
//!
//! A failed step leaves the maps with everything written so far and the writer's bookkeeping
//! in step with the kernel, so the next `apply` can retry from there.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    hash::Hash,
};

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData, MapError},
    Ebpf,
};
use filter_common::{
    maps::{self as names, MAX_POLICIES},
    sources::{source_key, SourceKeyV4, SourceKeyV6, IFINDEX_BITS},
    Config, Ipv4KeyBytes, Ipv6KeyBytes, Policy, PolicyId,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::table::{AllowTable, RuleSet};

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
    policies: Array<MapData, Policy>,
    config: Array<MapData, Config>,
    slots: PolicySlots,
    written_v4: BTreeMap<Ipv4Net, PolicyId>,
    written_v6: BTreeMap<Ipv6Net, PolicyId>,
}

impl PolicyMaps {
    /// Takes the policy maps out of a loaded object, and learns what they already hold: a fresh
    /// object's maps are empty, maps adopted from pins carry the last daemon's policy, which the
    /// next [`PolicyMaps::apply`] then changes only where it differs.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        fn take<T: TryFrom<aya::maps::Map, Error = MapError>>(
            ebpf: &mut Ebpf,
            name: &'static str,
        ) -> Result<T, MapWriteError> {
            let map = ebpf.take_map(name).ok_or(MapWriteError::Missing(name))?;
            T::try_from(map).map_err(|source| MapWriteError::Layout { name, source })
        }
        let mut maps = Self {
            allow_v4: take(ebpf, names::ALLOW_V4)?,
            allow_v6: take(ebpf, names::ALLOW_V6)?,
            policies: take(ebpf, names::POLICIES)?,
            config: take(ebpf, names::CONFIG)?,
            slots: PolicySlots::default(),
            written_v4: BTreeMap::new(),
            written_v6: BTreeMap::new(),
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
        let ids: BTreeSet<PolicyId> = self
            .written_v4
            .values()
            .chain(self.written_v6.values())
            .copied()
            .collect();
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

    /// Makes the kernel's view equal to `table`, touching only what differs.
    pub fn apply(&mut self, table: &AllowTable) -> Result<ApplyStats, MapWriteError> {
        let mut stats = ApplyStats::default();

        // 1. Policies first, so every id a prefix is about to point at holds its rules.
        for rules in table.distinct_rule_sets() {
            if self.slots.id_of(rules).is_none() {
                self.write_policy(rules)?;
                stats.policies_written += 1;
            }
        }

        // 2 and 3, per family.
        let slots = &self.slots;
        sync_family(
            &mut self.allow_v4,
            names::ALLOW_V4,
            &mut self.written_v4,
            &table.v4,
            slots,
            key_v4,
            &mut stats,
        )?;
        sync_family(
            &mut self.allow_v6,
            names::ALLOW_V6,
            &mut self.written_v6,
            &table.v6,
            slots,
            key_v6,
            &mut stats,
        )?;

        // 4. Release slots nothing points at any more.
        stats.policies_released = self.release_unreferenced();
        Ok(stats)
    }

    /// Writes only `changed` prefixes (from [`AllowTable::update_hosts`]) as `table` has them
    /// now: present ones inserted or overwritten, absent ones deleted, in the same order of
    /// steps as [`PolicyMaps::apply`]. Work follows the change, not the table.
    pub fn apply_changes(
        &mut self,
        table: &AllowTable,
        changed: &[IpNet],
    ) -> Result<ApplyStats, MapWriteError> {
        let mut stats = ApplyStats::default();
        for prefix in changed {
            let Some(rules) = table.entry(*prefix) else {
                continue;
            };
            if self.slots.id_of(rules).is_none() {
                self.write_policy(rules)?;
                stats.policies_written += 1;
            }
        }
        for prefix in changed {
            match (
                *prefix,
                table
                    .entry(*prefix)
                    .and_then(|rules| self.slots.id_of(rules)),
            ) {
                (IpNet::V4(net), Some(id)) => {
                    point_prefix(
                        &mut self.allow_v4,
                        names::ALLOW_V4,
                        &mut self.written_v4,
                        net,
                        id,
                        &key_v4,
                    )?;
                    stats.prefixes_written += 1;
                }
                (IpNet::V6(net), Some(id)) => {
                    point_prefix(
                        &mut self.allow_v6,
                        names::ALLOW_V6,
                        &mut self.written_v6,
                        net,
                        id,
                        &key_v6,
                    )?;
                    stats.prefixes_written += 1;
                }
                (IpNet::V4(net), None) => {
                    delete_prefix(
                        &mut self.allow_v4,
                        names::ALLOW_V4,
                        &mut self.written_v4,
                        net,
                        &key_v4,
                    )?;
                    stats.prefixes_deleted += 1;
                }
                (IpNet::V6(net), None) => {
                    delete_prefix(
                        &mut self.allow_v6,
                        names::ALLOW_V6,
                        &mut self.written_v6,
                        net,
                        &key_v6,
                    )?;
                    stats.prefixes_deleted += 1;
                }
            }
        }
        stats.policies_released = self.release_unreferenced();
        Ok(stats)
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
        let referenced: std::collections::HashSet<PolicyId> = self
            .written_v4
            .values()
            .chain(self.written_v6.values())
            .copied()
            .collect();
        self.slots.retain_ids(|id| referenced.contains(&id))
    }

    /// The prefixes this writer has in the kernel, per family.
    #[must_use]
    pub fn prefix_counts(&self) -> (usize, usize) {
        (self.written_v4.len(), self.written_v6.len())
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
    stats: &mut ApplyStats,
) -> Result<(), MapWriteError>
where
    N: Ord + Copy + std::fmt::Display,
    K: aya::Pod,
{
    for (prefix, rules) in wanted {
        let id = slots.id_of(rules).expect("step 1 allocated every rule set");
        if written.get(prefix) != Some(&id) {
            point_prefix(trie, name, written, *prefix, id, &key_of)?;
            stats.prefixes_written += 1;
        }
    }
    let gone: Vec<N> = written
        .keys()
        .filter(|prefix| !wanted.contains_key(prefix))
        .copied()
        .collect();
    for prefix in gone {
        delete_prefix(trie, name, written, prefix, &key_of)?;
        stats.prefixes_deleted += 1;
    }
    Ok(())
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

/// The anti-spoofing tries: which source prefixes belong on which XDP interface.
pub struct SourceMaps {
    sources_v4: LpmTrie<MapData, SourceKeyV4, u32>,
    sources_v6: LpmTrie<MapData, SourceKeyV6, u32>,
}

/// One source prefix allowed on one interface.
pub type InterfaceSource = (u32, IpNet);

impl SourceMaps {
    /// Takes the source tries out of a loaded object.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        let mut take = |name: &'static str| {
            let map = ebpf.take_map(name).ok_or(MapWriteError::Missing(name))?;
            Ok::<_, MapWriteError>((map, name))
        };
        let (v4, v4_name) = take(names::SOURCES_V4)?;
        let (v6, v6_name) = take(names::SOURCES_V6)?;
        Ok(Self {
            sources_v4: LpmTrie::try_from(v4).map_err(|source| MapWriteError::Layout {
                name: v4_name,
                source,
            })?,
            sources_v6: LpmTrie::try_from(v6).map_err(|source| MapWriteError::Layout {
                name: v6_name,
                source,
            })?,
        })
    }

    /// Makes the tries hold exactly `wanted`: new entries first, then the ones gone, so a
    /// client whose prefix merely changed form is never refused in between.
    pub fn set(&mut self, wanted: &BTreeSet<InterfaceSource>) -> Result<(), MapWriteError> {
        let present = self.read()?;
        for (ifindex, prefix) in wanted.difference(&present) {
            let (name, result) = match prefix {
                IpNet::V4(net) => (
                    names::SOURCES_V4,
                    self.sources_v4.insert(&source_key_v4(*ifindex, *net), 0, 0),
                ),
                IpNet::V6(net) => (
                    names::SOURCES_V6,
                    self.sources_v6.insert(&source_key_v6(*ifindex, *net), 0, 0),
                ),
            };
            result.map_err(|source| MapWriteError::Write {
                name,
                what: format!("source {prefix} on interface {ifindex}"),
                source,
            })?;
        }
        for (ifindex, prefix) in present.difference(wanted) {
            let (name, result) = match prefix {
                IpNet::V4(net) => (
                    names::SOURCES_V4,
                    self.sources_v4.remove(&source_key_v4(*ifindex, *net)),
                ),
                IpNet::V6(net) => (
                    names::SOURCES_V6,
                    self.sources_v6.remove(&source_key_v6(*ifindex, *net)),
                ),
            };
            result.map_err(|source| MapWriteError::Write {
                name,
                what: format!("removing source {prefix} on interface {ifindex}"),
                source,
            })?;
        }
        Ok(())
    }

    /// What the tries hold now (a previous daemon's entries, when adopted).
    fn read(&self) -> Result<BTreeSet<InterfaceSource>, MapWriteError> {
        let read_err = |name: &'static str| {
            move |source| MapWriteError::Write {
                name,
                what: "a read".into(),
                source,
            }
        };
        let mut present = BTreeSet::new();
        for key in self.sources_v4.keys() {
            let key = key.map_err(read_err(names::SOURCES_V4))?;
            let (ifindex, address) = split_source_key::<4>(&key.data());
            let length = key.prefix_len().saturating_sub(IFINDEX_BITS) as u8;
            if let Ok(net) = Ipv4Net::new(address.into(), length) {
                present.insert((ifindex, IpNet::V4(net)));
            }
        }
        for key in self.sources_v6.keys() {
            let key = key.map_err(read_err(names::SOURCES_V6))?;
            let (ifindex, address) = split_source_key::<16>(&key.data());
            let length = key.prefix_len().saturating_sub(IFINDEX_BITS) as u8;
            if let Ok(net) = Ipv6Net::new(address.into(), length) {
                present.insert((ifindex, IpNet::V6(net)));
            }
        }
        Ok(present)
    }
}

fn source_key_v4(ifindex: u32, net: Ipv4Net) -> Key<SourceKeyV4> {
    Key::new(
        IFINDEX_BITS + u32::from(net.prefix_len()),
        source_key(ifindex, &net.network().octets()),
    )
}

fn source_key_v6(ifindex: u32, net: Ipv6Net) -> Key<SourceKeyV6> {
    Key::new(
        IFINDEX_BITS + u32::from(net.prefix_len()),
        source_key(ifindex, &net.network().octets()),
    )
}

/// The interface index and address bytes of a source key.
fn split_source_key<const A: usize>(key: &[u8]) -> (u32, [u8; A]) {
    let ifindex = u32::from_be_bytes([key[0], key[1], key[2], key[3]]);
    let mut address = [0; A];
    address.copy_from_slice(&key[4..4 + A]);
    (ifindex, address)
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
