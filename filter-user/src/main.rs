//! `egress-filter`: the command line.
use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// An eBPF egress allow-list for networks of managed devices.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Load the kernel programs through the verifier and report, without attaching anything.
    ///
    /// Example: `egress-filter probe`
    Probe,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: &Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Probe => {
            let mut ebpf = filter_user::loader::open().context("cannot create the maps")?;
            filter_user::loader::load_programs(&mut ebpf).context("cannot load the programs")?;
            let programs: Vec<&str> = ebpf.programs().map(|(name, _)| name).collect();
            let maps: Vec<&str> = ebpf.maps().map(|(name, _)| name).collect();
            println!("loaded programs: {}", programs.join(", "));
            println!("created maps: {}", maps.join(", "));
            Ok(())
        }
    }
}
