//! `egress-filter detach`: removes a filter a crashed or killed daemon left pinned (its links and
//! maps), which otherwise keeps enforcing on purpose.
//!
//! Example: `egress-filter detach`

use anyhow::ensure;

use crate::pins::{PinDir, DEFAULT_PIN_PATH};

/// `detach`: remove a filter left pinned by a daemon that crashed or was killed.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the filter's programs and maps are pinned.
    #[arg(long, default_value = DEFAULT_PIN_PATH, value_name = "DIR")]
    pub pin_path: std::path::PathBuf,
}

/// Unpins the links (detaching the programs) and the maps; refuses while a daemon holds the
/// pin path.
pub fn run(args: &Args) -> anyhow::Result<String> {
    let pin_path = &args.pin_path;
    let pins = PinDir::new(pin_path);
    let _lock = pins.lock()?;
    let links = pins.pinned_links();
    ensure!(
        !links.is_empty() || pins.has_pinned_maps(),
        "nothing is pinned at {}",
        pin_path.display()
    );
    pins.remove_all()?;
    Ok(format!(
        "detached {} attachment(s) and removed the maps pinned at {}",
        links.len(),
        pin_path.display()
    ))
}
