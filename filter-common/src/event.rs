//! The drop-event record the programs push through the `EVENTS` ring buffer.

/// Which program saw the packet.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Xdp = 1,
    Tc = 2,
}

/// What happened to the packet an event reports.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Dropped (enforce mode).
    Drop = 1,
    /// Passed, but enforcement would have dropped it (audit mode).
    Audit = 2,
}

/// One dropped (or, in audit mode, would-be-dropped) packet.
///
/// Addresses are in network order; an IPv4 address fills the first 4 bytes and the rest is zero.
/// Fields the parser did not reach are zero (`family` 0 means the frame was not parsed as IP).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// `bpf_ktime_get_ns()`: monotonic nanoseconds since boot.
    pub timestamp_ns: u64,
    /// Interface the program is attached to (XDP: ingress; TC: the egress device).
    pub ifindex: u32,
    /// A [`crate::Reason`] number.
    pub reason: u32,
    pub src_addr: [u8; 16],
    pub dst_addr: [u8; 16],
    pub sport_be: u16,
    pub dport_be: u16,
    /// Length of the frame in bytes, as the program saw it.
    pub packet_len: u32,
    /// VLAN id of the outermost tag, 0 when untagged.
    pub vlan_id: u16,
    /// 4, 6, or 0 when the frame was not parsed as IP.
    pub family: u8,
    /// IP protocol number (after the IPv6 extension chain).
    pub proto: u8,
    /// A [`Hook`] number.
    pub hook: u8,
    /// An [`Action`] number.
    pub action: u8,
    /// The source's client group (`crate::groups`): 0, `default`, when the rules name none.
    pub group: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<DropEvent>() == 64);

impl DropEvent {
    pub const ZERO: Self = Self {
        timestamp_ns: 0,
        ifindex: 0,
        reason: 0,
        src_addr: [0; 16],
        dst_addr: [0; 16],
        sport_be: 0,
        dport_be: 0,
        packet_len: 0,
        vlan_id: 0,
        family: 0,
        proto: 0,
        hook: 0,
        action: 0,
        group: 0,
        _pad: 0,
    };
}

impl DropEvent {
    /// The event in a ring-buffer record, if the record is exactly one event long (anything
    /// else is not an event this version wrote).
    #[must_use]
    pub fn from_record(record: &[u8]) -> Option<Self> {
        if record.len() != size_of::<Self>() {
            return None;
        }
        // Safety: `record` holds exactly `size_of::<DropEvent>()` bytes, and any bit pattern is
        // a valid DropEvent (integers and byte arrays only, explicit padding); the read copes
        // with any alignment.
        Some(unsafe { core::ptr::read_unaligned(record.as_ptr().cast::<Self>()) })
    }
}

/// Indices of the `EVENT_STATS` counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventCounter {
    /// Events written to the ring buffer.
    Emitted = 0,
    /// Events not written because the CPU's token bucket was empty.
    RateLimited = 1,
    /// Events not written because the ring buffer was full (the daemon is behind or absent).
    RingFull = 2,
}

impl EventCounter {
    pub const COUNT: u32 = 3;
    pub const ALL: [EventCounter; 3] = [Self::Emitted, Self::RateLimited, Self::RingFull];
}

/// The per-CPU token bucket behind event rate limiting (`EVENT_BUDGET`). Kernel-private; the
/// daemon only ever zeroes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitState {
    /// Tokens left, in events. Starts full (the burst) on the first event.
    pub tokens: u64,
    /// When tokens were last added; 0 before the first event.
    pub last_refill_ns: u64,
}
const _: () = assert!(size_of::<RateLimitState>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_one_whole_event_or_none() {
        let event = DropEvent {
            reason: 9,
            dport_be: 443u16.to_be(),
            family: 4,
            ..DropEvent::ZERO
        };
        // Safety: DropEvent is plain data; viewing it as bytes reads no padding (explicit).
        let bytes: [u8; size_of::<DropEvent>()] = unsafe { core::mem::transmute(event) };
        assert_eq!(DropEvent::from_record(&bytes), Some(event));
        // At an odd address, as a ring buffer may hand it out.
        let mut shifted = [0u8; size_of::<DropEvent>() + 1];
        shifted[1..].copy_from_slice(&bytes);
        assert_eq!(DropEvent::from_record(&shifted[1..]), Some(event));
        assert_eq!(DropEvent::from_record(&bytes[..63]), None);
        assert_eq!(DropEvent::from_record(&shifted), None);
    }
}
