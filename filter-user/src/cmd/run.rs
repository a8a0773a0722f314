//! `egress-filter run`: the command line of the daemon and the checks on it. The daemon itself is
//! `crate::daemon`.
//!
//! Example: `egress-filter run --rules rules/ --xdp lan0 --events json`

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use ipnet::IpNet;

use crate::{
    daemon::{
        self, attachments::InterfacePattern, events::EventFormat, hosts::RefreshPolicy, DnsOptions,
        FlowOptions, RunOptions, XdpModeArg,
    },
    dns::LearnPolicy,
    pins::{HookKind, DEFAULT_PIN_PATH},
    table::PortSpec,
};

/// `run`: enforce the rules: attach the filter, keep hostnames resolved, stream drop events to
/// stdout. Stops (detaching cleanly) on SIGINT/SIGTERM; SIGHUP reloads the rules.
#[derive(clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each is an independent command-line switch"
)]
pub struct Args {
    /// A rules file, or a directory whose *.toml files are loaded. Repeatable.
    #[arg(long = "rules", required = true, value_name = "PATH")]
    pub rules: Vec<PathBuf>,
    /// Reload the rules when their directory changes, as on SIGHUP: an edit, or the symlink
    /// swap of a Kubernetes ConfigMap update. Changes settle for 300 ms first.
    #[arg(long)]
    pub watch_rules: bool,
    /// On SIGTERM or SIGINT leave the filter attached and pinned, enforcing, as a crash would,
    /// instead of detaching: the next `run` with the same --pin-path adopts it with no gap (an
    /// upgrade, a pod replaced by a rolling update). `egress-filter detach` removes it.
    #[arg(long)]
    pub keep_on_stop: bool,
    /// Attach XDP here: a gateway's LAN-facing interface. A name or a shell-style pattern
    /// ('lan*'); interfaces that appear later, or are deleted and created again, are attached
    /// within a second. Repeatable.
    #[arg(long, value_name = "IFACE")]
    pub xdp: Vec<String>,
    /// Attach TC egress here: a host's uplink. A name or a pattern, as for --xdp. Repeatable.
    #[arg(long, value_name = "IFACE")]
    pub tc: Vec<String>,
    /// Attach TC ingress here: the host side of a pod's or container's veth, where what the
    /// pod sends comes in ('lxc*', 'cali*', 'veth*'). A name or a pattern, as for --xdp.
    /// Repeatable.
    #[arg(long, value_name = "IFACE")]
    pub tc_ingress: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Drop nothing; report what enforcement would drop with action "audit".
    #[arg(long)]
    pub audit: bool,
    /// Event output on stdout: one line of text or one JSON object per event.
    #[arg(long, value_enum, default_value_t = EventFormat::Text)]
    pub events: EventFormat,
    /// The DNS server to ask, instead of the system's (/etc/resolv.conf).
    #[arg(long, value_name = "IP:PORT")]
    pub resolver: Option<SocketAddr>,
    /// Never resolve a name again sooner than this, whatever its TTL.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub min_refresh: u64,
    /// Resolve every name again at least this often, whatever its TTL.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub max_refresh: u64,
    /// Keep an address allowed this long after it vanished from answers.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    pub grace: u64,
    /// Where programs (links) and maps are pinned.
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
    pub pin_path: PathBuf,
    /// Do not allow traffic to this host's own addresses (by default a gateway stays reachable
    /// from the LAN it filters on --self-ports).
    #[arg(long)]
    pub no_self_allow: bool,
    /// What stays open to this host's own addresses through XDP, so that no operator locks
    /// themselves out: tcp/PORT, udp/PORT (or LO-HI ranges) and icmp, comma-separated. The
    /// --dns-listen ports are added. Other ports on the host need a rule like any destination.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "tcp/22,udp/53,tcp/53,udp/67,udp/547,icmp"
    )]
    pub self_ports: Vec<PortSpec>,
    /// Do not drop packets whose source address does not belong on the XDP or TC-ingress
    /// interface they came in on (by default: no route to it goes out that interface; a pod's
    /// veth with no route of its own takes every source). Turn off only for asymmetric routing
    /// that strict reverse-path filtering would break too.
    #[arg(long)]
    pub no_source_check: bool,
    /// Drop events each CPU may report per second after its burst.
    #[arg(long, default_value_t = filter_common::Config::DEFAULT_EVENTS_PER_SEC)]
    pub event_rate: u32,
    /// Drop events each CPU may report back to back.
    #[arg(long, default_value_t = filter_common::Config::DEFAULT_EVENT_BURST)]
    pub event_burst: u32,
    /// Answer the clients' DNS here (UDP and TCP), learning the addresses of listed names from
    /// the answers before passing them on. Repeatable. Give the address clients reach, e.g.
    /// the gateway's LAN address, never a public one.
    #[arg(long, value_name = "ADDR:PORT", requires = "dns_upstream")]
    pub dns_listen: Vec<SocketAddr>,
    /// Let --dns-listen take a wildcard (0.0.0.0, ::) or an address that is neither loopback
    /// nor on an --xdp/--tc interface. Without it such an address is refused: on a gateway it
    /// would also listen on the WAN side. Clients are still limited as --dns-allow-from says.
    #[arg(long, requires = "dns_listen")]
    pub dns_listen_any: bool,
    /// Answer DNS clients from PREFIX too (repeatable), e.g. a network behind a downstream
    /// router. Without it only sources on the --xdp/--tc interfaces' connected subnets and the
    /// host itself get answers; others get none (counted as unserved).
    #[arg(long, value_name = "PREFIX", requires = "dns_listen")]
    pub dns_allow_from: Vec<IpNet>,
    /// The DNS server the forwarder asks.
    #[arg(long, value_name = "IP:PORT", requires = "dns_listen")]
    pub dns_upstream: Option<SocketAddr>,
    /// Answer NXDOMAIN to questions no rule's host matches (lab isolation).
    #[arg(long, requires = "dns_listen")]
    pub dns_block_unlisted: bool,
    /// Learned addresses stay allowed for at least this long plus --grace, whatever the
    /// record's TTL: a zero TTL must not fail the device's next connection.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub dns_min_ttl: u64,
    /// Most learned (address, service) entries kept; past it the service that grew loses its
    /// oldest first (or, below its share of the table, the service holding the most does).
    #[arg(long, default_value_t = 65_536, value_name = "N")]
    pub dns_max_learned: usize,
    /// Most answers kept for repeated questions (0: none). A kept answer is given only while
    /// its TTL lasts (at most 5 minutes), the rules are unchanged and, for a rule's name, its
    /// addresses are known open for the rest of that TTL; otherwise the question is forwarded.
    #[arg(long, default_value_t = crate::dns::cache::DEFAULT_CAPACITY, value_name = "N")]
    pub dns_cache: usize,
    /// A connection started while its address was allowed keeps passing after the address
    /// expires, until it has been idle this long (counted from the later of its last packet and
    /// the address's expiry; 0 keeps no connection). Sized for push channels' keepalives.
    #[arg(long, default_value_t = filter_common::Config::DEFAULT_ESTABLISHED_IDLE_SECS.into(), value_name = "SECS")]
    pub established_idle: u64,
    /// A connection kept past its address's expiry ends this long after it started, however
    /// busy (0 keeps no connection).
    #[arg(long, default_value_t = filter_common::Config::DEFAULT_ESTABLISHED_MAX_SECS.into(), value_name = "SECS")]
    pub established_max: u64,
    /// A reload that removes what allowed a connection leaves the connection alive (as an
    /// expiry would) instead of closing it.
    #[arg(long)]
    pub keep_flows_on_reload: bool,
    /// Serve Prometheus metrics on /metrics and the health on /healthz here (HTTP). Off by
    /// default; give a loopback or management address, never one the filtered clients reach.
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<SocketAddr>,
    /// Log lines on stderr: human-readable text, or one JSON object per line with each field
    /// (service, host, address, file, ...) as a key, for Loki or Elasticsearch.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Raises the soft limit on open files to the hard one: the forwarder holds a socket per query
/// in flight (up to 1,024) besides the maps, links and listeners, past the usual soft 1,024.
fn raise_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(err) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("cannot raise the open-file limit from {soft} to {hard}: {err}");
            }
        }
        Ok(_) => {}
        Err(err) => tracing::warn!("cannot read the open-file limit: {err}"),
    }
}

/// Logs at info and up, except the netlink parser's complaints about attributes newer kernels
/// add (each link read would log several): `RUST_LOG` replaces the whole filter.
const DEFAULT_LOG_FILTER: &str = "info,netlink_packet_route=error";

/// The longest refresh, grace or TTL floor `run` takes, in seconds.
const WEEK: u64 = 7 * 24 * 3600;

/// `run`: checks the options, then runs the daemon until it is stopped.
pub fn run(args: Args) -> anyhow::Result<()> {
    let log_format = args.log_format;
    let opts = args.into_options()?;
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into()),
        );
    match log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    raise_file_limit();
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(opts))
}

impl Args {
    /// The options the daemon runs with, or which of them is out of bounds.
    pub fn into_options(self) -> anyhow::Result<RunOptions> {
        let args = self;
        anyhow::ensure!(
            args.min_refresh >= 1,
            "--min-refresh must be at least 1 second"
        );
        anyhow::ensure!(
            args.max_refresh >= args.min_refresh,
            "--max-refresh must not be below --min-refresh"
        );
        anyhow::ensure!(
            args.dns_max_learned >= 1,
            "--dns-max-learned must be at least 1"
        );
        daemon::dns_clients::refuse_wildcards(&args.dns_listen, args.dns_listen_any)?;
        for prefix in &args.dns_allow_from {
            anyhow::ensure!(
                *prefix == prefix.trunc(),
                "--dns-allow-from {prefix} has host bits set; did you mean {}?",
                prefix.trunc()
            );
        }
        // Bounds that keep every deadline the daemon computes far from overflowing.
        for (flag, value) in [
            ("--max-refresh", args.max_refresh),
            ("--grace", args.grace),
            ("--dns-min-ttl", args.dns_min_ttl),
            ("--established-idle", args.established_idle),
            ("--established-max", args.established_max),
        ] {
            anyhow::ensure!(
                value <= WEEK,
                "{flag} must be at most a week ({WEEK} seconds)"
            );
        }
        let interfaces = [
            (HookKind::Xdp, &args.xdp),
            (HookKind::Tc, &args.tc),
            (HookKind::TcIngress, &args.tc_ingress),
        ]
        .into_iter()
        .flat_map(|(hook, given)| given.iter().map(move |text| (hook, text)))
        .map(|(hook, text)| InterfacePattern::new(hook, text))
        .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(RunOptions {
            rules: args.rules,
            watch_rules: args.watch_rules,
            keep_on_stop: args.keep_on_stop,
            interfaces,
            xdp_mode: args.xdp_mode,
            audit: args.audit,
            events: args.events,
            resolver: args.resolver,
            refresh: RefreshPolicy {
                min_refresh: Duration::from_secs(args.min_refresh),
                max_refresh: Duration::from_secs(args.max_refresh),
                grace: Duration::from_secs(args.grace),
            },
            pin_path: args.pin_path,
            allow_self: !args.no_self_allow,
            self_ports: args.self_ports,
            check_sources: !args.no_source_check,
            events_per_sec: args.event_rate,
            event_burst: args.event_burst,
            dns: args.dns_upstream.map(|upstream| DnsOptions {
                listen: args.dns_listen,
                listen_any: args.dns_listen_any,
                allow_from: args.dns_allow_from,
                upstream,
                block_unlisted: args.dns_block_unlisted,
                cache_entries: args.dns_cache,
                learn: LearnPolicy {
                    min_ttl: Duration::from_secs(args.dns_min_ttl),
                    grace: Duration::from_secs(args.grace),
                    capacity: args.dns_max_learned,
                },
            }),
            metrics_listen: args.metrics_listen,
            flows: FlowOptions {
                idle: Duration::from_secs(args.established_idle),
                max: Duration::from_secs(args.established_max),
                keep_on_reload: args.keep_flows_on_reload,
            },
        })
    }
}

/// The options `run --rules rules/ ARGV` gives, for the daemon's unit tests: built by the real
/// parser, so they see the real defaults.
#[cfg(test)]
pub(crate) fn parsed(argv: &[&str]) -> anyhow::Result<RunOptions> {
    use clap::Parser;

    #[derive(Parser)]
    struct CommandLine {
        #[command(flatten)]
        args: Args,
    }
    let argv = ["run", "--rules", "rules/"].iter().chain(argv);
    CommandLine::try_parse_from(argv)?.args.into_options()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(extra: &[&str]) -> anyhow::Result<RunOptions> {
        let mut argv = vec!["--xdp", "lan0"];
        argv.extend_from_slice(extra);
        parsed(&argv)
    }

    #[test]
    fn defaults_enforce_with_failsafe_ports_and_source_checks() {
        let opts = options(&[]).expect("defaults are valid");
        assert!(opts.allow_self && opts.check_sources && !opts.audit);
        let ports: Vec<String> = opts.self_ports.iter().map(ToString::to_string).collect();
        assert_eq!(
            ports,
            ["tcp/22", "udp/53", "tcp/53", "udp/67", "udp/547", "icmp"]
        );
        assert!(opts.dns.is_none());
        assert_eq!(
            (opts.flows.idle, opts.flows.max, opts.flows.keep_on_reload),
            (Duration::from_hours(1), Duration::from_hours(24), false)
        );
    }

    #[test]
    fn dns_options_carry_the_grace_into_learning() {
        let opts = options(&[
            "--dns-listen",
            "10.0.0.1:53",
            "--dns-upstream",
            "192.0.2.53:53",
            "--grace",
            "60",
            "--dns-min-ttl",
            "5",
        ])
        .expect("valid");
        let dns = opts.dns.expect("DNS options");
        assert_eq!(dns.learn.grace, Duration::from_mins(1));
        assert_eq!(dns.learn.min_ttl, Duration::from_secs(5));
        assert_eq!(opts.refresh.grace, Duration::from_mins(1));
    }

    #[test]
    fn a_wildcard_listen_address_needs_its_flag_and_allowed_prefixes_no_host_bits() {
        let dns = ["--dns-upstream", "192.0.2.53:53"];
        let err = options(&[&["--dns-listen", "0.0.0.0:53"][..], &dns].concat())
            .expect_err("a wildcard")
            .to_string();
        assert!(err.contains("--dns-listen 0.0.0.0:53"), "{err}");
        let opts = options(&[&["--dns-listen", "[::]:53", "--dns-listen-any"][..], &dns].concat())
            .expect("asked for");
        assert!(opts.dns.expect("DNS options").listen_any);
        let opts = options(
            &[
                &[
                    "--dns-listen",
                    "10.0.0.1:53",
                    "--dns-allow-from",
                    "10.9.0.0/16",
                    "--dns-allow-from",
                    "2001:db8:9::/48",
                ][..],
                &dns,
            ]
            .concat(),
        )
        .expect("valid");
        assert_eq!(opts.dns.expect("DNS options").allow_from.len(), 2);
        let err = options(
            &[
                &[
                    "--dns-listen",
                    "10.0.0.1:53",
                    "--dns-allow-from",
                    "10.9.0.1/16",
                ][..],
                &dns,
            ]
            .concat(),
        )
        .expect_err("host bits")
        .to_string();
        assert!(err.contains("did you mean 10.9.0.0/16"), "{err}");
    }

    #[test]
    fn out_of_bounds_options_name_the_flag() {
        for (flag, value, message) in [
            (
                "--min-refresh",
                "0",
                "--min-refresh must be at least 1 second",
            ),
            (
                "--max-refresh",
                "5",
                "--max-refresh must not be below --min-refresh",
            ),
            ("--grace", "999999999", "--grace must be at most a week"),
            (
                "--established-max",
                "999999999",
                "--established-max must be at most a week",
            ),
        ] {
            let err = options(&[flag, value]).expect_err(flag).to_string();
            assert!(err.contains(message), "{flag}: {err}");
        }
    }
}
