//! What only the kernel side can see, and is rare: a covered destination whose policy slot does
//! not exist (a damaged map), and a config the program does not understand. Logged through
//! aya-log (its ring buffer, read by the daemon into its structured logs), never per packet: at
//! most one line per CPU every [`LOG_INTERVAL_NS`], and only on paths a healthy filter never
//! takes, so the hot path costs what it cost without it.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, EbpfContext};
use aya_log_ebpf::{error, warn};

use crate::maps::LOG_BUDGET;

/// The least time between two log lines from one CPU.
const LOG_INTERVAL_NS: u64 = 10 * 1_000_000_000;

/// Whether this CPU may log now; if so, the next line must wait [`LOG_INTERVAL_NS`].
#[inline(always)]
fn may_log() -> bool {
    let Some(last) = LOG_BUDGET.get_ptr_mut(0) else {
        return false;
    };
    // Safety: bpf_ktime_get_coarse_ns has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // Safety: this CPU's slot of our own per-CPU map; programs run with migration disabled.
    let last = unsafe { &mut *last };
    if *last != 0 && now.wrapping_sub(*last) < LOG_INTERVAL_NS {
        return false;
    }
    *last = now;
    true
}

/// A covered destination named a policy slot that does not exist.
#[inline(always)]
pub(crate) fn policy_missing<C: EbpfContext>(ctx: &C) {
    if may_log() {
        error!(
            ctx,
            "a covered destination names a policy slot that does not exist (POLICIES is \
             damaged): dropping with reason policy-missing"
        );
    }
}

/// The config holds a mode or flags this program does not know; it enforces.
#[inline(always)]
pub(crate) fn unknown_config<C: EbpfContext>(ctx: &C, mode: u32, flags: u32) {
    if may_log() {
        warn!(
            ctx,
            "CONFIG holds values this program does not know (mode {}, flags {:x}): enforcing",
            mode,
            flags
        );
    }
}
