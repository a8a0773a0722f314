//! The runtime settings the programs read: the mode, the event budget, and which sources belong
//! on each XDP interface (anti-spoofing).

use std::collections::BTreeSet;

use anyhow::Context as _;
use filter_common::{Config, Mode};

use super::{interfaces, RunOptions};
use crate::maps::{InterfaceSource, PolicyMaps, SourceMaps};

/// The source tries and what they hold.
pub struct Settings {
    sources: SourceMaps,
    /// What `sources` holds: the source prefixes routed out of each XDP interface.
    written: BTreeSet<InterfaceSource>,
    pub mode: Mode,
}

impl Settings {
    /// Fills the source tries, then writes the config (mode, event budget, source check). The tries
    /// are written before the config asks XDP to check them, so no client is refused for a
    /// prefix not yet written.
    pub async fn write(
        maps: &mut PolicyMaps,
        mut sources: SourceMaps,
        opts: &RunOptions,
    ) -> anyhow::Result<Self> {
        let mode = if opts.audit {
            Mode::Audit
        } else {
            Mode::Enforce
        };
        let written = if opts.check_sources {
            let wanted = xdp_sources(&opts.xdp).await?;
            sources.set(&wanted)?;
            wanted
        } else {
            BTreeSet::new()
        };
        maps.set_config(Config {
            events_per_sec: opts.events_per_sec,
            event_burst: opts.event_burst,
            flags: if opts.check_sources {
                Config::CHECK_SOURCES
            } else {
                0
            },
            ..Config::new(mode)
        })?;
        Ok(Self {
            sources,
            written,
            mode,
        })
    }

    /// Reads the routes out of the XDP interfaces again and writes what changed. On failure the
    /// tries keep what they hold: a client is never refused because a read went wrong.
    pub async fn reread_sources(&mut self, opts: &RunOptions) {
        if !opts.check_sources {
            return;
        }
        let result = xdp_sources(&opts.xdp).await.and_then(|wanted| {
            if wanted != self.written {
                self.sources.set(&wanted)?;
                tracing::info!(
                    "source prefixes of the XDP interfaces changed: {} now",
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

/// The source prefixes that belong on each XDP interface (see [`interfaces::sources_of`]).
async fn xdp_sources(xdp: &[String]) -> anyhow::Result<BTreeSet<InterfaceSource>> {
    let indices = xdp
        .iter()
        .map(|iface| {
            nix::net::if_::if_nametoindex(iface.as_str())
                .with_context(|| format!("no interface named {iface}"))
        })
        .collect::<anyhow::Result<Vec<u32>>>()?;
    let (links, routes) = interfaces::read_links_and_routes().await?;
    Ok(interfaces::sources_of(&indices, &links, &routes))
}
