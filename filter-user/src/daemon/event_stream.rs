//! Drop events from the kernel to stdout: the ring buffer read as it fills, each event enriched
//! (interface, host, service) and printed as a line of text or JSON; and the events the kernel
//! held back, reported so that none is lost silently.

use std::{
    io::Write as _,
    sync::{Arc, RwLock},
};

use aya::{
    maps::{MapData, RingBuf},
    Ebpf,
};
use filter_common::{DropEvent, EventCounter};

use crate::counters::Counters;
use tokio::io::unix::AsyncFd;

use super::events::{self, Enricher, EventFormat};

/// How often suppressed events are reported (when there were any).
pub const SUPPRESSED_REPORT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads the ring buffer as it fills and prints one line per event.
pub async fn stream_events(
    ring: RingBuf<MapData>,
    enricher: Arc<RwLock<Enricher>>,
    format: EventFormat,
) -> anyhow::Result<()> {
    let boot = events::boot_time();
    // Safety: the ring buffer owns its map fd and keeps it open, unchanged, for as long as the
    // AsyncFd holds the ring.
    let mut fd = unsafe { AsyncFd::register(ring)? };
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        while let Some(item) = ring.next() {
            let Some(event) = DropEvent::from_record(&item) else {
                continue;
            };
            let record = match enricher.read() {
                Ok(e) => e.record(&event, boot),
                Err(_) => continue,
            };
            let line = match format {
                EventFormat::Text => record.to_text(),
                EventFormat::Json => serde_json::to_string(&record)?,
            };
            writeln!(out, "{line}")?;
        }
        out.flush()?;
        guard.clear_ready();
    }
}

/// Reports events the kernel held back, so none is lost silently.
pub struct SuppressedReporter {
    counters: Option<Counters>,
    /// (rate-limited, ring-full) at the last report.
    last: (u64, u64),
}

impl SuppressedReporter {
    #[must_use]
    pub fn new(ebpf: &Ebpf) -> Self {
        let counters = Counters::loaded(ebpf)
            .inspect_err(|err| tracing::warn!("suppressed events will not be reported: {err:#}"))
            .ok();
        Self {
            counters,
            last: (0, 0),
        }
    }

    pub fn report(&mut self) {
        let Some(counters) = &self.counters else {
            return;
        };
        let read = |c: EventCounter| counters.event(c).unwrap_or(0);
        let now = (
            read(EventCounter::RateLimited),
            read(EventCounter::RingFull),
        );
        let (limited, full) = (
            now.0.saturating_sub(self.last.0),
            now.1.saturating_sub(self.last.1),
        );
        if limited + full > 0 {
            tracing::warn!(
                "{limited} drop events suppressed by the rate limit and {full} lost to a full \
                 ring in the last {}s (stats has the totals)",
                SUPPRESSED_REPORT.as_secs()
            );
        }
        self.last = now;
    }
}
