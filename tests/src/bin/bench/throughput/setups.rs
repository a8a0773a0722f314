//! The setups compared: no filter, egress-filter on XDP and on TC (the real daemon), and the same
//! policy in nftables; each put in place for its run and removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::Context as _;
use filter_tests::{daemon::Daemon, lab::sh};

use super::{
    policy::{PolicyFiles, NFT_TABLE},
    topology::Topology,
};

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Setup {
    NoFilter,
    Xdp,
    Tc,
    NftForward,
    NftIngress,
}

impl Setup {
    pub(super) const ALL: [Self; 5] = [
        Self::NoFilter,
        Self::Xdp,
        Self::Tc,
        Self::NftForward,
        Self::NftIngress,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Self::NoFilter => "no filter",
            Self::Xdp => "egress-filter XDP",
            Self::Tc => "egress-filter TC",
            Self::NftForward => "nftables forward",
            Self::NftIngress => "nftables netdev ingress",
        }
    }

    /// Puts the filter of this setup in place; dropping the result removes it.
    pub(super) fn arrange(
        self,
        topo: &Topology,
        binary: &Path,
        files: &PolicyFiles,
    ) -> anyhow::Result<Option<Filter>> {
        let pin_path = format!("/sys/fs/bpf/ef-bench-{}-{}", topo.id, self as u8);
        let daemon = |hook, dev| {
            FilterDaemon::start(binary, &topo.rtr.name, &files.rules, hook, dev, &pin_path)
        };
        Ok(match self {
            Self::NoFilter => None,
            Self::Xdp => Some(Filter::Daemon(daemon("--xdp", &topo.rx_dev)?)),
            // TC egress sees what leaves an interface: the router's way out.
            Self::Tc => Some(Filter::Daemon(daemon("--tc", &topo.out_dev)?)),
            Self::NftForward => Some(Filter::Nft {
                _table: NftTable::load(&topo.rtr.name, &files.nft_forward, "inet")?,
            }),
            Self::NftIngress => Some(Filter::Nft {
                _table: NftTable::load(&topo.rtr.name, &files.nft_ingress, "netdev")?,
            }),
        })
    }
}

/// The filter under test; removed on drop.
pub(super) enum Filter {
    Daemon(FilterDaemon),
    /// Held for its drop, which deletes the table.
    Nft {
        _table: NftTable,
    },
}

impl Filter {
    /// Packets the filter itself counted as dropped so far, where it counts them.
    pub(super) fn drops(&self) -> anyhow::Result<Option<u64>> {
        match self {
            Self::Daemon(d) => d.drops().map(Some),
            Self::Nft { .. } => Ok(None),
        }
    }
}

/// egress-filter running as the real daemon in the router namespace (the lab's daemon wrapper:
/// ready once it notifies READY=1; on drop stopped with SIGTERM, then SIGKILL and `detach` if it
/// will not go).
pub(super) struct FilterDaemon {
    daemon: Daemon,
    binary: PathBuf,
}

impl FilterDaemon {
    fn start(
        binary: &Path,
        netns: &str,
        rules: &Path,
        hook: &str,
        dev: &str,
        pin_path: &str,
    ) -> anyhow::Result<Self> {
        let rules = rules.to_str().context("UTF-8 rules path")?;
        let args = [
            "--rules",
            rules,
            hook,
            dev,
            "--event-rate",
            "0",
            "--event-burst",
            "0",
        ];
        Ok(Self {
            daemon: Daemon::start_binary(binary, netns, pin_path, &args)?,
            binary: binary.to_owned(),
        })
    }

    /// Packets its programs counted under a dropping reason, so far.
    fn drops(&self) -> anyhow::Result<u64> {
        let out = sh(&[
            &self.binary.to_string_lossy(),
            "stats",
            "--json",
            "--pin-path",
            &self.daemon.pin_path,
        ])?;
        let stats: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("stats --json: not JSON")?;
        let reasons = stats["reasons"]
            .as_array()
            .context("stats --json: no reasons")?;
        Ok(reasons
            .iter()
            .filter(|r| r["verdict"] == "drop")
            .filter_map(|r| r["packets"].as_u64())
            .sum())
    }
}

/// An nftables table loaded in a namespace, deleted on drop.
pub(super) struct NftTable {
    netns: String,
    family: &'static str,
}

impl NftTable {
    fn load(netns: &str, file: &Path, family: &'static str) -> anyhow::Result<Self> {
        sh(&[
            "ip",
            "netns",
            "exec",
            netns,
            "nft",
            "-f",
            &file.to_string_lossy(),
        ])?;
        Ok(Self {
            netns: netns.to_owned(),
            family,
        })
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _deleted = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "nft",
                "delete",
                "table",
                self.family,
                NFT_TABLE,
            ])
            .stderr(Stdio::null())
            .status();
    }
}
