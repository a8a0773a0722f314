//! `egress-filter`: the command line. Each verb is documented with an example; the README shows
//! the same commands.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser, Subcommand};
use filter_user::{
    cmd,
    pins::{PinDir, DEFAULT_PIN_PATH},
};

/// `--version`: the release, the commit and the embedded kernel object's sha256 (build.rs), so
/// a running filter traces back to its source and to the object the verifier saw.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EGRESS_FILTER_COMMIT"),
    ", kernel object sha256 ",
    env!("EGRESS_FILTER_OBJECT_SHA256"),
    ")"
);

/// An eBPF egress allow-list for networks of managed devices.
#[derive(Parser)]
#[command(name = "egress-filter", version = VERSION, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate rule files and summarise them; on error, print every problem as file:line:col
    /// and exit 1. `--strict` also refuses broad openings a service does not accept.
    ///
    /// Example: `egress-filter check --rules rules/ --strict --max-source-age 180`
    Check(cmd::check::Args),
    /// What an update of the rules adds and removes, per service: hosts, prefixes and ports,
    /// with a risk flag on each broad addition.
    ///
    /// Example: `egress-filter diff rules-old/ rules/ --json`
    Diff(cmd::diff::Args),
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
    Run(Box<cmd::run::Args>),
    /// Why a packet to DST passes or is dropped: the verdict and reason, the policy that covers
    /// DST, and where each covering address comes from (a CIDR's file:line, a hostname, a
    /// learned DNS answer). Answers from the running filter's maps when one is pinned.
    ///
    /// Example: `egress-filter explain 198.51.100.7 tcp/443 --rules rules/`
    Explain(cmd::explain::Args),
    /// Print the counters of the running filter: per service, per reason, events.
    ///
    /// Example: `egress-filter stats --json`
    Stats(cmd::stats::Args),
    /// List the addresses the running filter's DNS forwarder learned: address, service, the
    /// name it was learned from, age, and when it expires.
    ///
    /// Example: `egress-filter learned --json`
    Learned(cmd::learned::Args),
    /// Remove a filter left pinned by a daemon that crashed or was killed.
    ///
    /// Example: `egress-filter detach`
    Detach(cmd::detach::Args),
    /// Write rule TOML from a vendor feed to stdout.
    #[command(subcommand)]
    Import(ImportFeed),
    /// Load the kernel programs through the verifier and report, without attaching anything.
    ///
    /// Example: `egress-filter probe`
    Probe,
    /// Write the man pages and shell completions under DIR (for packaging).
    #[command(hide = true)]
    GenerateDocs {
        /// Where man/ and completions/ are written.
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum ImportFeed {
    /// The Microsoft 365 endpoints JSON (endpoints/WorldWide); one service per endpoint set.
    /// Sets the feed marks optional are skipped unless --include-optional.
    ///
    /// Example: `egress-filter import m365 worldwide.json --service-area MEM --feed-version version.json > rules/m365.toml`
    M365 {
        /// The downloaded JSON file.
        file: PathBuf,
        /// Only this service area (Common, Exchange, SharePoint, Skype, MEM). MEM also brings
        /// the identity sets Intune needs (56, 59, 97, 150).
        #[arg(long, value_name = "AREA")]
        service_area: Option<String>,
        /// Keep the sets the feed marks optional ("required": false).
        #[arg(long)]
        include_optional: bool,
        /// The saved answer of the version method (version/Worldwide), recorded in the header.
        #[arg(long, value_name = "FILE")]
        feed_version: Option<PathBuf>,
    },
    /// Google's goog.json; one service allowing the given ports to every range, less the
    /// Google Cloud customer ranges of cloud.json with --exclude.
    ///
    /// Example: `egress-filter import google goog.json --exclude cloud.json > rules/google-ranges.toml`
    Google {
        /// The downloaded goog.json.
        file: PathBuf,
        /// cloud.json: Google Cloud customer ranges to subtract from the input.
        #[arg(long, value_name = "CLOUD_JSON")]
        exclude: Option<PathBuf>,
        /// Accept cloud.json itself as the input, opening every Google Cloud customer's servers.
        #[arg(long)]
        cloud_ranges: bool,
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
        Command::Check(args) => {
            let checked = cmd::check::run(&args)?;
            for warning in &checked.warnings {
                eprintln!("{warning}");
            }
            print!("{}", checked.summary);
        }
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
                report.learned = cmd::learned::read(&PinDir::new(pin_path)).unwrap_or_default();
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.to_text());
            }
        }
        Command::Import(ImportFeed::M365 {
            file,
            service_area,
            include_optional,
            feed_version,
        }) => {
            let options = cmd::import::M365Options {
                service_area: service_area.as_deref(),
                include_optional,
                feed_version: feed_version.as_deref(),
            };
            print!("{}", cmd::import::m365(&file, &options)?);
        }
        Command::Import(ImportFeed::Google {
            file,
            exclude,
            cloud_ranges,
            name,
            tcp,
            udp,
        }) => {
            let options = cmd::import::GoogleOptions {
                name: &name,
                tcp: &tcp,
                udp: udp.as_deref(),
                exclude: exclude.as_deref(),
                cloud_ranges,
            };
            print!("{}", cmd::import::google(&file, &options)?);
        }
        Command::Diff(args) => print!("{}", cmd::diff::run(&args)?),
        Command::Run(args) => cmd::run::run(*args)?,
        Command::Explain(args) => {
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let explanation = runtime.block_on(cmd::explain::run(&args))?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&explanation)?);
            } else {
                print!("{}", explanation.to_text());
            }
        }
        Command::Stats(args) => print!("{}", cmd::stats::run(&args)?),
        Command::Learned(args) => print!("{}", cmd::learned::run(&args)?),
        Command::Detach(args) => println!("{}", cmd::detach::run(&args)?),
        Command::Probe => print!("{}", cmd::probe::run()?),
        Command::GenerateDocs { dir } => {
            for path in cmd::docs::write(&Cli::command(), &dir)? {
                println!("{}", path.display());
            }
        }
    }
    Ok(())
}
