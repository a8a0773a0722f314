//! Whom the forwarder answers: the clients it serves, and nobody else.
//!
//! A forwarder that answers anyone is an open resolver: a spoofed query makes it send its answer
//! to a victim (amplification), and anyone can probe what its clients looked up. Like dnsmasq's
//! `local-service`, it answers only sources on the subnets of the interfaces the filter guards,
//! the host itself, and the prefixes the operator names (`--dns-allow-from`, for networks behind
//! a downstream router). The daemon computes the set (`daemon::dns_clients`) and refreshes it
//! with the routes; this is the set and its one question.
//!
//! A source it does not serve gets nothing at all, not REFUSED: the source of a UDP query is
//! whatever the sender wrote, so any reply, however small, goes to whoever was named, and a
//! REFUSED would still make the forwarder a reflector (and tell a scanner a resolver is there).

use std::net::IpAddr;

use ipnet::IpNet;

/// The source prefixes the forwarder answers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServedClients {
    prefixes: Vec<IpNet>,
}

impl ServedClients {
    /// Serves `prefixes` and the host's loopback, which only the host itself can send from.
    #[must_use]
    pub fn new(prefixes: impl IntoIterator<Item = IpNet>) -> Self {
        let loopback = ["127.0.0.0/8", "::1/128"].map(|p| p.parse().expect("a valid prefix"));
        let mut prefixes: Vec<IpNet> = prefixes
            .into_iter()
            .chain(loopback)
            .map(|p| p.trunc())
            .collect();
        prefixes.sort();
        prefixes.dedup();
        Self { prefixes }
    }

    /// Whether a message from `source` gets an answer. An IPv4 client of an IPv6 socket shows as
    /// `::ffff:a.b.c.d`, and is judged by its IPv4 address.
    #[must_use]
    pub fn serves(&self, source: IpAddr) -> bool {
        let source = source.to_canonical();
        self.prefixes.iter().any(|prefix| prefix.contains(&source))
    }

    /// The prefixes served, for the log.
    #[must_use]
    pub fn prefixes(&self) -> &[IpNet] {
        &self.prefixes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn served(prefixes: &[&str]) -> ServedClients {
        ServedClients::new(prefixes.iter().map(|p| p.parse().expect("test prefix")))
    }

    fn ip(address: &str) -> IpAddr {
        address.parse().expect("test address")
    }

    #[test]
    fn sources_on_the_served_prefixes_and_loopback_are_answered_and_no_others() {
        let s = served(&["10.77.0.0/24", "fd00:77::/64"]);
        for yes in [
            "10.77.0.2",
            "10.77.0.255",
            "fd00:77::2",
            "127.0.0.1",
            "127.9.9.9",
            "::1",
        ] {
            assert!(s.serves(ip(yes)), "{yes}");
        }
        for no in [
            "10.77.1.2",
            "192.0.2.2",
            "2001:db8:ffff::2",
            "fd00:78::2",
            "0.0.0.0",
        ] {
            assert!(!s.serves(ip(no)), "{no}");
        }
    }

    #[test]
    fn an_ipv4_client_of_an_ipv6_socket_is_judged_by_its_ipv4_address() {
        let s = served(&["10.77.0.0/24"]);
        assert!(s.serves(ip("::ffff:10.77.0.2")));
        assert!(!s.serves(ip("::ffff:192.0.2.2")));
    }

    #[test]
    fn nothing_configured_serves_only_the_host_itself() {
        let s = ServedClients::default();
        assert!(!s.serves(ip("127.0.0.1")), "the empty set serves nobody");
        let s = served(&[]);
        assert!(s.serves(ip("127.0.0.1")) && !s.serves(ip("10.0.0.1")));
        assert_eq!(s.prefixes().len(), 2);
    }
}
