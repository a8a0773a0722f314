//! What counts as a broad opening: one place for the classification that `diff` flags,
//! `check --strict` refuses without `accept-risk`, and the importers note in their output.
//!
//! An opening is broad when it reaches far more than one vendor's service: an IPv4 prefix
//! shorter than /16 or an IPv6 prefix shorter than /32, a port range wider than 100 ports, every
//! port (`any`), or a wildcard under a domain where anyone can host (a CDN or a cloud's
//! customer namespace), since the addresses its answers open serve every other customer too.

use std::fmt;

use ipnet::IpNet;

use crate::{
    protocols::PortSpec,
    rules::{HostPattern, Service},
};

/// Shortest IPv4 prefix that is not broad.
pub const NARROWEST_BROAD_V4: u8 = 16;
/// Shortest IPv6 prefix that is not broad.
pub const NARROWEST_BROAD_V6: u8 = 32;
/// Most ports a range may span before it is broad.
pub const MAX_PORT_SPAN: u32 = 100;

/// Domains under which anyone can get a name: CDNs, cloud storage, app hosting, relays. A
/// wildcard below one of these lets a device reach any customer's content there.
pub const SHARED_DOMAINS: &[&str] = &[
    "akadns.net",
    "akamaiedge.net",
    "akamaihd.net",
    "akamaized.net",
    "amazonaws.com",
    "appspot.com",
    "azure-api.net",
    "azureedge.net",
    "azurefd.net",
    "azurewebsites.net",
    "blob.core.windows.net",
    "core.windows.net",
    "cloudapp.azure.com",
    "cloudapp.net",
    "cloudflare.net",
    "cloudfront.net",
    "edgekey.net",
    "edgesuite.net",
    "fastly.net",
    "firebaseapp.com",
    "github.io",
    "googleapis.com",
    "googleusercontent.com",
    "herokuapp.com",
    "trafficmanager.net",
    "web.app",
    "webpubsub.azure.com",
];

/// Why one opening is broad.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Risk {
    /// A prefix shorter than /16 (IPv4) or /32 (IPv6).
    WidePrefix(IpNet),
    /// A TCP or UDP range spanning more than [`MAX_PORT_SPAN`] ports, but not all.
    WidePortRange(PortSpec),
    /// Every port of a protocol.
    AnyPort(PortSpec),
    /// A wildcard at or below a shared hosting or CDN domain.
    SharedWildcard {
        pattern: HostPattern,
        domain: String,
    },
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::WidePrefix(net) => {
                let limit = if net.addr().is_ipv4() {
                    format!("IPv4 shorter than /{NARROWEST_BROAD_V4}")
                } else {
                    format!("IPv6 shorter than /{NARROWEST_BROAD_V6}")
                };
                write!(f, "{net}: prefix {limit}")
            }
            Self::WidePortRange(spec) => {
                write!(f, "{spec}: port range wider than {MAX_PORT_SPAN} ports")
            }
            Self::AnyPort(spec) => write!(f, "{spec}: every port (any)"),
            Self::SharedWildcard { pattern, domain } => {
                write!(
                    f,
                    "{pattern}: wildcard under shared hosting/CDN domain {domain}"
                )
            }
        }
    }
}

/// Whether a prefix is broad.
#[must_use]
pub fn of_prefix(net: &IpNet) -> Option<Risk> {
    let narrowest = match net {
        IpNet::V4(_) => NARROWEST_BROAD_V4,
        IpNet::V6(_) => NARROWEST_BROAD_V6,
    };
    (net.prefix_len() < narrowest).then_some(Risk::WidePrefix(*net))
}

/// Whether a port range is broad.
#[must_use]
pub fn of_ports(spec: &PortSpec) -> Option<Risk> {
    let (PortSpec::Tcp(range) | PortSpec::Udp(range)) = spec else {
        return None;
    };
    let span = u32::from(*range.end()) - u32::from(*range.start()) + 1;
    if *range.start() <= 1 && *range.end() == u16::MAX {
        Some(Risk::AnyPort(spec.clone()))
    } else {
        (span > MAX_PORT_SPAN).then(|| Risk::WidePortRange(spec.clone()))
    }
}

/// Whether a host pattern is a wildcard under a shared domain. Exact names are never broad:
/// they open only what the one name resolves to.
#[must_use]
pub fn of_host(pattern: &HostPattern) -> Option<Risk> {
    let HostPattern::Wildcard(suffix) = pattern else {
        return None;
    };
    SHARED_DOMAINS
        .iter()
        .find(|domain| {
            suffix == *domain
                || suffix
                    .strip_suffix(*domain)
                    .is_some_and(|rest| rest.ends_with('.'))
        })
        .map(|domain| Risk::SharedWildcard {
            pattern: pattern.clone(),
            domain: (*domain).to_owned(),
        })
}

/// Every broad opening of a service, destinations first.
#[must_use]
pub fn of_service(service: &Service) -> Vec<Risk> {
    service
        .hosts
        .iter()
        .filter_map(of_host)
        .chain(service.cidrs.iter().filter_map(of_prefix))
        .chain(service.ports.iter().filter_map(of_ports))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::hosts;

    fn host(text: &str) -> HostPattern {
        hosts::parse(text).unwrap().remove(0)
    }

    #[test]
    fn prefixes_are_broad_below_16_and_32() {
        for (net, broad) in [
            ("17.0.0.0/8", true),
            ("10.0.0.0/15", true),
            ("10.0.0.0/16", false),
            ("0.0.0.0/0", true),
            ("2620:149::/31", true),
            ("2620:149::/32", false),
            ("::/0", true),
        ] {
            let net: IpNet = net.parse().unwrap();
            assert_eq!(of_prefix(&net).is_some(), broad, "{net}");
        }
    }

    #[test]
    fn port_ranges_are_broad_beyond_100_ports_and_any_is_named() {
        assert_eq!(of_ports(&PortSpec::Tcp(5228..=5230)), None);
        assert_eq!(of_ports(&PortSpec::Tcp(1000..=1099)), None, "100 ports");
        assert!(matches!(
            of_ports(&PortSpec::Udp(1000..=1100)),
            Some(Risk::WidePortRange(_))
        ));
        assert!(matches!(
            of_ports(&PortSpec::Tcp(0..=65535)),
            Some(Risk::AnyPort(_))
        ));
        assert_eq!(of_ports(&PortSpec::Icmp), None);
    }

    #[test]
    fn wildcards_under_shared_domains_are_broad_exact_names_are_not() {
        let risk = of_host(&host("*.googleapis.com")).unwrap();
        assert_eq!(
            risk.to_string(),
            "*.googleapis.com: wildcard under shared hosting/CDN domain googleapis.com"
        );
        assert!(of_host(&host("*.x.blob.core.windows.net")).is_some());
        assert!(of_host(&host("*.webpubsub.azure.com")).is_some());
        assert_eq!(of_host(&host("fcm.googleapis.com")), None, "exact name");
        assert_eq!(of_host(&host("*.manage.microsoft.com")), None);
        assert_eq!(
            of_host(&host("*.notgoogleapis.com")),
            None,
            "a label boundary, not a string suffix"
        );
    }
}
