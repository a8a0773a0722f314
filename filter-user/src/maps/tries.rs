//! The LPM tries a family falls back to when its table outgrows a copy of the range index:
//! one prefix per map update, each atomic.

use std::collections::BTreeMap;

use aya::maps::{lpm_trie::Key, LpmTrie, MapData};
use filter_common::{Ipv4KeyBytes, Ipv6KeyBytes, PolicyId};
use ipnet::{Ipv4Net, Ipv6Net};

use super::{slots::PolicySlots, MapWriteError};
use crate::table::RuleSet;

/// Inserts new and changed prefixes of one family, then deletes the ones gone.
pub(super) fn sync_family<N, K>(
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
        Ok(()) => {}
        Err(err) if super::is_missing_key(&err) => {}
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

pub(super) fn key_v4(net: Ipv4Net) -> Key<Ipv4KeyBytes> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}

pub(super) fn key_v6(net: Ipv6Net) -> Key<Ipv6KeyBytes> {
    Key::new(u32::from(net.prefix_len()), net.network().octets())
}
