//! A real DNS server (dnsmasq) for tests: answers only the records it is given, from loopback or
//! from inside a test's network namespace, and stops when dropped.

use std::{
    net::{SocketAddr, UdpSocket},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// A running dnsmasq.
pub struct DnsServer {
    child: Child,
    pub addr: SocketAddr,
    netns: Option<String>,
}

/// One name with its addresses.
pub struct HostRecord<'a> {
    pub name: &'a str,
    pub addresses: &'a [&'a str],
}

impl DnsServer {
    /// Starts dnsmasq on `127.0.0.1` at a free port, answering `records` with `ttl` seconds and
    /// nothing else (it has no upstream at all).
    pub fn start_local(records: &[HostRecord<'_>], ttl: u32) -> anyhow::Result<Self> {
        let port = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        Self::start(
            records,
            None,
            ttl,
            SocketAddr::from(([127, 0, 0, 1], port)),
            None,
            &[],
        )
    }

    /// Starts dnsmasq in `netns` on `addr`, answering from a hosts file it re-reads on
    /// [`DnsServer::reload`].
    pub fn start_with_hosts_file(
        hosts: &Path,
        ttl: u32,
        addr: SocketAddr,
        netns: &str,
    ) -> anyhow::Result<Self> {
        Self::start(&[], Some(hosts), ttl, addr, Some(netns), &[])
    }

    /// Like [`DnsServer::start_with_hosts_file`], with more dnsmasq options: `--address=/d/ip`
    /// answers a whole domain (a wildcard), `--cname=alias,target` a CNAME to a hosts-file name.
    pub fn start_with_options(
        hosts: &Path,
        ttl: u32,
        addr: SocketAddr,
        netns: &str,
        options: &[String],
    ) -> anyhow::Result<Self> {
        Self::start(&[], Some(hosts), ttl, addr, Some(netns), options)
    }

    fn start(
        records: &[HostRecord<'_>],
        hosts_file: Option<&Path>,
        ttl: u32,
        addr: SocketAddr,
        netns: Option<&str>,
        options: &[String],
    ) -> anyhow::Result<Self> {
        let mut cmd = if let Some(ns) = netns {
            let mut in_netns = Command::new("ip");
            in_netns.args(["netns", "exec", ns, "dnsmasq"]);
            in_netns
        } else {
            Command::new("dnsmasq")
        };
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--conf-file=/dev/null",
            "--bind-interfaces",
            "--log-facility=-",
            "--user=root",
            // Names not listed get NXDOMAIN rather than a forward attempt.
            "--local=/#/",
            // No pid file: several servers may run at once.
            "--pid-file=",
        ]);
        cmd.arg(format!("--listen-address={}", addr.ip()))
            .arg(format!("--port={}", addr.port()))
            .arg(format!("--local-ttl={ttl}"));
        cmd.args(options);
        if let Some(hosts) = hosts_file {
            cmd.arg(format!("--addn-hosts={}", hosts.display()));
        }
        for record in records {
            cmd.arg(format!(
                "--host-record={},{}",
                record.name,
                record.addresses.join(",")
            ));
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start dnsmasq (cargo xtask setup installs it)")?;
        let server = Self {
            child,
            addr,
            netns: netns.map(str::to_owned),
        };
        server.wait_listening()?;
        Ok(server)
    }

    /// Makes dnsmasq re-read its hosts file (SIGHUP).
    pub fn reload(&self) -> anyhow::Result<()> {
        crate::lab::sh(&["kill", "-HUP", &self.child.id().to_string()])?;
        // dnsmasq handles the signal asynchronously; give it a moment.
        std::thread::sleep(Duration::from_millis(200));
        Ok(())
    }

    /// Waits (bounded) until a UDP socket listens on the server's port.
    fn wait_listening(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        let filter = format!("sport = :{}", self.addr.port());
        while Instant::now() < deadline {
            let mut ss = match &self.netns {
                Some(ns) => {
                    let mut c = Command::new("ip");
                    c.args(["netns", "exec", ns, "ss"]);
                    c
                }
                None => Command::new("ss"),
            };
            let listening = ss
                .args(["-H", "-lun", &filter])
                .output()
                .is_ok_and(|o| !o.stdout.is_empty());
            if listening {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("dnsmasq did not listen on {} within 5 s", self.addr)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}
