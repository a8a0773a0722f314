//! The peer row: xdp-filter (xdp-tools, `cargo xtask setup` installs it) timed through
//! `BPF_PROG_TEST_RUN` on the same frames as egress-filter, in the same run.
//!
//! xdp-filter is loaded as its users load it, on a veth interface in skb mode, in deny mode
//! (what no rule matches is dropped) with the frames' destination addresses and TCP port 443 as
//! rules; the program it attached is pinned and test-run like ours. Its rules are exact
//! addresses and ports, each looked up on its own (an address rule or a port rule lets a packet
//! through): it cannot say "this port to this prefix", so it does less than egress-filter.

use std::{net::IpAddr, path::PathBuf, process::Command};

use anyhow::Context as _;
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::xdp::XdpAttachType;

const IFNAME: &str = "efbench-xf0";
const PEER_IFNAME: &str = "efbench-xf1";

/// xdp-filter, loaded and pinned; unloaded on drop.
pub(crate) struct XdpFilter {
    program: Xdp,
    pin: PathBuf,
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl XdpFilter {
    /// Loads xdp-filter with `addresses` and TCP 443 allowed; `Ok(None)` when it is not
    /// installed.
    pub(crate) fn load(addresses: &[IpAddr]) -> anyhow::Result<Option<Self>> {
        if Command::new("xdp-filter").arg("help").output().is_err() {
            return Ok(None);
        }
        let _ = run("ip", &["link", "del", IFNAME]);
        run(
            "ip",
            &[
                "link",
                "add",
                IFNAME,
                "type",
                "veth",
                "peer",
                "name",
                PEER_IFNAME,
            ],
        )?;
        let pin = PathBuf::from(format!("/sys/fs/bpf/{IFNAME}-prog"));
        let loaded = (|| {
            run("ip", &["link", "set", IFNAME, "up"])?;
            run(
                "xdp-filter",
                &["load", IFNAME, "--mode", "skb", "--policy", "deny"],
            )?;
            for address in addresses {
                run("xdp-filter", &["ip", &address.to_string()])?;
            }
            run("xdp-filter", &["port", "443"])?;
            let link = run("ip", &["-d", "link", "show", IFNAME])?;
            let id = link
                .split("prog/xdp id ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .context("no XDP program on the interface after xdp-filter load")?
                .to_owned();
            let _ = std::fs::remove_file(&pin);
            run(
                "bpftool",
                &["prog", "pin", "id", &id, pin.to_str().context("pin path")?],
            )?;
            let program = Xdp::from_pin(&pin, XdpAttachType::Interface)?;
            Ok::<_, anyhow::Error>(program)
        })();
        match loaded {
            Ok(program) => Ok(Some(Self { program, pin })),
            Err(err) => {
                cleanup(&pin);
                Err(err)
            }
        }
    }

    /// Mean ns per run over `frames`, `repeat` runs each.
    /// The mean ns of one run of `frame`, over `repeat` runs.
    pub(crate) fn run(&mut self, frame: &[u8], repeat: u32) -> anyhow::Result<u128> {
        let result = self.program.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })?;
        Ok(result.duration.as_nanos())
    }
}

fn cleanup(pin: &std::path::Path) {
    let _ = run("xdp-filter", &["unload", IFNAME]);
    let _ = std::fs::remove_file(pin);
    let _ = run("ip", &["link", "del", IFNAME]);
    // libxdp leaves its (now empty) pin directory behind; remove it only when empty, so a
    // directory another libxdp user still has programs in stays.
    let _ = std::fs::remove_dir("/sys/fs/bpf/xdp");
}

impl Drop for XdpFilter {
    fn drop(&mut self) {
        cleanup(&self.pin);
    }
}
