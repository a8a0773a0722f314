//! A real DNS server (dnsmasq) for tests: answers only the records it is given, from loopback or
//! from inside a test's network namespace, and stops when dropped.

use std::{
    net::{SocketAddr, UdpSocket},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{ensure, Context as _};

/// A running dnsmasq.
pub struct DnsServer {
    child: Child,
    pub addr: SocketAddr,
}

/// One name with its addresses.
pub struct HostRecord<'a> {
    pub name: &'a str,
    pub addresses: &'a [&'a str],
}

impl DnsServer {
    /// Starts dnsmasq on `127.0.0.1` at a free port, answering `records` with `ttl` seconds and
    /// refusing to forward anything else (no upstream at all).
    pub fn start_local(records: &[HostRecord<'_>], ttl: u32) -> anyhow::Result<Self> {
        let port = free_udp_port()?;
        Self::start(records, ttl, SocketAddr::from(([127, 0, 0, 1], port)), None)
    }

    /// Starts dnsmasq listening on `addr`; with `netns`, inside that network namespace.
    pub fn start(
        records: &[HostRecord<'_>],
        ttl: u32,
        addr: SocketAddr,
        netns: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, "dnsmasq"]);
                c
            }
            None => Command::new("dnsmasq"),
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
            &format!("--listen-address={}", addr.ip()),
            &format!("--port={}", addr.port()),
            &format!("--local-ttl={ttl}"),
            // Names not listed get NXDOMAIN rather than a forward attempt.
            "--local=/#/",
            // No pid file: several servers may run at once.
            "--pid-file=",
        ]);
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
        let server = Self { child, addr };
        server.wait_ready()?;
        Ok(server)
    }

    fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // A query for the root: any answer at all means the server is up.
            if let Ok(socket) = UdpSocket::bind(if self.addr.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            }) {
                socket.set_read_timeout(Some(Duration::from_millis(100)))?;
                let query = [0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1];
                if socket.send_to(&query, self.addr).is_ok() && socket.recv(&mut [0; 512]).is_ok() {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        ensure!(false, "dnsmasq did not answer on {} within 5 s", self.addr);
        Ok(())
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        let _killed = self.child.kill();
        let _reaped = self.child.wait();
    }
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}
