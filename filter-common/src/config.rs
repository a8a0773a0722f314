//! The runtime configuration the daemon hands the programs: one program, no compile-time variants.

/// What the programs do with a packet whose reason drops it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Drop it. The zero value, so an unwritten config map enforces: the gate never opens by
    /// accident.
    #[default]
    Enforce = 0,
    /// Pass it and report it as an event with action "audit".
    Audit = 1,
}

/// The value at index 0 of the `CONFIG` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// A [`Mode`] number. Anything but [`Mode::Audit`] enforces.
    pub mode: u32,
    /// Drop events each CPU may emit per second once its burst is spent. 0 with a burst of 0
    /// disables events (counters still count).
    pub events_per_sec: u32,
    /// Events each CPU may emit back to back.
    pub event_burst: u32,
    /// [`Config::CHECK_SOURCES`] and future switches, one bit each.
    pub flags: u32,
    /// A flow kept past its address's removal ends after this long without a packet
    /// (`filter_common::flows`). 0 keeps no flow: an unwritten config keeps nothing open.
    pub established_idle_secs: u32,
    /// A kept flow ends this long after its first packet, however busy. 0 keeps no flow.
    pub established_max_secs: u32,
}
const _: () = assert!(size_of::<Config>() == 24);

impl Config {
    /// Defaults the daemon writes unless told otherwise.
    pub const DEFAULT_EVENTS_PER_SEC: u32 = 100;
    pub const DEFAULT_EVENT_BURST: u32 = 200;
    /// `--established-idle`: an hour, twice the longest push-channel keepalive interval
    /// documented (see the README, "Connections outlive their address").
    pub const DEFAULT_ESTABLISHED_IDLE_SECS: u32 = 3600;
    /// `--established-max`: a day.
    pub const DEFAULT_ESTABLISHED_MAX_SECS: u32 = 86_400;

    #[must_use]
    pub const fn new(mode: Mode) -> Self {
        Self {
            mode: mode as u32,
            events_per_sec: Self::DEFAULT_EVENTS_PER_SEC,
            event_burst: Self::DEFAULT_EVENT_BURST,
            flags: 0,
            established_idle_secs: 0,
            established_max_secs: 0,
        }
    }

    /// Whether flows are put in the flow table and kept past their address (both bounds set).
    #[must_use]
    pub const fn keeps_flows(&self) -> bool {
        self.established_idle_secs != 0 && self.established_max_secs != 0
    }

    /// XDP drops packets whose source address has no entry for the ingress interface in
    /// `SOURCES_V4`/`SOURCES_V6` (anti-spoofing). Off in an unwritten config: the daemon turns
    /// it on once it has written the interfaces' source prefixes, never before.
    pub const CHECK_SOURCES: u32 = 1;

    #[must_use]
    pub const fn checks_sources(&self) -> bool {
        self.flags & Self::CHECK_SOURCES != 0
    }

    /// Whether every field holds a value this build knows (an older program reading a newer
    /// daemon's config, or a damaged map, does not).
    #[must_use]
    pub const fn is_understood(&self) -> bool {
        (self.mode == Mode::Enforce as u32 || self.mode == Mode::Audit as u32)
            && self.flags & !Self::CHECK_SOURCES == 0
    }

    /// Whether the mode is audit (anything else enforces).
    #[must_use]
    pub const fn is_audit(&self) -> bool {
        self.mode == Mode::Audit as u32
    }
}
