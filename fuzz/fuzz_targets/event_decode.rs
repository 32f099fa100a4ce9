//! §2's decoder on any bytes: never a panic, the same verdict twice (and the same from a
//! record's buffer, where `properties` share it), and an accepted message keeps the limits it
//! was checked against.
#![no_main]

use herald::domain::event::{decode, decode_record};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 32 * 1024;

fuzz_target!(|data: &[u8]| {
    let first = decode(data, MAX);
    assert_eq!(first, decode(data, MAX), "the decoder is not deterministic");
    let record = bytes::Bytes::copy_from_slice(data);
    assert_eq!(first, decode_record(&record, MAX), "a record's buffer decodes otherwise");
    if first.is_ok() {
        assert!(data.len() <= MAX);
        assert!(std::str::from_utf8(data).is_ok());
    }
});
