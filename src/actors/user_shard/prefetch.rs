//! Prefetching a batch's users before it is applied. At many resident users each record's
//! user is cold: finding it, its boxed state and the parts an event changes are misses one
//! after another, several per record. Looked up together first, in a loop that does nothing
//! else, the lookups of different records overlap in the processor; the states' and parts'
//! cache lines are then asked for without waiting on them. Nothing here changes a user: a
//! prefetch is a hint, and a record's own lookup still decides where it goes.

/// Asks for the cache line at `addr` (nothing on a null address or other architectures).
#[inline]
pub(super) fn prefetch(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    if !addr.is_null() {
        // A prefetch never faults and reads nothing into the program: any address is fine.
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        unsafe { _mm_prefetch::<_MM_HINT_T0>(addr.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Asks for the `bytes` from `addr`, a cache line at a time.
#[inline]
pub(super) fn prefetch_bytes(addr: *const u8, bytes: usize) {
    if addr.is_null() {
        return;
    }
    let mut offset = 0;
    while offset < bytes {
        prefetch(addr.wrapping_add(offset));
        offset += 64;
    }
}
