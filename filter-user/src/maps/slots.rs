//! Policy slots: which slot of the `POLICIES` array holds which rule set, and when a slot may
//! be handed out again (only once neither copy nor trie points at it, after a grace period).

use std::{collections::HashMap, hash::Hash};

use filter_common::{maps as names, maps::MAX_POLICIES, Policy, PolicyId};

use super::{MapWriteError, PolicyMaps};
use crate::table::RuleSet;

impl PolicyMaps {
    /// Gives a new rule set a slot and writes it there, before anything points at it.
    pub(super) fn write_policy(&mut self, rules: &RuleSet) -> Result<PolicyId, MapWriteError> {
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

    pub(super) fn release_unreferenced(&mut self) -> usize {
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
pub(super) struct PolicySlots {
    by_rules: HashMap<RuleSet, PolicyId>,
    by_id: HashMap<PolicyId, RuleSet>,
    /// Slots released earlier, reused before new ones.
    free: Vec<PolicyId>,
    /// Slots below this have been handed out at some point.
    high_water: PolicyId,
}

impl PolicySlots {
    pub(super) fn id_of(&self, rules: &RuleSet) -> Option<PolicyId> {
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
    pub(super) fn adopt(&mut self, id: PolicyId, rules: RuleSet) {
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
    pub(super) fn retain_ids(&mut self, keep: impl Fn(PolicyId) -> bool) -> usize {
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
    use crate::table::{AllowTable, Grant, PortSpec};

    #[test]
    fn slots_are_reused_after_release() {
        let mut slots = PolicySlots::default();
        let a = RuleSet::default();
        let b = AllowTable::build(&[Grant {
            prefix: "192.0.2.0/24".parse().unwrap(),
            service: 0,
            ports: vec![PortSpec::Tcp(443..=443)],
            groups: filter_common::groups::ALL_GROUPS,
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
            groups: filter_common::groups::ALL_GROUPS,
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
