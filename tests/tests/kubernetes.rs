//! The Kubernetes manifests (`deploy/kubernetes/`): each overlay rendered (kustomize's
//! semantics, `tests/tools/kustomize_render.py`), validated offline against the API schemas of
//! the two newest Kubernetes minors kubernetes-validate knows, and read for what the README
//! promises: no privileged container but the daemon's capabilities, the node's bpffs and run
//! directory, probes on the health endpoint, the rules ConfigMap mounted as a directory. And
//! the daemon, given exactly the DaemonSet's capabilities, filters (needs root, like the lab).

use std::{path::PathBuf, process::Command};

use filter_tests::{
    daemon::{binary, Daemon},
    dist::{self, stdout, Scratch},
    lab::{Lab, RulesDir, WEB_A_443, WEB_A_V4, WEB_B_V4},
};
use serde_json::{json, Value};

const OVERLAYS: [&str; 2] = ["audit", "enforce"];

/// The project's venv with kubernetes-validate (`cargo xtask setup` makes it).
fn venv_bin(tool: &str) -> anyhow::Result<PathBuf> {
    let path = dist::workspace().join("target/k8s-venv/bin").join(tool);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: run `cargo xtask setup`",
        path.display()
    );
    Ok(path)
}

fn render(overlay: &str) -> anyhow::Result<Vec<Value>> {
    let root = dist::workspace();
    let json = stdout(
        Command::new(venv_bin("python")?)
            .arg(root.join("tests/tools/kustomize_render.py"))
            .arg(root.join("deploy/kubernetes/overlays").join(overlay)),
    )?;
    Ok(serde_json::from_str(&json)?)
}

fn find<'a>(resources: &'a [Value], kind: &str) -> &'a Value {
    resources
        .iter()
        .find(|r| r["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The entry of a list (volumes, mounts) with this name.
fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list.as_array()
        .and_then(|entries| entries.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("nothing named {name} in {list}"))
}

/// The two newest Kubernetes versions the installed schemas cover, newest first.
fn newest_versions() -> anyhow::Result<Vec<String>> {
    let listed = stdout(Command::new(venv_bin("python")?).args([
        "-c",
        "import kubernetes_validate.utils as u; print('\\n'.join(sorted(set(u.all_versions()), \
         key=lambda v: tuple(map(int, v.split('.'))), reverse=True)[:2]))",
    ]))?;
    let versions: Vec<String> = listed.lines().map(str::to_owned).collect();
    anyhow::ensure!(versions.len() == 2, "schemas known: {listed}");
    Ok(versions)
}

#[test]
fn every_overlay_validates_against_the_two_newest_apis() -> anyhow::Result<()> {
    let versions = newest_versions()?;
    let scratch = Scratch::new("k8s")?;
    for overlay in OVERLAYS {
        let resources = render(overlay)?;
        assert_eq!(
            resources.len(),
            3,
            "{overlay}: namespace, ConfigMap, DaemonSet"
        );
        // JSON is YAML: one document per resource.
        let file = scratch.0.join(format!("{overlay}.yaml"));
        let documents: Vec<String> = resources.iter().map(Value::to_string).collect();
        std::fs::write(&file, documents.join("\n---\n"))?;
        for version in &versions {
            let report = stdout(
                Command::new(venv_bin("kubernetes-validate")?)
                    .args(["--strict", "--kubernetes-version", version])
                    .arg(&file),
            )?;
            assert_eq!(
                report.matches("passed").count(),
                3,
                "{overlay} on {version}: {report}"
            );
        }
    }
    Ok(())
}

#[test]
fn the_daemonset_runs_unprivileged_with_the_daemons_capabilities() -> anyhow::Result<()> {
    for overlay in OVERLAYS {
        let resources = render(overlay)?;
        let daemonset = find(&resources, "DaemonSet");
        let pod = &daemonset["spec"]["template"]["spec"];
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["priorityClassName"], "system-node-critical");
        assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
        let update = &daemonset["spec"]["updateStrategy"];
        assert_eq!(
            update["rollingUpdate"]["maxSurge"], 0,
            "two filters on a node stall"
        );

        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(security["privileged"], false);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        assert_eq!(
            security["capabilities"]["add"],
            json!(["BPF", "NET_ADMIN", "PERFMON", "SYS_RESOURCE"]),
            "{overlay}: no SYS_ADMIN, the node's bpffs is mounted in"
        );

        let args: Vec<&str> = container["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(args[0], "run");
        for flag in [
            "--watch-rules",
            "--keep-on-stop",
            "--tc",
            "--pin-path",
            "--metrics-listen",
        ] {
            assert!(
                args.contains(&flag),
                "{overlay}: {flag} missing from {args:?}"
            );
        }
        assert_eq!(args.contains(&"--audit"), overlay == "audit", "{args:?}");

        // Liveness asks only whether the loop runs: a refused reload (a bad ConfigMap) makes
        // the filter unready, never restarted into a crash loop.
        for (probe, path) in [
            ("startupProbe", "/healthz"),
            ("readinessProbe", "/healthz"),
            ("livenessProbe", "/livez"),
        ] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"], path, "{probe}");
            assert_eq!(
                get["host"], "127.0.0.1",
                "{probe}: the daemon listens on loopback"
            );
            assert_eq!(get["port"], 9464, "{probe}");
        }
        let limits = &container["resources"]["limits"];
        assert!(limits["memory"].is_string(), "a memory limit: {limits}");
    }
    Ok(())
}

#[test]
fn pins_live_on_the_node_and_the_rules_come_from_the_configmap() -> anyhow::Result<()> {
    let resources = render("enforce")?;
    let daemonset = find(&resources, "DaemonSet");
    let pod = &daemonset["spec"]["template"]["spec"];
    let volume = |name: &str| named(&pod["volumes"], name);
    let mount = |name: &str| named(&pod["containers"][0]["volumeMounts"], name);

    assert_eq!(volume("bpffs")["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(volume("bpffs")["hostPath"]["type"], "Directory");
    assert_eq!(mount("bpffs")["mountPath"], "/sys/fs/bpf");
    // Bidirectional would need a privileged container; the daemon never mounts.
    assert_eq!(mount("bpffs")["mountPropagation"], "HostToContainer");
    assert_eq!(volume("run")["hostPath"]["path"], "/run/egress-filter");
    assert_eq!(mount("run")["mountPath"], "/run/egress-filter");

    let configmap = find(&resources, "ConfigMap");
    let name = configmap["metadata"]["name"].as_str().expect("name");
    assert_eq!(volume("rules")["configMap"]["name"], name);
    let rules = mount("rules");
    assert_eq!(rules["mountPath"], "/etc/egress-filter/rules");
    assert_eq!(rules["readOnly"], true);
    assert!(
        rules.get("subPath").is_none(),
        "a subPath mount never sees updates"
    );
    assert!(configmap["data"]["node.toml"].is_string());

    let namespace = find(&resources, "Namespace");
    assert_eq!(
        daemonset["metadata"]["namespace"],
        namespace["metadata"]["name"]
    );
    assert_eq!(
        pod["containers"][0]["image"],
        "registry.example.com/platform/egress-filter:0.1.0"
    );
    Ok(())
}

/// The starter rules the ConfigMap carries pass the daemon's own check.
#[test]
fn the_configmap_rules_check() -> anyhow::Result<()> {
    let report = stdout(
        Command::new(binary()?)
            .arg("check")
            .arg("--rules")
            .arg(dist::workspace().join("deploy/kubernetes/base/rules")),
    )?;
    assert!(report.contains("ok: 3 services"), "{report}");
    Ok(())
}

/// The capability set the DaemonSet adds is enough: the daemon, its bounding set cut to exactly
/// that (`setpriv`, as the runtime does), loads, pins, attaches TC and filters on the lab's
/// uplink with the node's bpffs already mounted, and detaches on SIGTERM.
#[test]
fn the_daemonsets_capabilities_are_enough_to_filter() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;

    let resources = render("enforce")?;
    let added = &find(&resources, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
        ["securityContext"]["capabilities"]["add"];
    let bounding: Vec<String> = added
        .as_array()
        .expect("capabilities")
        .iter()
        .filter_map(Value::as_str)
        .map(|cap| format!("+{}", cap.to_lowercase()))
        .collect();
    let scratch = Scratch::new("caps")?;
    let wrapper = scratch.0.join("egress-filter");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec setpriv --bounding-set -all,{} -- {} \"$@\"\n",
            bounding.join(","),
            binary()?.display()
        ),
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;

    let lab = Lab::new(&[443])?;
    let rules = RulesDir::new(&lab, WEB_A_443)?;
    let daemon = Daemon::start_binary(
        &wrapper,
        &lab.gw.name,
        &lab.pin_path(),
        &["--rules", rules.path(), "--tc", &lab.gw_wan],
    )?;
    assert!(lab.gw.connects(WEB_A_V4, 443, 2), "listed");
    assert!(!lab.gw.connects(WEB_B_V4, 443, 1), "unlisted");
    daemon.signal("TERM")?;
    assert!(
        daemon.wait_exit(std::time::Duration::from_secs(10))?,
        "a clean exit"
    );
    assert!(
        !std::path::Path::new(&lab.pin_path()).exists(),
        "nothing left pinned"
    );
    Ok(())
}
