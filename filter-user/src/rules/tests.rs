use std::{fmt::Write as _, path::Path};

use super::*;

fn parse(text: &str) -> Result<Rules, RulesError> {
    Rules::parse_sources(&[(Path::new("test.toml"), text)])
}

fn errors(text: &str) -> Vec<String> {
    parse(text)
        .expect_err("must be refused")
        .0
        .iter()
        .map(ToString::to_string)
        .collect()
}

const GOOD: &str = r#"
[[service]]
name = "apple-push"
source = "test"
hosts = ["{0..2}-courier.push.apple.com", "*.push.apple.com"]
cidrs = ["17.0.0.0/8", "2620:149:a44::/48", "192.0.2.1"]
tcp = [443, "5223", "2195-2197"]
udp = ["any"]
icmp = true
"#;

#[test]
fn a_valid_service_loads_with_everything_expanded() {
    let rules = parse(GOOD).expect("valid");
    let s = &rules.services[0];
    assert_eq!((s.id, s.name.as_str()), (0, "apple-push"));
    assert_eq!(
        s.hosts.len(),
        4,
        "three numbered names and one wildcard: {:?}",
        s.hosts
    );
    assert_eq!(s.cidrs.len(), 3);
    assert!(
        s.cidrs.contains(&"192.0.2.1/32".parse().unwrap()),
        "a bare address is a host route"
    );
    assert_eq!(
        s.ports,
        [
            PortSpec::Tcp(443..=443),
            PortSpec::Tcp(5223..=5223),
            PortSpec::Tcp(2195..=2197),
            PortSpec::Udp(0..=65535),
            PortSpec::Icmp
        ]
    );
    assert_eq!(rules.exact_hosts().len(), 3);
}

#[test]
fn each_mistake_is_reported_at_its_line_and_column() {
    for (text, expected) in [
        (
            "[[service]]\nname = \"a\"\nhosts = [\"x.example.com\"]\ntcp = [443]\nhostz = []\n",
            "test.toml:5:1: unknown field `hostz`",
        ),
        (
            "[[service]]\nname = \"a\"\ncidrs = [\"10.0.0.0/33\"]\ntcp = [1]\n",
            "test.toml:3:10: prefix length in \"10.0.0.0/33\" must be 0-32",
        ),
        (
            "[[service]]\nname = \"a\"\ncidrs = [\"17.1.2.3/8\"]\ntcp = [1]\n",
            "test.toml:3:10: \"17.1.2.3/8\" has host bits set; did you mean 17.0.0.0/8?",
        ),
        (
            "[[service]]\nname = \"a\"\ncidrs = [\"300.1.1.1/8\"]\ntcp = [1]\n",
            "test.toml:3:10: \"300.1.1.1\" in \"300.1.1.1/8\" is not an IP address",
        ),
        (
            "[[service]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\ntcp = [0]\n",
            "test.toml:4:8: port 0 is outside 1-65535",
        ),
        (
            "[[service]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\ntcp = [65536]\n",
            "test.toml:4:8: port 65536 is outside 1-65535",
        ),
        (
            "[[service]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\nudp = [\"9-1\"]\n",
            "test.toml:4:8: reversed port range \"9-1\"",
        ),
        (
            "[[service]]\nname = \"a\"\nhosts = [\"bad host.com\"]\ntcp = [1]\n",
            "test.toml:3:10: invalid hostname \"bad host.com\"",
        ),
        (
            "[[service]]\nname = \"a\"\nhosts = [\"{9..1}.example.com\"]\ntcp = [1]\n",
            "test.toml:3:10: reversed expansion",
        ),
        (
            "[[service]]\nname = \"a\"\nhosts = [\"{0..1000}.example.com\"]\ntcp = [1]\n",
            "test.toml:3:10: expansion {0..1000}",
        ),
        (
            "[[service]]\nname = \"a\"\ntcp = [1]\n",
            "test.toml:2:8: service \"a\" has no destinations",
        ),
        (
            "[[service]]\nname = \"a\"\ncidrs = [\"10.0.0.0/8\"]\n",
            "test.toml:2:8: service \"a\" allows no protocol",
        ),
        (
            "[[service]]\nhosts = [\"x.example.com\"]\n",
            "test.toml:1:1: missing field `name`",
        ),
        ("[[service]\nname = 1\n", "test.toml:1:"),
        ("# nothing\n", "test.toml: defines no [[service]]"),
    ] {
        let found = errors(text);
        assert!(
            found.iter().any(|e| e.starts_with(expected)),
            "for\n{text}expected an error starting {expected:?}, got {found:?}"
        );
    }
}

#[test]
fn all_problems_are_reported_together() {
    let text = "[[service]]\nname = \"a\"\ncidrs = [\"10.0.0.1/8\", \"nope\"]\ntcp = [0, 80]\n";
    assert_eq!(errors(text).len(), 3, "{:?}", errors(text));
}

#[test]
fn duplicate_names_across_files_point_at_the_first() {
    let a = "[[service]]\nname = \"same\"\ncidrs = [\"10.0.0.0/8\"]\ntcp = [1]\n";
    let b = "\n[[service]]\nname = \"same\"\ncidrs = [\"10.0.0.0/8\"]\ntcp = [2]\n";
    let err =
        Rules::parse_sources(&[(Path::new("a.toml"), a), (Path::new("b.toml"), b)]).unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert!(
        err.0[0]
            .to_string()
            .starts_with("b.toml:2:1: service name \"same\" is already defined at a.toml:1"),
        "{}",
        err.0[0]
    );
}

#[test]
fn a_directory_loads_its_toml_files_in_order_and_nothing_below() {
    let dir = std::env::temp_dir().join(format!("egress-filter-rules-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("optional")).unwrap();
    std::fs::write(dir.join("b.toml"), GOOD.replace("apple-push", "b")).unwrap();
    std::fs::write(dir.join("a.toml"), GOOD.replace("apple-push", "a")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not rules").unwrap();
    std::fs::write(dir.join("optional/c.toml"), GOOD.replace("apple-push", "c")).unwrap();
    let rules = Rules::load(std::slice::from_ref(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    let names: Vec<String> = rules
        .unwrap()
        .services
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert_eq!(names, ["a", "b"]);
}

const REGISTER: &str = "[[source]]\nkey = \"VENDOR\"\ntitle = \"A vendor page\"\nurl = \"https://example.com/page\"\nchecked = 2026-01-01\n";

fn cited(text: &str) -> Result<Rules, RulesError> {
    let register = Register::parse(Path::new("sources.toml"), REGISTER).unwrap();
    Rules::parse_cited(&[(Path::new("test.toml"), text)], &|_| Some(&register))
}

#[test]
fn cited_keys_must_be_in_the_register() {
    let good = "[[service]]\nname = \"a\"\ncites = [\"VENDOR\"]\nhosts = [\"a.example.com\"]\ntcp = [443]\n";
    assert_eq!(cited(good).unwrap().services[0].cites, ["VENDOR"]);
    let unknown = good.replace("[\"VENDOR\"]", "[\"VENDOR\", \"NOPE\"]");
    let err = cited(&unknown).unwrap_err().0[0].to_string();
    assert_eq!(
        err,
        "test.toml:3:20: unknown source key \"NOPE\": sources.toml defines VENDOR"
    );
    let err = parse(good).unwrap_err().0[0].to_string();
    assert!(
        err.starts_with("test.toml:3:10: cites source key \"VENDOR\", but no valid sources.toml lies beside test.toml"),
        "{err}"
    );
    let empty = good.replace("tcp =", "accept-risk = \" \"\ntcp =");
    assert!(
        cited(&empty).unwrap_err().0[0]
            .to_string()
            .starts_with("test.toml:5:15: accept-risk is empty"),
        "{:?}",
        cited(&empty)
    );
}

#[test]
fn the_register_is_found_beside_a_file_or_one_directory_up_and_never_loaded_as_rules() {
    let dir = std::env::temp_dir().join(format!("egress-filter-register-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("optional")).unwrap();
    let service = |name: &str| {
        format!("[[service]]\nname = \"{name}\"\ncites = [\"VENDOR\"]\nhosts = [\"a.example.com\"]\ntcp = [443]\n")
    };
    std::fs::write(dir.join(REGISTER_FILE), REGISTER).unwrap();
    std::fs::write(dir.join("a.toml"), service("a")).unwrap();
    std::fs::write(dir.join("optional/b.toml"), service("b")).unwrap();
    let whole = Rules::load(std::slice::from_ref(&dir));
    let below = Rules::load(&[dir.join("optional/b.toml")]);
    let register_as_rules = Rules::load(&[dir.join(REGISTER_FILE)]);
    std::fs::remove_dir_all(&dir).unwrap();
    let whole = whole.unwrap();
    assert_eq!(whole.files.len(), 1, "sources.toml is not a rules file");
    assert_eq!(whole.registers[0].sources.len(), 1);
    assert_eq!(below.unwrap().registers.len(), 1, "found one directory up");
    assert!(register_as_rules
        .unwrap_err()
        .to_string()
        .contains("is the source register, not a rules file"));
}

#[test]
fn a_file_that_cites_nothing_ignores_a_register_beside_it() {
    let dir = std::env::temp_dir().join(format!("egress-filter-unrelated-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(REGISTER_FILE), "not = [a register").unwrap();
    std::fs::write(dir.join("a.toml"), GOOD).unwrap();
    let rules = Rules::load(std::slice::from_ref(&dir));
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(rules.unwrap().registers.is_empty());
}

#[test]
fn a_missing_path_is_an_error_naming_it() {
    let err = Rules::load(&[PathBuf::from("/nonexistent/rules.toml")]).unwrap_err();
    assert!(
        err.to_string()
            .contains("/nonexistent/rules.toml: cannot read"),
        "{err}"
    );
}

// --- the shipped rule sets ------------------------------------------------------------------

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(relative)
}

#[test]
fn every_shipped_file_loads_on_its_own_and_together() {
    let mut all = vec![repo_path("rules")];
    for dir in ["rules", "rules/optional"] {
        for entry in std::fs::read_dir(repo_path(dir)).unwrap() {
            let path = entry.unwrap().path();
            let is_register = path.file_name().is_some_and(|n| n == REGISTER_FILE);
            if path.extension().is_some_and(|e| e == "toml") && !is_register {
                let rules =
                    Rules::load(std::slice::from_ref(&path)).unwrap_or_else(|e| panic!("{e}"));
                assert!(!rules.services.is_empty(), "{}", path.display());
                for s in &rules.services {
                    assert!(
                        !s.cites.is_empty() && !s.source.is_empty(),
                        "service {} in {} cites no registered source",
                        s.name,
                        path.display()
                    );
                    assert_eq!(
                        crate::risk::of_service(s).is_empty(),
                        s.accept_risk.is_none(),
                        "service {} in {}: a broad opening needs accept-risk, and accept-risk a broad opening (check --strict)",
                        s.name,
                        path.display()
                    );
                }
                assert_eq!(
                    rules.registers.len(),
                    1,
                    "{} uses rules/sources.toml",
                    path.display()
                );
                if dir == "rules/optional" {
                    all.push(path);
                }
            }
        }
    }
    let rules = Rules::load(&all).unwrap_or_else(|e| panic!("{e}"));
    crate::compile::compile(&rules, &crate::compile::Resolved::default())
        .expect("the shipped rules compile");
}

#[test]
fn the_port_only_fcm_rule_is_opt_in() {
    let default = Rules::load(&[repo_path("rules")]).unwrap();
    let any = |rules: &Rules| {
        rules
            .services
            .iter()
            .any(|s| s.cidrs.iter().any(|c| c.prefix_len() == 0))
    };
    assert!(
        !any(&default),
        "the default rules directory must not open a port to every address"
    );
    let opted = Rules::load(&[
        repo_path("rules"),
        repo_path("rules/optional/google-fcm-port-only.toml"),
    ])
    .unwrap();
    assert!(any(&opted));
}

#[test]
fn the_rules_readme_shows_every_registered_source_with_its_dates() {
    let register = Register::load(&repo_path("rules/sources.toml")).unwrap();
    let readme = std::fs::read_to_string(repo_path("rules/README.md")).unwrap();
    for source in register.sources.values() {
        let row = readme
            .lines()
            .find(|line| line.starts_with(&format!("| {} |", source.key)))
            .unwrap_or_else(|| panic!("rules/README.md has no row for {}", source.key));
        let published = source.published.map(|day| day.to_string());
        assert!(
            row.ends_with(&format!("| {} |", source.checked))
                && published.is_none_or(|day| row.contains(&day)),
            "the row of {} does not show its dates: {row}",
            source.key
        );
    }
}

/// The seed document of the project (Intune network endpoints, 2020): every hostname, address,
/// CIDR and port it names is enforced by the default rules, or listed in rules/README.md under
/// "Left out, and why".
#[test]
fn the_seed_document_is_covered_or_its_omissions_documented() {
    let seed = std::fs::read_to_string(repo_path(
        "filter-user/tests/fixtures/seed-intune-endpoints-2020.sv.md",
    ))
    .unwrap();
    let readme = std::fs::read_to_string(repo_path("rules/README.md")).unwrap();
    let left_out = readme
        .split_once("## Left out")
        .map(|(_, rest)| rest.to_ascii_lowercase())
        .expect("rules/README.md has a 'Left out' section");
    let rules = Rules::load(&[repo_path("rules")]).unwrap();

    let (hosts, nets) = seed_endpoints(&seed);
    assert!(
        hosts.len() > 100 && nets.len() > 50,
        "the extraction found {} hosts, {} nets",
        hosts.len(),
        nets.len()
    );
    let mut missing = Vec::new();
    for host in &hosts {
        let covered =
            rules
                .services
                .iter()
                .flat_map(|s| &s.hosts)
                .any(|p| match hosts::parse(host) {
                    Ok(patterns) => patterns.iter().all(|h| match h {
                        HostPattern::Exact(name) => p.matches(name),
                        HostPattern::Wildcard(suffix) => {
                            *p == HostPattern::Wildcard(suffix.clone()) || p.matches(suffix)
                        }
                    }),
                    Err(_) => false,
                });
        if !covered && !left_out.contains(&format!("`{}`", host.to_ascii_lowercase())) {
            missing.push(host.clone());
        }
    }
    for net in &nets {
        let covered = rules
            .services
            .iter()
            .flat_map(|s| &s.cidrs)
            .any(|c| c.contains(net));
        if !covered
            && !left_out.contains(&format!("`{}`", net.to_string().trim_end_matches("/32")))
            && !left_out.contains(&format!("`{net}`"))
        {
            missing.push(net.to_string());
        }
    }
    // Ports, read off the page by hand: its port columns are prose ("HTTP 80", "TCP 7680").
    for (proto, port) in [
        ("tcp", 80),
        ("tcp", 443),
        ("tcp", 444),
        ("tcp", 5223),
        ("tcp", 7680),
        ("udp", 3544),
    ] {
        let listed = rules
            .services
            .iter()
            .flat_map(|s| &s.ports)
            .any(|p| match (p, proto) {
                (PortSpec::Tcp(r), "tcp") | (PortSpec::Udp(r), "udp") => r.contains(&port),
                _ => false,
            });
        if !listed {
            missing.push(format!("{proto}/{port}"));
        }
    }
    assert!(
        missing.is_empty(),
        "not covered and not documented as left out: {missing:?}"
    );
}

/// Hostnames and IPv4 addresses/CIDRs in the seed page, outside its front matter and links.
fn seed_endpoints(seed: &str) -> (Vec<String>, Vec<IpNet>) {
    let body = seed.splitn(3, "---").nth(2).unwrap_or(seed);
    let mut hosts = Vec::new();
    let mut nets = Vec::new();
    for line in body.lines() {
        // Drop markdown link targets: documentation URLs, not endpoints.
        let mut text = String::new();
        let mut rest = line;
        while let Some(start) = rest.find("](") {
            text.push_str(&rest[..start]);
            rest = rest[start..]
                .find(')')
                .map_or("", |end| &rest[start + end + 1..]);
        }
        text.push_str(rest);
        let text = text.replace("\\*", "*");
        for token in text.split(|c: char| {
            !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '*' | '/' | '#'))
        }) {
            let token = token.trim_matches('.');
            // The page writes APNs' numbered hosts as "#-courier.push.apple.com", # in 0..=50.
            if let Some(rest) = token.strip_prefix("#-") {
                hosts.extend(["0", "50"].map(|n| format!("{n}-{rest}")));
                continue;
            }
            if let Ok(net) = token.parse::<IpNet>() {
                nets.push(net);
            } else if let Ok(addr) = token.parse::<IpAddr>() {
                nets.push(IpNet::from(addr));
            } else if token.contains('.')
                && token.rsplit('.').next().is_some_and(|tld| {
                    tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())
                })
                && !token.contains('/')
            {
                hosts.push(token.to_owned());
            }
        }
    }
    hosts.sort();
    hosts.dedup();
    nets.sort();
    nets.dedup();
    (hosts, nets)
}

#[test]
fn offsets_are_placed_by_line_and_character_column() {
    let text = "a = 1\nbé = 2\n\nlast";
    let lines = Lines::new(text);
    let at = |offset| {
        let location = lines.locate(offset);
        (location.line, location.column)
    };
    assert_eq!(at(0), (1, 1));
    assert_eq!(at(4), (1, 5));
    assert_eq!(at(5), (1, 6), "the newline itself ends line 1");
    assert_eq!(at(6), (2, 1));
    // "bé" is three bytes, two characters: the column counts characters.
    assert_eq!(at(9), (2, 3));
    assert_eq!(at(14), (3, 1), "the empty line");
    assert_eq!(at(15), (4, 1));
    assert_eq!(at(text.len()), (4, 5));
    assert_eq!(at(text.len() + 10), (4, 5), "past the end: the end");
}

#[test]
fn the_service_limit_is_reported_first_with_the_true_count() {
    // More than a service id can number: every one must be counted, none dropped silently.
    let mut text = String::new();
    for i in 0..66_000 {
        let _ = write!(text, "[[service]]\nname = \"s{i}\"\ntcp = [1]\n");
    }
    let err = Rules::parse_sources(&[(Path::new("many.toml"), &text)])
        .expect_err("over the limit")
        .to_string();
    assert!(err.contains("66000 services, more than the 1024"), "{err}");
}
