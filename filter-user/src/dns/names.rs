//! Which services a DNS name belongs to: exact names, `{a..b}` expansions (already exact names
//! by now) and `*.` wildcards at any depth; and the one way the forwarder writes a name down.
//!
//! Matching works on a name's labels, never on its text: a label may hold any byte, a dot
//! included (`e7\.wild.example.net` is the label `e7.wild` under `example.net`), so splitting
//! text on dots would let one label pass for two. A rule's host is made of letters, digits, `-`
//! and `_`; a name with any other byte in a label can match no rule, and matches nothing.
//!
//! The forwarder asks this for every question and every name of a CNAME chain, so it is a hash
//! lookup per label rather than a scan over every pattern: `a.b.example.com` is looked up as an
//! exact name, then as a wildcard suffix `b.example.com`, `example.com` and `com`. It must agree
//! with [`HostPattern::matches`], the definition, on every name that can match; a property test
//! checks that it does.

use std::collections::HashMap;

use hickory_proto::rr::Name;

use crate::rules::{HostPattern, Rules};

/// Service indices (positions in [`Rules::services`]) by the names and suffixes they claim.
#[derive(Debug, Default)]
pub struct NameMatcher {
    exact: HashMap<String, Vec<usize>>,
    wildcard: HashMap<String, Vec<usize>>,
}

impl NameMatcher {
    #[must_use]
    pub fn new(rules: &Rules) -> Self {
        let mut matcher = Self::default();
        for (index, service) in rules.services.iter().enumerate() {
            for host in &service.hosts {
                let (map, key) = match host {
                    HostPattern::Exact(name) => (&mut matcher.exact, name),
                    HostPattern::Wildcard(suffix) => (&mut matcher.wildcard, suffix),
                };
                let services = map.entry(key.clone()).or_default();
                if !services.contains(&index) {
                    services.push(index);
                }
            }
        }
        matcher
    }

    /// The services whose hosts match `name`, in rule order, each once. `name` is in
    /// presentation form, as [`normalize`] writes it (any case, with or without the trailing
    /// dot, `\.` a dot inside a label); text that is no name matches nothing.
    #[must_use]
    pub fn services(&self, name: &str) -> Vec<usize> {
        Name::from_ascii(name).map_or_else(|_| Vec::new(), |name| self.services_of(&name))
    }

    /// The services whose hosts match `name`, by its labels, in rule order, each once.
    #[must_use]
    pub fn services_of(&self, name: &Name) -> Vec<usize> {
        let Some(labels) = rule_labels(name) else {
            return Vec::new();
        };
        let mut found: Vec<usize> = self
            .exact
            .get(&labels.join("."))
            .cloned()
            .unwrap_or_default();
        // Every proper suffix: `*.x` matches names below x, not x.
        for start in 1..labels.len() {
            if let Some(services) = self.wildcard.get(&labels[start..].join(".")) {
                found.extend(services);
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Whether any service claims `name` (presentation form, as for [`Self::services`]).
    ///
    /// Asked for every name of every answer's chain, so the usual name is read as text: one
    /// made only of characters a rule's host may hold (lower-case letters, digits, `-`, `_`)
    /// and dots between non-empty labels has no escape, so its text is its labels joined by
    /// dots, and the text after each dot is a suffix to look up as a wildcard. Any other
    /// spelling (capitals, an escaped byte) goes through [`Self::services`], label by label.
    #[must_use]
    pub fn matches_any(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        let plain = name.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        });
        if !plain {
            return !self.services(name).is_empty();
        }
        self.exact.contains_key(name)
            || name
                .match_indices('.')
                .any(|(dot, _)| self.wildcard.contains_key(&name[dot + 1..]))
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// `name`'s labels in lower case, if every byte of every label is one a rule's host may hold.
fn rule_labels(name: &Name) -> Option<Vec<String>> {
    name.iter()
        .map(|label| {
            label
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
                .then(|| String::from_utf8_lossy(label).to_ascii_lowercase())
        })
        .collect()
}

/// A DNS name as the forwarder records it (learned entries, seen names, events): presentation
/// form in lower case, no trailing dot. hickory escapes any byte that is not plain (a dot
/// inside a label is `\.`), so the text stands for exactly one name and [`NameMatcher::services`]
/// reads it back label for label.
#[must_use]
pub fn normalize(name: &Name) -> String {
    let mut name = name.to_lowercase();
    // Written fully qualified, the last dot is the root's and never an escaped one.
    name.set_fqdn(true);
    let mut text = name.to_ascii();
    text.pop();
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use proptest::prelude::*;

    use super::*;

    fn rules(text: &str) -> Rules {
        Rules::parse_sources(&[(Path::new("t.toml"), text)]).unwrap()
    }

    fn matcher() -> NameMatcher {
        NameMatcher::new(&rules(
            "[[service]]\nname = \"mdm\"\nhosts = [\"*.manage.microsoft.com\", \"manage.microsoft.com\"]\ntcp = [443]\n\
             [[service]]\nname = \"apns\"\nhosts = [\"{1..3}-courier.push.apple.com\"]\ntcp = [5223]\n\
             [[service]]\nname = \"cdn\"\nhosts = [\"*.microsoft.com\"]\ntcp = [80]\n",
        ))
    }

    #[test]
    fn wildcards_match_every_depth_below_but_not_the_suffix_itself() {
        let m = matcher();
        assert_eq!(m.services("a.manage.microsoft.com"), [0, 2]);
        assert_eq!(m.services("x.y.z.manage.microsoft.com"), [0, 2]);
        assert_eq!(
            m.services("manage.microsoft.com"),
            [0, 2],
            "exact + *.microsoft.com"
        );
        assert_eq!(m.services("microsoft.com"), Vec::<usize>::new());
        assert_eq!(
            m.services("evilmanage.microsoft.com"),
            [2],
            "a label boundary, not a substring"
        );
        assert_eq!(
            m.services("manage.microsoft.com.evil.net"),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn case_and_trailing_dots_do_not_matter() {
        let m = matcher();
        assert_eq!(m.services("A.Manage.MICROSOFT.com."), [0, 2]);
        assert_eq!(m.services("2-COURIER.push.apple.com."), [1]);
    }

    #[test]
    fn expansions_match_exactly_their_numbers() {
        let m = matcher();
        assert_eq!(m.services("1-courier.push.apple.com"), [1]);
        assert_eq!(m.services("3-courier.push.apple.com"), [1]);
        assert!(!m.matches_any("4-courier.push.apple.com"));
        assert!(!m.matches_any("x.1-courier.push.apple.com"));
    }

    #[test]
    fn odd_names_match_nothing_and_do_not_panic() {
        let m = matcher();
        assert!(
            m.matches_any("manage.microsoft.com"),
            "the rules do list it"
        );
        for name in [
            "",
            ".",
            "..",
            "com",
            ".com",
            "microsoft.com",
            "manage.microsoft.com..",
            "*.manage.microsoft.com",
            "a..manage.microsoft.com",
        ] {
            assert_eq!(m.services(name), Vec::<usize>::new(), "{name:?}");
        }
    }

    #[test]
    fn a_dot_inside_a_label_is_not_a_label_boundary() {
        let m = NameMatcher::new(&rules(
            "[[service]]\nname = \"wild\"\nhosts = [\"*.wild.example.net\", \"e7.example.net\"]\ntcp = [443]\n",
        ));
        // One label `e7.wild` under example.net: a sibling of wild.example.net, not below it.
        let attack = Name::from_labels([&b"e7.wild"[..], b"example", b"net"]).unwrap();
        assert_eq!(normalize(&attack), "e7\\.wild.example.net");
        assert!(m.services_of(&attack).is_empty());
        assert!(!m.matches_any(&normalize(&attack)), "nor once written down");
        let plain = Name::from_labels([&b"e7"[..], b"wild", b"example", b"net"]).unwrap();
        assert_eq!(m.services_of(&plain), [0], "two labels do match");
    }

    #[test]
    fn labels_with_bytes_no_rule_can_hold_match_nothing() {
        let m = NameMatcher::new(&rules(
            "[[service]]\nname = \"wild\"\nhosts = [\"*.wild.example.net\"]\ntcp = [443]\n",
        ));
        for odd in [&b"a b"[..], b"a\xff", b"a*", b"a/b", b"e7\x00"] {
            let name = Name::from_labels([odd, b"wild", b"example", b"net"]).unwrap();
            assert!(m.services_of(&name).is_empty(), "{name:?}");
            assert!(!m.matches_any(&normalize(&name)), "{}", normalize(&name));
        }
    }

    #[test]
    fn normalize_is_lower_case_without_the_root_dot() {
        for (text, normal) in [
            (
                "Device.Manage.Microsoft.COM.",
                "device.manage.microsoft.com",
            ),
            ("relative.Example.net", "relative.example.net"),
            (".", ""),
        ] {
            assert_eq!(normalize(&Name::from_ascii(text).unwrap()), normal);
        }
    }

    proptest! {
        #[test]
        fn agrees_with_the_pattern_definition(
            labels in prop::collection::vec(prop::sample::select(vec!["a", "B", "cdn", "x1", "com", "net", "a\\.cdn", "b\\032cdn"]), 0..6),
            dot in any::<bool>(),
        ) {
            let rules = rules(
                "[[service]]\nname = \"one\"\nhosts = [\"*.cdn.com\", \"a.net\"]\ntcp = [1]\n\
                 [[service]]\nname = \"two\"\nhosts = [\"*.cdn.net\", \"b.cdn.net\"]\ntcp = [2]\n\
                 [[service]]\nname = \"three\"\nhosts = [\"*.a.b.cdn.com\"]\ntcp = [3]\n",
            );
            let m = NameMatcher::new(&rules);
            let name = format!("{}{}", labels.join("."), if dot { "." } else { "" });
            // A label no rule can spell (an escaped dot or space) matches nothing, though the
            // text-based definition would see `a\\.cdn.com` as below `cdn.com`.
            let can_match = labels.iter().all(|label| !label.contains('\\'));
            let naive: Vec<usize> = rules.services.iter().enumerate()
                .filter(|(_, s)| can_match && s.hosts.iter().any(|h| h.matches(&name)))
                .map(|(i, _)| i)
                .collect();
            prop_assert_eq!(m.matches_any(&name), !naive.is_empty(), "{}", name);
            prop_assert_eq!(m.services(&name), naive, "{}", name);
        }
    }
}
