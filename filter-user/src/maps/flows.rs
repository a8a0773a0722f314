//! The flow tables and the expired-address marks (`filter_common::flows`): what the daemon marks
//! before it removes an address, and what it reads and prunes when a reload changes the policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use filter_common::{
    flows::{
        address_halves, expired_filter_bit, AddressKey, FlowKey, FlowState, EXPIRED_FILTER_WORDS,
    },
    maps::{self as names, MAX_EXPIRED_ADDRS},
    RuleProto,
};

use super::{mmap_err, take_map, take_mapped, MapWriteError};
use crate::{
    ranges::MappedArray,
    rules::{groups::group_of, Group},
    table::AllowTable,
};

/// Handles on `TCP_FLOWS`, `UDP_FLOWS`, `EXPIRED_ADDRS` and (to write) `EXPIRED_FILTER`.
pub struct FlowMaps {
    tcp: HashMap<MapData, FlowKey, FlowState>,
    udp: HashMap<MapData, FlowKey, FlowState>,
    expired: HashMap<MapData, AddressKey, u64>,
    /// `None` for a pinned filter opened to read.
    filter: Option<ExpiredFilter>,
}

/// `EXPIRED_FILTER` and what it holds. Bits are set before their address is marked, and
/// cleared only by [`FlowMaps::rebuild_filter`], which keeps every marked address's bit: a
/// packet never finds a marked address's bit clear.
struct ExpiredFilter {
    map: MappedArray<u64>,
    words: Vec<u64>,
    /// Marks since the last rebuild: marks the LRU evicted leave their bits set, which only cost
    /// the lookup the filter saves, until a rebuild after as many marks as the LRU holds.
    marks_since_rebuild: usize,
}

impl FlowMaps {
    /// Takes the flow maps out of a loaded object, and brings the filter in line with the
    /// marks (adopted maps hold the last daemon's; a map created now holds none).
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        let filter: MappedArray<u64> =
            take_mapped(ebpf, names::EXPIRED_FILTER, EXPIRED_FILTER_WORDS)?;
        let words = filter
            .read(0, EXPIRED_FILTER_WORDS as usize)
            .map_err(mmap_err(names::EXPIRED_FILTER))?;
        let mut maps = Self {
            tcp: take_map(ebpf, names::TCP_FLOWS)?,
            udp: take_map(ebpf, names::UDP_FLOWS)?,
            expired: take_map(ebpf, names::EXPIRED_ADDRS)?,
            filter: Some(ExpiredFilter {
                map: filter,
                words,
                marks_since_rebuild: 0,
            }),
        };
        maps.rebuild_filter()?;
        Ok(maps)
    }

    /// Sets the filter to exactly the bits of the addresses marked now, clearing those of marks
    /// the LRU evicted. Only this writer marks, so no mark appears between reading the marks and
    /// storing the words; each word changes in one aligned store.
    pub fn rebuild_filter(&mut self) -> Result<(), MapWriteError> {
        let Some(filter) = &mut self.filter else {
            return Ok(());
        };
        let mut wanted = vec![0_u64; EXPIRED_FILTER_WORDS as usize];
        for key in self.expired.keys() {
            let key = key.map_err(|source| MapWriteError::Write {
                name: names::EXPIRED_ADDRS,
                what: "the marks, to rebuild EXPIRED_FILTER".to_owned(),
                source,
            })?;
            set_bit(&mut wanted, filter_bit(&key));
        }
        for (at, (held, wanted)) in filter.words.iter_mut().zip(wanted).enumerate() {
            if *held != wanted {
                filter
                    .map
                    .store(at, wanted)
                    .map_err(mmap_err(names::EXPIRED_FILTER))?;
                *held = wanted;
            }
        }
        filter.marks_since_rebuild = 0;
        Ok(())
    }

    /// The flow maps of a pinned filter, for reading (`explain`).
    pub fn pinned(pins: &crate::pins::PinDir) -> anyhow::Result<Self> {
        let open = |name: &str| -> anyhow::Result<_> {
            Ok(aya::maps::Map::from_map_data(MapData::from_pin(
                pins.map_path(name),
            )?)?)
        };
        Ok(Self {
            tcp: HashMap::try_from(open(names::TCP_FLOWS)?)?,
            udp: HashMap::try_from(open(names::UDP_FLOWS)?)?,
            expired: HashMap::try_from(open(names::EXPIRED_ADDRS)?)?,
            filter: None,
        })
    }

    /// Marks `addresses` as removed at `at_ns` (CLOCK_MONOTONIC): their flows may go on. Done
    /// before the addresses leave the table, so no packet of a flow finds its address gone and
    /// unmarked.
    pub fn mark_expired(
        &mut self,
        addresses: impl IntoIterator<Item = IpAddr>,
        at_ns: u64,
    ) -> Result<usize, MapWriteError> {
        let mut marked = 0;
        for address in addresses {
            let key = address_key(address);
            if let Some(filter) = &mut self.filter {
                // The bit before the mark: a packet that finds the mark finds the bit.
                let bit = filter_bit(&key);
                let at = (bit >> 6) as usize;
                if set_bit(&mut filter.words, bit) {
                    filter
                        .map
                        .store(at, filter.words[at])
                        .map_err(mmap_err(names::EXPIRED_FILTER))?;
                }
                filter.marks_since_rebuild += 1;
            }
            self.expired
                .insert(key, at_ns, 0)
                .map_err(|source| MapWriteError::Write {
                    name: names::EXPIRED_ADDRS,
                    what: address.to_string(),
                    source,
                })?;
            marked += 1;
        }
        if self
            .filter
            .as_ref()
            .is_some_and(|filter| filter.marks_since_rebuild >= MAX_EXPIRED_ADDRS as usize)
        {
            self.rebuild_filter()?;
        }
        Ok(marked)
    }

    /// Takes the mark of `address` away as the LRU evicting it would, leaving its filter bit
    /// (for tests); whether it was marked.
    pub fn forget_mark(&mut self, address: IpAddr) -> bool {
        self.expired.remove(&address_key(address)).is_ok()
    }

    /// Whether the kernel's `EXPIRED_FILTER` has the bit of `address` set (`None` for a pinned
    /// filter opened to read).
    pub fn filter_has(&self, address: IpAddr) -> Result<Option<bool>, MapWriteError> {
        let Some(filter) = &self.filter else {
            return Ok(None);
        };
        let key = address_key(address);
        let bit = filter_bit(&key);
        let word = filter
            .map
            .read((bit >> 6) as usize, 1)
            .map_err(mmap_err(names::EXPIRED_FILTER))?[0];
        Ok(Some(word >> (bit & 63) & 1 == 1))
    }

    /// When `address` was marked as removed, if it was.
    #[must_use]
    pub fn expired_at(&self, address: IpAddr) -> Option<u64> {
        self.expired.get(&address_key(address), 0).ok()
    }

    /// Every flow in both tables.
    #[must_use]
    pub fn flows(&self) -> Vec<(FlowKey, FlowState)> {
        self.tcp
            .iter()
            .chain(self.udp.iter())
            .filter_map(Result::ok)
            .collect()
    }

    /// Puts a flow in its table (as a first packet would; for tests and the bench).
    pub fn insert(&mut self, key: FlowKey, state: FlowState) -> Result<(), MapWriteError> {
        let (table, name) = self.table_of(&key);
        table
            .insert(key, state, 0)
            .map_err(|source| MapWriteError::Write {
                name,
                what: format!("{key:?}"),
                source,
            })
    }

    /// Takes a flow out of its table; whether it was there.
    pub fn remove(&mut self, key: &FlowKey) -> bool {
        self.table_of(key).0.remove(key).is_ok()
    }

    /// A flow as it is now, if it is in its table.
    #[must_use]
    pub fn get(&self, key: &FlowKey) -> Option<FlowState> {
        let table = if key.proto == RuleProto::Tcp as u8 {
            &self.tcp
        } else {
            &self.udp
        };
        table.get(key, 0).ok()
    }

    fn table_of(
        &mut self,
        key: &FlowKey,
    ) -> (&mut HashMap<MapData, FlowKey, FlowState>, &'static str) {
        if key.proto == RuleProto::Tcp as u8 {
            (&mut self.tcp, names::TCP_FLOWS)
        } else {
            (&mut self.udp, names::UDP_FLOWS)
        }
    }
}

/// The `EXPIRED_FILTER` bit of a marked address.
fn filter_bit(key: &AddressKey) -> u32 {
    let (hi, lo) = address_halves(&key.addr);
    expired_filter_bit(hi, lo, key.family)
}

/// Sets `bit` in `words`; whether it was clear.
fn set_bit(words: &mut [u64], bit: u32) -> bool {
    let (word, mask) = (&mut words[(bit >> 6) as usize], 1_u64 << (bit & 63));
    let was_clear = *word & mask == 0;
    *word |= mask;
    was_clear
}

/// An address as `EXPIRED_ADDRS` keys it.
#[must_use]
pub fn address_key(address: IpAddr) -> AddressKey {
    let (addr, family) = address_bytes(address);
    AddressKey {
        addr,
        family,
        _pad: [0; 3],
    }
}

/// A flow's key as the programs build it from a packet.
#[must_use]
pub fn flow_key(proto: RuleProto, src: IpAddr, sport: u16, dst: IpAddr, dport: u16) -> FlowKey {
    let (src, family) = address_bytes(src);
    let (dst, _) = address_bytes(dst);
    FlowKey {
        src,
        dst,
        sport,
        dport,
        family,
        proto: proto as u8,
        _pad: [0; 2],
    }
}

/// A flow's source and destination addresses.
#[must_use]
pub fn flow_addresses(key: &FlowKey) -> (IpAddr, IpAddr) {
    let address = |bytes: [u8; 16]| {
        if key.family == 4 {
            IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
    };
    (address(key.src), address(key.dst))
}

/// Whether `table` allows the flow's protocol and port to its destination for its source's
/// client group (in `groups`), as the kernel would.
#[must_use]
pub fn table_allows(table: &AllowTable, groups: &[Group], key: &FlowKey) -> bool {
    let Some(proto) = RuleProto::from_ip_proto(key.proto) else {
        return false;
    };
    let (src, dst) = flow_addresses(key);
    let group = group_of(groups, src);
    table
        .lookup(dst)
        .is_some_and(|(_, rules)| rules.find_for(group, proto, key.dport).is_some())
}

/// The clock the programs stamp flows with (`bpf_ktime_get_coarse_ns` counts CLOCK_MONOTONIC).
#[must_use]
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        // CLOCK_MONOTONIC never goes below zero.
        t.tv_sec().unsigned_abs() * 1_000_000_000 + t.tv_nsec().unsigned_abs()
    })
}

fn address_bytes(address: IpAddr) -> ([u8; 16], u8) {
    match address {
        IpAddr::V4(v4) => {
            let mut bytes = [0; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            (bytes, 4)
        }
        IpAddr::V6(v6) => (v6.octets(), 6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_spell_addresses_the_way_the_parser_does() {
        let key = flow_key(
            RuleProto::Tcp,
            "10.0.0.2".parse().unwrap(),
            40000,
            "198.51.100.10".parse().unwrap(),
            443,
        );
        assert_eq!(&key.dst[..4], &[198, 51, 100, 10]);
        assert_eq!(&key.dst[4..], &[0; 12]);
        assert_eq!((key.family, key.proto), (4, 6));
        assert_eq!(
            flow_addresses(&key),
            (
                "10.0.0.2".parse().unwrap(),
                "198.51.100.10".parse().unwrap()
            )
        );
        let v6 = address_key("2001:db8::1".parse().unwrap());
        assert_eq!((v6.family, v6.addr[0], v6.addr[15]), (6, 0x20, 1));
    }
}
