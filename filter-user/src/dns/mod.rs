//! DNS awareness: the daemon as its clients' DNS forwarder.
//!
//! Polling cannot resolve `*.` names, and CDN names move faster than any poll. So the daemon
//! forwards its clients' queries and reads the answers on the way back: when the question or a
//! name on its CNAME chain matches a rule's host, the addresses that answer the question are
//! opened with that service's ports *before* the client gets the answer, and closed again after
//! the record's TTL plus a grace period. The README's "DNS awareness" documents the behaviour;
//! ARCHITECTURE.md the data flow.
//!
//! An answer opens addresses, so what it may teach is narrow, and forging one is made as hard as
//! against a well-defended resolver:
//! - only records of the asked type (A or AAAA), class IN, owned by the end of the CNAME chain
//!   that starts at the question ([`message::learnable`]);
//! - names match rules label by label, and a label no rule can spell matches nothing
//!   ([`names`]); [`names::normalize`] is the one way a name is written down (chains, learned
//!   entries, seen names, events);
//! - upstream queries carry a random source port, a random ID and the name in random case
//!   (0x20), answers must echo all three; identical questions in flight share one upstream
//!   query; each client address has a bounded number of queries in flight and of TCP
//!   connections ([`forwarder`]);
//! - it answers only the clients it serves ([`clients`]), and never more than
//!   [`message::MAX_UDP_REPLY`] bytes over UDP, so it is no open resolver nor an amplifier.
//!
//! It trusts its upstream to be an honest, validating recursive resolver: what the upstream
//! believes, the forwarder opens (README, "DNS awareness").
//!
//! - [`clients`]: whom the forwarder answers (the guarded subnets, the host, configured
//!   prefixes), and why others get no reply at all;
//! - [`names`]: which services a name belongs to (exact, expansions, `*.` at any depth);
//! - [`message`]: message handling without sockets (checks, questions, chains, replies), via
//!   hickory-proto;
//! - [`learned`]: the bounded table of learned addresses and their expiry;
//! - [`forwarder`]: the UDP and TCP listeners, the upstream queries and their guards, with
//!   `in_flight` (merged questions, per-client bounds) and `open_addresses` (what the daemon
//!   confirmed open, so repeat answers need not wait);
//! - [`cache`]: answers kept for repeated questions, given only while their addresses are
//!   known open under the same rules;
//! - [`counters`]: what the forwarder counts, for `stats`;
//! - [`seen`]: the names clients looked up, by address, to name the host in drop events.

pub mod cache;
pub mod clients;
pub mod counters;
pub mod forwarder;
mod in_flight;
pub mod learned;
pub mod message;
pub mod names;
mod open_addresses;
pub mod seen;

pub use self::{
    clients::ServedClients,
    counters::{DnsCounterValues, DnsCounters},
    forwarder::{ForwarderConfig, LearnRequest, Listeners, Shared},
    learned::{LearnCounters, LearnPolicy, LearnedTable, LearnedView},
    names::NameMatcher,
    seen::SeenNames,
};
