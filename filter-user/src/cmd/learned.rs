//! `egress-filter learned`: the addresses the running filter's DNS forwarder learned, read from
//! its state file.
//!
//! Example: `egress-filter learned --json`

use std::fmt::Write as _;

use anyhow::Context as _;

use crate::{dns::LearnedView, pins::PinDir, state::State};

/// `learned`: list address, service, the name it was learned from, age, and when it expires.
pub type Args = super::PinnedReport;

/// Reads what was learned and renders it as asked.
pub fn run(args: &Args) -> anyhow::Result<String> {
    let learned = read(&PinDir::new(&args.pin_path))?;
    Ok(if args.json {
        serde_json::to_string_pretty(&learned)? + "\n"
    } else {
        to_text(&learned)
    })
}

/// What the running daemon's forwarder has learned, as of now: its learned store, which every
/// answer reaches before the client does (ages and expiries moved on to now).
pub fn read(pins: &PinDir) -> anyhow::Result<Vec<LearnedView>> {
    let state = State::load(&pins.state_file())?.with_context(|| {
        format!(
            "no filter runs with --pin-path {} (no state file)",
            pins.root().display()
        )
    })?;
    anyhow::ensure!(
        state.dns.is_some(),
        "the filter at {} does not answer DNS (run it with --dns-listen)",
        pins.root().display()
    );
    if let Some(learned) = crate::learned_store::load(&pins.state_file())? {
        return Ok(learned);
    }
    // A daemon from before the learned store kept the list in the state file.
    let elapsed = State::now_secs().saturating_sub(state.written_at);
    Ok(state
        .learned
        .into_iter()
        .filter(|l| l.expires_in_secs > elapsed)
        .map(|mut l| {
            l.age_secs += elapsed;
            l.expires_in_secs -= elapsed;
            l
        })
        .collect())
}

/// The learned-address listing `show --resolve` and `learned` print.
#[must_use]
pub fn to_text(learned: &[LearnedView]) -> String {
    let mut out = format!("{} addresses learned from DNS answers:\n", learned.len());
    if learned.is_empty() {
        return out;
    }
    let rows: Vec<[String; 5]> = learned
        .iter()
        .map(|l| {
            let name = if l.name == l.question {
                l.name.clone()
            } else {
                format!("{} ({})", l.name, l.question)
            };
            [
                l.address.to_string(),
                l.service.clone(),
                name,
                format!("{}s", l.age_secs),
                format!("{}s", l.expires_in_secs),
            ]
        })
        .collect();
    let header = ["ADDRESS", "SERVICE", "NAME (QUESTION)", "AGE", "EXPIRES IN"].map(str::to_owned);
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            rows.iter()
                .chain([&header])
                .map(|r| r[c].len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(&rows) {
        let _ = writeln!(
            out,
            "  {:w0$}  {:w1$}  {:w2$}  {:>w3$}  {:>w4$}",
            row[0],
            row[1],
            row[2],
            row[3],
            row[4],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2],
            w3 = widths[3],
            w4 = widths[4],
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learned_addresses_line_up_under_their_headings() {
        let view = |address: &str, service: &str, name: &str, question: &str| LearnedView {
            address: address.parse().unwrap(),
            service: service.into(),
            name: name.into(),
            question: question.into(),
            age_secs: 3,
            expires_in_secs: 956,
        };
        let text = to_text(&[
            view(
                "198.51.100.14",
                "apple-intune-dependencies",
                "a.mzstatic.com",
                "a.mzstatic.com",
            ),
            view("2001:db8::1", "cdn", "edge.cdn.example", "app.example.com"),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "2 addresses learned from DNS answers:");
        let column = lines[1].find("NAME (QUESTION)").unwrap();
        assert_eq!(lines[2].find("a.mzstatic.com"), Some(column));
        assert_eq!(
            lines[3].find("edge.cdn.example (app.example.com)"),
            Some(column)
        );
        assert!(
            lines.iter().skip(1).all(|l| l.len() == lines[1].len()),
            "{text}"
        );
    }
}
