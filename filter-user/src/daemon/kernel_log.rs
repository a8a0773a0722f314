//! The kernel programs' rare log lines (aya-log's ring buffer: a damaged policy map met by the
//! datapath, a config they do not understand) into the daemon's logs, where they take the same
//! format (`--log-format`) as every other line, with the kernel module as their target.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// Reads the programs' log lines as they come, until the task is aborted. `None` when the
/// object has no log ring (it always has one; a failure is logged and the daemon goes on).
pub fn forward(ebpf: &mut Ebpf) -> Option<tokio::task::JoinHandle<()>> {
    let logger = match EbpfLogger::init(ebpf) {
        Ok(logger) => logger,
        Err(err) => {
            tracing::warn!("the kernel programs' log lines will not be shown: {err}");
            return None;
        }
    };
    // Safety: the logger owns its ring buffer's fd and keeps it open, unchanged, for as long as
    // the AsyncFd holds the logger.
    let mut ring = match unsafe { AsyncFd::register(logger) } {
        Ok(ring) => ring,
        Err(err) => {
            tracing::warn!("the kernel programs' log lines will not be shown: {err}");
            return None;
        }
    };
    Some(tokio::spawn(async move {
        while let Ok(mut ready) = ring.readable_mut().await {
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }))
}
