//! The per-user window of recently seen `messageId`s, bounded in age and in size. Ids are
//! remembered by their 64-bit fingerprint (`keys::message_fingerprint`, collision bound
//! there) and the instant they were seen, in milliseconds after the window's base: 12 bytes
//! per id whatever its length.
//!
//! An instant the 32 bits after the base cannot hold (a clock that went back before it, ids
//! seen over 49 days apart) is moved later, never earlier: an id may be remembered a little
//! longer than `window_ms`, never forgotten sooner.

use std::collections::HashSet;

use super::ring::Ring;

/// Above this many ids a hash index backs the lookups; below it a scan is faster and smaller.
const INDEX_ABOVE: usize = 32;
/// Growth: doubling up to eight ids (1, 2, 4, 8), then in steps of an eighth of the window
/// (at least one id). A new user's first ids do not reallocate one by one, a busy user's
/// window does not reallocate per id, and a window of ten ids still holds exactly ten.
const GROWTH_DIVISOR: usize = 8;
/// Below this many ids the window doubles.
const DOUBLE_BELOW: usize = 8;

/// One remembered id: its fingerprint in two halves (so the entry is 4-aligned, 12 bytes) and
/// when it was seen, in ms after the window's base.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Seen {
    fingerprint: [u32; 2],
    after_base: u32,
}

impl Seen {
    fn fingerprint(self) -> u64 {
        (u64::from(self.fingerprint[0]) << 32) | u64::from(self.fingerprint[1])
    }
}

fn halves(fingerprint: u64) -> [u32; 2] {
    [(fingerprint >> 32) as u32, fingerprint as u32]
}

/// Fingerprints seen within `window_ms` of processing time, oldest first, at most `max_ids`.
#[derive(Debug, Clone, Default)]
pub struct DedupWindow {
    order: Ring<Seen>,
    /// What the entries' times count from: the oldest entry's time, unless the entries span
    /// more than 32 bits of ms (then older ones are held as of the base: later, never earlier).
    base: i64,
    /// Boxed on purpose: 8 bytes in every resident user instead of a 48-byte empty set, for
    /// the few users whose window is large.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashSet<u64, ahash::RandomState>>>,
}

impl DedupWindow {
    /// A window holding `entries` (oldest first).
    pub fn from_entries(entries: Vec<(u64, i64)>) -> Self {
        let newest = entries.iter().map(|(_, at)| *at).max().unwrap_or(0);
        let oldest = entries.iter().map(|(_, at)| *at).min().unwrap_or(0);
        let base = oldest.max(newest.saturating_sub(i64::from(u32::MAX)));
        let mut w = DedupWindow {
            order: Ring::with_capacity(entries.len()),
            base,
            index: None,
        };
        for (fingerprint, at) in entries {
            let seen = w.seen(fingerprint, at);
            w.order.push_back(seen);
        }
        w.reindex();
        w
    }

    /// Where its ids live, read without touching them: a hint for prefetching.
    pub fn storage_addr(&self) -> *const u8 {
        self.order.storage_addr()
    }

    /// Where its ids live and how many bytes they take: applying an event scans them all
    /// (the oldest for expiry, each for a duplicate), so a prefetch asks for every line.
    pub fn storage_span(&self) -> (*const u8, usize) {
        (self.order.storage_addr(), self.order.storage_bytes())
    }

    pub fn entries(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.order.iter().map(|s| (s.fingerprint(), self.at(*s)))
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
        if self.order.is_empty() {
            self.base = now_ms;
        } else if now_ms.saturating_sub(self.base) > i64::from(u32::MAX) {
            self.rebase(now_ms);
        }
        if self.order.len() == self.order.capacity() {
            let len = self.order.len();
            let step = if len < DOUBLE_BELOW {
                len.max(1)
            } else {
                len / GROWTH_DIVISOR
            };
            let room = step
                .min(max_ids.max(1).saturating_sub(self.order.len()))
                .max(1);
            self.order.reserve_exact(room);
        }
        let seen = self.seen(fingerprint, now_ms);
        self.order.push_back(seen);
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
            None => {
                let halves = halves(fingerprint);
                self.order.iter().any(|s| s.fingerprint == halves)
            }
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
        self.order.capacity() * std::mem::size_of::<Seen>()
            + self.index.as_ref().map_or(0, |i| i.capacity() * 9 + 64)
    }

    /// `at` as an entry: clamped into the 32 bits after the base, later rather than earlier.
    fn seen(&self, fingerprint: u64, at: i64) -> Seen {
        let after = at.saturating_sub(self.base).clamp(0, i64::from(u32::MAX));
        Seen {
            fingerprint: halves(fingerprint),
            after_base: after as u32,
        }
    }

    fn at(&self, seen: Seen) -> i64 {
        self.base.saturating_add(i64::from(seen.after_base))
    }

    /// Moves the base so that `now_ms` fits: entries older than the new base are moved up to
    /// it (remembered longer, never shorter).
    fn rebase(&mut self, now_ms: i64) {
        let base = now_ms.saturating_sub(i64::from(u32::MAX));
        let old = self.base;
        for s in self.order.iter_mut() {
            let at = old.saturating_add(i64::from(s.after_base));
            s.after_base = at.saturating_sub(base).clamp(0, i64::from(u32::MAX)) as u32;
        }
        self.base = base;
    }

    fn expire(&mut self, now_ms: i64, window_ms: i64) {
        while let Some(front) = self.order.front() {
            if now_ms.saturating_sub(self.at(*front)) > window_ms {
                self.pop_oldest();
            } else {
                break;
            }
        }
    }

    fn pop_oldest(&mut self) {
        if let Some(s) = self.order.pop_front() {
            if let Some(index) = &mut self.index {
                index.remove(&s.fingerprint());
            }
        }
    }

    fn reindex(&mut self) {
        self.index = (self.order.len() > INDEX_ABOVE)
            .then(|| Box::new(self.order.iter().map(|s| s.fingerprint()).collect()));
    }
}

impl PartialEq for DedupWindow {
    fn eq(&self, other: &Self) -> bool {
        self.order.len() == other.order.len() && self.entries().eq(other.entries())
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
    fn an_entry_is_twelve_bytes_and_grows_in_steps() {
        assert_eq!(std::mem::size_of::<Seen>(), 12);
        let mut w = DedupWindow::default();
        for i in 0..10 {
            w.insert(i, i as i64, 1_000, 100);
        }
        assert_eq!(
            w.order.capacity(),
            10,
            "1, 2, 4, 8, then one id at a time up to sixteen"
        );
        let mut five = DedupWindow::default();
        for i in 0..5 {
            five.insert(i, i as i64, 1_000, 100);
        }
        assert_eq!(five.order.capacity(), 8, "doubling below eight");
        let mut capped = DedupWindow::default();
        for i in 0..3 {
            capped.insert(i, i as i64, 1_000, 3);
        }
        assert_eq!(capped.order.capacity(), 3, "never past max_ids");
        for i in 10..64 {
            w.insert(i, i as i64, 1_000, 100);
        }
        let cap = w.order.capacity();
        assert!((64..=72).contains(&cap), "{cap}");
    }

    #[test]
    fn times_beyond_32_bits_are_kept_longer_never_shorter() {
        let day = 86_400_000_i64;
        let mut w = DedupWindow::default();
        assert!(w.insert(1, 0, 100 * day, 10));
        // 60 days later (beyond the 49.7 days 32 bits of ms hold): both still remembered.
        assert!(w.insert(2, 60 * day, 100 * day, 10));
        let entries: Vec<_> = w.entries().collect();
        assert_eq!(entries[1], (2, 60 * day));
        assert!(entries[0].1 >= 0 && entries[0].1 <= 60 * day, "{entries:?}");
        assert!(
            !w.insert(1, 60 * day + 1, 100 * day, 10),
            "still a duplicate"
        );
        // A clock that went back: remembered as of the base, and still found.
        let mut back = DedupWindow::default();
        assert!(back.insert(7, 1_000, 500, 10));
        assert!(back.insert(8, 900, 500, 10));
        assert_eq!(
            back.entries().collect::<Vec<_>>(),
            vec![(7, 1_000), (8, 1_000)]
        );
        assert!(!back.insert(8, 1_400, 500, 10));
        // Full 64-bit fingerprints and negative instants round trip.
        let far = DedupWindow::from_entries(vec![(u64::MAX, -5), (1 << 63, -1)]);
        assert_eq!(
            far.entries().collect::<Vec<_>>(),
            vec![(u64::MAX, -5), (1 << 63, -1)]
        );
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
