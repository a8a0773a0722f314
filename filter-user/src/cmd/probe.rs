//! `egress-filter probe`: runs every kernel program through the verifier and lists what it
//! created, without attaching anything: does this kernel take the programs?
//!
//! Example: `egress-filter probe`

use anyhow::Context as _;

use crate::loader;

/// Loads the programs and reports their names and the maps created for them.
pub fn run() -> anyhow::Result<String> {
    let mut ebpf = loader::open().context("cannot create the maps")?;
    loader::load_programs(&mut ebpf).context("cannot load the programs")?;
    let programs: Vec<&str> = ebpf.programs().map(|(name, _)| name).collect();
    let maps: Vec<&str> = ebpf.maps().map(|(name, _)| name).collect();
    Ok(format!(
        "loaded programs: {}\ncreated maps: {}\n",
        programs.join(", "),
        maps.join(", ")
    ))
}
