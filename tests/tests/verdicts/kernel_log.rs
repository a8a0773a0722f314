//! The kernel's own log lines (through aya-log): what only the datapath sees is logged, once
//! per interval rather than per packet.

use filter_common::{Config, Mode, Reason};
use filter_tests::harness::{pin_to_current_cpu, Filter, Hook, Outcome};

use crate::common::{grants, v4, UNLISTED4};

/// Kernel log lines, as aya-log hands them over: "LEVEL message".
#[derive(Clone, Default)]
struct CapturedLog(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl log::Log for CapturedLog {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(format!("{} {}", record.level(), record.args()));
        }
    }

    fn flush(&self) {}
}

impl CapturedLog {
    fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

#[test]
fn a_damaged_policy_map_is_logged_by_the_kernel_once_per_interval_not_per_packet(
) -> anyhow::Result<()> {
    // The rate limit is per CPU: keep every run on one.
    pin_to_current_cpu()?;
    let mut filter = Filter::new(&grants())?;
    let captured = CapturedLog::default();
    let mut logger = filter.kernel_log(captured.clone())?;
    filter.point_prefix_at(
        "192.0.2.0/24".parse()?,
        filter_common::maps::MAX_POLICIES + 7,
    )?;
    for _ in 0..50 {
        assert_eq!(
            filter.judge(Hook::Xdp, &v4(UNLISTED4).build())?,
            (Outcome::Drop, Reason::PolicyMissing)
        );
    }
    logger.flush();
    let lines = captured.lines();
    assert_eq!(lines.len(), 1, "one line for 50 packets: {lines:?}");
    assert!(
        lines[0].starts_with("ERROR") && lines[0].contains("policy-missing"),
        "{lines:?}"
    );
    Ok(())
}

#[test]
fn a_config_the_program_does_not_understand_is_logged_and_enforced() -> anyhow::Result<()> {
    pin_to_current_cpu()?;
    let mut filter = Filter::new(&grants())?;
    let captured = CapturedLog::default();
    let mut logger = filter.kernel_log(captured.clone())?;
    // A healthy filter's drops log nothing.
    for _ in 0..10 {
        filter.judge(Hook::Tc, &v4(UNLISTED4).build())?;
    }
    logger.flush();
    assert_eq!(captured.lines(), Vec::<String>::new());
    filter.maps.set_config(Config {
        mode: 7,
        flags: 0x10,
        ..Config::new(Mode::Enforce)
    })?;
    // Dropped: an unknown mode enforces.
    assert_eq!(
        filter.judge(Hook::Tc, &v4(UNLISTED4).build())?,
        (Outcome::Drop, Reason::NoService)
    );
    logger.flush();
    let lines = captured.lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("WARN") && lines[0].contains("mode 7, flags 10"),
        "{lines:?}"
    );
    Ok(())
}
