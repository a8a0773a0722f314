//! Drop events: from the ring buffer's records to one line each on stdout.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use filter_common::{event::Action, DropEvent, Hook, Reason};
use serde::Serialize;

use super::{hosts::HostTable, learning::Learner};
use crate::{dns::SeenNames, rules::Group, table::AllowTable};

/// How events are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EventFormat {
    Text,
    Json,
}

/// One event as users see it. The JSON field names are a contract (README, "Running it"):
/// programs parse them.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct EventRecord {
    /// RFC 3339, UTC.
    pub ts: String,
    /// "drop" or "audit".
    pub action: &'static str,
    pub iface: String,
    pub hook: &'static str,
    pub proto: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst: Option<IpAddr>,
    pub sport: u16,
    pub dport: u16,
    pub reason: &'static str,
    /// The hostname the destination was learned from, when known.
    pub host: Option<String>,
    /// The service whose prefix covers the destination, when one does.
    pub service: Option<String>,
    pub vlan: u16,
    pub len: u32,
    /// The source's client group, when the rules define groups.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// What the daemon knows that the kernel does not: names.
#[derive(Default)]
pub struct Enricher {
    pub table: AllowTable,
    pub service_names: Vec<String>,
    /// Names polled from the rules, by the addresses they resolved to.
    pub hosts_by_address: BTreeMap<IpAddr, Vec<String>>,
    /// Names clients' DNS answers were learned from, by address.
    pub learned_names: HashMap<IpAddr, String>,
    /// Names clients looked up through the forwarder, listed or not, by address.
    pub seen: Arc<SeenNames>,
    pub iface_names: BTreeMap<u32, String>,
    /// The client groups of the policy in the maps; empty when the rules define none.
    pub groups: Vec<Group>,
}

impl Enricher {
    /// After a rebuild: every name an event may carry, anew.
    pub fn refresh_all(
        &mut self,
        service_names: Vec<String>,
        hosts: &HostTable,
        learner: &Learner,
    ) {
        self.service_names = service_names;
        self.hosts_by_address = hosts.names_by_address();
        self.learned_names = learner
            .table()
            .keys()
            .filter_map(|(address, _)| Some((address, learner.names_for(address)?)))
            .collect();
    }

    /// After host routes came or went: the learned names of those addresses.
    pub fn refresh_addresses(&mut self, addresses: &[IpAddr], learner: &Learner) {
        for address in addresses {
            match learner.names_for(*address) {
                Some(names) => self.learned_names.insert(*address, names),
                None => self.learned_names.remove(address),
            };
        }
    }

    /// Decodes a raw event into what is printed. `boot_offset` turns monotonic nanoseconds
    /// into wall-clock time.
    #[must_use]
    pub fn record(&self, event: &DropEvent, boot_time: SystemTime) -> EventRecord {
        let (src, dst) = match event.family {
            4 => (Some(v4(&event.src_addr)), Some(v4(&event.dst_addr))),
            6 => (
                Some(IpAddr::V6(Ipv6Addr::from(event.src_addr))),
                Some(IpAddr::V6(Ipv6Addr::from(event.dst_addr))),
            ),
            _ => (None, None),
        };
        let service = dst
            .and_then(|d| self.table.lookup(d))
            .and_then(|(_, rules)| {
                // A service of the source's group: the others are not there for it.
                let first = rules.for_group(u32::from(event.group)).next()?;
                self.service_names
                    .get(usize::from(first.service_id))
                    .cloned()
            });
        let host = dst.and_then(|d| {
            let mut names: Vec<&str> = self
                .hosts_by_address
                .get(&d)
                .into_iter()
                .flatten()
                .map(String::as_str)
                .collect();
            names.extend(self.learned_names.get(&d).map(String::as_str));
            if names.is_empty() {
                // Not a listed name's address: still say what the device looked up.
                return self.seen.name(d);
            }
            Some(names.join(","))
        });
        let ts = boot_time + Duration::from_nanos(event.timestamp_ns);
        EventRecord {
            ts: humantime::format_rfc3339_millis(ts).to_string(),
            action: if event.action == Action::Audit as u8 {
                "audit"
            } else {
                "drop"
            },
            iface: self
                .iface_names
                .get(&event.ifindex)
                .cloned()
                .unwrap_or_else(|| format!("if{}", event.ifindex)),
            hook: if event.hook == Hook::Tc as u8 {
                "tc"
            } else {
                "xdp"
            },
            proto: proto_name(event.proto, event.family),
            src,
            dst,
            sport: u16::from_be(event.sport_be),
            dport: u16::from_be(event.dport_be),
            reason: Reason::from_u32(event.reason).map_or("unknown", Reason::label),
            host,
            service,
            vlan: event.vlan_id,
            len: event.packet_len,
            group: self.group_name(event.group),
        }
    }

    /// The name of group `number`: `default` for 0 once the rules define groups, the number
    /// itself for one the rules no longer name.
    fn group_name(&self, number: u8) -> Option<String> {
        if self.groups.is_empty() {
            return None;
        }
        Some(
            match self.groups.iter().find(|g| g.id == u32::from(number)) {
                Some(group) => group.name.clone(),
                None if number == 0 => crate::rules::DEFAULT_NAME.to_owned(),
                None => format!("group{number}"),
            },
        )
    }
}

fn v4(bytes: &[u8; 16]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))
}

fn proto_name(proto: u8, family: u8) -> String {
    match (proto, family) {
        (_, 0) => "-".into(),
        (6, _) => "tcp".into(),
        (17, _) => "udp".into(),
        (1, 4) => "icmp".into(),
        (58, 6) => "icmpv6".into(),
        (other, _) => other.to_string(),
    }
}

impl EventRecord {
    /// One line of text: time, action, where, what, why, and names when known.
    #[must_use]
    pub fn to_text(&self) -> String {
        let endpoint = |addr: Option<IpAddr>, port: u16| match (addr, port) {
            (None, _) => "-".to_owned(),
            (Some(IpAddr::V6(a)), p) if p != 0 => format!("[{a}]:{p}"),
            (Some(a), p) if p != 0 => format!("{a}:{p}"),
            (Some(a), _) => a.to_string(),
        };
        let mut line = format!(
            "{} {} {}/{} {} {} -> {} reason={}",
            self.ts,
            self.action,
            self.hook,
            self.iface,
            self.proto,
            endpoint(self.src, self.sport),
            endpoint(self.dst, self.dport),
            self.reason
        );
        if self.vlan != 0 {
            let _ = write!(line, " vlan={}", self.vlan);
        }
        if let Some(host) = &self.host {
            let _ = write!(line, " host={host}");
        }
        if let Some(service) = &self.service {
            let _ = write!(line, " service={service}");
        }
        if let Some(group) = &self.group {
            let _ = write!(line, " group={group}");
        }
        line
    }
}

/// When the machine booted, on the wall clock: event timestamps count from there.
#[must_use]
pub fn boot_time() -> SystemTime {
    let since_boot = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| {
            Duration::new(
                u64::try_from(t.tv_sec()).unwrap_or(0),
                u32::try_from(t.tv_nsec()).unwrap_or(0),
            )
        })
        .unwrap_or_default();
    SystemTime::now() - since_boot
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{compile, rules::Rules};

    #[test]
    fn a_drop_is_decoded_and_named() {
        let rules = Rules::parse_sources(&[(
            Path::new("t.toml"),
            "[[service]]\nname = \"mdm\"\nhosts = [\"mdm.example.com\"]\ncidrs = [\"198.51.100.0/24\"]\ntcp = [443]\n",
        )])
        .unwrap();
        let mut enricher = Enricher {
            table: compile::compile(&rules, &compile::Resolved::default()).unwrap(),
            service_names: vec!["mdm".into()],
            ..Enricher::default()
        };
        enricher.hosts_by_address.insert(
            "198.51.100.7".parse().unwrap(),
            vec!["mdm.example.com".into()],
        );
        enricher.iface_names.insert(3, "lan0".into());
        let mut event = DropEvent {
            family: 4,
            proto: 6,
            ifindex: 3,
            hook: 1,
            action: 1,
            ..DropEvent::ZERO
        };
        event.src_addr[..4].copy_from_slice(&[192, 0, 2, 10]);
        event.dst_addr[..4].copy_from_slice(&[198, 51, 100, 7]);
        event.sport_be = 40000u16.to_be();
        event.dport_be = 22u16.to_be();
        event.reason = Reason::PortNotAllowed as u32;
        event.timestamp_ns = 1_500_000_000;
        let record = enricher.record(&event, SystemTime::UNIX_EPOCH);
        assert_eq!(
            record.to_text(),
            "1970-01-01T00:00:01.500Z drop xdp/lan0 tcp 192.0.2.10:40000 -> 198.51.100.7:22 reason=port-not-allowed host=mdm.example.com service=mdm"
        );
        let json = serde_json::to_value(&record).unwrap();
        for field in [
            "ts", "action", "iface", "proto", "src", "dst", "sport", "dport", "reason", "host",
            "service",
        ] {
            assert!(json.get(field).is_some(), "JSON lacks {field}: {json}");
        }
        assert_eq!(json["dst"], "198.51.100.7");
    }
}
