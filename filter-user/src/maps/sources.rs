//! The anti-spoofing tables: which source prefixes belong on which XDP interface, as the
//! per-interface slots XDP scans and as the tries that stay complete (see the README, "Which
//! structure answers what").

use std::collections::BTreeSet;

use aya::{
    maps::{lpm_trie::Key, Array, LpmTrie, MapData},
    Ebpf,
};
use filter_common::{
    maps as names,
    sources::{
        source_key, SourceKeyV4, SourceKeyV6, SourcePrefixV4, SourcePrefixV6, SourceSlot,
        IFINDEX_BITS, SOURCE_SLOT_INTERFACES, SOURCE_SLOT_OVERFLOW, SOURCE_SLOT_PREFIXES,
    },
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{mmap_err, take_mapped, MapWriteError};
use crate::ranges::{self, MappedArray};

/// The anti-spoofing tries: which source prefixes belong on which XDP interface.
pub struct SourceMaps {
    sources_v4: LpmTrie<MapData, SourceKeyV4, u32>,
    sources_v6: LpmTrie<MapData, SourceKeyV6, u32>,
    slots: MappedArray<SourceSlot>,
    copy: Array<MapData, u32>,
    /// The grace period after the last switch of copies, running on a thread.
    grace: Option<std::thread::JoinHandle<()>>,
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
        let slots = take_mapped(ebpf, names::SOURCE_SLOTS, 2 * SOURCE_SLOT_INTERFACES)?;
        let copy = ebpf
            .take_map(names::SOURCE_COPY)
            .ok_or(MapWriteError::Missing(names::SOURCE_COPY))
            .and_then(|map| {
                Array::try_from(map).map_err(|source| MapWriteError::Layout {
                    name: names::SOURCE_COPY,
                    source,
                })
            })?;
        Ok(Self {
            slots,
            copy,
            // Adopted maps: the last writer may have switched copies a moment ago.
            grace: Some(std::thread::spawn(ranges::wait_for_running_programs)),
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

    /// Makes the tries and the slots hold exactly `wanted`: new trie entries first, then the
    /// slots' free copy and the switch to it, then the trie entries gone, so a client whose
    /// prefix merely changed form is never refused in between.
    pub fn set(&mut self, wanted: &BTreeSet<InterfaceSource>) -> Result<(), MapWriteError> {
        // No packet may still read the free copy.
        if let Some(grace) = self.grace.take() {
            let _ = grace.join();
        }
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
        self.write_slots(wanted)?;
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

    /// Writes every interface's slot into the copy packets do not read, and switches to it.
    fn write_slots(&mut self, wanted: &BTreeSet<InterfaceSource>) -> Result<(), MapWriteError> {
        let current = self.copy.get(&0, 0).unwrap_or(0) & 1;
        let free = current ^ 1;
        let mut slots = vec![SourceSlot::EMPTY; SOURCE_SLOT_INTERFACES as usize];
        for (ifindex, prefix) in wanted {
            let Some(slot) = slots.get_mut(*ifindex as usize) else {
                // Beyond the slots: the trie answers for this interface.
                continue;
            };
            match prefix {
                IpNet::V4(net) => {
                    let at = slot.v4_count as usize;
                    if at < SOURCE_SLOT_PREFIXES {
                        slot.v4[at] = SourcePrefixV4 {
                            network: u32::from(net.network()),
                            mask: u32::from(net.netmask()),
                        };
                        slot.v4_count += 1;
                    } else {
                        slot.v4_count = SOURCE_SLOT_OVERFLOW;
                    }
                }
                IpNet::V6(net) => {
                    let at = slot.v6_count as usize;
                    if at < SOURCE_SLOT_PREFIXES {
                        let (network, mask) =
                            (u128::from(net.network()), u128::from(net.netmask()));
                        slot.v6[at] = SourcePrefixV6 {
                            network_hi: (network >> 64) as u64,
                            network_lo: network as u64,
                            mask_hi: (mask >> 64) as u64,
                            mask_lo: mask as u64,
                        };
                        slot.v6_count += 1;
                    } else {
                        slot.v6_count = SOURCE_SLOT_OVERFLOW;
                    }
                }
            }
        }
        self.slots
            .write((free * SOURCE_SLOT_INTERFACES) as usize, &slots)
            .map_err(mmap_err(names::SOURCE_SLOTS))?;
        self.copy
            .set(0, free, 0)
            .map_err(|source| MapWriteError::Write {
                name: names::SOURCE_COPY,
                what: format!("copy {free}"),
                source,
            })?;
        self.grace = Some(std::thread::spawn(ranges::wait_for_running_programs));
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
