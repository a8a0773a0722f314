//! The state file a restart takes back: damaged contents are an error, never a panic.
#![no_main]

use filter_user::state::State;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(state) = serde_json::from_slice::<State>(data) {
        // What a restart does with it: every learned view and host is read.
        let _again = serde_json::to_vec(&state).expect("a parsed state writes back");
    }
});
