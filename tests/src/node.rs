//! A Kubernetes-like node for end-to-end tests: a node namespace with an uplink to a simulated
//! internet, and pods in namespaces of their own on veths, created, deleted and created again as
//! a CNI plugin does. The node masquerades the pods' traffic on its uplink, as a real node does,
//! and the internet has no route to the pods' addresses.
//!
//! ```text
//!  pod N ──(eth0 │ pXXXxN)── node ──(nXXXu │ nXXXi)── inet
//!  10.88.N.2        10.88.N.1     192.0.2.1   192.0.2.2; hosts 198.51.100.10 and .20,
//!                                 masquerade              TCP 443 on both
//! ```

use crate::{
    daemon::Daemon,
    lab::{address, sh, unique_id, Netns, WEB_A_V4, WEB_B_V4},
};

/// The node's address on its uplink: what the internet sees pods' traffic come from.
pub const NODE_UPLINK_V4: &str = "192.0.2.1";

/// A node with an uplink to the simulated internet, and pods on veths of their own.
///
/// The internet counts arrivals (see [`Netns::count_arrivals`]): `web_a` and `web_b`, every
/// TCP packet to 198.51.100.10 and .20 on 443 (not the ICMP errors the node sends them when it
/// cannot deliver an answer); `from_node`, every packet from the node's uplink address;
/// `unmasqueraded`, every packet still carrying a pod's address.
pub struct Node {
    pub id: String,
    pub host: Netns,
    pub inet: Netns,
    pub pods: Vec<Netns>,
    listeners: Vec<std::process::Child>,
}

impl Node {
    pub fn new() -> anyhow::Result<Self> {
        let id = unique_id();
        let node = Netns::create(format!("ef-{id}-node"))?;
        let inet = Netns::create(format!("ef-{id}-inet"))?;
        let (uplink, far) = (format!("n{id}u"), format!("n{id}i"));
        sh(&[
            "ip", "link", "add", &uplink, "netns", &node.name, "type", "veth", "peer", "name",
            &far, "netns", &inet.name,
        ])?;
        address(&node, &uplink, &[&format!("{NODE_UPLINK_V4}/24")])?;
        address(&inet, &far, &["192.0.2.2/24"])?;
        for host in ["198.51.100.10/32", "198.51.100.20/32"] {
            inet.exec(&["ip", "addr", "add", host, "dev", "lo"])?;
        }
        node.exec(&["ip", "route", "add", "default", "via", "192.0.2.2"])?;
        node.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
        // What a node's CNI plugin or kube-proxy sets up: pods' traffic leaves with the
        // node's address.
        node.exec(&["nft", "add", "table", "ip", "nat"])?;
        node.exec(&[
            "nft",
            "add chain ip nat postrouting { type nat hook postrouting priority srcnat; }",
        ])?;
        node.exec(&[
            "nft",
            &format!("add rule ip nat postrouting oifname {uplink} masquerade"),
        ])?;
        let mut listeners = Vec::new();
        for host in [WEB_A_V4, WEB_B_V4] {
            listeners.push(inet.spawn(&["nc", "-lk", "-n", host, "443"])?);
        }
        inet.count_arrivals(&[
            ("web_a", &format!("ip daddr {WEB_A_V4} tcp dport 443")),
            ("web_b", &format!("ip daddr {WEB_B_V4} tcp dport 443")),
            ("from_node", &format!("ip saddr {NODE_UPLINK_V4}")),
            ("unmasqueraded", "ip saddr 10.88.0.0/16"),
        ])?;
        Ok(Self {
            id,
            host: node,
            inet,
            pods: Vec::new(),
            listeners,
        })
    }

    /// The host side of pod `n`'s veth.
    #[must_use]
    pub fn veth(&self, n: u8) -> String {
        format!("p{}x{n}", self.id)
    }

    /// Pod `n`'s address.
    #[must_use]
    pub fn pod_address(n: u8) -> String {
        format!("10.88.{n}.2")
    }

    /// What `--tc-ingress` is given: every pod veth of this node.
    #[must_use]
    pub fn pattern(&self) -> String {
        format!("p{}x*", self.id)
    }

    /// Creates pod `n` (its namespace, unless it exists) and its veth, as a CNI plugin does:
    /// the veth first, then addresses and routes; returns when the pod can send.
    pub fn add_pod(&mut self, n: u8) -> anyhow::Result<usize> {
        let name = format!("ef-{}-pod{n}", self.id);
        let index = if let Some(index) = self.pods.iter().position(|p| p.name == name) {
            index
        } else {
            self.pods.push(Netns::create(name)?);
            self.pods.len() - 1
        };
        let veth = self.veth(n);
        let pod = &self.pods[index];
        sh(&[
            "ip",
            "link",
            "add",
            &veth,
            "netns",
            &self.host.name,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.name,
        ])?;
        address(&self.host, &veth, &[&format!("10.88.{n}.1/24")])?;
        address(pod, "eth0", &[&format!("{}/24", Self::pod_address(n))])?;
        pod.exec(&[
            "ip",
            "route",
            "add",
            "default",
            "via",
            &format!("10.88.{n}.1"),
        ])?;
        Ok(index)
    }

    pub fn delete_pod_veth(&self, n: u8) -> anyhow::Result<()> {
        self.host.exec(&["ip", "link", "del", &self.veth(n)])?;
        Ok(())
    }

    #[must_use]
    pub fn pin_path(&self) -> String {
        format!("/sys/fs/bpf/ef-test-{}", self.id)
    }

    /// Starts the daemon on the node with `--tc-ingress` on every pod veth, and `extra`
    /// arguments.
    pub fn start(&self, rules: &str, extra: &[&str]) -> anyhow::Result<Daemon> {
        let pattern = self.pattern();
        let mut args = vec!["--rules", rules, "--tc-ingress", &pattern];
        args.extend_from_slice(extra);
        Daemon::start(&self.host.name, &self.pin_path(), &args)
    }

    /// The pod's connections on TCP 443: to each of `allowed` one completes, to each of
    /// `blocked` none does.
    pub fn assert_reaches(&self, pod: usize, allowed: &[&str], blocked: &[&str], when: &str) {
        let pod = &self.pods[pod];
        for addr in allowed {
            assert!(
                pod.connects(addr, 443, 2),
                "{}: {addr} allowed {when}",
                pod.name
            );
        }
        for addr in blocked {
            assert!(
                !pod.connects(addr, 443, 1),
                "{}: {addr} blocked {when}",
                pod.name
            );
        }
    }

    /// Asserts that pods' packets reached the internet, all of them from the node's address.
    pub fn assert_masqueraded(&self) -> anyhow::Result<()> {
        assert!(
            self.inet.arrivals("from_node")? > 0,
            "no pod's packet arrived from the node's address"
        );
        assert_eq!(
            self.inet.arrivals("unmasqueraded")?,
            0,
            "a pod's packet left the node with the pod's own address"
        );
        Ok(())
    }

    /// The pod's connections: web A reaches, web B does not.
    pub fn assert_filtered(&self, pod: usize, when: &str) {
        self.assert_reaches(pod, &[WEB_A_V4], &[WEB_B_V4], when);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        for child in &mut self.listeners {
            let _killed = child.kill();
            let _reaped = child.wait();
        }
    }
}
