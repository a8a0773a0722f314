use std::path::PathBuf;

use super::*;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(text: &str) -> Rules {
    Rules::parse_sources(&[(Path::new("out.toml"), text)]).expect("check accepts the import")
}

fn mem() -> M365Options<'static> {
    M365Options {
        service_area: Some("MEM"),
        ..M365Options::default()
    }
}

fn google_options(exclude: Option<&Path>) -> GoogleOptions<'_> {
    GoogleOptions {
        name: "google-ip-ranges",
        tcp: "443,5228-5230",
        udp: None,
        exclude,
        cloud_ranges: false,
    }
}

#[test]
fn m365_mem_area_becomes_one_service_per_endpoint_set_with_intunes_identity_sets() {
    let out = m365(&fixture("m365-endpoints.json"), &mem()).unwrap();
    let rules = load(&out);
    let names: Vec<&str> = rules.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "m365-common-56",
            "m365-common-59",
            "m365-common-97",
            "m365-mem-163",
            "m365-mem-165",
            "m365-mem-172"
        ],
        "{out}"
    );
    let core = &rules.services[3];
    assert!(core.cidrs.contains(&"2620:1ec:40::/48".parse().unwrap()));
    assert!(core
        .hosts
        .iter()
        .any(|h| h.to_string() == "*.manage.microsoft.com"));
    assert_eq!(
        core.ports,
        [
            crate::table::PortSpec::Tcp(80..=80),
            crate::table::PortSpec::Tcp(443..=443)
        ]
    );
    assert_eq!(
        rules.services[4].ports,
        [crate::table::PortSpec::Udp(123..=123)]
    );
    for skipped in [
        "set 150: skipped, the feed marks it optional",
        "set 999: skipped",
    ] {
        assert!(out.contains(skipped), "{skipped:?} in {out}");
    }
    assert!(
        !out.contains("set 125"),
        "a Common set Intune does not name stays out of MEM: {out}"
    );
    assert!(out.contains("# Feed version: not recorded"), "{out}");
    assert!(out.contains("MEM records are no longer accurate"), "{out}");
}

#[test]
fn m365_records_the_feed_version_and_date() {
    let version = fixture("m365-version.json");
    let options = M365Options {
        feed_version: Some(&version),
        ..mem()
    };
    let out = m365(&fixture("m365-endpoints.json"), &options).unwrap();
    assert!(
        out.contains("# Feed: instance Worldwide, version 2025010800, published 2025-01-08."),
        "{out}"
    );
    let err = m365(
        &fixture("m365-endpoints.json"),
        &M365Options {
            feed_version: Some(&fixture("goog.json")),
            ..mem()
        },
    )
    .unwrap_err();
    assert!(
        format!("{err:#}").contains("not the version method's answer"),
        "{err:#}"
    );
}

#[test]
fn m365_skips_optional_sets_unless_asked_and_flags_broad_ones() {
    let out = m365(&fixture("m365-endpoints.json"), &M365Options::default()).unwrap();
    let rules = load(&out);
    assert!(rules.services.iter().any(|s| s.name == "m365-exchange-1"));
    assert!(!rules.services.iter().any(|s| s.name == "m365-common-125"));
    assert!(
        out.contains("autodiscover.*.onmicrosoft.com"),
        "a mid-name wildcard is named as left out: {out}"
    );
    let all = M365Options {
        include_optional: true,
        ..M365Options::default()
    };
    let out = m365(&fixture("m365-endpoints.json"), &all).unwrap();
    assert!(load(&out)
        .services
        .iter()
        .any(|s| s.name == "m365-common-125"));
    for flag in [
        "# RISK m365-common-125: *.azureedge.net: wildcard under shared hosting/CDN domain azureedge.net",
        "# RISK m365-common-125: *.blob.core.windows.net: wildcard under shared hosting/CDN domain blob.core.windows.net",
    ] {
        assert!(out.contains(flag), "{flag:?} in {out}");
    }
}

#[test]
fn google_ranges_become_one_service_with_the_fcm_ports() {
    let out = google(&fixture("goog.json"), &google_options(None)).unwrap();
    let rules = load(&out);
    let s = &rules.services[0];
    assert_eq!(s.cidrs.len(), 4);
    assert_eq!(
        s.ports,
        [
            crate::table::PortSpec::Tcp(443..=443),
            crate::table::PortSpec::Tcp(5228..=5230)
        ]
    );
    assert!(s.source.contains("1631120724291"), "{}", s.source);
    assert!(
        out.contains("# RISK google-ip-ranges: 2600:1900::/28: prefix IPv6 shorter than /32"),
        "{out}"
    );
}

#[test]
fn google_less_cloud_json_keeps_only_googles_own_ranges() {
    let cloud = fixture("cloud.json");
    let out = google(&fixture("goog.json"), &google_options(Some(&cloud))).unwrap();
    let cidrs: Vec<String> = load(&out).services[0]
        .cidrs
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        cidrs,
        [
            "8.8.4.0/24",
            "8.8.8.0/24",
            "8.34.216.0/21",
            "2600:1908::/29"
        ],
        "{out}"
    );
    assert!(out.contains("4 prefixes became 4"), "{out}");
    assert!(
        out.contains("less cloud.json syncToken 1631120724300"),
        "{out}"
    );
}

#[test]
fn cloud_json_is_refused_as_input_unless_meant() {
    let err = google(&fixture("cloud.json"), &google_options(None)).unwrap_err();
    assert!(
        err.to_string()
            .contains("cloud.json, Google Cloud customers' ranges"),
        "{err}"
    );
    let meant = GoogleOptions {
        cloud_ranges: true,
        ..google_options(None)
    };
    assert!(google(&fixture("cloud.json"), &meant).is_ok());
}

#[test]
fn malformed_feeds_are_errors_naming_the_file() {
    let err = google(&fixture("m365-endpoints.json"), &google_options(None)).unwrap_err();
    assert!(
        format!("{err:#}").contains("m365-endpoints.json is not goog.json"),
        "{err:#}"
    );
    let err = m365(
        &fixture("m365-endpoints.json"),
        &M365Options {
            service_area: Some("NoSuchArea"),
            ..M365Options::default()
        },
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("with service area NoSuchArea"),
        "{err}"
    );
    assert!(port_list(Some("80,9-1")).is_err());
}
