//! What the LPM tries map a destination to, and what a policy allows there.
//!
//! ```text
//!  ALLOW_V4 key (struct bpf_lpm_trie_key_u8)         ALLOW_V4 value       POLICIES[id]
//! +----------------+---------------------------+     +-------------+     +-------------+---------+
//! | prefix_len u32 | addr [u8; 4], network order |  →  | PolicyId u32 |  →  | rule_count  | rules[] |
//! | (host order)   | most significant bit first  |     +-------------+     +-------------+---------+
//! +----------------+---------------------------+
//! ```
//!
//! The prefix length comes first in host order because the kernel's LPM trie says so; the address
//! follows in network order because the trie matches bits from the most significant one, so the
//! bytes are taken straight from the packet. IPv6 keys are the same with 16 address bytes.
//!
//! A policy is the complete set of (protocol, port range, service) rules that apply to every
//! address under its prefix. The daemon makes that so: where prefixes overlap, the entry of the
//! longer prefix already carries the rules of every shorter prefix that covers it, so one
//! longest-prefix lookup answers "does some service allow this?" Identical rule sets share one
//! policy id, which keeps the policy array small however many prefixes there are.

use crate::groups::{GroupMask, ALL_GROUPS};

/// Address part of an IPv4 LPM key, network byte order.
pub type Ipv4KeyBytes = [u8; 4];
/// Address part of an IPv6 LPM key, network byte order.
pub type Ipv6KeyBytes = [u8; 16];

/// Index into the policy array; the value of both LPM tries.
pub type PolicyId = u32;

/// Rules a single policy can hold. The kernel scans them in order, so a bound keeps the scan
/// short and verifiable; the daemon refuses a policy set that would need more.
pub const MAX_RULES_PER_POLICY: usize = 32;

/// The protocol a rule allows, numbered as in the IP header so the kernel compares directly.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleProto {
    /// ICMP for IPv4 and ICMPv6 for IPv6 (the kernel folds protocol 58 into 1).
    Icmp = 1,
    Tcp = 6,
    Udp = 17,
}

impl RuleProto {
    /// The rule protocol for an IP protocol number, if rules can name it.
    #[must_use]
    pub const fn from_ip_proto(proto: u8) -> Option<Self> {
        match proto {
            1 | 58 => Some(Self::Icmp),
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            _ => None,
        }
    }
}

/// One allowed (protocol, destination port range) and the service it belongs to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRule {
    /// IP protocol number: 1 (ICMP/ICMPv6), 6 or 17. 0 marks an unused slot.
    pub proto: u8,
    pub _pad: u8,
    /// The service counted when this rule allows a packet.
    pub service_id: u16,
    /// First allowed destination port, host order. Ignored for ICMP.
    pub port_lo: u16,
    /// Last allowed destination port (inclusive), host order. Ignored for ICMP.
    pub port_hi: u16,
    /// The client groups this rule applies to (`crate::groups`), bit `g` for group `g`.
    pub groups: GroupMask,
}
const _: () = assert!(size_of::<PortRule>() == 16);

impl PortRule {
    #[must_use]
    pub const fn new(proto: RuleProto, ports_lo: u16, ports_hi: u16, service_id: u16) -> Self {
        Self {
            proto: proto as u8,
            _pad: 0,
            service_id,
            port_lo: ports_lo,
            port_hi: ports_hi,
            groups: ALL_GROUPS,
        }
    }

    /// The same rule, applying only to `groups`.
    #[must_use]
    pub const fn for_groups(self, groups: GroupMask) -> Self {
        Self { groups, ..self }
    }

    /// Whether this rule allows `proto` (a [`RuleProto`] number) to `port` (host order).
    #[inline(always)]
    #[must_use]
    pub const fn allows(&self, proto: u8, port: u16) -> bool {
        self.proto == proto
            && (proto == RuleProto::Icmp as u8 || (self.port_lo <= port && port <= self.port_hi))
    }
}

/// The value of the policy array: up to [`MAX_RULES_PER_POLICY`] rules, the first `rule_count`
/// of them in use.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Policy {
    pub rule_count: u32,
    pub _pad: u32,
    pub rules: [PortRule; MAX_RULES_PER_POLICY],
}
const _: () = assert!(size_of::<Policy>() == 8 + 16 * MAX_RULES_PER_POLICY);

impl Default for Policy {
    fn default() -> Self {
        Self {
            rule_count: 0,
            _pad: 0,
            rules: [PortRule::default(); MAX_RULES_PER_POLICY],
        }
    }
}

impl Policy {
    /// The rules in use.
    #[must_use]
    pub fn active_rules(&self) -> &[PortRule] {
        let count = (self.rule_count as usize).min(MAX_RULES_PER_POLICY);
        &self.rules[..count]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_rule_checks_protocol_and_inclusive_range() {
        let rule = PortRule::new(RuleProto::Tcp, 5228, 5230, 3);
        assert!(
            rule.allows(6, 5228) && rule.allows(6, 5230),
            "range ends are inclusive"
        );
        assert!(
            !rule.allows(6, 5227) && !rule.allows(6, 5231),
            "ports outside the range"
        );
        assert!(!rule.allows(17, 5228), "a TCP rule does not allow UDP");
    }

    #[test]
    fn icmp_rule_ignores_ports() {
        let rule = PortRule::new(RuleProto::Icmp, 0, 0, 0);
        assert!(
            rule.allows(1, 0) && rule.allows(1, 771),
            "ICMP type/code are not ports"
        );
        assert_eq!(
            RuleProto::from_ip_proto(58),
            Some(RuleProto::Icmp),
            "ICMPv6 folds into ICMP"
        );
    }

    #[test]
    fn active_rules_never_exceeds_capacity() {
        let policy = Policy {
            rule_count: u32::MAX,
            ..Policy::default()
        };
        assert_eq!(policy.active_rules().len(), MAX_RULES_PER_POLICY);
    }
}
