//! The one policy engine both hooks share: from a parsed [`Packet`] to a [`Reason`].
//!
//! A packet is allowed iff some service covers its destination and lists its protocol and port.
//! The daemon stores, under each prefix, the union of the rules of every prefix that covers it,
//! so one longest-prefix match per packet answers that question exactly (see
//! `filter_common::policy`).

use aya_ebpf::maps::lpm_trie::Key;
use filter_common::{policy::MAX_RULES_PER_POLICY, Policy, Reason, RuleProto};

use crate::{
    maps::{ALLOW_V4, ALLOW_V6, POLICIES},
    parse::{ipproto, Packet},
};

/// The reason for a packet's fate, and the service that allowed it when one did.
pub struct Judgement {
    pub reason: Reason,
    pub service_id: Option<u16>,
}

impl From<Reason> for Judgement {
    #[inline(always)]
    fn from(reason: Reason) -> Self {
        Self {
            reason,
            service_id: None,
        }
    }
}

/// Judges an IP packet.
#[inline(always)]
pub fn judge(packet: &Packet) -> Judgement {
    if let Some(reason) = link_local_reason(packet) {
        return reason.into();
    }
    let policy_id = if packet.family == 4 {
        ALLOW_V4.get(Key::new(32, packet.dst_v4()))
    } else {
        ALLOW_V6.get(Key::new(128, packet.dst))
    };
    let Some(&policy_id) = policy_id else {
        return Reason::NoService.into();
    };
    if packet.non_first_fragment {
        return Reason::AllowedFragment.into();
    }
    if packet.rule_proto == RuleProto::Icmp as u8 && is_icmp_error(packet) {
        return Reason::AllowedIcmpError.into();
    }
    let Some(policy) = POLICIES.get(policy_id) else {
        return Reason::PolicyMissing.into();
    };
    match_rules(policy, packet.rule_proto, packet.dport)
}

/// Scans a policy's rules for one that allows `rule_proto` to `port`.
#[inline(always)]
fn match_rules(policy: &Policy, rule_proto: u8, port: u16) -> Judgement {
    let mut protocol_listed = false;
    for index in 0..MAX_RULES_PER_POLICY {
        if index as u32 >= policy.rule_count {
            break;
        }
        let rule = &policy.rules[index];
        if rule.proto == rule_proto {
            protocol_listed = true;
            if rule.allows(rule_proto, port) {
                return Judgement {
                    reason: Reason::Allowed,
                    service_id: Some(rule.service_id),
                };
            }
        }
    }
    if protocol_listed && rule_proto != 0 {
        Reason::PortNotAllowed.into()
    } else {
        Reason::ProtocolNotAllowed.into()
    }
}

/// Traffic that never leaves the link and that the network needs: DHCP, neighbour discovery,
/// link-scoped destinations. `None` when the packet must be judged by policy.
#[inline(always)]
fn link_local_reason(packet: &Packet) -> Option<Reason> {
    let dst = &packet.dst;
    let (link_scoped, dhcp_ports) = if packet.family == 4 {
        let limited_broadcast = dst[0] == 255 && dst[1] == 255 && dst[2] == 255 && dst[3] == 255;
        // 224.0.0.0/24 (local network control) and 169.254.0.0/16 (link-local).
        let local_multicast = dst[0] == 224 && dst[1] == 0 && dst[2] == 0;
        let link_local = dst[0] == 169 && dst[1] == 254;
        (limited_broadcast || local_multicast || link_local, (68, 67))
    } else {
        // fe80::/10 (link-local unicast) and ff02::/16 (link-local scope multicast).
        let link_local = dst[0] == 0xfe && dst[1] & 0xc0 == 0x80;
        let multicast_link = dst[0] == 0xff && dst[1] == 0x02;
        (link_local || multicast_link, (546, 547))
    };
    if packet.rule_proto == RuleProto::Udp as u8
        && (packet.sport, packet.dport) == dhcp_ports
        && link_scoped
    {
        return Some(Reason::Dhcp);
    }
    if packet.family == 6 && packet.proto == ipproto::ICMPV6 && is_neighbor_discovery(packet) {
        return Some(Reason::NeighborDiscovery);
    }
    link_scoped.then_some(Reason::LinkScoped)
}

/// RFC 4861 ND messages must arrive with hop limit 255 and RFC 3810 MLD messages with hop limit
/// 1; with those hop limits neither can have crossed, or cross, a router.
#[inline(always)]
fn is_neighbor_discovery(packet: &Packet) -> bool {
    match packet.icmp_type {
        // Router/neighbour solicitation and advertisement, redirect.
        133..=137 => packet.hop_limit == 255,
        // MLD query, report, done; MLDv2 report.
        130..=132 | 143 => packet.hop_limit == 1,
        _ => false,
    }
}

#[inline(always)]
fn is_icmp_error(packet: &Packet) -> bool {
    if packet.family == 4 {
        // Destination unreachable, time exceeded, parameter problem.
        matches!(packet.icmp_type, 3 | 11 | 12)
    } else {
        // Destination unreachable, packet too big, time exceeded, parameter problem.
        matches!(packet.icmp_type, 1..=4)
    }
}
