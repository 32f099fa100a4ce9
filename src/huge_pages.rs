//! Transparent huge pages off for Herald's own process, as Redis does (`disable-thp`).
//!
//! mimalloc advises the kernel to back its arenas with 2 MB pages (`MADV_HUGEPAGE`). The
//! pipeline allocates and frees per-flush buffers all the time and mimalloc hands freed
//! memory back to the OS after a second; with huge pages every fault then zeroes 2 MB instead
//! of 4 KB (`clear_page_erms` was a fifth of the pipeline threads' samples) and a fault can
//! stall a thread long enough to show in the tail latency. Every binary that links Herald
//! with mimalloc (the `herald` command, the benchmarks) calls [`disable`] first.

/// Asks the kernel not to use transparent huge pages for this process (and the processes it
/// starts); the mappings that already exist included. A kernel without the setting (or
/// another OS) leaves things as they are: an error to log, nothing else.
pub fn disable() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes plain integer arguments and touches no memory of
        // ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Whether transparent huge pages are off for this process (`None` where the kernel cannot
/// say).
pub fn disabled() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as above; PR_GET_THP_DISABLE answers in its return value.
        let rc = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        (rc >= 0).then_some(rc == 1)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn disabling_takes_effect_for_the_process() {
        super::disable().expect("prctl(PR_SET_THP_DISABLE)");
        #[cfg(target_os = "linux")]
        assert_eq!(super::disabled(), Some(true));
    }
}
