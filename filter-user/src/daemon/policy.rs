//! Keeping the kernel's maps equal to the allow table, through failures.
//!
//! [`PolicySync`] owns the writer and the retry state. Updates come as [`Update`]s: a handful of
//! host routes that came or went (written in place), or a whole new table (written as a diff).
//! A failed write leaves the maps holding less, or more, than the table says; from then on every
//! update is a full rebuild, diffed against what really is in the kernel, retried with a backoff
//! that doubles up to [`MAX_RETRY`], and each distinct failure is logged once. The writer is a
//! trait so that all of this is tested without a kernel.

use std::time::{Duration, Instant};

use ipnet::IpNet;

use crate::{
    maps::{ApplyStats, MapWriteError, PolicyMaps},
    table::{AllowTable, Grant},
};

/// The first wait before a failed write is retried.
pub const FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest wait between rebuilds while writing keeps failing.
pub const MAX_RETRY: Duration = Duration::from_mins(1);

/// Where an allow table is written: the kernel's maps, or a fake in tests.
pub trait PolicyWriter {
    /// Makes the maps equal to `table`, writing only what differs.
    fn write_all(&mut self, table: &AllowTable) -> Result<ApplyStats, MapWriteError>;
    /// Writes the `changed` prefixes as `table` has them now.
    fn write_changes(
        &mut self,
        table: &AllowTable,
        changed: &[IpNet],
    ) -> Result<ApplyStats, MapWriteError>;
}

impl PolicyWriter for PolicyMaps {
    fn write_all(&mut self, table: &AllowTable) -> Result<ApplyStats, MapWriteError> {
        self.apply(table)
    }

    fn write_changes(
        &mut self,
        table: &AllowTable,
        changed: &[IpNet],
    ) -> Result<ApplyStats, MapWriteError> {
        self.apply_changes(table, changed)
    }
}

/// What a wake-up asks of the maps.
#[derive(Debug)]
pub enum Update {
    None,
    /// Recompile everything (rules or the host's own addresses changed).
    Full,
    /// Only these host routes came or went.
    Grants {
        add: Vec<Grant>,
        remove: Vec<Grant>,
        /// Whether polled names changed (their addresses name events).
        hosts_changed: bool,
    },
}

/// What reached the maps.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Nothing,
    /// The whole table was compiled and written as a diff.
    Rebuilt(ApplyStats),
    /// Host routes were written in place.
    Changed(ApplyStats),
}

/// The writer and what it knows about the maps' state.
pub struct PolicySync<W> {
    writer: W,
    /// The last write failed: the maps may differ from the table.
    stale: bool,
    retry_at: Instant,
    backoff: Duration,
    /// The last failure logged, so a repeating one is logged once.
    last_error: Option<String>,
}

impl<W: PolicyWriter> PolicySync<W> {
    pub fn new(writer: W) -> Self {
        Self {
            writer,
            stale: false,
            retry_at: Instant::now(),
            backoff: Duration::ZERO,
            last_error: None,
        }
    }

    /// The writer, for what only it can do (the runtime config).
    pub fn writer(&mut self) -> &mut W {
        &mut self.writer
    }

    /// Why the maps may differ from the table, while they may: the last write's failure.
    #[must_use]
    pub fn behind(&self) -> Option<&str> {
        self.stale
            .then(|| self.last_error.as_deref().unwrap_or("a map write failed"))
    }

    /// Whether an earlier failure is due to be retried with a rebuild.
    #[must_use]
    pub fn retry_due(&self, now: Instant) -> bool {
        self.stale && now >= self.retry_at
    }

    /// Writes `update`. `table` is what the maps mirror: changed in place for grants, replaced
    /// by `compile()`'s table after a rebuild is written. On failure the running policy stays
    /// (as far as it was written), the error is returned and a rebuild is scheduled.
    pub fn apply(
        &mut self,
        update: Update,
        table: &mut AllowTable,
        compile: impl FnOnce() -> anyhow::Result<AllowTable>,
        now: Instant,
    ) -> anyhow::Result<Written> {
        // After a failed write only a full rebuild, diffed against what was really written,
        // brings the maps and the table together again.
        let update = match update {
            Update::Grants { .. } if self.stale => Update::Full,
            other => other,
        };
        let result = match update {
            Update::None => return Ok(Written::Nothing),
            Update::Full => self.rebuild(table, compile),
            Update::Grants { add, remove, .. } => match self.write_in_place(table, &add, &remove) {
                Ok(stats) => return Ok(Written::Changed(stats)),
                Err(err) => {
                    tracing::warn!("in-place update failed ({err:#}); rebuilding the table");
                    self.rebuild(table, compile)
                }
            },
        };
        match result {
            Ok(stats) => {
                if self.stale {
                    tracing::info!("policy written again after an earlier failure");
                }
                self.stale = false;
                self.last_error = None;
                self.backoff = Duration::ZERO;
                Ok(Written::Rebuilt(stats))
            }
            Err(err) => {
                // The same failure every second would drown the log: say each one once.
                let message = format!("{err:#}");
                if self.last_error.as_deref() != Some(message.as_str()) {
                    tracing::error!("policy not updated, the running policy stays: {message}");
                    self.last_error = Some(message);
                }
                self.stale = true;
                self.backoff = (self.backoff * 2).clamp(FIRST_RETRY, MAX_RETRY);
                self.retry_at = now + self.backoff;
                Err(err)
            }
        }
    }

    fn rebuild(
        &mut self,
        table: &mut AllowTable,
        compile: impl FnOnce() -> anyhow::Result<AllowTable>,
    ) -> anyhow::Result<ApplyStats> {
        let fresh = compile()?;
        let stats = self.writer.write_all(&fresh)?;
        *table = fresh;
        Ok(stats)
    }

    fn write_in_place(
        &mut self,
        table: &mut AllowTable,
        add: &[Grant],
        remove: &[Grant],
    ) -> anyhow::Result<ApplyStats> {
        let touched = table.update_hosts(add, remove)?;
        Ok(self.writer.write_changes(table, &touched)?)
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::MapError;

    use super::*;
    use crate::table::PortSpec;

    /// Counts writes and fails the next `failures` of them.
    #[derive(Default)]
    struct FakeMaps {
        failures: usize,
        full_writes: usize,
        change_writes: usize,
        /// What a successful full write last carried, in entries.
        written_entries: usize,
    }

    impl FakeMaps {
        fn fail(&mut self) -> Result<(), MapWriteError> {
            if self.failures > 0 {
                self.failures -= 1;
                return Err(MapWriteError::Write {
                    name: "ALLOW_V4",
                    what: "a test".into(),
                    source: MapError::KeyNotFound,
                });
            }
            Ok(())
        }
    }

    impl PolicyWriter for FakeMaps {
        fn write_all(&mut self, table: &AllowTable) -> Result<ApplyStats, MapWriteError> {
            self.full_writes += 1;
            self.fail()?;
            self.written_entries = table.v4.len() + table.v6.len();
            Ok(ApplyStats::default())
        }

        fn write_changes(
            &mut self,
            _: &AllowTable,
            _: &[IpNet],
        ) -> Result<ApplyStats, MapWriteError> {
            self.change_writes += 1;
            self.fail()?;
            Ok(ApplyStats::default())
        }
    }

    fn grant(prefix: &str) -> Grant {
        Grant {
            prefix: prefix.parse().expect("test prefix"),
            service: 0,
            ports: vec![PortSpec::Tcp(443..=443)],
            groups: filter_common::groups::ALL_GROUPS,
        }
    }

    fn compiled(prefixes: &[&str]) -> anyhow::Result<AllowTable> {
        let grants: Vec<Grant> = prefixes.iter().map(|p| grant(p)).collect();
        Ok(AllowTable::build(&grants)?)
    }

    fn one_host(prefix: &str) -> Update {
        Update::Grants {
            add: vec![grant(prefix)],
            remove: Vec::new(),
            hosts_changed: true,
        }
    }

    #[test]
    fn host_routes_are_written_in_place_and_a_rebuild_replaces_the_table() {
        let mut sync = PolicySync::new(FakeMaps::default());
        let mut table = AllowTable::default();
        let t0 = Instant::now();
        let written = sync.apply(Update::Full, &mut table, || compiled(&["192.0.2.0/24"]), t0);
        assert!(matches!(written, Ok(Written::Rebuilt(_))));
        assert_eq!(table.v4.len(), 1);
        let written = sync.apply(
            one_host("198.51.100.7/32"),
            &mut table,
            || unreachable!(),
            t0,
        );
        assert!(matches!(written, Ok(Written::Changed(_))));
        assert_eq!(table.v4.len(), 2, "the host route is in the table");
        assert_eq!((sync.writer.full_writes, sync.writer.change_writes), (1, 1));
        assert!(matches!(
            sync.apply(Update::None, &mut table, || unreachable!(), t0),
            Ok(Written::Nothing)
        ));
    }

    #[test]
    fn a_failed_in_place_write_falls_back_to_a_rebuild_at_once() {
        let mut sync = PolicySync::new(FakeMaps {
            failures: 1,
            ..FakeMaps::default()
        });
        let mut table = AllowTable::default();
        let written = sync.apply(
            one_host("198.51.100.7/32"),
            &mut table,
            || compiled(&["198.51.100.7/32"]),
            Instant::now(),
        );
        assert!(matches!(written, Ok(Written::Rebuilt(_))), "{written:?}");
        assert_eq!((sync.writer.change_writes, sync.writer.full_writes), (1, 1));
        assert!(!sync.retry_due(Instant::now() + MAX_RETRY));
    }

    #[test]
    fn after_a_failure_every_update_is_a_rebuild_retried_with_a_doubling_backoff() {
        let mut sync = PolicySync::new(FakeMaps {
            failures: 4,
            ..FakeMaps::default()
        });
        let mut table = compiled(&["192.0.2.0/24"]).expect("valid");
        let t0 = Instant::now();
        // A full write fails: the old table stays what the maps are believed to mirror.
        assert!(sync
            .apply(
                Update::Full,
                &mut table,
                || compiled(&["203.0.113.0/24"]),
                t0
            )
            .is_err());
        assert_eq!(table.v4.len(), 1);
        assert!(!sync.retry_due(t0), "not before the backoff");
        assert!(sync.retry_due(t0 + FIRST_RETRY));
        // Host routes while stale become a rebuild (which fails again): 2 s, then 4 s.
        assert!(sync
            .apply(
                one_host("198.51.100.7/32"),
                &mut table,
                || compiled(&[]),
                t0
            )
            .is_err());
        assert_eq!(
            sync.writer.change_writes, 0,
            "no in-place write on stale maps"
        );
        assert!(!sync.retry_due(t0 + FIRST_RETRY) && sync.retry_due(t0 + 2 * FIRST_RETRY));
        assert!(sync
            .apply(Update::Full, &mut table, || compiled(&[]), t0)
            .is_err());
        assert!(sync.retry_due(t0 + 4 * FIRST_RETRY) && !sync.retry_due(t0 + 3 * FIRST_RETRY));
        // The backoff stops growing at its bound.
        assert!(sync
            .apply(Update::Full, &mut table, || compiled(&[]), t0)
            .is_err());
        for _ in 0..10 {
            sync.writer.failures = 1;
            assert!(sync
                .apply(Update::Full, &mut table, || compiled(&[]), t0)
                .is_err());
        }
        assert!(sync.retry_due(t0 + MAX_RETRY) && !sync.retry_due(t0 + MAX_RETRY / 2));
        // The next success clears it all.
        let written = sync.apply(
            Update::Full,
            &mut table,
            || compiled(&["203.0.113.0/24", "198.51.100.7/32"]),
            t0,
        );
        assert!(matches!(written, Ok(Written::Rebuilt(_))));
        assert_eq!(sync.writer.written_entries, 2);
        assert!(!sync.retry_due(t0 + MAX_RETRY));
        assert!(matches!(
            sync.apply(
                one_host("198.51.100.8/32"),
                &mut table,
                || unreachable!(),
                t0
            ),
            Ok(Written::Changed(_))
        ));
    }

    #[test]
    fn a_table_that_does_not_compile_leaves_everything_as_it_was() {
        let mut sync = PolicySync::new(FakeMaps::default());
        let mut table = compiled(&["192.0.2.0/24"]).expect("valid");
        let result = sync.apply(
            Update::Full,
            &mut table,
            || anyhow::bail!("too many port rules"),
            Instant::now(),
        );
        assert!(result.is_err());
        assert_eq!(sync.writer.full_writes, 0);
        assert_eq!(table.v4.len(), 1);
    }
}
