//! The boundary between the kernel programs and the daemon.
//!
//! Every type that crosses a BPF map or the ring buffer is defined here once, `#[repr(C)]`, with
//! explicit padding and a compile-time size check, so that both sides agree byte for byte. Byte
//! order is part of a field's name (`dport_be`): network order where the packet dictates it, host
//! order everywhere else.
#![no_std]

// Tests run on the host and may use std.
#[cfg(test)]
extern crate std;

pub mod config;
pub mod counters;
pub mod event;
pub mod flows;
pub mod groups;
pub mod maps;
pub mod policy;
pub mod ranges;
pub mod reason;
pub mod sources;

pub use config::{Config, Mode};
pub use event::{DropEvent, EventCounter, Hook};
pub use policy::{Ipv4KeyBytes, Ipv6KeyBytes, Policy, PolicyId, PortRule, RuleProto};
pub use reason::{Reason, Stance};

/// Per-CPU packet and byte counter, the value of [`maps::REASON_STATS`] and [`maps::SERVICE_STATS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCount {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(size_of::<PacketCount>() == 16);

#[cfg(feature = "user")]
mod pod {
    //! Every type below is `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and has
    //! explicit padding fields, so any bit pattern is a valid value and none is uninitialised:
    //! what `aya::Pod` asks.

    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::PacketCount {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::Config {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::Policy {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::PortRule {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::ranges::RangeV6 {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::groups::GroupWindow {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::ranges::TableState {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::sources::SourceSlot {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::DropEvent {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::event::RateLimitState {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::flows::FlowKey {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::flows::FlowState {}
    // SAFETY: see the module docs.
    unsafe impl aya::Pod for super::flows::AddressKey {}
}
