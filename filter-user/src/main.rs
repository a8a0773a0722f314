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
    Run(Box<cmd::run::Args>),
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
                report.learned = cmd::learned::read(&PinDir::new(pin_path)).unwrap_or_default();
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
        Command::Run(args) => cmd::run::run(*args)?,
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
