//! DNS awareness: the daemon as its clients' DNS forwarder.
//!
//! Polling cannot resolve `*.` names, and CDN names move faster than any poll. So the daemon
//! forwards its clients' queries and reads the answers on the way back: when the question or a
//! name on its CNAME chain matches a rule's host, the answered addresses are opened with that
//! service's ports *before* the client gets the answer, and closed again after the record's TTL
//! plus a grace period. The contract is DESIGN.md's "DNS awareness".
//!
//! - [`names`]: which services a name belongs to (exact, expansions, `*.` at any depth);
//! - [`message`]: message handling without sockets (checks, chains, replies), via hickory-proto;
//! - [`learned`]: the bounded table of learned addresses and their expiry;
//! - [`forwarder`]: the UDP and TCP listeners and the upstream queries;
//! - [`seen`]: the names clients looked up, by address, to name the host in drop events.

pub mod forwarder;
pub mod learned;
pub mod message;
pub mod names;
pub mod seen;

pub use self::{
    forwarder::{DnsCounterValues, DnsCounters, ForwarderConfig, LearnRequest, Listeners},
    learned::{LearnCounters, LearnPolicy, LearnedTable, LearnedView},
    names::NameMatcher,
    seen::SeenNames,
};
