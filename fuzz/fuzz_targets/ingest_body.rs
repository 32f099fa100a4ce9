//! The ingest's body decoding (identity or gzip, capped at 500 KB decompressed) on any bytes,
//! raw and gzipped: never a panic, never more than the cap.
#![no_main]

use std::io::Write;

use herald::adapters::http::ingest::undo_encoding;
use herald::domain::segment::MAX_REQUEST_BYTES;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // As received: a client that says gzip and sends anything.
    if let Ok(plain) = undo_encoding(Some("gzip"), data.to_vec()) {
        assert!(plain.len() <= MAX_REQUEST_BYTES);
    }
    // Real gzip of the input round-trips (below the cap).
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    let zipped = e.finish().unwrap();
    match undo_encoding(Some("GZip "), zipped) {
        Ok(plain) => assert_eq!(plain, data),
        Err(e) => assert!(data.len() > MAX_REQUEST_BYTES, "{e}"),
    }
    assert_eq!(undo_encoding(None, data.to_vec()).as_deref(), Ok(data));
    assert!(undo_encoding(Some("br"), data.to_vec()).is_err());
});
