//! `egress-filter`: the command line. Each verb is documented with an example; the README shows
//! the same commands.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use filter_user::{
    cmd,
    daemon::{
        self, events::EventFormat, hosts::RefreshPolicy, pins::DEFAULT_PIN_PATH, DnsOptions,
        RunOptions, XdpModeArg,
    },
    dns::LearnPolicy,
    table::PortSpec,
};

/// An eBPF egress allow-list for networks of managed devices.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate rule files and summarise them; on error, print every problem as file:line:col
    /// and exit 1.
    ///
    /// Example: `egress-filter check --rules rules/`
    Check {
        /// A rules file, or a directory whose *.toml files are loaded. Repeatable.
        #[arg(long = "rules", required = true, value_name = "PATH")]
        rules: Vec<PathBuf>,
    },
    /// Print the compiled allow table: every prefix with the services, protocols and ports
    /// allowed there, then the hostnames and wildcard names.
    ///
    /// Example: `egress-filter show --rules rules/ --resolve --json`
    Show {
        /// A rules file, or a directory whose *.toml files are loaded. Repeatable.
        #[arg(long = "rules", required = true, value_name = "PATH")]
        rules: Vec<PathBuf>,
        /// Resolve the hostnames now and include their addresses.
        #[arg(long)]
        resolve: bool,
        /// The DNS server to ask, instead of the system's (/etc/resolv.conf).
        #[arg(long, value_name = "IP:PORT", requires = "resolve")]
        resolver: Option<SocketAddr>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// With --resolve: also list what the filter running here learned from DNS.
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
        pin_path: PathBuf,
    },
    /// Enforce the rules: attach the filter, keep hostnames resolved, stream drop events to
    /// stdout. Stops (detaching cleanly) on SIGINT/SIGTERM; SIGHUP reloads the rules.
    ///
    /// Example: `egress-filter run --rules rules/ --xdp lan0 --events json`
    Run(Box<RunArgs>),
    /// Print the counters of the running filter: per service, per reason, events.
    ///
    /// Example: `egress-filter stats --json`
    Stats {
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
        pin_path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// List the addresses the running filter's DNS forwarder learned: address, service, the
    /// name it was learned from, age, and when it expires.
    ///
    /// Example: `egress-filter learned --json`
    Learned {
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
        pin_path: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Remove a filter left pinned by a daemon that crashed or was killed.
    ///
    /// Example: `egress-filter detach`
    Detach {
        #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
        pin_path: PathBuf,
    },
    /// Write rule TOML from a vendor feed to stdout.
    #[command(subcommand)]
    Import(ImportFeed),
    /// Load the kernel programs through the verifier and report, without attaching anything.
    ///
    /// Example: `egress-filter probe`
    Probe,
}

#[derive(clap::Args)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "each is an independent command-line switch"
)]
struct RunArgs {
    /// A rules file, or a directory whose *.toml files are loaded. Repeatable.
    #[arg(long = "rules", required = true, value_name = "PATH")]
    rules: Vec<PathBuf>,
    /// Attach XDP here: a gateway's LAN-facing interface. Repeatable.
    #[arg(long, value_name = "IFACE")]
    xdp: Vec<String>,
    /// Attach TC egress here: a host's uplink. Repeatable.
    #[arg(long, value_name = "IFACE")]
    tc: Vec<String>,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    xdp_mode: XdpModeArg,
    /// Drop nothing; report what enforcement would drop with action "audit".
    #[arg(long)]
    audit: bool,
    /// Event output on stdout: one line of text or one JSON object per event.
    #[arg(long, value_enum, default_value_t = EventFormat::Text)]
    events: EventFormat,
    /// The DNS server to ask, instead of the system's (/etc/resolv.conf).
    #[arg(long, value_name = "IP:PORT")]
    resolver: Option<SocketAddr>,
    /// Never resolve a name again sooner than this, whatever its TTL.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    min_refresh: u64,
    /// Resolve every name again at least this often, whatever its TTL.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    max_refresh: u64,
    /// Keep an address allowed this long after it vanished from answers.
    #[arg(long, default_value_t = 900, value_name = "SECS")]
    grace: u64,
    /// Where programs (links) and maps are pinned.
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
    pin_path: PathBuf,
    /// Do not allow traffic to this host's own addresses (by default a gateway stays reachable
    /// from the LAN it filters on --self-ports).
    #[arg(long)]
    no_self_allow: bool,
    /// What stays open to this host's own addresses through XDP, so that no operator locks
    /// themselves out: tcp/PORT, udp/PORT (or LO-HI ranges) and icmp, comma-separated. The
    /// --dns-listen ports are added. Other ports on the host need a rule like any destination.
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        default_value = "tcp/22,udp/53,tcp/53,udp/67,udp/547,icmp"
    )]
    self_ports: Vec<PortSpec>,
    /// Do not drop packets whose source address does not belong on the XDP interface they came
    /// in on (by default: no route to it goes out that interface). Turn off only for asymmetric
    /// routing that strict reverse-path filtering would break too.
    #[arg(long)]
    no_source_check: bool,
    /// Drop events each CPU may report per second after its burst.
    #[arg(long, default_value_t = filter_common::Config::DEFAULT_EVENTS_PER_SEC)]
    event_rate: u32,
    /// Drop events each CPU may report back to back.
    #[arg(long, default_value_t = filter_common::Config::DEFAULT_EVENT_BURST)]
    event_burst: u32,
    /// Answer the clients' DNS here (UDP and TCP), learning the addresses of listed names from
    /// the answers before passing them on. Repeatable. Give the address clients reach, e.g.
    /// the gateway's LAN address, never a public one.
    #[arg(long, value_name = "ADDR:PORT", requires = "dns_upstream")]
    dns_listen: Vec<SocketAddr>,
    /// The DNS server the forwarder asks.
    #[arg(long, value_name = "IP:PORT", requires = "dns_listen")]
    dns_upstream: Option<SocketAddr>,
    /// Answer NXDOMAIN to questions no rule's host matches (lab isolation).
    #[arg(long, requires = "dns_listen")]
    dns_block_unlisted: bool,
    /// Learned addresses stay allowed for at least this long plus --grace, whatever the
    /// record's TTL: a zero TTL must not fail the device's next connection.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    dns_min_ttl: u64,
    /// Most learned (address, service) entries kept; past it the oldest go first.
    #[arg(long, default_value_t = 65_536, value_name = "N")]
    dns_max_learned: usize,
}

#[derive(Subcommand)]
enum ImportFeed {
    /// The Microsoft 365 endpoints JSON (endpoints/WorldWide); one service per endpoint set.
    ///
    /// Example: `egress-filter import m365 worldwide.json --service-area MEM > rules/m365.toml`
    M365 {
        /// The downloaded JSON file.
        file: PathBuf,
        /// Only this service area (Common, Exchange, SharePoint, Skype, MEM).
        #[arg(long, value_name = "AREA")]
        service_area: Option<String>,
    },
    /// Google's goog.json; one service allowing the given ports to every range.
    ///
    /// Example: `egress-filter import google goog.json > rules/google-ranges.toml`
    Google {
        /// The downloaded goog.json.
        file: PathBuf,
        /// The service name to write.
        #[arg(long, default_value = "google-ip-ranges")]
        name: String,
        /// TCP ports to allow, as a comma list with lo-hi ranges (default: FCM's).
        #[arg(long, default_value = "443,5228-5230")]
        tcp: String,
        /// UDP ports to allow, likewise.
        #[arg(long)]
        udp: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { rules } => print!("{}", cmd::check::run(&rules)?),
        Command::Show {
            rules,
            resolve,
            resolver,
            json,
            pin_path,
        } => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let mut report = runtime.block_on(cmd::show::run(&rules, resolve, resolver))?;
            if resolve {
                // A filter answering DNS here: add what it learned. None running is no error.
                report.learned = daemon::stats::learned(&daemon::pins::PinDir::new(pin_path))
                    .unwrap_or_default();
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Import(ImportFeed::M365 { file, service_area }) => {
            print!("{}", cmd::import::m365(&file, service_area.as_deref())?);
        }
        Command::Import(ImportFeed::Google {
            file,
            name,
            tcp,
            udp,
        }) => {
            print!(
                "{}",
                cmd::import::google(&file, &name, &tcp, udp.as_deref())?
            );
        }
        Command::Run(args) => run_daemon(*args)?,
        Command::Stats { pin_path, json } => {
            let stats = daemon::stats::read(&daemon::pins::PinDir::new(pin_path))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                print!("{}", stats.to_text());
            }
        }
        Command::Learned { pin_path, json } => {
            let learned = daemon::stats::learned(&daemon::pins::PinDir::new(pin_path))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&learned)?);
            } else {
                print!("{}", cmd::show::learned_text(&learned));
            }
        }
        Command::Detach { pin_path } => println!("{}", daemon::detach(&pin_path)?),
        Command::Probe => {
            let mut ebpf = filter_user::loader::open().context("cannot create the maps")?;
            filter_user::loader::load_programs(&mut ebpf).context("cannot load the programs")?;
            let programs: Vec<&str> = ebpf.programs().map(|(name, _)| name).collect();
            let maps: Vec<&str> = ebpf.maps().map(|(name, _)| name).collect();
            println!("loaded programs: {}", programs.join(", "));
            println!("created maps: {}", maps.join(", "));
        }
    }
    Ok(())
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

/// The longest refresh, grace or TTL floor `run` takes, in seconds.
const WEEK: u64 = 7 * 24 * 3600;

/// `run`: checks the options, then runs the daemon until it is stopped.
fn run_daemon(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
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
    // Bounds that keep every deadline the daemon computes far from overflowing.
    for (flag, value) in [
        ("--max-refresh", args.max_refresh),
        ("--grace", args.grace),
        ("--dns-min-ttl", args.dns_min_ttl),
    ] {
        anyhow::ensure!(
            value <= WEEK,
            "{flag} must be at most a week ({WEEK} seconds)"
        );
    }
    raise_file_limit();
    let opts = RunOptions {
        rules: args.rules,
        xdp: args.xdp,
        tc: args.tc,
        xdp_mode: args.xdp_mode,
        audit: args.audit,
        events: args.events,
        resolver: args.resolver,
        refresh: RefreshPolicy {
            min_refresh: std::time::Duration::from_secs(args.min_refresh),
            max_refresh: std::time::Duration::from_secs(args.max_refresh),
            grace: std::time::Duration::from_secs(args.grace),
        },
        pin_path: args.pin_path,
        allow_self: !args.no_self_allow,
        self_ports: args.self_ports,
        check_sources: !args.no_source_check,
        events_per_sec: args.event_rate,
        event_burst: args.event_burst,
        dns: args.dns_upstream.map(|upstream| DnsOptions {
            listen: args.dns_listen,
            upstream,
            block_unlisted: args.dns_block_unlisted,
            learn: LearnPolicy {
                min_ttl: std::time::Duration::from_secs(args.dns_min_ttl),
                grace: std::time::Duration::from_secs(args.grace),
                capacity: args.dns_max_learned,
            },
        }),
    };
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(daemon::run(opts))?;
    Ok(())
}
