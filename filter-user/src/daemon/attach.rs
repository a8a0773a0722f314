//! Bringing the programs into the kernel and onto the interfaces: loading the object with its
//! maps pinned (adopting a previous daemon's), attaching each hook with the program built for
//! the interface's link layer, and pinning the links so the filter outlives the daemon. Which
//! interfaces, and when, is [`super::attachments`]' business; this module carries it out.

use std::{
    collections::BTreeMap,
    ffi::CString,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use anyhow::{bail, ensure, Context as _};
use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        tc::SchedClassifierLink,
        xdp::XdpLink,
        TcAttachType, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use filter_common::maps::{self as names, ALL_MAPS};
use tokio::sync::{oneshot, watch};

use super::{
    attachments::{self, AttachmentKey, NamedLink, Plan, Target},
    interfaces::LinkLayer,
    RunOptions, XdpModeArg,
};
use crate::{
    loader::{self, OBJECT},
    pins::{HookKind, PinDir},
};

/// Checks, before anything is loaded, what the first attachments will be: every exact name
/// exists and has a link layer the programs parse (a typo or a loopback device fails the start
/// instead of being attached blindly or not at all); patterns may match nothing yet.
pub fn first_plan(opts: &RunOptions, links: &[NamedLink]) -> anyhow::Result<Plan> {
    let plan = attachments::plan(&opts.interfaces, links, &BTreeMap::new());
    if let Some((hook, name)) = plan.missing.first() {
        bail!("no interface named {name} ({})", hook.option());
    }
    for pattern in opts.interfaces.iter().filter(|p| p.is_exact()) {
        if let Some(why) = plan.unsupported.get(&(pattern.hook, pattern.text.clone())) {
            bail!("{why}");
        }
    }
    for target in &plan.attach {
        ensure!(
            !(target.hook == HookKind::Xdp
                && target.layer == LinkLayer::Ip
                && opts.xdp_mode == XdpModeArg::Native),
            "{} is a layer-3 device: XDP runs on it in generic mode only (drop --xdp-mode native)",
            target.name
        );
    }
    Ok(plan)
}

/// Loads the object with every map pinned under the pin path (reused when already there).
pub fn load_with_pins(pins: &PinDir) -> anyhow::Result<Ebpf> {
    check_pinned_layouts(pins)?;
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pins.map_path(m))).collect();
    for (map, path) in &paths {
        loader.map_pin_path(map, path.as_path());
    }
    // The programs are verified as the interfaces that need them are attached.
    loader
        .load(OBJECT)
        .context("cannot create or adopt the pinned maps")
}

/// The programs the first attachments need, put through the verifier on a thread of its own
/// from the moment the pin path is locked. The verifier needs nothing from the rules, and it is
/// the longest part of a start (over a second for the XDP program with this build's datapath),
/// so it runs while the rules are read, compiled and written, and while DNS is answered.
///
/// The thread's load creates (or adopts) the pinned maps before it verifies; the daemon's own
/// load waits for that ([`Self::maps_pinned`]) and adopts them, so both loads share one set of
/// maps and the verified programs read the very maps the policy is written to. A program that
/// fails here is left unloaded: attaching it tries again and reports the failure where it
/// always did.
pub struct VerifyingAhead {
    /// Turns true once the thread's load has pinned the maps, or failed to.
    pinned: watch::Receiver<bool>,
    verified: oneshot::Receiver<anyhow::Result<Ebpf>>,
}

impl VerifyingAhead {
    /// Starts the thread. A thread of its own rather than a blocking task: a start that fails
    /// meanwhile (bad rules) exits without waiting for the verifier to finish.
    pub fn start(pins: &PinDir, targets: &[Target]) -> anyhow::Result<Self> {
        let (pinned_tx, pinned) = watch::channel(false);
        let (verified_tx, verified) = oneshot::channel();
        let (pins, targets) = (pins.clone(), targets.to_vec());
        std::thread::Builder::new()
            .name("verifier".into())
            .spawn(move || {
                let loaded = load_with_pins(&pins);
                pinned_tx.send_replace(true);
                let verified = loaded.map(|mut ebpf| {
                    verify(&mut ebpf, &targets);
                    ebpf
                });
                // The daemon may have stopped waiting (a failed start): nothing to hand over.
                let _ = verified_tx.send(verified);
            })
            .context("cannot start the verifier's thread")?;
        Ok(Self { pinned, verified })
    }

    /// Resolves once the thread's load has created or adopted the pinned maps (or failed to):
    /// from then on the thread changes nothing in the pin path. A start waits for this before
    /// its own load, and before it removes the pins after a failure; it owns what it waits on,
    /// so the failure path can keep it when the start itself is dropped.
    pub fn maps_pinned(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut pinned = self.pinned.clone();
        async move {
            // An error means the thread ended (panicked) before saying so: nothing more comes.
            let _ = pinned.wait_for(|done| *done).await;
        }
    }

    /// The object with the programs verified, or `None` (logged at debug) when its load
    /// failed: the daemon's own load reports the same failure.
    pub async fn verified(self) -> Option<Ebpf> {
        match self.verified.await {
            Ok(Ok(ebpf)) => Some(ebpf),
            Ok(Err(err)) => {
                tracing::debug!("verifying ahead: {err:#}");
                None
            }
            Err(_) => None,
        }
    }
}

/// Runs the programs `targets` need through the verifier, leaving any that fail unloaded.
fn verify(ebpf: &mut Ebpf, targets: &[Target]) {
    for target in targets {
        let name = program_for(target.hook, target.layer);
        let verified = match target.hook {
            HookKind::Xdp => loader::loaded_xdp(ebpf, name).map(drop),
            HookKind::Tc | HookKind::TcIngress => loader::loaded_tc(ebpf, name).map(drop),
        };
        if let Err(err) = verified {
            tracing::debug!("{:#}", anyhow::Error::new(err));
        }
    }
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

/// Attaches one hook to one interface, pinning the link so it outlives the daemon. A link pinned
/// by an earlier run on this very device is adopted (the new program swapped in atomically, no
/// gap); one pinned for a device that is gone (the name was deleted and created again, maybe
/// while no daemon ran) is defunct, so it is unpinned and the new device attached afresh.
///
/// For XDP, returns why the program runs in the mode it does (the mode itself is the kernel's
/// to report: [`super::interfaces::xdp_mode`]).
pub fn attach_one(
    ebpf: &mut Ebpf,
    pins: &PinDir,
    xdp_mode: XdpModeArg,
    target: &Target,
) -> anyhow::Result<Option<String>> {
    let Target {
        hook, name, layer, ..
    } = target;
    let path = pins.link_path(*hook, name);
    if let Ok(old) = PinnedLink::from_pin(&path) {
        if pinned_link_ifindex(&path)? == Some(target.index) {
            adopt(ebpf, target, FdLink::from(old), &path)?;
            tracing::info!(iface = %name, hook = hook.name(), "{} on {name}: adopted the pinned link", hook.title());
            return Ok((*hook == HookKind::Xdp)
                .then(|| "adopted: the pinned link keeps the mode it was attached in".to_owned()));
        }
        std::fs::remove_file(&path).with_context(|| format!("cannot unpin {}", path.display()))?;
        tracing::info!(
            iface = %name,
            hook = hook.name(),
            "the link pinned for {name} belonged to a device that is gone; attaching afresh"
        );
    }
    let why = match hook {
        HookKind::Xdp => {
            let (first, fallback) = xdp_modes(xdp_mode, *layer);
            let plain = program_for(*hook, *layer);
            let tried = loader::loaded_xdp(ebpf, plain)?.attach(name, first.into());
            let (attached, id, why) = match (tried, fallback) {
                (Ok(id), _) => (plain, id, mode_reason(xdp_mode, *layer)),
                (Err(err), Some(fallback)) => {
                    let id = loader::loaded_xdp(ebpf, plain)?
                        .attach(name, fallback.into())
                        .with_context(|| format!("cannot attach XDP to {name}"))?;
                    let why = format!(
                        "the driver refused {} mode ({err}), so {} mode (on a link whose MTU \
                         exceeds a page, --xdp-mode native tries the multi-buffer program)",
                        first.name(),
                        fallback.name()
                    );
                    (plain, id, why)
                }
                // Driver mode asked for and refused: a link whose MTU exceeds a page takes only
                // a program built for multi-buffer frames (kernel 5.18).
                (Err(err), None) if first == Mode::Driver && *layer == LinkLayer::Ethernet => {
                    let id = loader::loaded_xdp(ebpf, names::PROG_XDP_FRAGS)?
                        .attach(name, first.into())
                        .with_context(|| {
                            format!(
                                "cannot attach XDP to {name} in driver mode ({err}), nor the \
                                 multi-buffer program"
                            )
                        })?;
                    let why = format!(
                        "asked for (--xdp-mode native); the driver refused the plain program \
                         ({err}), so the multi-buffer one"
                    );
                    (names::PROG_XDP_FRAGS, id, why)
                }
                (Err(err), None) => {
                    return Err(err).with_context(|| format!("cannot attach XDP to {name}"))
                }
            };
            let link = loader::loaded_xdp(ebpf, attached)?.take_link(id)?;
            pin_link(link, &path, "XDP (kernel < 5.9?)")?;
            Some(why)
        }
        HookKind::Tc | HookKind::TcIngress => {
            let program = loader::loaded_tc(ebpf, program_for(*hook, *layer))?;
            let direction = if *hook == HookKind::Tc {
                TcAttachType::Egress
            } else {
                TcAttachType::Ingress
            };
            // aya picks TCX on kernels ≥ 6.6 (a pinnable bpf_link) and clsact before that.
            let id = program
                .attach(name, direction)
                .with_context(|| format!("cannot attach {} to {name}", hook.title()))?;
            pin_link(program.take_link(id)?, &path, "TC (kernel < 6.6?)")?;
            None
        }
    };
    tracing::info!(
        iface = %name,
        hook = hook.name(),
        ifindex = target.index,
        layer = ?layer,
        "{} attached to {name}{}",
        hook.title(),
        layer_note(*layer)
    );
    Ok(why)
}

/// Swaps this build's program into a pinned link. The link is not kept open here: its pin alone
/// holds it, so unpinning it later detaches it.
fn adopt(ebpf: &mut Ebpf, target: &Target, old: FdLink, path: &Path) -> anyhow::Result<()> {
    let context = || format!("cannot update {} on {}", target.hook.title(), target.name);
    let program_name = program_for(target.hook, target.layer);
    if target.hook == HookKind::Xdp {
        adopt_xdp(ebpf, program_name, old)
            .or_else(|err| {
                if target.layer != LinkLayer::Ethernet {
                    return Err(err);
                }
                // A link attached with the multi-buffer program (driver mode on a jumbo link)
                // takes only that program again. The failed swap closed our descriptor; the pin
                // still holds the link.
                let pinned = PinnedLink::from_pin(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                adopt_xdp(ebpf, names::PROG_XDP_FRAGS, FdLink::from(pinned))
                    .with_context(|| format!("{err:#}; nor the multi-buffer program"))
            })
            .with_context(context)?;
    } else {
        let program = loader::loaded_tc(ebpf, program_name)?;
        let id = program
            .attach_to_link(SchedClassifierLink::try_from(old)?)
            .with_context(context)?;
        drop(program.take_link(id)?);
    }
    Ok(())
}

/// Swaps the XDP program `program_name` into a pinned link.
fn adopt_xdp(ebpf: &mut Ebpf, program_name: &'static str, old: FdLink) -> anyhow::Result<()> {
    let program = loader::loaded_xdp(ebpf, program_name)?;
    let id = program.attach_to_link(XdpLink::try_from(old)?)?;
    drop(program.take_link(id)?);
    Ok(())
}

/// Unpins an attachment: the kernel detaches the link (or frees it, if its device is gone).
pub fn release(pins: &PinDir, (hook, name): &AttachmentKey) -> anyhow::Result<()> {
    let path = pins.link_path(*hook, name);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(err).with_context(|| format!("cannot unpin {}", path.display())),
    }
}

/// Removes pinned links nobody asked for: an interface dropped from the command line, or one
/// that vanished while no daemon ran.
pub fn remove_leftover_pins(
    pins: &PinDir,
    held: &BTreeMap<AttachmentKey, u32>,
) -> anyhow::Result<()> {
    for (hook, iface, path) in pins.pinned_links() {
        if !held.contains_key(&(hook, iface.clone())) {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot unpin {}", path.display()))?;
            tracing::info!("detached the leftover filter ({}) on {iface}", hook.name());
        }
    }
    Ok(())
}

/// The interface a pinned XDP or TCX link is attached to; `None` when its device is gone (the
/// kernel then reports index 0). Read from the link's fdinfo, which aya does not expose.
fn pinned_link_ifindex(path: &Path) -> anyhow::Result<Option<u32>> {
    let link = open_pinned(path).with_context(|| format!("cannot open {}", path.display()))?;
    let fdinfo = format!("/proc/self/fdinfo/{}", link.as_raw_fd());
    let text = std::fs::read_to_string(&fdinfo).with_context(|| format!("cannot read {fdinfo}"))?;
    let index = text
        .lines()
        .find_map(|line| line.strip_prefix("ifindex:"))
        .and_then(|value| value.trim().parse::<u32>().ok());
    Ok(index.filter(|&index| index != 0))
}

/// `BPF_OBJ_GET`: a new descriptor for the object pinned at `path`.
fn open_pinned(path: &Path) -> std::io::Result<OwnedFd> {
    /// The `obj_get` member of `union bpf_attr`; the kernel reads only the size passed.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let path = CString::new(path.as_os_str().as_bytes())?;
    let attr = ObjGet {
        pathname: path.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
    };
    // Safety: `attr` is a valid obj_get attribute whose path outlives the call; the kernel
    // writes nothing into it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            std::ptr::from_ref(&attr),
            size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let fd = i32::try_from(fd).map_err(|_| std::io::Error::other("descriptor out of range"))?;
    // Safety: the kernel just returned this descriptor; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The program for a hook on a device with this link layer.
fn program_for(hook: HookKind, layer: LinkLayer) -> &'static str {
    match (hook, layer) {
        (HookKind::Xdp, LinkLayer::Ethernet) => names::PROG_XDP,
        (HookKind::Xdp, LinkLayer::Ip) => names::PROG_XDP_L3,
        (HookKind::Tc, LinkLayer::Ethernet) => names::PROG_TC,
        (HookKind::TcIngress, LinkLayer::Ethernet) => names::PROG_TC_INGRESS,
        // A layer-3 device facing a container is rare (TUN-based runtimes); its sources go
        // unchecked.
        (HookKind::Tc | HookKind::TcIngress, LinkLayer::Ip) => names::PROG_TC_L3,
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

/// Why XDP runs in the mode [`xdp_modes`] tries first, when the driver takes it.
fn mode_reason(asked: XdpModeArg, layer: LinkLayer) -> String {
    match (asked, layer) {
        (_, LinkLayer::Ip) => "a layer-3 device: only generic mode sees every packet",
        (XdpModeArg::Generic, _) => "asked for (--xdp-mode generic)",
        (XdpModeArg::Native, _) => "asked for (--xdp-mode native)",
        (XdpModeArg::Auto, _) => "the driver runs XDP natively",
    }
    .to_owned()
}

fn layer_note(layer: LinkLayer) -> &'static str {
    match layer {
        LinkLayer::Ethernet => "",
        LinkLayer::Ip => " (a layer-3 device: parsed from the IP header)",
    }
}

/// Pins a freshly attached link so it outlives the daemon. Only bpf_links can be pinned; a
/// netlink attachment (old kernels) is refused, since it could not be adopted or detached later.
fn pin_link<L>(link: L, path: &Path, what: &str) -> anyhow::Result<()>
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
