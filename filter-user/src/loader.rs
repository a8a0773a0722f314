//! The kernel object, embedded at build time, and loading it.

use aya::{
    programs::{ProgramError, SchedClassifier, Xdp},
    Ebpf, EbpfError, EbpfLoader,
};
use filter_common::maps::{PROG_TC, PROG_TC_INGRESS, PROG_TC_L3, PROG_XDP, PROG_XDP_L3};

/// The object `build.rs` compiled from filter-ebpf: both programs and every map.
pub const OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress-filter"));

/// [`OBJECT`]'s sha256, in hex.
pub const OBJECT_SHA256: &str = env!("EGRESS_FILTER_OBJECT_SHA256");

/// Benchmark baseline: one XDP program, `baseline_pass`, that only returns XDP_PASS.
pub const BASELINE_PASS_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline-pass"));

/// Benchmark traffic generator: one XDP program, `tx_generator`, that returns XDP_TX, for
/// live-frame test runs into a veth.
pub const TX_GENERATOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tx-generator"));

/// Why the object could not be brought into the kernel.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the BPF object (maps) failed; are you root, and is this kernel ≥ 5.8?")]
    Object(#[source] EbpfError),
    #[error("program {0} is missing from the BPF object")]
    MissingProgram(&'static str),
    #[error("the kernel refused program {name}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
}

/// Creates the maps of the embedded object (nothing is loaded or attached yet).
pub fn open() -> Result<Ebpf, LoadError> {
    EbpfLoader::new().load(OBJECT).map_err(LoadError::Object)
}

/// Runs every program (both hooks, for Ethernet and for layer-3 devices) through the verifier,
/// ready to attach or test-run.
pub fn load_programs(ebpf: &mut Ebpf) -> Result<(), LoadError> {
    for name in [PROG_XDP, PROG_XDP_L3] {
        let xdp: &mut Xdp = program(ebpf, name)?;
        xdp.load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    for name in [PROG_TC, PROG_TC_L3, PROG_TC_INGRESS] {
        let tc: &mut SchedClassifier = program(ebpf, name)?;
        tc.load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    Ok(())
}

/// The XDP program `name`, run through the verifier on first use. A daemon verifies only the
/// programs its interfaces need: each takes the verifier a good fraction of a second, and a
/// restart is that much longer without the forwarder (see `load_programs` for all of them).
pub fn loaded_xdp<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut Xdp, LoadError> {
    let xdp: &mut Xdp = program(ebpf, name)?;
    if xdp.fd().is_err() {
        xdp.load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    Ok(xdp)
}

/// The TC program `name`, run through the verifier on first use, as [`loaded_xdp`].
pub fn loaded_tc<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut SchedClassifier, LoadError> {
    let tc: &mut SchedClassifier = program(ebpf, name)?;
    if tc.fd().is_err() {
        tc.load()
            .map_err(|source| LoadError::Program { name, source })?;
    }
    Ok(tc)
}

/// A program of the object, as its concrete type.
pub fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, LoadError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram(name))?;
    program
        .try_into()
        .map_err(|source| LoadError::Program { name, source })
}

#[cfg(test)]
mod tests {
    use filter_common::maps::{ALL_MAPS, ALL_PROGRAMS};

    use super::OBJECT;

    #[test]
    fn object_holds_every_map_and_program_by_name() {
        let object = aya_obj::Object::parse(OBJECT).expect("the embedded object parses");
        for name in ALL_MAPS {
            assert!(
                object.maps.contains_key(name),
                "map {name} missing; maps: {:?}",
                object.maps.keys()
            );
        }
        for name in ALL_PROGRAMS {
            assert!(
                object.programs.contains_key(name),
                "program {name} missing; programs: {:?}",
                object.programs.keys()
            );
        }
    }
}
