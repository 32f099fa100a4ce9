//! §2's decoder on any bytes: never a panic, the same verdict twice, and an accepted message
//! keeps the limits it was checked against.
#![no_main]

use herald::domain::event::decode;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 32 * 1024;

fuzz_target!(|data: &[u8]| {
    let first = decode(data, MAX);
    assert_eq!(first, decode(data, MAX), "the decoder is not deterministic");
    if first.is_ok() {
        assert!(data.len() <= MAX);
        assert!(std::str::from_utf8(data).is_ok());
    }
});
