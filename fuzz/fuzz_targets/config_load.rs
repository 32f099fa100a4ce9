//! The configuration loader on any TOML text (and any HERALD__ variable): an error that names
//! its source, never a panic.
#![no_main]

use herald::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The first line, when it looks like `HERALD__X=v`, is an environment variable.
    let (env, toml) = match text.split_once('\n') {
        Some((first, rest)) if first.starts_with("HERALD__") => match first.split_once('=') {
            Some((k, v)) => (vec![(k.to_string(), v.to_string())], rest),
            None => (vec![], text),
        },
        _ => (vec![], text),
    };
    if let Err(e) = Config::load_with(&[], &[("fuzz.toml", toml)], &env) {
        assert!(!e.source_name.is_empty());
    }
});
