//! The Tracking API's request parser (`/v1/<route>` bodies, after gzip): never a panic, and
//! what it would publish is what it checked — each completed payload, decoded again, gives the
//! verdict it was published (or dead-lettered) with, keyed by its user.
#![no_main]

use herald::domain::event::decode;
use herald::domain::segment::{prepare, Route, MAX_MESSAGE_BYTES};
use libfuzzer_sys::fuzz_target;

const ROUTES: [&str; 8] = [
    "batch", "import", "identify", "track", "page", "screen", "group", "alias",
];
/// Limit on the completed message: the §2 limit Herald runs with by default.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let route = Route::parse(ROUTES[selector as usize % ROUTES.len()]).unwrap();
    let Ok(request) = prepare(route, body, 1_795_392_000_000, Some("fuzz"), LIMIT) else {
        return;
    };
    for m in &request.messages {
        assert_eq!(
            decode(&m.payload, LIMIT),
            m.verdict,
            "message {} re-decodes to another verdict",
            m.index
        );
        let value: serde_json::Value =
            serde_json::from_slice(&m.payload).expect("a completed message is JSON");
        for field in ["messageId", "receivedAt", "timestamp"] {
            assert!(
                value[field].is_string() || m.verdict.is_err(),
                "{field} missing"
            );
        }
        if m.verdict.is_ok() {
            assert!(!m.key.is_empty(), "an accepted message has a key");
            assert!(m.payload.len() <= LIMIT.max(MAX_MESSAGE_BYTES * 2));
        }
    }
});
