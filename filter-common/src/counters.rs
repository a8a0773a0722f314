//! Where a packet is counted: `REASON_STATS` holds one packet and byte counter per (interface
//! slot, hook, reason), so that metrics can tell a gateway's LANs and its hooks apart without a
//! per-packet hash lookup.
//!
//! The daemon gives each interface it attaches to a slot from 1 to [`COUNTED_INTERFACES`] - 1 in
//! `COUNTER_SLOTS[ifindex]`; slot 0 counts every other interface (an index above
//! [`COUNTER_SLOT_IFINDEX_LIMIT`], or one the daemon did not number). Cardinality stays bounded
//! whatever the traffic: 16 × 2 × [`crate::Reason::COUNT`] counters per CPU.

use crate::{Hook, Reason};

/// Interface slots in `REASON_STATS`, slot 0 (every other interface) included.
pub const COUNTED_INTERFACES: u32 = 16;
/// Hooks with their own counters: XDP and TC.
pub const COUNTED_HOOKS: u32 = 2;
/// Entries of `COUNTER_SLOTS`: interfaces with an index below this can have a slot.
pub const COUNTER_SLOT_IFINDEX_LIMIT: u32 = 1024;
/// Entries of `REASON_STATS`.
pub const REASON_COUNTERS: u32 = COUNTED_INTERFACES * COUNTED_HOOKS * Reason::COUNT as u32;

/// The `REASON_STATS` index of a packet counted on interface slot `slot` at `hook` under
/// `reason`. A slot out of range counts as slot 0, so the index is always in the map.
#[inline(always)]
#[must_use]
pub const fn reason_counter(slot: u32, hook: Hook, reason: Reason) -> u32 {
    let slot = if slot < COUNTED_INTERFACES { slot } else { 0 };
    let hook = match hook {
        Hook::Xdp => 0,
        Hook::Tc => 1,
    };
    (slot * COUNTED_HOOKS + hook) * Reason::COUNT as u32 + reason as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_has_its_own_index_inside_the_map() {
        let mut seen = std::collections::BTreeSet::new();
        for slot in 0..COUNTED_INTERFACES {
            for hook in [Hook::Xdp, Hook::Tc] {
                for reason in Reason::ALL {
                    let index = reason_counter(slot, hook, reason);
                    assert!(index < REASON_COUNTERS);
                    assert!(seen.insert(index), "{slot} {hook:?} {reason:?} collides");
                }
            }
        }
        assert_eq!(seen.len(), REASON_COUNTERS as usize);
        assert_eq!(
            reason_counter(COUNTED_INTERFACES, Hook::Tc, Reason::Allowed),
            reason_counter(0, Hook::Tc, Reason::Allowed)
        );
    }
}
