//! Everything `run` is told: the options of the command line as the daemon takes them
//! (`cmd::run` parses and checks them).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;

use super::{attachments::InterfacePattern, events::EventFormat, hosts::RefreshPolicy};
use crate::{
    dns::{ForwarderConfig, LearnPolicy, Listeners},
    pins::HookKind,
    table::PortSpec,
};

/// How XDP is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpModeArg {
    /// Driver (native) mode where the device supports it, generic otherwise.
    Auto,
    /// Driver mode only; fail if the device lacks it.
    Native,
    /// Generic (skb) mode: works on every device, slower.
    Generic,
}

/// Everything `run` is told on the command line.
#[derive(Clone, Debug)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each is an independent command-line switch"
)]
pub struct RunOptions {
    pub rules: Vec<PathBuf>,
    /// Reload when the rules' directories change, as on SIGHUP.
    pub watch_rules: bool,
    /// Leave the filter attached and pinned when stopped.
    pub keep_on_stop: bool,
    /// `--xdp`, `--tc` and `--tc-ingress`, in that order: names or patterns.
    pub interfaces: Vec<InterfacePattern>,
    pub xdp_mode: XdpModeArg,
    pub audit: bool,
    pub events: EventFormat,
    pub resolver: Option<SocketAddr>,
    pub refresh: RefreshPolicy,
    pub pin_path: PathBuf,
    pub allow_self: bool,
    /// What stays open to the host's own addresses (with `allow_self`).
    pub self_ports: Vec<PortSpec>,
    /// XDP drops sources that do not belong on their interface.
    pub check_sources: bool,
    pub events_per_sec: u32,
    pub event_burst: u32,
    /// The DNS forwarder, with `--dns-listen`.
    pub dns: Option<DnsOptions>,
    /// Where `/metrics` and `/healthz` are served, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// How long connections outlive their address.
    pub flows: FlowOptions,
}

/// `--established-idle`, `--established-max`, `--keep-flows-on-reload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowOptions {
    /// A kept connection ends after this long without a packet.
    pub idle: Duration,
    /// A kept connection ends this long after it started.
    pub max: Duration,
    /// A reload that removes what allowed a connection keeps it, as an expiry would.
    pub keep_on_reload: bool,
}

impl RunOptions {
    /// Whether any interface is asked for with `hook`.
    #[must_use]
    pub fn uses(&self, hook: HookKind) -> bool {
        self.interfaces.iter().any(|p| p.hook == hook)
    }
}

/// `--dns-listen` and the options that go with it.
#[derive(Clone, Debug)]
pub struct DnsOptions {
    pub listen: Vec<SocketAddr>,
    /// Listen on wildcard and non-guarded addresses too (`--dns-listen-any`).
    pub listen_any: bool,
    /// Client prefixes answered besides the guarded subnets and the host (`--dns-allow-from`).
    pub allow_from: Vec<IpNet>,
    pub upstream: SocketAddr,
    pub block_unlisted: bool,
    /// Answers the forwarder keeps for repeated questions (`--dns-cache`).
    pub cache_entries: usize,
    pub learn: LearnPolicy,
}

impl DnsOptions {
    /// The forwarder's settings: the defaults, with this upstream and learning's TTL floor and
    /// grace (the forwarder's memory of confirmed addresses follows the same clock).
    #[must_use]
    pub fn forwarder_config(&self) -> ForwarderConfig {
        ForwarderConfig {
            min_ttl: self.learn.min_ttl,
            grace: self.learn.grace,
            cache_entries: self.cache_entries,
            ..ForwarderConfig::new(self.upstream, self.block_unlisted)
        }
    }

    /// Where the forwarder answers and whom it asks, for the log.
    #[must_use]
    pub fn describe(&self, listeners: &Listeners) -> String {
        let addresses: Vec<String> = listeners
            .local_addresses()
            .iter()
            .map(ToString::to_string)
            .collect();
        format!(
            "{} (upstream {}{})",
            addresses.join(", "),
            self.upstream,
            if self.block_unlisted {
                "; names no rule lists get NXDOMAIN"
            } else {
                ""
            }
        )
    }
}
