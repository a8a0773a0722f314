//! The flow tables and the expired-address marks (`filter_common::flows`): what the daemon marks
//! before it removes an address, and what it reads and prunes when a reload changes the policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{HashMap, MapData},
    Ebpf,
};
use filter_common::{
    flows::{AddressKey, FlowKey, FlowState},
    maps as names, RuleProto,
};

use super::{take_map, MapWriteError};
use crate::{
    rules::{groups::group_of, Group},
    table::AllowTable,
};

/// Handles on `TCP_FLOWS`, `UDP_FLOWS` and `EXPIRED_ADDRS`.
pub struct FlowMaps {
    tcp: HashMap<MapData, FlowKey, FlowState>,
    udp: HashMap<MapData, FlowKey, FlowState>,
    expired: HashMap<MapData, AddressKey, u64>,
}

impl FlowMaps {
    /// Takes the flow maps out of a loaded object.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapWriteError> {
        Ok(Self {
            tcp: take_map(ebpf, names::TCP_FLOWS)?,
            udp: take_map(ebpf, names::UDP_FLOWS)?,
            expired: take_map(ebpf, names::EXPIRED_ADDRS)?,
        })
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
            self.expired
                .insert(address_key(address), at_ns, 0)
                .map_err(|source| MapWriteError::Write {
                    name: names::EXPIRED_ADDRS,
                    what: address.to_string(),
                    source,
                })?;
            marked += 1;
        }
        Ok(marked)
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
