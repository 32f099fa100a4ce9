//! The per-user window of recently seen `messageId`s, bounded in age and in size.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Ids seen within `window_ms` of processing time, oldest first, at most `max_ids` of them.
#[derive(Debug, Clone, Default)]
pub struct DedupWindow {
    order: VecDeque<(Arc<str>, i64)>,
    ids: HashSet<Arc<str>, ahash::RandomState>,
}

impl DedupWindow {
    /// Records `id` as seen at `now_ms`. Returns false if it was already in the window.
    pub fn insert(&mut self, id: &str, now_ms: i64, window_ms: i64, max_ids: usize) -> bool {
        self.expire(now_ms, window_ms);
        if self.ids.contains(id) {
            return false;
        }
        let id: Arc<str> = Arc::from(id);
        self.ids.insert(id.clone());
        self.order.push_back((id, now_ms));
        while self.order.len() > max_ids.max(1) {
            self.pop_oldest();
        }
        true
    }

    pub fn contains(&self, id: &str) -> bool {
        self.ids.contains(id)
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
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
        if let Some((id, _)) = self.order.pop_front() {
            self.ids.remove(&id);
        }
    }
}

impl PartialEq for DedupWindow {
    fn eq(&self, other: &Self) -> bool {
        self.order == other.order
    }
}

impl Serialize for DedupWindow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.order.serialize(s)
    }
}

impl<'de> Deserialize<'de> for DedupWindow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let order: VecDeque<(Arc<str>, i64)> = VecDeque::deserialize(d)?;
        let ids = order.iter().map(|(id, _)| id.clone()).collect();
        Ok(DedupWindow { order, ids })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_seen_ids_within_window() {
        let mut w = DedupWindow::default();
        assert!(w.insert("a", 0, 100, 10));
        assert!(!w.insert("a", 50, 100, 10));
        assert!(w.insert("a", 201, 100, 10), "expired after the window");
    }

    #[test]
    fn bounded_in_size_oldest_evicted() {
        let mut w = DedupWindow::default();
        for i in 0..5 {
            assert!(w.insert(&i.to_string(), 0, 100, 3));
        }
        assert_eq!(w.len(), 3);
        assert!(!w.contains("0") && !w.contains("1"));
        assert!(w.contains("4"));
    }

    #[test]
    fn round_trips_through_json() {
        let mut w = DedupWindow::default();
        w.insert("x", 1, 100, 10);
        w.insert("y", 2, 100, 10);
        let back: DedupWindow = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        assert_eq!(back, w);
        assert!(back.contains("y"));
    }
}
