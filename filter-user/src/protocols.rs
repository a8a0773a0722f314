//! What a service allows at an address: a protocol and, for TCP and UDP, a range of destination
//! ports. The rules are written in these terms and the allow table compiles them; neither owns
//! them.

use std::{fmt, ops::RangeInclusive};

/// A service's position in the compiled policy: the index of its per-service counters.
pub type ServiceId = u16;

/// A protocol and, for TCP and UDP, the destination ports allowed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortSpec {
    Tcp(RangeInclusive<u16>),
    Udp(RangeInclusive<u16>),
    /// ICMP (IPv4) and ICMPv6 (IPv6), every type.
    Icmp,
}

impl std::str::FromStr for PortSpec {
    type Err = String;

    /// `tcp/PORT`, `tcp/LO-HI`, the same with `udp/`, or `icmp`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim().to_ascii_lowercase();
        if text == "icmp" {
            return Ok(Self::Icmp);
        }
        let (proto, ports) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not tcp/PORT, udp/PORT or icmp"))?;
        let port = |p: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{p:?} in {text:?} is not a port (1-65535)"))
        };
        let range = match ports.split_once('-') {
            Some((lo, hi)) => port(lo)?..=port(hi)?,
            None => port(ports)?..=port(ports)?,
        };
        if range.is_empty() {
            return Err(format!("{text:?} is a reversed range"));
        }
        match proto {
            "tcp" => Ok(Self::Tcp(range)),
            "udp" => Ok(Self::Udp(range)),
            other => Err(format!("{other:?} in {text:?} is not tcp, udp or icmp")),
        }
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (proto, ports) = match self {
            Self::Icmp => return f.write_str("icmp"),
            Self::Tcp(ports) => ("tcp", ports),
            Self::Udp(ports) => ("udp", ports),
        };
        if ports.start() == ports.end() {
            write!(f, "{proto}/{}", ports.start())
        } else {
            write!(f, "{proto}/{}-{}", ports.start(), ports.end())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_read_and_print_alike() {
        for text in ["tcp/22", "udp/5000-5010", "icmp"] {
            let spec: PortSpec = text.parse().expect("a valid spec");
            assert_eq!(spec.to_string(), text);
        }
        assert_eq!("TCP/443".parse(), Ok(PortSpec::Tcp(443..=443)));
        for bad in ["tcp", "tcp/0", "tcp/70000", "udp/9-3", "sctp/1", "tcp/x"] {
            let err = bad.parse::<PortSpec>().expect_err(bad);
            assert!(err.contains(bad) || err.contains("sctp"), "{bad}: {err}");
        }
    }
}
