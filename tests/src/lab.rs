//! Network-namespace labs for end-to-end tests (and the namespaces of the throughput bench):
//! uniquely named namespaces and veths, only documentation and private ranges, everything
//! removed on drop (also when a test fails).
//!
//! ```text
//!  client ──(lan)── gw ──(wan)── inet
//!  10.77.0.2        10.77.0.1     192.0.2.2; hosts 198.51.100.10, .20, 203.0.113.53 (DNS)
//!  fd00:77::2       192.0.2.1     2001:db8:1::10, ::20
//! ```

use std::{
    fmt::Write as _,
    fs::File,
    os::fd::AsRawFd as _,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short id, unique on this machine while the process lives (pid and a counter), for naming
/// namespaces and interfaces (which allow 15 bytes).
#[must_use]
pub fn unique_id() -> String {
    format!(
        "{:x}{}",
        std::process::id() & 0xfffff,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub const CLIENT_V4: &str = "10.77.0.2";
pub const CLIENT_V6: &str = "fd00:77::2";
pub const WEB_A_V4: &str = "198.51.100.10";
pub const WEB_B_V4: &str = "198.51.100.20";
pub const WEB_A_V6: &str = "2001:db8:1::10";
pub const WEB_B_V6: &str = "2001:db8:1::20";
pub const DNS_V4: &str = "203.0.113.53";
/// Rules that allow web A (both families) on tcp/443 and nothing else.
pub const WEB_A_443: &str = r#"
[[service]]
name = "lab-web"
source = "test"
cidrs = ["198.51.100.10/32", "2001:db8:1::10/128"]
tcp = [443]
"#;

/// Runs a command and fails with its stderr unless it succeeds.
pub fn sh(args: &[&str]) -> anyhow::Result<Output> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("cannot run {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "{} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(out)
}

/// Moves the calling thread (only it) into the network namespace `/run/netns/NAME`.
pub fn enter_netns(name: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{name}");
    let ns = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    // Safety: `ns` is an open namespace file for the duration of the call; setns changes only
    // the network namespace of the calling thread, a thread of ours that never goes back.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    ensure!(
        rc == 0,
        "setns into {path}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with loopback up.
    pub fn create(name: String) -> anyhow::Result<Self> {
        sh(&["ip", "netns", "add", &name])?;
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, args: &[&str]) -> anyhow::Result<Output> {
        let mut all = vec!["ip", "netns", "exec", &self.name];
        all.extend_from_slice(args);
        sh(&all)
    }

    /// Points the namespace's resolver at `server`: `ip netns exec` bind-mounts
    /// /etc/netns/NAME/resolv.conf over /etc/resolv.conf. Removed with the namespace.
    pub fn use_resolver(&self, server: &str) -> anyhow::Result<()> {
        let dir = self.etc_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!("nameserver {server}\noptions timeout:1 attempts:1\n"),
        )?;
        Ok(())
    }

    fn etc_dir(&self) -> std::path::PathBuf {
        std::path::Path::new("/etc/netns").join(&self.name)
    }

    /// Starts a long-running command inside the namespace.
    pub fn spawn(&self, args: &[&str]) -> anyhow::Result<Child> {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {} in {}", args.join(" "), self.name))
    }

    /// Whether a TCP connection to `addr`:`port` completes within `timeout_secs`.
    #[must_use]
    pub fn connects(&self, addr: &str, port: u16, timeout_secs: u32) -> bool {
        self.nc_connects(&["-n"], addr, port, timeout_secs)
    }

    /// Whether a TCP connection from the local address `source` to `addr`:`port` completes
    /// within `timeout_secs`.
    #[must_use]
    pub fn connects_from(&self, source: &str, addr: &str, port: u16, timeout_secs: u32) -> bool {
        self.nc_connects(&["-n", "-s", source], addr, port, timeout_secs)
    }

    /// Whether a TCP connection to `name`:`port` completes within `timeout_secs`, the name
    /// resolved through the namespace's resolver (see [`Netns::use_resolver`]) within that time.
    #[must_use]
    pub fn connects_by_name(&self, name: &str, port: u16, timeout_secs: u32) -> bool {
        self.nc_connects(&[], name, port, timeout_secs)
    }

    fn nc_connects(&self, flags: &[&str], target: &str, port: u16, timeout_secs: u32) -> bool {
        Command::new("ip")
            .args(["netns", "exec", &self.name, "nc", "-z"])
            .args(flags)
            .args(["-w", &timeout_secs.to_string(), target, &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }
}

/// Gives `dev` in `ns` its addresses (no duplicate address detection) and brings it up.
pub fn address(ns: &Netns, dev: &str, addrs: &[&str]) -> anyhow::Result<()> {
    for addr in addrs {
        ns.exec(&["ip", "addr", "add", addr, "dev", dev, "nodad"])?;
    }
    ns.exec(&["ip", "link", "set", dev, "up"])?;
    Ok(())
}

/// The crafted-packet tool (`tests/tools/packets.py`), run with Debian's python3, which has
/// scapy (`cargo xtask setup` installs python3-scapy).
#[must_use]
pub fn packet_tool() -> String {
    concat!(env!("CARGO_MANIFEST_DIR"), "/tools/packets.py").to_owned()
}

impl Netns {
    /// Runs the crafted-packet tool inside the namespace (see its module docs for commands).
    pub fn craft(&self, args: &[&str]) -> anyhow::Result<Output> {
        let tool = packet_tool();
        let mut all = vec!["/usr/bin/python3", tool.as_str()];
        all.extend_from_slice(args);
        self.exec(&all)
    }

    /// Starts counting, at the earliest hook of this namespace, the packets each named nftables
    /// match selects (e.g. `ip saddr 10.77.0.2 tcp dport 8080`). The table goes with the
    /// namespace.
    pub fn count_arrivals(&self, counters: &[(&str, &str)]) -> anyhow::Result<()> {
        let (mut declarations, mut rules) = (String::new(), String::new());
        for (name, rule) in counters {
            writeln!(declarations, "  counter {name} {{}}")?;
            writeln!(rules, "    {rule} counter name {name}")?;
        }
        let ruleset = format!(
            "table inet arrivals {{\n{declarations}  chain prerouting {{\n    \
             type filter hook prerouting priority -400;\n{rules}  }}\n}}\n"
        );
        let file = std::env::temp_dir().join(format!("ef-nft-{}.nft", self.name));
        std::fs::write(&file, ruleset)?;
        let loaded = self.exec(&["nft", "-f", file.to_str().context("UTF-8 temp dir")?]);
        let _removed = std::fs::remove_file(&file);
        loaded.map(|_| ())
    }

    /// Packets a counter of [`Netns::count_arrivals`] has seen so far.
    pub fn arrivals(&self, name: &str) -> anyhow::Result<u64> {
        let out = self.exec(&["nft", "-j", "list", "counter", "inet", "arrivals", name])?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        json["nftables"]
            .as_array()
            .and_then(|items| items.iter().find_map(|i| i["counter"]["packets"].as_u64()))
            .with_context(|| format!("no counter {name} in {json}"))
    }

    /// Like [`Netns::arrivals`], after a moment for packets in flight.
    pub fn settled_arrivals(&self, name: &str) -> anyhow::Result<u64> {
        std::thread::sleep(Duration::from_millis(300));
        self.arrivals(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(self.etc_dir());
        let _deleted = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The three-namespace gateway lab, with TCP listeners on the internet side.
pub struct Lab {
    pub id: String,
    pub client: Netns,
    pub gw: Netns,
    pub inet: Netns,
    /// The gateway's LAN-facing interface (XDP goes here).
    pub gw_lan: String,
    /// The gateway's uplink (TC egress goes here).
    pub gw_wan: String,
    listeners: Vec<Child>,
}

impl Lab {
    /// Builds the lab and starts listeners on every internet host at `ports`.
    pub fn new(ports: &[u16]) -> anyhow::Result<Self> {
        let id = unique_id();
        let client = Netns::create(format!("ef-{id}-client"))?;
        let gw = Netns::create(format!("ef-{id}-gw"))?;
        let inet = Netns::create(format!("ef-{id}-inet"))?;
        let (client_dev, lan_dev, uplink_dev, inet_dev) = (
            format!("e{id}c"),
            format!("e{id}l"),
            format!("e{id}w"),
            format!("e{id}i"),
        );
        let mut lab = Self {
            id,
            client,
            gw,
            inet,
            gw_lan: lan_dev.clone(),
            gw_wan: uplink_dev.clone(),
            listeners: Vec::new(),
        };
        lab.add_lan_veth(&lab.client, &client_dev, &lab.gw_lan)?;
        sh(&[
            "ip",
            "link",
            "add",
            &uplink_dev,
            "netns",
            &lab.gw.name,
            "type",
            "veth",
            "peer",
            "name",
            &inet_dev,
            "netns",
            &lab.inet.name,
        ])?;
        lab.wire(&client_dev, &inet_dev)?;
        for host in [WEB_A_V4, WEB_B_V4, WEB_A_V6, WEB_B_V6] {
            for port in ports {
                let child = lab
                    .inet
                    .spawn(&["nc", "-lk", "-n", host, &port.to_string()])?;
                lab.listeners.push(child);
            }
        }
        lab.wait_reachable()?;
        Ok(lab)
    }

    /// Sets every link on the path (the client's, both of the gateway's, the internet host's) to
    /// `mtu`: jumbo frames need it end to end, or TCP settles on the smallest.
    pub fn set_mtu(&self, mtu: u32) -> anyhow::Result<()> {
        let id = &self.id;
        let mtu = mtu.to_string();
        for (ns, dev) in [
            (&self.client, format!("e{id}c")),
            (&self.gw, self.gw_lan.clone()),
            (&self.gw, self.gw_wan.clone()),
            (&self.inet, format!("e{id}i")),
        ] {
            ns.exec(&["ip", "link", "set", "dev", &dev, "mtu", &mtu])?;
        }
        Ok(())
    }

    /// Addresses, routes and forwarding.
    fn wire(&self, client_dev: &str, inet_dev: &str) -> anyhow::Result<()> {
        for (ns, dev, addrs) in [
            (
                &self.gw,
                &self.gw_wan.as_str(),
                &["192.0.2.1/24", "2001:db8:ffff::1/64"][..],
            ),
            (
                &self.inet,
                &inet_dev,
                &["192.0.2.2/24", "2001:db8:ffff::2/64"][..],
            ),
        ] {
            address(ns, dev, addrs)?;
        }
        self.wire_lan(client_dev)?;
        for addr in [
            "198.51.100.10/32",
            "198.51.100.20/32",
            "203.0.113.53/32",
            "2001:db8:1::10/128",
            "2001:db8:1::20/128",
        ] {
            self.inet
                .exec(&["ip", "addr", "add", addr, "dev", "lo", "nodad"])?;
        }
        self.gw
            .exec(&["ip", "route", "add", "default", "via", "192.0.2.2"])?;
        self.gw.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "default",
            "via",
            "2001:db8:ffff::2",
        ])?;
        self.inet
            .exec(&["ip", "route", "add", "10.77.0.0/24", "via", "192.0.2.1"])?;
        self.inet.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            "fd00:77::/64",
            "via",
            "2001:db8:ffff::1",
        ])?;
        self.gw
            .exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        self.gw
            .exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"])?;
        Ok(())
    }

    /// The LAN's addresses and the client's default routes.
    fn wire_lan(&self, client_dev: &str) -> anyhow::Result<()> {
        self.wire_lan_of(&self.client, client_dev, &self.gw_lan, 77)
    }

    /// LAN `net`'s addresses (10.`net`.0.0/24, fd00:`net`::/64: .1 the gateway's, .2 the
    /// client's) and the client's default routes.
    fn wire_lan_of(
        &self,
        client: &Netns,
        client_dev: &str,
        gw_dev: &str,
        net: u8,
    ) -> anyhow::Result<()> {
        let (client_v4, client_v6) = (format!("10.{net}.0.2/24"), format!("fd00:{net}::2/64"));
        let (gw_v4, gw_v6) = (format!("10.{net}.0.1"), format!("fd00:{net}::1"));
        address(client, client_dev, &[&client_v4, &client_v6])?;
        address(
            &self.gw,
            gw_dev,
            &[&format!("{gw_v4}/24"), &format!("{gw_v6}/64")],
        )?;
        client.exec(&["ip", "route", "add", "default", "via", &gw_v4])?;
        client.exec(&["ip", "-6", "route", "add", "default", "via", &gw_v6])?;
        Ok(())
    }

    /// Adds a second LAN to the gateway (`lan` 2, 3, …): a client namespace of its own on the
    /// gateway's interface `e<id>l<lan>` (so `e<id>l*` matches every LAN), with the subnets
    /// 10.(76+`lan`).0.0/24 and fd00:(76+`lan`)::/64, routed from the internet side.
    pub fn add_lan(&self, lan: u8) -> anyhow::Result<Lan> {
        anyhow::ensure!((2..=9).contains(&lan), "LAN {lan}: 2 to 9");
        let net = 76 + lan;
        let client = Netns::create(format!("ef-{}-client{lan}", self.id))?;
        let (client_dev, gw_dev) = (format!("e{}c{lan}", self.id), format!("e{}l{lan}", self.id));
        self.add_lan_veth(&client, &client_dev, &gw_dev)?;
        self.wire_lan_of(&client, &client_dev, &gw_dev, net)?;
        self.inet.exec(&[
            "ip",
            "route",
            "add",
            &format!("10.{net}.0.0/24"),
            "via",
            "192.0.2.1",
        ])?;
        self.inet.exec(&[
            "ip",
            "-6",
            "route",
            "add",
            &format!("fd00:{net}::/64"),
            "via",
            "2001:db8:ffff::1",
        ])?;
        Ok(Lan {
            client,
            client_dev,
            gw_dev,
            v4: format!("10.{net}.0.2"),
            v6: format!("fd00:{net}::2"),
        })
    }

    /// Deletes the LAN (both ends of its veth), as a networkd restart or a replugged NIC does.
    pub fn delete_lan(&self) -> anyhow::Result<()> {
        self.gw.exec(&["ip", "link", "del", &self.gw_lan])?;
        Ok(())
    }

    /// Creates the LAN again under the same names, with its addresses and routes.
    pub fn create_lan_again(&self) -> anyhow::Result<()> {
        let client_dev = self.client_dev();
        self.add_lan_veth(&self.client, &client_dev, &self.gw_lan)?;
        self.wire_lan(&client_dev)
    }

    /// A LAN's veth pair: `client_dev` in `client`, `gw_dev` in the gateway.
    fn add_lan_veth(&self, client: &Netns, client_dev: &str, gw_dev: &str) -> anyhow::Result<()> {
        sh(&[
            "ip",
            "link",
            "add",
            client_dev,
            "netns",
            &client.name,
            "type",
            "veth",
            "peer",
            "name",
            gw_dev,
            "netns",
            &self.gw.name,
        ])?;
        Ok(())
    }

    /// Waits (bounded) until the client reaches the internet side with no filter in place.
    fn wait_reachable(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .client
                .exec(&["ping", "-c", "1", "-W", "1", WEB_A_V4])
                .is_ok()
                && self
                    .client
                    .exec(&["ping", "-6", "-c", "1", "-W", "1", WEB_A_V6])
                    .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("lab {} never became reachable", self.id)
    }

    /// The client's end of the LAN.
    #[must_use]
    pub fn client_dev(&self) -> String {
        format!("e{}c", self.id)
    }

    /// Adds an address to the simulated internet (on its loopback, routed like the others).
    pub fn add_internet_host(&self, address: &str) -> anyhow::Result<()> {
        let prefix = if address.contains(':') { 128 } else { 32 };
        self.inet.exec(&[
            "ip",
            "addr",
            "add",
            &format!("{address}/{prefix}"),
            "dev",
            "lo",
            "nodad",
        ])?;
        Ok(())
    }

    /// Starts a TCP listener on the internet side, stopped with the lab.
    pub fn listen(&mut self, address: &str, port: u16) -> anyhow::Result<()> {
        let child = self
            .inet
            .spawn(&["nc", "-lk", "-n", address, &port.to_string()])?;
        self.listeners.push(child);
        Ok(())
    }

    /// A pin path of this lab's own.
    #[must_use]
    pub fn pin_path(&self) -> String {
        format!("/sys/fs/bpf/ef-test-{}", self.id)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for child in &mut self.listeners {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }
}

/// A further LAN of a [`Lab`]'s gateway ([`Lab::add_lan`]), its client namespace deleted on
/// drop (the veth goes with it).
pub struct Lan {
    pub client: Netns,
    /// The client's end of the LAN.
    pub client_dev: String,
    /// The gateway's end of the LAN (XDP goes here).
    pub gw_dev: String,
    /// The client's addresses.
    pub v4: String,
    pub v6: String,
}

/// A rules directory of the test's own.
pub struct RulesDir(pub std::path::PathBuf);

impl RulesDir {
    pub fn new(lab: &Lab, rules: &str) -> anyhow::Result<Self> {
        Self::with_id(&lab.id, rules)
    }

    /// A rules directory named after a lab's or a node's id, holding `rules` as `lab.toml`.
    pub fn with_id(id: &str, rules: &str) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("ef-rules-{id}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("lab.toml"), rules)?;
        Ok(Self(dir))
    }

    #[must_use]
    pub fn path(&self) -> &str {
        self.0.to_str().expect("UTF-8 temp dir")
    }
}

impl Drop for RulesDir {
    fn drop(&mut self) {
        let _removed = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 200 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}
