//! The source register: `sources.toml`, the pages rules cite by key.
//!
//! A rule says where its endpoints come from with `cites = ["KEY", …]`; the register gives each
//! key the page's title, URL, the date the vendor gives it and the date the rules were last
//! compared with it. The register is a separate, well-known file rather than a table type inside
//! rules files: a directory load skips it by name, a single rules file finds it beside itself (or
//! one directory up, so `rules/optional/*.toml` use `rules/sources.toml`), and no rules file has
//! to carry bibliography to be valid on its own.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::{value::Datetime, Spanned};

use super::{Diagnostic, Lines, Location};

/// The register's file name. Directory loads skip it; it is never a rules file.
pub const REGISTER_FILE: &str = "sources.toml";

/// One cited page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub key: String,
    pub title: String,
    pub url: String,
    /// The date the vendor gives the page; `None` where it states none.
    pub published: Option<Day>,
    /// When the rules were last compared with the page.
    pub checked: Day,
    /// How the page was read, where that matters (a copy, a transcription, a hidden table).
    pub note: String,
    /// Where the entry is defined, for messages.
    pub location: Location,
}

/// Every source of one `sources.toml`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Register {
    pub file: PathBuf,
    pub sources: BTreeMap<String, Source>,
}

impl Register {
    /// The register a rules file uses: `sources.toml` beside it, else in the directory above.
    #[must_use]
    pub fn path_for(rules_file: &Path) -> Option<PathBuf> {
        let beside = rules_file.parent()?;
        [Some(beside), beside.parent()]
            .into_iter()
            .flatten()
            .map(|dir| dir.join(REGISTER_FILE))
            .find(|candidate| candidate.is_file())
    }

    /// Parses a register; every problem is reported with its location.
    pub fn parse(file: &Path, text: &str) -> Result<Self, Vec<Diagnostic>> {
        let lines = Lines::new(text);
        let at = |offset: usize| lines.locate(offset);
        let diagnostic = |offset: Option<usize>, message: String| Diagnostic {
            file: file.to_path_buf(),
            location: offset.map(at),
            message,
        };
        let raw: RawRegister = toml::from_str(text).map_err(|err| {
            vec![diagnostic(
                err.span().map(|s| s.start),
                err.message().to_owned(),
            )]
        })?;
        let mut errors = Vec::new();
        let mut sources = BTreeMap::new();
        for entry in raw.source {
            let start = entry.span().start;
            let raw = entry.into_inner();
            let key = raw.key.get_ref().clone();
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                errors.push(diagnostic(
                    Some(raw.key.span().start),
                    format!("source key {key:?} must be letters, digits and '-'"),
                ));
            }
            for (field, value) in [("title", &raw.title), ("url", &raw.url)] {
                if value.get_ref().trim().is_empty() {
                    errors.push(diagnostic(
                        Some(value.span().start),
                        format!("source {key:?} has an empty {field}"),
                    ));
                }
            }
            let published = match raw.published.as_ref().map(Day::from_toml) {
                Some(Err(message)) => {
                    errors.push(diagnostic(
                        raw.published.as_ref().map(|p| p.span().start),
                        message,
                    ));
                    None
                }
                Some(Ok(day)) => Some(day),
                None => None,
            };
            let checked = match Day::from_toml(&raw.checked) {
                Ok(day) => day,
                Err(message) => {
                    errors.push(diagnostic(Some(raw.checked.span().start), message));
                    continue;
                }
            };
            let source = Source {
                key: key.clone(),
                title: raw.title.into_inner(),
                url: raw.url.into_inner(),
                published,
                checked,
                note: raw.note,
                location: at(start),
            };
            if let Some(first) = sources.insert(key.clone(), source) {
                errors.push(diagnostic(
                    Some(start),
                    format!(
                        "source key {key:?} is already defined at line {}",
                        first.location.line
                    ),
                ));
            }
        }
        if errors.is_empty() {
            Ok(Self {
                file: file.to_path_buf(),
                sources,
            })
        } else {
            Err(errors)
        }
    }

    /// The registers the rules files `(path, text)` use, each read once, and which one each
    /// file uses (an index into the first). Only a file that cites a key looks for a register,
    /// so a `sources.toml` that belongs to something else never breaks rules that cite nothing.
    /// A register that fails to parse is reported once in `errors`.
    pub fn load_for(
        files: &[(PathBuf, String)],
        errors: &mut Vec<Diagnostic>,
    ) -> (Vec<Self>, HashMap<PathBuf, usize>) {
        let mut registers: Vec<Self> = Vec::new();
        let mut register_of = HashMap::new();
        for (file, text) in files {
            if !cites_any(text) {
                continue;
            }
            let Some(register_path) = Self::path_for(file) else {
                continue;
            };
            if let Some(index) = registers.iter().position(|r| r.file == register_path) {
                register_of.insert(file.clone(), index);
            } else if !errors.iter().any(|e| e.file == register_path) {
                match Self::load(&register_path) {
                    Ok(register) => {
                        register_of.insert(file.clone(), registers.len());
                        registers.push(register);
                    }
                    Err(more) => errors.extend(more),
                }
            }
        }
        (registers, register_of)
    }

    /// Reads and parses the register at `file`.
    pub fn load(file: &Path) -> Result<Self, Vec<Diagnostic>> {
        let text = std::fs::read_to_string(file)
            .map_err(|err| vec![Diagnostic::file(file, format!("cannot read: {err}"))])?;
        Self::parse(file, &text)
    }

    /// Why `key` cannot be cited, if it cannot.
    pub(super) fn refuse(register: Option<&Self>, key: &str, rules_file: &Path) -> Option<String> {
        match register {
            None => Some(format!(
                "cites source key {key:?}, but no valid {REGISTER_FILE} lies beside {} or one directory up",
                rules_file.display()
            )),
            Some(register) if !register.sources.contains_key(key) => Some(format!(
                "unknown source key {key:?}: {} defines {}",
                register.file.display(),
                register.sources.keys().cloned().collect::<Vec<_>>().join(", ")
            )),
            Some(_) => None,
        }
    }
}

/// Whether a rules file's text cites a key. Text that does not parse cites nothing here; the
/// rules parser reports it.
fn cites_any(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default)]
        service: Vec<ProbeService>,
    }
    #[derive(Deserialize)]
    struct ProbeService {
        #[serde(default)]
        cites: Vec<toml::Value>,
    }
    toml::from_str::<Probe>(text)
        .is_ok_and(|probe| probe.service.iter().any(|s| !s.cites.is_empty()))
}

/// A calendar day, counted from 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Day(pub i64);

impl Day {
    /// Today, by the system clock (UTC).
    #[must_use]
    pub fn today() -> Self {
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Self(i64::try_from(seconds / 86_400).unwrap_or(i64::MAX))
    }

    /// A TOML local date (`2026-03-24`, unquoted); anything with a time is refused.
    fn from_toml(value: &Spanned<Datetime>) -> Result<Self, String> {
        let datetime = value.get_ref();
        match (datetime.date, datetime.time) {
            (Some(date), None) => Ok(Self::from_civil(
                i64::from(date.year),
                i64::from(date.month),
                i64::from(date.day),
            )),
            _ => Err(format!(
                "{datetime} is not a plain date; write it as 2026-03-24"
            )),
        }
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
    fn from_civil(year: i64, month: i64, day: i64) -> Self {
        let year = if month <= 2 { year - 1 } else { year };
        let era = year.div_euclid(400);
        let year_of_era = year - era * 400;
        let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
        let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
        Self(era * 146_097 + day_of_era - 719_468)
    }

    /// The date for display, the inverse of [`Day::from_civil`].
    fn to_civil(self) -> (i64, i64, i64) {
        let z = self.0 + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let shifted_month = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
        let month = if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        (year, month, day)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = self.to_civil();
        write!(f, "{year:04}-{month:02}-{day:02}")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegister {
    #[serde(default)]
    source: Vec<Spanned<RawSource>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    key: Spanned<String>,
    title: Spanned<String>,
    url: Spanned<String>,
    #[serde(default)]
    published: Option<Spanned<Datetime>>,
    checked: Spanned<Datetime>,
    #[serde(default)]
    note: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGISTER: &str = r#"
[[source]]
key = "MS-I26"
title = "Network endpoints for Microsoft Intune"
url = "https://learn.microsoft.com/intune/intune-service/fundamentals/intune-endpoints"
published = 2026-03-24
checked = 2026-12-02

[[source]]
key = "GO-AE"
title = "Android Enterprise Network Requirements"
url = "https://support.google.com/work/android/answer/10513641"
checked = 2026-12-02
"#;

    #[test]
    fn a_register_reads_its_entries_and_dates() {
        let register = Register::parse(Path::new("sources.toml"), REGISTER).unwrap();
        let intune = &register.sources["MS-I26"];
        assert_eq!(
            intune.published.map(|d| d.to_string()).as_deref(),
            Some("2026-03-24")
        );
        assert_eq!(intune.checked.to_string(), "2026-12-02");
        assert_eq!(intune.location.line, 2);
        assert_eq!(register.sources["GO-AE"].published, None, "no date stated");
    }

    #[test]
    fn days_count_from_the_epoch_and_print_back() {
        assert_eq!(Day::from_civil(1970, 1, 1), Day(0));
        assert_eq!(Day::from_civil(2000, 3, 1), Day(11_017));
        for day in [-1, 0, 59, 60, 11_016, 20_000, 20_789] {
            let (y, m, d) = Day(day).to_civil();
            assert_eq!(Day::from_civil(y, m, d), Day(day));
        }
        assert_eq!(Day(20_424).to_string(), "2025-12-02");
    }

    #[test]
    fn register_mistakes_are_located() {
        for (text, expected) in [
            (
                "[[source]]\nkey = \"A\"\ntitle = \"t\"\nurl = \"u\"\nchecked = \"2026-01-01\"\n",
                "sources.toml:5:11:",
            ),
            (
                "[[source]]\nkey = \"A\"\ntitle = \"t\"\nurl = \"u\"\nchecked = 2026-01-01T10:00:00\n",
                "sources.toml:5:11: 2026-01-01T10:00:00 is not a plain date",
            ),
            (
                "[[source]]\nkey = \"A B\"\ntitle = \"t\"\nurl = \"u\"\nchecked = 2026-01-01\n",
                "sources.toml:2:7: source key \"A B\" must be",
            ),
            (
                "[[source]]\nkey = \"A\"\ntitle = \"\"\nurl = \"u\"\nchecked = 2026-01-01\n",
                "sources.toml:3:9: source \"A\" has an empty title",
            ),
            (
                "[[source]]\nkey = \"A\"\ntitle = \"t\"\nurl = \"u\"\nchecked = 2026-01-01\n[[source]]\nkey = \"A\"\ntitle = \"t\"\nurl = \"u\"\nchecked = 2026-01-01\n",
                "sources.toml:6:1: source key \"A\" is already defined at line 1",
            ),
        ] {
            let errors = Register::parse(Path::new("sources.toml"), text).unwrap_err();
            assert!(
                errors.iter().any(|e| e.to_string().starts_with(expected)),
                "expected {expected:?}, got {errors:?}"
            );
        }
    }
}
