//! systemd's notification protocol (`sd_notify(3)`): `READY=1` once the filter enforces,
//! `RELOADING=1` and `READY=1` around a reload, `STOPPING=1` when it detaches, each with a
//! `STATUS=` line. Under `Type=notify` systemd (and anything else that sets `NOTIFY_SOCKET`, such
//! as the end-to-end tests) learns the daemon's state from these, not from its log wording.
//! Without `NOTIFY_SOCKET` nothing is sent.

use std::{
    ffi::OsStr,
    os::{
        linux::net::SocketAddrExt as _,
        unix::{
            ffi::{OsStrExt as _, OsStringExt as _},
            net::{SocketAddr, UnixDatagram},
        },
    },
};

/// Where notifications go, if anywhere.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// The socket `NOTIFY_SOCKET` names: a path, or an abstract name when it starts with `@`.
    #[must_use]
    pub fn from_env() -> Self {
        std::env::var_os("NOTIFY_SOCKET")
            .map_or(Self { target: None }, |name| Self::to(&name.into_vec()))
    }

    /// Notifications to the socket `name` (`@` first: an abstract name).
    #[must_use]
    pub fn to(name: &[u8]) -> Self {
        let address = match name.strip_prefix(b"@") {
            Some(abstract_name) => SocketAddr::from_abstract_name(abstract_name),
            None => SocketAddr::from_pathname(OsStr::from_bytes(name)),
        };
        let target = match (UnixDatagram::unbound(), address) {
            (Ok(socket), Ok(address)) => Some((socket, address)),
            (Err(err), _) | (_, Err(err)) => {
                tracing::warn!("cannot notify the service manager: {err}");
                None
            }
        };
        Self { target }
    }

    /// The filter enforces (again, after a reload).
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    /// A reload begins; `ready` ends it.
    pub fn reloading(&self) {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map_or(0, |t| std::time::Duration::from(t).as_micros());
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
    }

    /// The filter is being detached.
    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }

    fn send(&self, message: &str) {
        if let Some((socket, address)) = &self.target {
            if let Err(err) = socket.send_to_addr(message.as_bytes(), address) {
                tracing::warn!("cannot notify the service manager: {err}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_and_reloads_reach_the_socket_in_order() {
        let path = std::env::temp_dir().join(format!("ef-notify-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier::to(path.as_os_str().as_bytes());
        notifier.ready("enforcing");
        notifier.reloading();
        notifier.ready("enforcing the reloaded rules");
        notifier.stopping();
        let mut received = Vec::new();
        let mut buffer = [0u8; 256];
        for _ in 0..4 {
            let len = listener.recv(&mut buffer).expect("a notification");
            received.push(String::from_utf8_lossy(&buffer[..len]).into_owned());
        }
        std::fs::remove_file(&path).expect("cleanup");
        assert_eq!(received[0], "READY=1\nSTATUS=enforcing");
        assert!(
            received[1].starts_with("RELOADING=1\nMONOTONIC_USEC="),
            "{received:?}"
        );
        assert_eq!(received[2], "READY=1\nSTATUS=enforcing the reloaded rules");
        assert_eq!(received[3], "STOPPING=1");
    }
}
