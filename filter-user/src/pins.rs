//! The pinned state of a filter: one documented home per pin path.
//!
//! ```text
//! <pin-path>/                       default /sys/fs/bpf/egress-filter
//!   maps/<MAP>                      every map of filter_common::maps::ALL_MAPS
//!   links/xdp-<iface>, tc-<iface>,  one bpf_link per attachment
//!         tci-<iface>
//! /run/egress-filter/<pin-path as a file name>.lock   held (flock) while a daemon runs
//! /run/egress-filter/<pin-path as a file name>.json   service names and resolved addresses
//! /run/egress-filter/<pin-path as a file name>.learned.json, .learned.jsonl
//!                                    what DNS answers taught: snapshot and journal
//!                                    (`crate::learned_store`)
//! ```
//!
//! Pinned links keep the programs attached and pinned maps keep the policy when the daemon dies,
//! so a crash never opens the gate; the next `run` adopts them. bpffs holds only BPF objects, so
//! the lock and the state file live under /run.

use std::{
    fs::File,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context as _};
use filter_common::maps::ALL_MAPS;
use nix::fcntl::{Flock, FlockArg};

/// Default pin path: one directory per filter under the bpffs mount.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/egress-filter";
const RUN_DIR: &str = "/run/egress-filter";

/// Which hook an attachment uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum HookKind {
    Xdp,
    /// TC in the egress direction: what a host sends out of its uplink.
    Tc,
    /// TC in the ingress direction: what a pod sends into the host side of its veth.
    TcIngress,
}

impl HookKind {
    pub const ALL: [Self; 3] = [Self::Xdp, Self::Tc, Self::TcIngress];

    const fn prefix(self) -> &'static str {
        match self {
            Self::Xdp => "xdp-",
            Self::Tc => "tc-",
            Self::TcIngress => "tci-",
        }
    }

    /// The option of `run` that asks for this hook.
    #[must_use]
    pub const fn option(self) -> &'static str {
        match self {
            Self::Xdp => "--xdp",
            Self::Tc => "--tc",
            Self::TcIngress => "--tc-ingress",
        }
    }

    /// How log sentences name it.
    #[must_use]
    pub const fn title(self) -> &'static str {
        match self {
            Self::Xdp => "XDP",
            Self::Tc => "TC egress",
            Self::TcIngress => "TC ingress",
        }
    }

    /// How log fields, `stats` and the metrics name it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Xdp => "xdp",
            Self::Tc => "tc",
            Self::TcIngress => "tc-ingress",
        }
    }
}

/// One pin path and the files that belong to it.
#[derive(Clone, Debug)]
pub struct PinDir {
    root: PathBuf,
}

impl PinDir {
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    #[must_use]
    pub fn root(&self) -> &Path {
        &self.root
    }

    #[must_use]
    pub fn map_path(&self, map: &str) -> PathBuf {
        self.root.join("maps").join(map)
    }

    #[must_use]
    pub fn link_path(&self, hook: HookKind, iface: &str) -> PathBuf {
        self.root
            .join("links")
            .join(format!("{}{iface}", hook.prefix()))
    }

    fn run_file(&self, extension: &str) -> PathBuf {
        let flat: String = self
            .root
            .to_string_lossy()
            .trim_matches('/')
            .chars()
            .map(|c| if c == '/' { '_' } else { c })
            .collect();
        Path::new(RUN_DIR).join(format!("{flat}.{extension}"))
    }

    /// Where the daemon keeps service names and resolved addresses for `stats` and restarts.
    #[must_use]
    pub fn state_file(&self) -> PathBuf {
        self.run_file("json")
    }

    /// The file a running daemon holds locked, so that two never share a pin path.
    #[must_use]
    pub fn lock_file(&self) -> PathBuf {
        self.run_file("lock")
    }

    /// Whether maps are pinned here (a filter is running or was left behind).
    #[must_use]
    pub fn has_pinned_maps(&self) -> bool {
        ALL_MAPS.iter().any(|m| self.map_path(m).exists())
    }

    /// Takes the pin path for this process; fails if another daemon holds it.
    pub fn lock(&self) -> anyhow::Result<Flock<File>> {
        std::fs::create_dir_all(RUN_DIR).with_context(|| format!("cannot create {RUN_DIR}"))?;
        let path = self.lock_file();
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, errno)| {
            if errno == nix::errno::Errno::EWOULDBLOCK {
                anyhow::anyhow!(
                    "another egress-filter is running with pin path {}; stop it first, or choose another --pin-path",
                    self.root.display()
                )
            } else {
                anyhow::anyhow!("cannot lock {}: {errno}", path.display())
            }
        })
    }

    /// Makes sure the pin path is on bpffs, mounting bpffs at /sys/fs/bpf when that is where it
    /// belongs and it is missing (these machines boot without it), and creates the directories.
    pub fn prepare(&self) -> anyhow::Result<()> {
        let bpffs = Path::new("/sys/fs/bpf");
        if self.root.starts_with(bpffs) && !is_bpffs(bpffs) {
            nix::mount::mount(
                Some("bpf"),
                bpffs,
                Some("bpf"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            )
            .with_context(|| format!("cannot mount bpffs at {}", bpffs.display()))?;
            tracing::info!("mounted bpffs at {}", bpffs.display());
        }
        for dir in [self.root.join("maps"), self.root.join("links")] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        if !is_bpffs(&self.root) {
            bail!(
                "{} is not on a BPF filesystem (mount -t bpf bpf DIR)",
                self.root.display()
            );
        }
        Ok(())
    }

    /// Every pinned link: (hook, interface, path).
    #[must_use]
    pub fn pinned_links(&self) -> Vec<(HookKind, String, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(self.root.join("links")) else {
            return Vec::new();
        };
        let mut links: Vec<_> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                HookKind::ALL.into_iter().find_map(|hook| {
                    Some((hook, name.strip_prefix(hook.prefix())?.to_owned(), e.path()))
                })
            })
            .collect();
        links.sort_by(|a, b| a.2.cmp(&b.2));
        links
    }

    /// Removes every pin (links first, so nothing runs without its maps) and the directories.
    /// Links whose last holder was the pin detach at once.
    pub fn remove_all(&self) -> anyhow::Result<()> {
        for (_, _, path) in self.pinned_links() {
            std::fs::remove_file(&path)
                .with_context(|| format!("cannot unpin {}", path.display()))?;
        }
        // Every map pinned here, this build's and any an earlier build pinned that this one
        // no longer has: the directory is ours alone.
        if let Ok(entries) = std::fs::read_dir(self.root.join("maps")) {
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot unpin {}", path.display()))?;
            }
        }
        for dir in [
            self.root.join("links"),
            self.root.join("maps"),
            self.root.clone(),
        ] {
            match std::fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", dir.display()))
                }
            }
        }
        crate::learned_store::remove(&self.state_file())?;
        // The state and lock files go last; the caller still holds the lock while this runs.
        for file in [self.state_file(), self.lock_file()] {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot remove {}", file.display()))
                }
            }
        }
        Ok(())
    }
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_everything_takes_maps_an_earlier_build_pinned_too() {
        let root = std::env::temp_dir().join(format!("ef-pins-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("maps")).unwrap();
        std::fs::create_dir_all(root.join("links")).unwrap();
        // One of this build's maps, and one this build no longer has.
        std::fs::write(root.join("maps").join(ALL_MAPS[0]), b"").unwrap();
        std::fs::write(root.join("maps").join("GROUP_STATE"), b"").unwrap();
        let pins = PinDir::new(&root);
        pins.remove_all().unwrap();
        assert!(!root.exists(), "nothing left at {}", root.display());
    }
}
