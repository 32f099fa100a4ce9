//! A shared, immutable-once-shared slice behind an 8-byte pointer (`Arc<[T]>` is 16: a pointer
//! and a length): the length lives in the allocation with the counter. Empty is no allocation.
//! The profile's maps and sets are one each, so a resident user holds four of these.

use std::fmt;

use triomphe::ThinArc;

pub struct ThinSlice<T>(Option<ThinArc<(), T>>);

const _: () = assert!(std::mem::size_of::<ThinSlice<u64>>() == 8);

impl<T> ThinSlice<T> {
    /// From exactly `len` items (`items` yielding another count is a bug: it panics).
    pub fn from_exact(len: usize, items: impl Iterator<Item = T>) -> Self {
        ThinSlice((len > 0).then(|| ThinArc::from_header_and_iter((), Exact { items, len })))
    }

    pub fn as_slice(&self) -> &[T] {
        self.0.as_ref().map_or(&[], |a| &a.slice)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }

    /// Where the shared allocation lives (null when empty), read without touching it: a hint
    /// for prefetching, never dereferenced.
    pub fn heap_addr(&self) -> *const u8 {
        self.0
            .as_ref()
            .map_or(std::ptr::null(), |a| a.heap_ptr().cast())
    }

    /// Bytes of the shared allocation: its counter and length, then the items.
    pub fn heap_bytes(&self) -> usize {
        self.0.as_ref().map_or(0, |a| {
            2 * std::mem::size_of::<usize>() + std::mem::size_of_val::<[T]>(&a.slice)
        })
    }
}

impl<T: Clone> ThinSlice<T> {
    /// From a slice, cloning each item.
    pub fn from_slice(items: &[T]) -> Self {
        ThinSlice::from_exact(items.len(), items.iter().cloned())
    }

    /// Runs `f` on the items, copying them first if the allocation is shared (copy on write).
    pub fn with_mut<R>(&mut self, f: impl FnOnce(&mut [T]) -> R) -> R {
        let Some(arc) = self.0.as_mut() else {
            return f(&mut []);
        };
        if !arc.with_arc(|a| a.is_unique()) {
            *arc = ThinArc::from_header_and_iter((), arc.slice.iter().cloned());
        }
        let mut f = Some(f);
        let done = arc.with_arc_mut(|a| {
            triomphe::Arc::get_mut(a)
                .map(|unique| (f.take().expect("called once"))(unique.slice_mut()))
        });
        match done {
            Some(r) => r,
            // Not expected (the allocation was made unique above and `&mut self` keeps it
            // so), but correct: change a copy and keep that.
            None => {
                let mut items = self.as_slice().to_vec();
                let r = (f.take().expect("not called"))(&mut items);
                *self = ThinSlice::from_slice(&items);
                r
            }
        }
    }
}

impl<T> Default for ThinSlice<T> {
    fn default() -> Self {
        ThinSlice(None)
    }
}

impl<T> Clone for ThinSlice<T> {
    fn clone(&self) -> Self {
        ThinSlice(self.0.clone())
    }
}

impl<T: PartialEq> PartialEq for ThinSlice<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: fmt::Debug> fmt::Debug for ThinSlice<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// An iterator that states its length (a chain of slices' iterators does not).
struct Exact<I> {
    items: I,
    len: usize,
}

impl<I: Iterator> Iterator for Exact<I> {
    type Item = I::Item;
    fn next(&mut self) -> Option<I::Item> {
        let item = self.items.next()?;
        self.len = self.len.saturating_sub(1);
        Some(item)
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.len, Some(self.len))
    }
}

impl<I: Iterator> ExactSizeIterator for Exact<I> {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heap_address_is_the_shared_allocation_and_null_when_empty() {
        assert!(ThinSlice::<u64>::default().heap_addr().is_null());
        let a = ThinSlice::from_slice(&[1u64, 2, 3]);
        let b = a.clone();
        assert_eq!(
            a.heap_addr(),
            b.heap_addr(),
            "a clone shares the allocation"
        );
        let items = a.as_slice().as_ptr() as usize;
        let heap = a.heap_addr() as usize;
        assert!(
            heap < items && items - heap <= 64,
            "the items follow the header"
        );
        assert_ne!(ThinSlice::from_slice(&[1u64]).heap_addr(), a.heap_addr());
    }

    #[test]
    fn copies_on_write_only_when_shared() {
        let mut a = ThinSlice::from_slice(&[1, 2, 3]);
        let before = a.as_slice().as_ptr();
        a.with_mut(|s| s[0] = 10);
        assert_eq!(a.as_slice().as_ptr(), before, "unique: changed in place");
        let b = a.clone();
        a.with_mut(|s| s[1] = 20);
        assert_eq!(a.as_slice(), &[10, 20, 3]);
        assert_eq!(b.as_slice(), &[10, 2, 3], "the shared copy is untouched");
        assert_ne!(a.as_slice().as_ptr(), b.as_slice().as_ptr());
    }

    #[test]
    fn empty_holds_nothing() {
        let mut e: ThinSlice<String> = ThinSlice::from_exact(0, std::iter::empty());
        assert!(e.is_empty() && e.heap_bytes() == 0);
        assert_eq!(e.with_mut(|s| s.len()), 0);
        let s = ThinSlice::from_exact(2, ["a".to_string(), "b".to_string()].into_iter());
        assert_eq!(s.heap_bytes(), 16 + 2 * std::mem::size_of::<String>());
        assert_eq!(
            s,
            ThinSlice::from_slice(&["a".to_string(), "b".to_string()])
        );
    }
}
