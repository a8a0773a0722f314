//! Bringing the programs into the kernel and onto the interfaces: loading the object with its
//! maps pinned (adopting a previous daemon's), attaching each hook with the program built for
//! the interface's link layer, and pinning the links so the filter outlives the daemon.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
};

use anyhow::{ensure, Context as _};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        SchedClassifier, TcAttachType, Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use filter_common::maps::{self as names, ALL_MAPS};

use super::{interfaces::LinkLayer, RunOptions, XdpModeArg};
use crate::{
    loader::{self, OBJECT},
    pins::{HookKind, PinDir},
};

/// The interfaces to attach to, as checked before anything is loaded.
pub struct Interfaces {
    /// Names by index, for drop events.
    pub names: BTreeMap<u32, String>,
    /// Each interface's link layer, which picks its programs.
    pub layers: BTreeMap<String, LinkLayer>,
}

/// Checks every interface before anything is loaded: it exists, and the programs can parse its
/// link layer (a device they cannot parse is refused here, never attached blindly).
pub fn check_interfaces(opts: &RunOptions) -> anyhow::Result<Interfaces> {
    let mut names = BTreeMap::new();
    let mut layers = BTreeMap::new();
    for iface in opts.xdp.iter().chain(&opts.tc) {
        let index = nix::net::if_::if_nametoindex(iface.as_str())
            .with_context(|| format!("no interface named {iface}"))?;
        names.insert(index, iface.clone());
        let layer = LinkLayer::of(iface)?;
        layers.insert(iface.clone(), layer);
        ensure!(
            !(layer == LinkLayer::Ip
                && opts.xdp_mode == XdpModeArg::Native
                && opts.xdp.contains(iface)),
            "{iface} is a layer-3 device: XDP runs on it in generic mode only (drop --xdp-mode \
             native)"
        );
    }
    Ok(Interfaces { names, layers })
}

/// Loads the object with every map pinned under the pin path (reused when already there).
pub fn load_with_pins(pins: &PinDir) -> anyhow::Result<Ebpf> {
    check_pinned_layouts(pins)?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pins.map_path(m))).collect();
    for (map, path) in &paths {
        loader.map_pin_path(map, path.as_path());
    }
    let mut ebpf = loader
        .load(OBJECT)
        .context("cannot create or adopt the pinned maps")?;
    loader::load_programs(&mut ebpf)?;
    Ok(ebpf)
}

/// Refuses to adopt maps pinned by a build whose maps have another shape: the programs would
/// read them with this build's layout (counters out of range, say). The pinned filter keeps
/// enforcing as it was until the operator detaches it.
fn check_pinned_layouts(pins: &PinDir) -> anyhow::Result<()> {
    let object = aya_obj::Object::parse(OBJECT).context("the embedded object cannot be parsed")?;
    for name in ALL_MAPS {
        let path = pins.map_path(name);
        if !path.exists() {
            continue;
        }
        let wanted = object
            .maps
            .get(name)
            .with_context(|| format!("map {name} missing from the object"))?;
        let pinned = aya::maps::MapData::from_pin(&path)
            .and_then(|map| map.info())
            .with_context(|| format!("cannot read the pinned map {}", path.display()))?;
        let shape = |key: u32, value: u32, entries: u32| {
            format!("key {key} B, value {value} B, {entries} entries")
        };
        let (have, want) = (
            shape(pinned.key_size(), pinned.value_size(), pinned.max_entries()),
            shape(wanted.key_size(), wanted.value_size(), wanted.max_entries()),
        );
        ensure!(
            have == want,
            "the map {name} pinned at {} was made by another version of egress-filter ({have}; \
             this one needs {want}); the pinned filter keeps enforcing as it was. Run \
             `egress-filter detach --pin-path {}` (traffic is unfiltered until this run \
             attaches), then start again",
            path.display(),
            pins.root().display()
        );
    }
    Ok(())
}

/// Attaches every requested hook, adopting pinned links (atomically swapping in the new program)
/// and pinning new ones; then removes pinned links nobody asked for.
pub fn attach_all(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    opts: &RunOptions,
    layers: &BTreeMap<String, LinkLayer>,
) -> anyhow::Result<()> {
    let mut wanted = BTreeSet::new();
    for iface in &opts.xdp {
        let path = pins.link_path(HookKind::Xdp, iface);
        wanted.insert(path.clone());
        let layer = *layers
            .get(iface)
            .with_context(|| format!("{iface} was not checked"))?;
        let program: &mut Xdp = loader::program(ebpf, program_for(HookKind::Xdp, layer))?;
        if let Ok(old) = PinnedLink::from_pin(&path) {
            program
                .attach_to_link(XdpLink::try_from(FdLink::from(old))?)
                .with_context(|| format!("cannot update XDP on {iface}"))?;
            tracing::info!(iface = %iface, hook = "xdp", "XDP on {iface}: adopted the pinned link");
            continue;
        }
        let id = match xdp_modes(opts.xdp_mode, layer) {
            (only, None) => program.attach(iface, only.into()),
            (first, Some(fallback)) => program.attach(iface, first.into()).or_else(|err| {
                tracing::info!(
                    "XDP {} mode unavailable on {iface} ({err}); using {} mode",
                    first.name(),
                    fallback.name()
                );
                program.attach(iface, fallback.into())
            }),
        }
        .with_context(|| format!("cannot attach XDP to {iface}"))?;
        pin_link(program.take_link(id)?, &path, "XDP (kernel < 5.9?)")?;
        tracing::info!(
            iface = %iface,
            hook = "xdp",
            layer = ?layer,
            "XDP attached to {iface}{}",
            layer_note(layer)
        );
    }
    for iface in &opts.tc {
        let path = pins.link_path(HookKind::Tc, iface);
        wanted.insert(path.clone());
        let layer = *layers
            .get(iface)
            .with_context(|| format!("{iface} was not checked"))?;
        let program: &mut SchedClassifier =
            loader::program(ebpf, program_for(HookKind::Tc, layer))?;
        if let Ok(old) = PinnedLink::from_pin(&path) {
            program
                .attach_to_link(SchedClassifierLink::try_from(FdLink::from(old))?)
                .with_context(|| format!("cannot update TC on {iface}"))?;
            tracing::info!(iface = %iface, hook = "tc", "TC egress on {iface}: adopted the pinned link");
            continue;
        }
        // aya picks TCX on kernels ≥ 6.6 (a pinnable bpf_link) and clsact before that.
        let id = program
            .attach(iface, TcAttachType::Egress)
            .with_context(|| format!("cannot attach TC egress to {iface}"))?;
        pin_link(program.take_link(id)?, &path, "TC (kernel < 6.6?)")?;
        tracing::info!(
            iface = %iface,
            hook = "tc",
            layer = ?layer,
            "TC egress attached to {iface}{}",
            layer_note(layer)
        );
    }
    for (_, iface, path) in pins.pinned_links() {
        if !wanted.contains(&path) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot unpin {}", path.display()))?;
            tracing::info!("detached the leftover filter on {iface}");
        }
    }
    Ok(())
}

/// The program for a hook on a device with this link layer.
fn program_for(hook: HookKind, layer: LinkLayer) -> &'static str {
    match (hook, layer) {
        (HookKind::Xdp, LinkLayer::Ethernet) => names::PROG_XDP,
        (HookKind::Xdp, LinkLayer::Ip) => names::PROG_XDP_L3,
        (HookKind::Tc, LinkLayer::Ethernet) => names::PROG_TC,
        (HookKind::Tc, LinkLayer::Ip) => names::PROG_TC_L3,
    }
}

/// An XDP attach mode (aya's `XdpMode` is not comparable, so this is what tests look at).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Driver,
    Generic,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Driver => "driver",
            Mode::Generic => "generic",
        }
    }
}

impl From<Mode> for XdpMode {
    fn from(mode: Mode) -> Self {
        match mode {
            Mode::Driver => XdpMode::Driver,
            Mode::Generic => XdpMode::Skb,
        }
    }
}

/// The XDP mode to try, and the one to fall back to. A TUN device accepts a driver-mode program
/// but runs it only on TAP frames: on a layer-3 device only generic mode sees every packet.
fn xdp_modes(asked: XdpModeArg, layer: LinkLayer) -> (Mode, Option<Mode>) {
    match (asked, layer) {
        (XdpModeArg::Generic, _) | (_, LinkLayer::Ip) => (Mode::Generic, None),
        (XdpModeArg::Native, LinkLayer::Ethernet) => (Mode::Driver, None),
        (XdpModeArg::Auto, LinkLayer::Ethernet) => (Mode::Driver, Some(Mode::Generic)),
    }
}

fn layer_note(layer: LinkLayer) -> &'static str {
    match layer {
        LinkLayer::Ethernet => "",
        LinkLayer::Ip => " (a layer-3 device: parsed from the IP header)",
    }
}

/// Pins a freshly attached link so it outlives the daemon. Only bpf_links can be pinned; a
/// netlink attachment (old kernels) is refused, since it could not be adopted or detached later.
fn pin_link<L>(link: L, path: &std::path::Path, what: &str) -> anyhow::Result<()>
where
    FdLink: TryFrom<L, Error = aya::programs::links::LinkError>,
{
    let link =
        FdLink::try_from(link).with_context(|| format!("{what} attached without a bpf_link"))?;
    link.pin(path)
        .with_context(|| format!("cannot pin {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_link_layer_gets_its_own_program() {
        assert_eq!(
            program_for(HookKind::Xdp, LinkLayer::Ethernet),
            "egress_xdp"
        );
        assert_eq!(program_for(HookKind::Xdp, LinkLayer::Ip), "egress_xdp_l3");
        assert_eq!(program_for(HookKind::Tc, LinkLayer::Ethernet), "egress_tc");
        assert_eq!(program_for(HookKind::Tc, LinkLayer::Ip), "egress_tc_l3");
    }

    #[test]
    fn layer3_devices_run_xdp_in_generic_mode_whatever_was_asked() {
        for asked in [XdpModeArg::Auto, XdpModeArg::Native, XdpModeArg::Generic] {
            assert_eq!(
                xdp_modes(asked, LinkLayer::Ip),
                (Mode::Generic, None),
                "{asked:?}"
            );
        }
        assert_eq!(
            xdp_modes(XdpModeArg::Auto, LinkLayer::Ethernet),
            (Mode::Driver, Some(Mode::Generic))
        );
        assert_eq!(
            xdp_modes(XdpModeArg::Native, LinkLayer::Ethernet),
            (Mode::Driver, None)
        );
    }
}
