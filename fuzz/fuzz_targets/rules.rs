//! Rule files: whatever the bytes, `Rules::parse_sources` returns rules or diagnostics, never
//! panics, and every diagnostic of a file that is not TOML at all names a position.
#![no_main]

use std::path::Path;

use filter_user::rules::Rules;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(err) = Rules::parse_sources(&[(Path::new("fuzz.toml"), text)]) {
        let message = err.to_string();
        assert!(
            message.contains("fuzz.toml") || message.contains("(all rules)"),
            "{message}"
        );
    }
});
