//! Prefetching. With many resident users every record's user is cold, and so is every
//! snapshot a store replaces: finding one, then its boxed state, then the parts it points to
//! are cache misses one after another. Where a loop knows which items it will reach next, it
//! asks for them a few items ahead ([`prefetch`] never waits), so each item's lines arrive
//! while the ones before it are worked on. A prefetch is a hint: nothing here changes what a
//! program does, only when memory is read.

/// Asks for the cache line at `addr` (nothing on a null address or other architectures).
#[inline]
pub fn prefetch(addr: *const u8) {
    #[cfg(target_arch = "x86_64")]
    if !addr.is_null() {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        // SAFETY: a prefetch reads nothing into the program and never faults, whatever the
        // address.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(addr.cast()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = addr;
}

/// Asks for the `bytes` from `addr`, a cache line at a time.
#[inline]
pub fn prefetch_bytes(addr: *const u8, bytes: usize) {
    if addr.is_null() {
        return;
    }
    let mut offset = 0;
    while offset < bytes {
        prefetch(addr.wrapping_add(offset));
        offset += 64;
    }
}

/// Where an `Arc`'s allocation starts and how long it is (its two counters, then the value),
/// read without touching it.
pub fn arc_allocation<T>(arc: &std::sync::Arc<T>) -> (*const u8, usize) {
    let counters = 2 * std::mem::size_of::<usize>();
    (
        std::sync::Arc::as_ptr(arc)
            .cast::<u8>()
            .wrapping_sub(counters),
        counters + std::mem::size_of::<T>(),
    )
}

/// Drops `items` (in reverse order), asking eight items ahead for each one's own allocation
/// (`own`: its start and length, known without reading it) and four ahead for what it points
/// to (`parts`, read from it by then).
pub fn drop_ahead<T, const N: usize>(
    mut items: Vec<T>,
    own: impl Fn(&T) -> (*const u8, usize),
    parts: impl Fn(&T) -> [*const u8; N],
) {
    while let Some(item) = items.pop() {
        let left = items.len();
        if left >= 8 {
            let (addr, bytes) = own(&items[left - 8]);
            prefetch_bytes(addr, bytes);
        }
        if left >= 4 {
            for addr in parts(&items[left - 4]) {
                prefetch(addr);
            }
        }
        drop(item);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn dropping_ahead_drops_every_item_once() {
        let marker = Arc::new(());
        let items: Vec<Arc<()>> = (0..20).map(|_| marker.clone()).collect();
        assert_eq!(Arc::strong_count(&marker), 21);
        drop_ahead(items, arc_allocation, |_| [std::ptr::null(); 1]);
        assert_eq!(Arc::strong_count(&marker), 1);
    }

    #[test]
    fn an_arcs_allocation_holds_its_value() {
        let arc = Arc::new([7u64; 4]);
        let (start, len) = arc_allocation(&arc);
        let value = Arc::as_ptr(&arc) as usize;
        assert!(start as usize <= value);
        assert!(value + 32 <= start as usize + len);
    }
}
