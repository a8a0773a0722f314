//! The runtime settings the programs read: the mode, the event budget, and which sources belong
//! on each XDP interface (anti-spoofing).

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use filter_common::{Config, Mode};

use super::{
    interfaces::{self, CheckedInterfaces},
    RunOptions,
};
use crate::maps::{InterfaceSource, PolicyMaps, SourceMaps};

/// After a route notification, how soon the source prefixes are read again: soon, and at most
/// this often, so that a router whose routing table churns (a BGP feed) is not re-read whole at
/// every batch of changes.
const ROUTE_SETTLE: Duration = Duration::from_millis(100);
const ROUTE_REREAD_SPACING: Duration = Duration::from_secs(1);

/// The source tries and what they hold.
pub struct Settings {
    sources: SourceMaps,
    /// What `sources` holds: the source prefixes routed out of each XDP interface.
    written: BTreeSet<InterfaceSource>,
    pub mode: Mode,
    /// When the routes were last read, and when they must be read again after a change.
    last_read: Instant,
    reread_due: Option<Instant>,
}

impl Settings {
    /// Fills the source tries, then writes the config (mode, event budget, source check). The tries
    /// are written before the config asks XDP to check them, so no client is refused for a
    /// prefix not yet written.
    pub async fn write(
        maps: &mut PolicyMaps,
        mut sources: SourceMaps,
        opts: &RunOptions,
        checked: &CheckedInterfaces,
    ) -> anyhow::Result<Self> {
        let config = config_for(opts);
        let written = if opts.check_sources {
            let wanted = checked_sources(checked).await?;
            sources.set(&wanted)?;
            wanted
        } else {
            BTreeSet::new()
        };
        maps.set_config(config)?;
        Ok(Self {
            sources,
            written,
            mode: if config.is_audit() {
                Mode::Audit
            } else {
                Mode::Enforce
            },
            last_read: Instant::now(),
            reread_due: None,
        })
    }

    /// The kernel reported route changes: read the source prefixes again shortly.
    pub fn routes_changed(&mut self, now: Instant) {
        if self.reread_due.is_none() {
            self.reread_due = Some((now + ROUTE_SETTLE).max(self.last_read + ROUTE_REREAD_SPACING));
        }
    }

    /// When the source prefixes must be read again after route changes, if they must.
    #[must_use]
    pub fn reread_due(&self) -> Option<Instant> {
        self.reread_due
    }

    /// Reads the routes out of the XDP interfaces (by index) again and writes what changed: every
    /// 30 s, and before XDP is attached to an interface that appeared, so that its clients are
    /// not refused as spoofed. On failure the tries keep what they hold: a client is never
    /// refused because a read went wrong.
    pub async fn reread_sources(&mut self, opts: &RunOptions, checked: &CheckedInterfaces) {
        self.reread_due = None;
        if !opts.check_sources {
            return;
        }
        self.last_read = Instant::now();
        let result = checked_sources(checked).await.and_then(|wanted| {
            if wanted != self.written {
                self.sources.set(&wanted)?;
                tracing::info!(
                    "source prefixes of the checked interfaces changed: {} now",
                    wanted.len()
                );
                self.written = wanted;
            }
            Ok(())
        });
        if let Err(err) = result {
            tracing::warn!("cannot update the source prefixes, the old ones stay: {err:#}");
        }
    }
}

/// What the programs are told: enforce or audit, the event budget, whether XDP checks sources.
fn config_for(opts: &RunOptions) -> Config {
    let mode = if opts.audit {
        Mode::Audit
    } else {
        Mode::Enforce
    };
    Config {
        events_per_sec: opts.events_per_sec,
        event_burst: opts.event_burst,
        flags: if opts.check_sources {
            Config::CHECK_SOURCES
        } else {
            0
        },
        // `run` bounds both to a week.
        established_idle_secs: u32::try_from(opts.flows.idle.as_secs()).unwrap_or(u32::MAX),
        established_max_secs: u32::try_from(opts.flows.max.as_secs()).unwrap_or(u32::MAX),
        ..Config::new(mode)
    }
}

/// The source prefixes that belong on each checked interface (see
/// [`interfaces::sources_of`]).
async fn checked_sources(checked: &CheckedInterfaces) -> anyhow::Result<BTreeSet<InterfaceSource>> {
    let (links, routes) = interfaces::read_links_and_routes().await?;
    Ok(interfaces::sources_of(checked, &links, &routes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_carries_mode_budget_and_source_check() {
        let opts = |argv: &[&str]| crate::cmd::run::parsed(argv).expect("valid options");
        let config = config_for(&opts(&["--xdp", "lan0"]));
        assert!(!config.is_audit() && config.checks_sources());
        assert_eq!(
            (config.events_per_sec, config.event_burst),
            (Config::DEFAULT_EVENTS_PER_SEC, Config::DEFAULT_EVENT_BURST)
        );
        let config = config_for(&opts(&[
            "--tc",
            "eth0",
            "--audit",
            "--no-source-check",
            "--event-rate",
            "5",
            "--event-burst",
            "7",
        ]));
        assert!(config.is_audit() && !config.checks_sources());
        assert_eq!((config.events_per_sec, config.event_burst), (5, 7));
        assert!(config.keeps_flows(), "flows are kept by default");
        let config = config_for(&opts(&["--tc", "eth0", "--established-idle", "0"]));
        assert!(!config.keeps_flows(), "an idle bound of 0 keeps no flow");
        let config = config_for(&opts(&["--tc", "eth0", "--established-max", "120"]));
        assert_eq!(
            (config.established_idle_secs, config.established_max_secs),
            (3600, 120)
        );
    }
}
