//! A double-ended queue in 24 bytes: a boxed slice as its storage, and the first item's index
//! and the count as `u32`s (a `VecDeque` spends 32: its capacity, first index and length are
//! `usize`s). For the dedup window that every resident user carries, where those 8 bytes are
//! what puts a live state over an allocator size class. Grows only when asked
//! ([`Ring::reserve_exact`], or by one when full), to exactly what is asked.

/// Items oldest first; at most `u32::MAX`.
#[derive(Debug, Clone, Default)]
pub struct Ring<T> {
    slots: Box<[T]>,
    head: u32,
    len: u32,
}

impl<T: Copy + Default> Ring<T> {
    pub fn with_capacity(capacity: usize) -> Self {
        Ring {
            slots: vec![T::default(); capacity].into_boxed_slice(),
            head: 0,
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the storage lives, read without touching it: a hint for prefetching.
    pub fn storage_addr(&self) -> *const u8 {
        self.slots.as_ptr().cast()
    }

    /// Bytes of the storage from [`Ring::storage_addr`] (for prefetching all of it).
    pub fn storage_bytes(&self) -> usize {
        std::mem::size_of_val::<[T]>(&self.slots)
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Makes room for at least `additional` more items, exactly (no rounding up).
    pub fn reserve_exact(&mut self, additional: usize) {
        let wanted = self.len() + additional;
        if wanted > self.capacity() {
            self.regrow(wanted);
        }
    }

    /// Appends `item` after the newest (growing by one if full).
    pub fn push_back(&mut self, item: T) {
        if self.len() == self.capacity() {
            self.regrow(self.capacity() + 1);
        }
        let at = self.physical(self.len());
        self.slots[at] = item;
        self.len += 1;
    }

    /// The oldest item.
    pub fn front(&self) -> Option<&T> {
        (!self.is_empty()).then(|| &self.slots[self.head as usize])
    }

    /// Removes and returns the oldest item.
    pub fn pop_front(&mut self) -> Option<T> {
        if self.is_empty() {
            return None;
        }
        let item = self.slots[self.head as usize];
        self.head = ((self.head as usize + 1) % self.capacity()) as u32;
        self.len -= 1;
        Some(item)
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        let (first, second) = self.halves();
        first.iter().chain(second.iter())
    }

    /// Oldest first.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut T> + '_ {
        let (head, first_len, wrapped) = self.spans();
        let (before, from_head) = self.slots.split_at_mut(head);
        from_head[..first_len]
            .iter_mut()
            .chain(before[..wrapped].iter_mut())
    }

    /// The items as two slices, oldest first: from the first index to the storage's end, then
    /// from its start.
    fn halves(&self) -> (&[T], &[T]) {
        let (head, first_len, wrapped) = self.spans();
        (&self.slots[head..head + first_len], &self.slots[..wrapped])
    }

    /// Where the items lie: the first index, how many follow it up to the storage's end, and
    /// how many wrapped around to its start.
    fn spans(&self) -> (usize, usize, usize) {
        let cap = self.capacity();
        let head = (self.head as usize).min(cap);
        let first_len = self.len().min(cap - head);
        (head, first_len, self.len() - first_len)
    }

    fn physical(&self, index: usize) -> usize {
        (self.head as usize + index) % self.capacity()
    }

    fn regrow(&mut self, capacity: usize) {
        assert!(
            u32::try_from(capacity).is_ok(),
            "a ring holds at most u32::MAX items"
        );
        let mut slots = Vec::with_capacity(capacity);
        slots.extend(self.iter().copied());
        slots.resize(capacity, T::default());
        self.slots = slots.into_boxed_slice();
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::VecDeque;

    #[test]
    fn twenty_four_bytes() {
        assert_eq!(std::mem::size_of::<Ring<[u32; 3]>>(), 24);
    }

    #[test]
    fn grows_exactly_as_asked() {
        let mut r = Ring::<u8>::default();
        r.push_back(1);
        assert_eq!(r.capacity(), 1);
        r.reserve_exact(3);
        assert_eq!(r.capacity(), 4);
        r.reserve_exact(2);
        assert_eq!(r.capacity(), 4, "room enough already");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u16),
        Pop,
        Reserve(u8),
        Bump,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => any::<u16>().prop_map(Op::Push),
            3 => Just(Op::Pop),
            1 => (0u8..5).prop_map(Op::Reserve),
            1 => Just(Op::Bump),
        ]
    }

    proptest! {
        /// Any sequence of operations leaves the ring holding what a `VecDeque` holds.
        #[test]
        fn behaves_as_a_vecdeque(ops in proptest::collection::vec(op(), 0..200)) {
            let mut ring = Ring::<u16>::default();
            let mut model = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(v) => {
                        ring.push_back(v);
                        model.push_back(v);
                    }
                    Op::Pop => prop_assert_eq!(ring.pop_front(), model.pop_front()),
                    Op::Reserve(n) => {
                        ring.reserve_exact(n as usize);
                        prop_assert!(ring.capacity() >= ring.len() + n as usize);
                    }
                    Op::Bump => {
                        for (r, m) in ring.iter_mut().zip(model.iter_mut()) {
                            *r = r.wrapping_add(1);
                            *m = m.wrapping_add(1);
                        }
                    }
                }
                prop_assert_eq!(ring.len(), model.len());
                prop_assert_eq!(ring.front(), model.front());
                prop_assert_eq!(ring.iter().copied().collect::<Vec<_>>(), model.iter().copied().collect::<Vec<_>>());
                prop_assert!(ring.capacity() >= ring.len());
            }
        }
    }
}
