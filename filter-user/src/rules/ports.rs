//! Port lists: integers, `"lo-hi"` ranges, or `"any"`.

use std::ops::RangeInclusive;

use serde::Deserialize;

/// One item of a `tcp` or `udp` list as written.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum PortItem {
    Number(i64),
    Text(String),
}

/// The port range an item stands for.
pub fn parse(item: &PortItem) -> Result<RangeInclusive<u16>, String> {
    match item {
        PortItem::Number(n) => port(*n).map(|p| p..=p),
        PortItem::Text(text) => {
            let text = text.trim();
            if text.eq_ignore_ascii_case("any") {
                return Ok(0..=u16::MAX);
            }
            if let Ok(n) = text.parse::<i64>() {
                return port(n).map(|p| p..=p);
            }
            let (lo, hi) = text.split_once('-').ok_or_else(|| {
                format!("port {text:?} is neither a number, a \"lo-hi\" range nor \"any\"")
            })?;
            let bound = |s: &str| {
                s.trim()
                    .parse::<i64>()
                    .map_err(|_| format!("range {text:?}: {s:?} is not a number"))
                    .and_then(port)
            };
            let (lo, hi) = (bound(lo)?, bound(hi)?);
            if lo > hi {
                return Err(format!("reversed port range {text:?}; write \"{hi}-{lo}\""));
            }
            Ok(lo..=hi)
        }
    }
}

fn port(n: i64) -> Result<u16, String> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p >= 1)
        .ok_or_else(|| format!("port {n} is outside 1-65535"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        assert_eq!(parse(&PortItem::Number(443)), Ok(443..=443));
        assert_eq!(parse(&PortItem::Text("5228-5230".into())), Ok(5228..=5230));
        assert_eq!(parse(&PortItem::Text("ANY".into())), Ok(0..=65535));
        assert_eq!(
            parse(&PortItem::Text("5223".into())),
            Ok(5223..=5223),
            "a quoted single port"
        );
    }

    #[test]
    fn errors_name_the_problem() {
        for (item, needle) in [
            (PortItem::Number(0), "outside 1-65535"),
            (PortItem::Number(70000), "outside 1-65535"),
            (PortItem::Text("5230-5228".into()), "reversed"),
            (PortItem::Text("http".into()), "neither"),
            (PortItem::Text("1-x".into()), "not a number"),
        ] {
            let err = parse(&item).unwrap_err();
            assert!(err.contains(needle), "{item:?}: {err}");
        }
    }
}
