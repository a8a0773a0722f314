//! Host patterns: exact names, `*.` wildcards, and `{a..b}` numbered expansions.

use std::fmt;

/// Most names one `{a..b}` may expand to. Vendors number hosts in the tens (`0..50`); a larger
/// range is far more likely a typo than a real list, and each name costs a DNS query per refresh.
pub const MAX_EXPANSION: u32 = 256;

/// A validated, lower-case host pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostPattern {
    /// One DNS name, resolvable by polling.
    Exact(String),
    /// `*.suffix`: every name below `suffix` at any depth, not `suffix` itself. Polling cannot
    /// resolve it; vendor CIDRs and DNS awareness serve it.
    Wildcard(String),
}

impl HostPattern {
    /// Whether `name` (any case, optional trailing dot) matches this pattern.
    #[must_use]
    pub fn matches(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        match self {
            Self::Exact(exact) => name.eq_ignore_ascii_case(exact),
            Self::Wildcard(suffix) => {
                name.len() > suffix.len() + 1
                    && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
                    && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name),
            Self::Wildcard(suffix) => write!(f, "*.{suffix}"),
        }
    }
}

/// Parses one `hosts` entry into the patterns it stands for.
pub fn parse(entry: &str) -> Result<Vec<HostPattern>, String> {
    let lower = entry.trim().to_ascii_lowercase();
    let name = lower.strip_suffix('.').unwrap_or(&lower);
    if name.is_empty() {
        return Err("empty hostname".into());
    }
    let names = expand(name)?;
    names
        .into_iter()
        .map(|name| {
            if let Some(suffix) = name.strip_prefix("*.") {
                validate_name(suffix).map_err(|e| format!("invalid hostname {entry:?}: {e}"))?;
                Ok(HostPattern::Wildcard(suffix.to_owned()))
            } else if name.contains('*') {
                Err(format!(
                    "invalid hostname {entry:?}: a wildcard may only be a whole first label, as in \"*.example.com\""
                ))
            } else {
                validate_name(&name).map_err(|e| format!("invalid hostname {entry:?}: {e}"))?;
                Ok(HostPattern::Exact(name))
            }
        })
        .collect()
}

/// Expands one `{a..b}` (at most one per name) into the names it numbers.
fn expand(name: &str) -> Result<Vec<String>, String> {
    let Some(open) = name.find('{') else {
        if name.contains('}') {
            return Err(format!("unbalanced '}}' in {name:?}"));
        }
        return Ok(vec![name.to_owned()]);
    };
    let close = name[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| format!("unclosed '{{' in {name:?}; write a range as {{0..50}}"))?;
    let (prefix, inner, suffix) = (&name[..open], &name[open + 1..close], &name[close + 1..]);
    if suffix.contains(['{', '}']) || prefix.contains('}') {
        return Err(format!(
            "{name:?} has more than one {{a..b}} expansion; one per name is allowed"
        ));
    }
    let (lo, hi) = inner
        .split_once("..")
        .and_then(|(lo, hi)| Some((lo.parse::<u32>().ok()?, hi.parse::<u32>().ok()?)))
        .ok_or_else(|| {
            format!("malformed expansion {{{inner}}} in {name:?}; write it as {{0..50}}")
        })?;
    if lo > hi {
        return Err(format!(
            "reversed expansion {{{inner}}} in {name:?}; write {{{hi}..{lo}}}"
        ));
    }
    if hi - lo + 1 > MAX_EXPANSION {
        return Err(format!(
            "expansion {{{inner}}} in {name:?} makes {} names, more than {MAX_EXPANSION}",
            u64::from(hi - lo) + 1
        ));
    }
    Ok((lo..=hi).map(|n| format!("{prefix}{n}{suffix}")).collect())
}

/// RFC 1035 shape, relaxed for underscores (seen in real service names).
fn validate_name(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("longer than 253 characters".into());
    }
    if !name.contains('.') {
        return Err("not a fully qualified name (no dot)".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label (two dots in a row?)".into());
        }
        if label.len() > 63 {
            return Err(format!("label {label:?} is longer than 63 characters"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label {label:?} starts or ends with '-'"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return Err(format!("character {c:?} is not allowed in a hostname"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_numbers_names() {
        let hosts = parse("{0..2}-courier.push.apple.com").unwrap();
        assert_eq!(
            hosts,
            ["0", "1", "2"].map(|n| HostPattern::Exact(format!("{n}-courier.push.apple.com")))
        );
        assert_eq!(parse("alt{1..8}-mtalk.google.com").unwrap().len(), 8);
    }

    #[test]
    fn bad_expansions_say_what_is_wrong() {
        for (entry, needle) in [
            ("{5..1}.example.com", "reversed"),
            ("{0..9999}.example.com", "more than 256"),
            ("{a..b}.example.com", "malformed"),
            ("{0..3.example.com", "unclosed"),
            ("{0..1}-{0..1}.example.com", "more than one"),
            ("x}.example.com", "unbalanced"),
        ] {
            let err = parse(entry).unwrap_err();
            assert!(err.contains(needle), "{entry}: {err}");
        }
    }

    #[test]
    fn names_are_normalised_and_validated() {
        assert_eq!(
            parse("EnterpriseEnrollment.Manage.Microsoft.com.").unwrap(),
            [HostPattern::Exact(
                "enterpriseenrollment.manage.microsoft.com".into()
            )]
        );
        for bad in [
            "exa mple.com",
            "-a.example.com",
            "a..example.com",
            "localhost",
            "a.*.example.com",
            "*",
        ] {
            assert!(parse(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn wildcard_matches_below_at_any_depth_but_not_itself() {
        let pattern = &parse("*.manage.microsoft.com").unwrap()[0];
        assert!(pattern.matches("fef.msua06.manage.microsoft.com"));
        assert!(
            pattern.matches("A.Manage.Microsoft.COM."),
            "case and trailing dot"
        );
        assert!(
            !pattern.matches("manage.microsoft.com"),
            "not the suffix itself"
        );
        assert!(
            !pattern.matches("evilmanage.microsoft.com"),
            "label boundary"
        );
    }
}
