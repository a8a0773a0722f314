//! `run --watch-rules` end to end: rules mounted the way a Kubernetes ConfigMap is, updated the
//! way the kubelet updates one (a symlink swap of `..data`), reload without a signal and reach
//! the kernel. Needs root, like the other suites.

use std::{os::unix::fs::symlink, path::Path, time::Duration};

use filter_tests::{
    daemon::Daemon,
    lab::{Lab, RulesDir, WEB_A_V4},
};

const WEB_A_443: &str = r#"
[[service]]
name = "lab-web"
source = "test"
cidrs = ["198.51.100.10/32"]
tcp = [443]
"#;

const WEB_A_443_AND_8080: &str = r#"
[[service]]
name = "lab-web"
source = "test"
cidrs = ["198.51.100.10/32"]
tcp = [443, 8080]
"#;

/// Lays out `version` of a ConfigMap with one key, `lab.toml`, as the kubelet does: the file
/// in `..<version>/`, swapped in under `..data` by renaming a fresh symlink over it.
fn publish(dir: &Path, version: &str, rules: &str) -> anyhow::Result<()> {
    let data = dir.join(format!("..{version}"));
    std::fs::create_dir(&data)?;
    std::fs::write(data.join("lab.toml"), rules)?;
    symlink(format!("..{version}"), dir.join("..data_tmp"))?;
    std::fs::rename(dir.join("..data_tmp"), dir.join("..data"))?;
    if std::fs::symlink_metadata(dir.join("lab.toml")).is_err() {
        symlink("..data/lab.toml", dir.join("lab.toml"))?;
    }
    Ok(())
}

#[test]
fn a_configmap_update_reloads_the_watched_rules() -> anyhow::Result<()> {
    let lab = Lab::new(&[443, 8080])?;
    let rules = RulesDir::new(&lab, "")?;
    std::fs::remove_file(rules.0.join("lab.toml"))?;
    publish(&rules.0, "v1", WEB_A_443)?;
    let daemon = Daemon::start(
        &lab.gw.name,
        &lab.pin_path(),
        &[
            "--rules",
            rules.path(),
            "--xdp",
            &lab.gw_lan,
            "--watch-rules",
        ],
    )?;
    assert!(lab.client.connects(WEB_A_V4, 443, 2));
    assert!(!lab.client.connects(WEB_A_V4, 8080, 1), "not listed yet");

    let before = daemon.notifications().len();
    publish(&rules.0, "v2", WEB_A_443_AND_8080)?;
    std::fs::remove_dir_all(rules.0.join("..v1"))?;
    let ready = daemon.wait_for_notification("READY=1", before, Duration::from_secs(10))?;
    assert!(
        ready.contains("enforcing the reloaded rules"),
        "{ready}: {:?}",
        daemon.logs()
    );
    assert!(
        lab.client.connects(WEB_A_V4, 8080, 2),
        "the updated ConfigMap is in the kernel once the daemon says so"
    );
    Ok(())
}
