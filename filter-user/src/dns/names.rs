//! Which services a DNS name belongs to: exact names, `{a..b}` expansions (already exact names
//! by now) and `*.` wildcards at any depth.
//!
//! The forwarder asks this for every question and every name of a CNAME chain, so it is a hash
//! lookup per label rather than a scan over every pattern: `a.b.example.com` is looked up as an
//! exact name, then as a wildcard suffix `b.example.com`, `example.com` and `com`. It must agree
//! with [`HostPattern::matches`], the definition; a property test checks that it does.

use std::collections::HashMap;

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

    /// The services whose hosts match `name` (any case, with or without the trailing dot),
    /// in rule order, each once.
    #[must_use]
    pub fn services(&self, name: &str) -> Vec<usize> {
        let name = normalize(name);
        let mut found: Vec<usize> = self.exact.get(&name).cloned().unwrap_or_default();
        // Every proper suffix that starts after a dot: `*.x` matches names below x, not x.
        for (dot, _) in name.match_indices('.') {
            if let Some(services) = self.wildcard.get(&name[dot + 1..]) {
                found.extend(services);
            }
        }
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Whether any service claims `name`.
    #[must_use]
    pub fn matches_any(&self, name: &str) -> bool {
        !self.services(name).is_empty()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.wildcard.is_empty()
    }
}

/// A DNS name as rules spell it: lower case, no trailing dot.
#[must_use]
pub fn normalize(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
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
        for name in [
            "",
            ".",
            "..",
            "com",
            ".com",
            "manage.microsoft.com..",
            "*.manage.microsoft.com",
        ] {
            let _ = m.services(name);
        }
        assert!(!m.matches_any(""));
        assert!(!m.matches_any("."));
    }

    proptest! {
        #[test]
        fn agrees_with_the_pattern_definition(
            labels in prop::collection::vec(prop::sample::select(vec!["a", "B", "cdn", "x1", "com", "net"]), 0..6),
            dot in any::<bool>(),
        ) {
            let rules = rules(
                "[[service]]\nname = \"one\"\nhosts = [\"*.cdn.com\", \"a.net\"]\ntcp = [1]\n\
                 [[service]]\nname = \"two\"\nhosts = [\"*.cdn.net\", \"b.cdn.net\"]\ntcp = [2]\n\
                 [[service]]\nname = \"three\"\nhosts = [\"*.a.b.cdn.com\"]\ntcp = [3]\n",
            );
            let m = NameMatcher::new(&rules);
            let name = format!("{}{}", labels.join("."), if dot { "." } else { "" });
            let naive: Vec<usize> = rules.services.iter().enumerate()
                .filter(|(_, s)| s.hosts.iter().any(|h| h.matches(&name)))
                .map(|(i, _)| i)
                .collect();
            prop_assert_eq!(m.services(&name), naive, "{}", name);
        }
    }
}
