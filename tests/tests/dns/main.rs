//! DNS awareness end to end: the client's resolver is the gateway, the gateway's daemon forwards
//! to a real dnsmasq on the simulated internet and opens what the answers say, before the client
//! sees them. Needs root and the setup's packages (iproute2, netcat-openbsd, dnsmasq).
//!
//! [`learning`] covers what answers teach the daemon (and what they must not), [`forgery`] the
//! forgery race against the forwarder, [`clients`] whom the forwarder answers and how much (the
//! open-resolver, amplification, TCP-slot and eviction attacks); [`common`] holds the lab's upstream, the gateway and the
//! client's view.

mod clients;
mod common;
mod flows;
mod forgery;
mod learning;
