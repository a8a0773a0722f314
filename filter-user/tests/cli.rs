//! The command line as a user runs it: exit codes, where errors go, what they say.

use std::{path::Path, process::Command};

fn egress_filter(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_egress-filter"))
        .args(args)
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("the binary runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_shipped_rules_with_a_summary() {
    let (code, stdout, stderr) = egress_filter(&["check", "--rules", "rules/"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("rules/intune.toml: ") && stdout.contains("ok: "),
        "{stdout}"
    );
}

/// A rules file written to a directory of this test's own; the caller removes the directory.
fn scratch_rules(
    label: &str,
    file: &str,
    contents: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("egress-filter-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(file);
    std::fs::write(&path, contents).unwrap();
    (dir, path)
}

#[test]
fn check_refuses_a_bad_file_with_its_location_and_exit_1() {
    let (dir, bad) = scratch_rules(
        "cli",
        "bad.toml",
        "[[service]]\nname = \"x\"\ncidrs = [\"192.0.2.1/24\"]\ntcp = [443]\n",
    );
    let (code, stdout, stderr) = egress_filter(&[
        "check",
        "--rules",
        "rules/",
        "--rules",
        bad.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "no summary for invalid rules: {stdout}");
    assert!(
        stderr.contains(
            "bad.toml:3:10: \"192.0.2.1/24\" has host bits set; did you mean 192.0.2.0/24?"
        ),
        "{stderr}"
    );
}

#[test]
fn show_json_lists_prefixes_with_service_names() {
    let (code, stdout, stderr) = egress_filter(&["show", "--rules", "rules/apple.toml", "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    let first = &json["prefixes"][0];
    assert_eq!(first["prefix"], "17.0.0.0/8");
    assert!(
        first["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["ports"] == "5223"),
        "{first}"
    );
}

#[test]
fn imports_are_accepted_by_check() {
    let (code, stdout, stderr) = egress_filter(&[
        "import",
        "google",
        "filter-user/tests/fixtures/goog.json",
        "--name",
        "google-ranges",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let file =
        std::env::temp_dir().join(format!("egress-filter-import-{}.toml", std::process::id()));
    std::fs::write(&file, stdout).unwrap();
    let (code, _, stderr) = egress_filter(&["check", "--rules", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn dns_options_go_together_and_are_bounded() {
    // No such interface: whatever happens, nothing is attached.
    let run = [
        "run",
        "--rules",
        "rules/",
        "--xdp",
        "ef-no-such-if",
        "--dns-listen",
        "127.0.0.1:5353",
    ];
    let (code, _, stderr) = egress_filter(&run);
    assert_eq!(code, 2, "clap refuses: {stderr}");
    assert!(stderr.contains("--dns-upstream"), "{stderr}");
    let bounded = [
        &run[..],
        &[
            "--dns-upstream",
            "127.0.0.1:53",
            "--dns-min-ttl",
            "99999999",
        ],
    ]
    .concat();
    let (code, _, stderr) = egress_filter(&bounded);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--dns-min-ttl must be at most a week"),
        "{stderr}"
    );
}

#[test]
fn a_wildcard_dns_listen_address_is_refused_by_name_before_anything_is_touched() {
    // No such interface: whatever happens, nothing is attached.
    let run = ["run", "--rules", "rules/", "--xdp", "ef-no-such-if"];
    let wildcard = ["--dns-listen", "[::]:53", "--dns-upstream", "127.0.0.1:53"];
    let (code, _, stderr) = egress_filter(&[&run[..], &wildcard].concat());
    assert_eq!(code, 1);
    assert!(
        stderr.contains("--dns-listen [::]:53") && stderr.contains("--dns-listen-any"),
        "{stderr}"
    );
    // --dns-listen-any belongs to the forwarder: alone it is refused.
    let (code, _, stderr) = egress_filter(&[&run[..], &["--dns-listen-any"]].concat());
    assert_eq!(code, 2, "{stderr}");
}

#[test]
fn learned_without_a_running_filter_says_so() {
    let (code, stdout, stderr) =
        egress_filter(&["learned", "--pin-path", "/nonexistent/egress-filter"]);
    assert_eq!(code, 1);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("no filter runs with --pin-path /nonexistent/egress-filter"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_device_it_cannot_parse_before_touching_anything() {
    // Loopback frames carry a zeroed Ethernet header the programs would misread: refused by its
    // link type, before any map or program exists.
    let (code, _, stderr) = egress_filter(&[
        "run",
        "--rules",
        "rules/apple.toml",
        "--xdp",
        "lo",
        "--pin-path",
        "/nonexistent/egress-filter-cli",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("lo has link type 772 (ARPHRD), which egress-filter does not parse"),
        "{stderr}"
    );
}

#[test]
fn run_refuses_a_malformed_failsafe_port_naming_it() {
    let (code, _, stderr) = egress_filter(&[
        "run",
        "--rules",
        "rules/apple.toml",
        "--xdp",
        "lo",
        "--self-ports",
        "tcp/22,tcp/99999",
    ]);
    assert_eq!(code, 2, "clap's usage error: {stderr}");
    assert!(
        stderr.contains("\"99999\" in \"tcp/99999\" is not a port"),
        "{stderr}"
    );
}

#[test]
fn check_strict_passes_the_shipped_rules_and_refuses_an_unaccepted_broad_opening() {
    let (code, _, stderr) = egress_filter(&["check", "--rules", "rules/", "--strict"]);
    assert_eq!(code, 0, "{stderr}");
    let (dir, broad) = scratch_rules(
        "strict",
        "broad.toml",
        "# a comment\n[[service]]\nname = \"wide\"\ncidrs = [\"10.0.0.0/8\"]\ntcp = [443]\n",
    );
    let (lenient, _, _) = egress_filter(&["check", "--rules", broad.to_str().unwrap()]);
    let (code, stdout, stderr) =
        egress_filter(&["check", "--rules", broad.to_str().unwrap(), "--strict"]);
    let (diff_code, diff, diff_err) = egress_filter(&[
        "diff",
        "rules/windows.toml",
        broad.to_str().unwrap(),
        "--json",
    ]);
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(lenient, 0, "without --strict a broad opening is valid");
    assert_eq!(code, 1);
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("broad.toml:2:1: service \"wide\" opens 10.0.0.0/8: prefix IPv4 shorter than /16 without accept-risk"),
        "{stderr}"
    );
    assert_eq!(diff_code, 0, "{diff_err}");
    let json: serde_json::Value = serde_json::from_str(&diff).expect("valid JSON");
    assert_eq!(
        json["risky_additions"], 2,
        "the prefix and its port: {json}"
    );
    assert_eq!(json["services"][0]["name"], "wide");
    assert_eq!(json["services"][0]["change"], "added");
}
