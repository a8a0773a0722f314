//! The names clients looked up, by the addresses their answers gave, listed or not: so a drop
//! event to an address a device just resolved says which name it was after (`host`). That is
//! what an operator needs to decide whether a rule is missing.
//!
//! Names come as [`super::names::normalize`] wrote them, like every name the forwarder records.
//!
//! Bounded: past [`CAPACITY`] addresses the one recorded longest ago is forgotten.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::Mutex,
};

/// Addresses remembered.
pub const CAPACITY: usize = 16_384;

#[derive(Debug, Default)]
pub struct SeenNames {
    inner: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    names: HashMap<IpAddr, String>,
    /// Insertion order, for forgetting; an address recorded again appears twice and is only
    /// forgotten when its last record is the oldest.
    order: VecDeque<(IpAddr, u64)>,
    stamps: HashMap<IpAddr, u64>,
    next: u64,
}

impl SeenNames {
    /// Records that `name` answered `addresses`.
    pub fn record(&self, name: &str, addresses: impl IntoIterator<Item = IpAddr>) {
        let Ok(mut seen) = self.inner.lock() else {
            return;
        };
        for address in addresses {
            let stamp = seen.next;
            seen.next += 1;
            // The same name again (the usual case: devices ask the same names all day) keeps
            // its text; only its place in the order moves.
            if seen.names.get(&address).is_none_or(|known| known != name) {
                seen.names.insert(address, name.to_owned());
            }
            seen.stamps.insert(address, stamp);
            seen.order.push_back((address, stamp));
            while seen.names.len() > CAPACITY || seen.order.len() > 2 * CAPACITY {
                let Some((oldest, stamp)) = seen.order.pop_front() else {
                    break;
                };
                if seen.stamps.get(&oldest) == Some(&stamp) {
                    seen.stamps.remove(&oldest);
                    seen.names.remove(&oldest);
                }
            }
        }
    }

    /// The name last seen answering `address`.
    #[must_use]
    pub fn name(&self, address: IpAddr) -> Option<String> {
        self.inner.lock().ok()?.names.get(&address).cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    fn addr(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0xc000_0200 + i))
    }

    #[test]
    fn the_latest_name_wins_and_the_oldest_address_goes_first() {
        let seen = SeenNames::default();
        seen.record("a.example.net", [addr(1)]);
        seen.record("b.example.net", [addr(1)]);
        assert_eq!(seen.name(addr(1)).as_deref(), Some("b.example.net"));
        for i in 2..=u32::try_from(CAPACITY).unwrap() + 1 {
            seen.record("bulk.example.net", [addr(i)]);
        }
        assert!(
            seen.name(addr(1)).is_none(),
            "the oldest is forgotten at capacity"
        );
        assert!(seen.name(addr(2)).is_some());
    }

    #[test]
    fn an_address_recorded_over_and_over_stays_bounded() {
        let seen = SeenNames::default();
        for _ in 0..5 * CAPACITY {
            seen.record("same.example.net", [addr(1)]);
        }
        let inner = seen.inner.lock().unwrap();
        assert!(inner.order.len() <= 2 * CAPACITY && inner.names.len() == 1);
    }
}
