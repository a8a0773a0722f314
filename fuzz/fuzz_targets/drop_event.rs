//! A ring-buffer record: decoded into an event and printed (text and JSON) whatever its bytes.
#![no_main]

use filter_common::DropEvent;
use filter_user::daemon::events::Enricher;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(event) = DropEvent::from_record(data) else {
        assert_ne!(data.len(), size_of::<DropEvent>());
        return;
    };
    let record = Enricher::default().record(&event, std::time::UNIX_EPOCH);
    let _text = record.to_text();
    let _json = serde_json::to_string(&record).expect("an event record serializes");
});
