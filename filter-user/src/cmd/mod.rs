//! The verbs of the command line, one module each.

pub mod check;
pub mod detach;
pub mod diff;
pub mod docs;
pub mod explain;
pub mod import;
pub mod learned;
pub mod probe;
pub mod run;
pub mod show;
pub mod stats;

/// Where a running filter is pinned, and how to print what is read from it (`stats`,
/// `learned`).
#[derive(Debug, clap::Args)]
pub struct PinnedReport {
    /// Where the filter's programs and maps are pinned.
    #[arg(long, default_value = crate::pins::DEFAULT_PIN_PATH, value_name = "DIR")]
    pub pin_path: std::path::PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}
