//! Policy updates: loading large tables, an incremental refresh of 1k addresses, and the
//! daemon's resident memory with 100k prefixes.

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use filter_tests::{harness::Filter, lab::sh};
use filter_user::table::{AllowTable, Grant, PortSpec};
use ipnet::IpNet;

use crate::prefixes::{self, Rng};

/// Loading one table into empty maps.
pub(crate) struct Load {
    pub prefixes_per_family: usize,
    pub compile: Duration,
    pub write: Duration,
}

/// Compiles and writes `v4` + `v6` prefixes into a fresh filter; returns the filter and timings.
pub(crate) fn load(
    grants: &[Grant],
    prefixes_per_family: usize,
) -> anyhow::Result<(Filter, AllowTable, Load)> {
    let mut filter = Filter::empty()?;
    let started = Instant::now();
    let table = AllowTable::build(grants)?;
    let compile = started.elapsed();
    let started = Instant::now();
    filter.maps.apply(&table)?;
    let write = started.elapsed();
    Ok((
        filter,
        table,
        Load {
            prefixes_per_family,
            compile,
            write,
        },
    ))
}

/// A refresh in which 1000 resolved addresses change, on top of a loaded table.
pub(crate) struct Refresh {
    pub base_prefixes: usize,
    pub changed: usize,
    pub compile: Duration,
    pub write: Duration,
    pub written: usize,
    pub deleted: usize,
}

fn host_grants(count: usize, rng: &mut Rng) -> Vec<Grant> {
    (0..count)
        .map(|_| Grant {
            prefix: IpNet::from(IpAddr::V4(Ipv4Addr::from(
                0x6440_0000 | (rng.next() as u32 & 0x003f_ffff),
            ))),
            service: 1,
            ports: vec![PortSpec::Tcp(443..=443)],
            groups: filter_common::groups::ALL_GROUPS,
        })
        .collect()
}

/// Loads `base` plus 1k host routes, then swaps those for 1k others the way the daemon does
/// (in place: `update_hosts` + `apply_changes`), timing the swap.
pub(crate) fn refresh(base: &[Grant], changed: usize) -> anyhow::Result<Refresh> {
    let mut rng = Rng::new(0xfee1);
    let old_hosts = host_grants(changed, &mut rng);
    let new_hosts = host_grants(changed, &mut rng);
    let before: Vec<Grant> = base
        .iter()
        .cloned()
        .chain(old_hosts.iter().cloned())
        .collect();
    let mut filter = Filter::empty()?;
    let mut table = AllowTable::build(&before)?;
    filter.maps.apply(&table)?;
    // Real refreshes come seconds apart, long after the previous update's grace period; the
    // load just before this one would otherwise be waited for inside the timed write.
    filter.maps.settle();
    let started = Instant::now();
    let touched = table.update_hosts(&new_hosts, &old_hosts)?;
    let compile = started.elapsed();
    let started = Instant::now();
    let stats = filter.maps.apply_changes(&table, &touched)?;
    let write = started.elapsed();
    Ok(Refresh {
        base_prefixes: base.len(),
        changed,
        compile,
        write,
        written: stats.prefixes_written,
        deleted: stats.prefixes_deleted,
    })
}

/// Runs the daemon with a rules file of `count` IPv4 prefixes on a veth in a namespace of its
/// own and reads its resident memory once it enforces (VmRSS, and the peak VmHWM).
pub(crate) fn daemon_memory(binary: &Path, count: usize) -> anyhow::Result<(u64, u64)> {
    let id = format!("{:x}", std::process::id());
    let ns = format!("ef-bench-mem-{id}");
    let dir = std::env::temp_dir().join(format!("ef-bench-rules-{id}"));
    std::fs::create_dir_all(&dir)?;
    let mut rng = Rng::new(0xbe11);
    let cidrs: Vec<String> = prefixes::v4_prefixes(count, &mut rng)
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect();
    std::fs::write(
        dir.join("bench.toml"),
        format!(
            "[[service]]\nname = \"bench\"\ncidrs = [{}]\ntcp = [443]\n",
            cidrs.join(", ")
        ),
    )?;
    sh(&["ip", "netns", "add", &ns])?;
    let guard = Cleanup {
        ns: ns.clone(),
        dir: dir.clone(),
    };
    sh(&[
        "ip", "-n", &ns, "link", "add", "bm0", "type", "veth", "peer", "name", "bm1",
    ])?;
    sh(&["ip", "-n", &ns, "link", "set", "bm0", "up"])?;
    let pin = format!("/sys/fs/bpf/ef-bench-mem-{id}");
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{ns}"))
        .arg(binary)
        .args(["run", "--rules"])
        .arg(&dir)
        .args(["--xdp", "bm0", "--no-self-allow", "--pin-path", &pin])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start egress-filter")?;
    let ready = crate::stderr_line(&mut child, "enforcing")?.recv_timeout(Duration::from_mins(2));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap_or_default();
    let _term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _exited = child.wait();
    drop(guard);
    if ready.is_err() {
        bail!("the daemon did not start with {count} prefixes");
    }
    let kib = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((kib("VmRSS:"), kib("VmHWM:")))
}

/// A bench's namespace and scratch directory, removed when dropped.
pub(crate) struct Cleanup {
    pub ns: String,
    pub dir: std::path::PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _deleted = Command::new("ip").args(["netns", "del", &self.ns]).status();
        let _removed = std::fs::remove_dir_all(&self.dir);
    }
}
