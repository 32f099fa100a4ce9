//! The allocator's settings. Every binary that links Herald (the `herald` command, the
//! benchmarks) installs mimalloc as its global allocator and calls [`tune`] first.

/// mimalloc's `mi_option_purge_delay` (its option number in mimalloc 3's `mi_option_e`).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// How long freed memory stays with the process before mimalloc returns it to the OS.
///
/// mimalloc's default is 10 ms. The pipeline frees its per-flush buffers (snapshots, offset
/// lists, write batches: hundreds of KB each) and allocates them again a few milliseconds to a
/// quarter of a second later; returned in between, each page faults back in zero-filled, and
/// with transparent huge pages a fault zeroes 2 MB. At 1 s the memory is still returned when
/// the process goes quiet, and `cargo bench --bench pipeline` runs ~13 % faster
/// (BENCHMARKS.md).
const PURGE_DELAY_MS: std::os::raw::c_long = 1000;

/// Applies the settings above. Call it before the process starts threads: mimalloc's option
/// setters are not thread-safe.
pub fn tune() {
    // SAFETY: sets a plain integer option; called before other threads allocate.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_is_the_option_it_names() {
        // SAFETY: reads an integer option.
        let get = || unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        // mimalloc's documented default for the purge delay (no other test tunes it).
        assert_eq!(get(), 10);
        super::tune();
        assert_eq!(get(), super::PURGE_DELAY_MS);
    }
}
