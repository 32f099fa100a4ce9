//! The per-user window of recently seen `messageId`s, bounded in age and in size. Ids are
//! remembered by their 64-bit fingerprint (`keys::message_fingerprint`, collision bound
//! there): 16 bytes per id whatever its length.

use std::collections::{HashSet, VecDeque};

/// Above this many ids a hash index backs the lookups; below it a scan is faster and smaller.
const INDEX_ABOVE: usize = 32;

/// Fingerprints seen within `window_ms` of processing time, oldest first, at most `max_ids`.
#[derive(Debug, Clone, Default)]
pub struct DedupWindow {
    order: VecDeque<(u64, i64)>,
    /// Boxed on purpose: 8 bytes in every resident user instead of a 48-byte empty set, for
    /// the few users whose window is large.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashSet<u64, ahash::RandomState>>>,
}

impl DedupWindow {
    /// A window holding `entries` (oldest first).
    pub fn from_entries(entries: Vec<(u64, i64)>) -> Self {
        let mut order = VecDeque::from(entries);
        order.shrink_to_fit();
        let mut w = DedupWindow { order, index: None };
        w.reindex();
        w
    }

    pub fn entries(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.order.iter().copied()
    }

    /// Records `fingerprint` as seen at `now_ms`. Returns false if it was already in the window.
    pub fn insert(
        &mut self,
        fingerprint: u64,
        now_ms: i64,
        window_ms: i64,
        max_ids: usize,
    ) -> bool {
        self.expire(now_ms, window_ms);
        if self.contains(fingerprint) {
            return false;
        }
        if self.order.len() == self.order.capacity() {
            self.order.reserve_exact(1);
        }
        self.order.push_back((fingerprint, now_ms));
        if let Some(index) = &mut self.index {
            index.insert(fingerprint);
        }
        while self.order.len() > max_ids.max(1) {
            self.pop_oldest();
        }
        if self.index.is_none() && self.order.len() > INDEX_ABOVE {
            self.reindex();
        }
        true
    }

    pub fn contains(&self, fingerprint: u64) -> bool {
        match &self.index {
            Some(index) => index.contains(&fingerprint),
            None => self.order.iter().any(|(f, _)| *f == fingerprint),
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Heap bytes held (for the residency accounting).
    pub fn heap_bytes(&self) -> usize {
        self.order.capacity() * 16 + self.index.as_ref().map_or(0, |i| i.capacity() * 9 + 64)
    }

    fn expire(&mut self, now_ms: i64, window_ms: i64) {
        while let Some((_, seen_at)) = self.order.front() {
            if now_ms.saturating_sub(*seen_at) > window_ms {
                self.pop_oldest();
            } else {
                break;
            }
        }
    }

    fn pop_oldest(&mut self) {
        if let Some((f, _)) = self.order.pop_front() {
            if let Some(index) = &mut self.index {
                index.remove(&f);
            }
        }
    }

    fn reindex(&mut self) {
        self.index = (self.order.len() > INDEX_ABOVE)
            .then(|| Box::new(self.order.iter().map(|(f, _)| *f).collect()));
    }
}

impl PartialEq for DedupWindow {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_seen_ids_within_window() {
        let mut w = DedupWindow::default();
        assert!(w.insert(1, 0, 100, 10));
        assert!(!w.insert(1, 50, 100, 10));
        assert!(w.insert(1, 201, 100, 10), "expired after the window");
    }

    #[test]
    fn bounded_in_size_oldest_evicted() {
        let mut w = DedupWindow::default();
        for i in 0..5 {
            assert!(w.insert(i, 0, 100, 3));
        }
        assert_eq!(w.len(), 3);
        assert!(!w.contains(0) && !w.contains(1));
        assert!(w.contains(4));
    }

    #[test]
    fn indexed_and_scanned_lookups_agree() {
        let mut w = DedupWindow::default();
        for i in 0..100 {
            assert!(w.insert(i * 7, i as i64, 1_000, 50));
        }
        assert!(w.index.is_some());
        assert_eq!(w.len(), 50);
        assert!(!w.contains(0) && w.contains(99 * 7));
        assert!(!w.insert(99 * 7, 100, 1_000, 50));
    }

    #[test]
    fn entries_round_trip() {
        let mut w = DedupWindow::from_entries(vec![(1, 1), (2, 2)]);
        w.insert(3, 3, 100, 10);
        let back = DedupWindow::from_entries(w.entries().collect());
        assert_eq!(back, w);
        assert_eq!(back.len(), 3);
    }
}
