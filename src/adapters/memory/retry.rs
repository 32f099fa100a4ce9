//! In-memory retry schedule: a due-time index, claimed atomically under one lock.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;

use crate::ports::{BoxFut, RetryEntry, RetrySchedule, StoreError};

#[derive(Default)]
struct Inner {
    by_due: BTreeSet<(i64, String)>,
    entries: HashMap<String, RetryEntry, ahash::RandomState>,
    /// Leased entries (claimed or held), and whether their send was marked started: such
    /// an entry claimed again has lapsed.
    leased: HashMap<String, bool, ahash::RandomState>,
}

#[derive(Default)]
pub struct MemoryRetrySchedule {
    inner: Mutex<Inner>,
    /// Entries were lost since `lost_entries` last answered.
    lost: std::sync::atomic::AtomicBool,
    /// Calls to `mark_sending` answered (for tests).
    pub mark_calls: std::sync::atomic::AtomicUsize,
}

impl MemoryRetrySchedule {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Forgets every entry and lease (a Redis restarted without persistence).
    pub fn clear(&self) {
        *self.inner.lock() = Inner::default();
        self.lost.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Inner {
    fn put(&mut self, entry: RetryEntry, leased: bool) {
        if let Some(old) = self.entries.remove(&entry.message_id) {
            self.by_due.remove(&(old.due_ms, old.message_id));
        }
        if leased {
            self.leased.insert(entry.message_id.clone(), false);
        } else {
            self.leased.remove(&entry.message_id);
        }
        self.by_due.insert((entry.due_ms, entry.message_id.clone()));
        self.entries.insert(entry.message_id.clone(), entry);
    }

    fn remove(&mut self, message_id: &str) {
        if let Some(old) = self.entries.remove(message_id) {
            self.by_due.remove(&(old.due_ms, old.message_id));
        }
        self.leased.remove(message_id);
    }
}

impl RetrySchedule for MemoryRetrySchedule {
    fn lost_entries(&self) -> BoxFut<Result<bool, StoreError>> {
        let lost = self.lost.swap(false, std::sync::atomic::Ordering::SeqCst);
        async move { Ok(lost) }.boxed()
    }

    fn schedule(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>> {
        self.inner.lock().put(entry, false);
        async { Ok(()) }.boxed()
    }

    fn hand_off(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>> {
        self.inner.lock().put(entry, true);
        async { Ok(()) }.boxed()
    }

    fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<RetryEntry>, StoreError>> {
        let mut inner = self.inner.lock();
        let mut out = Vec::new();
        while out.len() < limit {
            let Some((due, _)) = inner.by_due.first() else {
                break;
            };
            if *due > now_ms {
                break;
            }
            let (_, id) = inner.by_due.pop_first().expect("first() was Some");
            // Leased: due again after the lease unless completed.
            inner.by_due.insert((now_ms + lease_ms, id.clone()));
            let lapsed = inner.leased.insert(id.clone(), false) == Some(true);
            if let Some(e) = inner.entries.get_mut(&id) {
                e.due_ms = now_ms + lease_ms;
                out.push(RetryEntry {
                    lapsed,
                    ..e.clone()
                });
            }
        }
        async move { Ok(out) }.boxed()
    }

    fn complete(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>> {
        let mut inner = self.inner.lock();
        let current = inner.entries.get(&entry.message_id).cloned();
        if current.is_some_and(|c| c.attempt == entry.attempt && c.resend == entry.resend) {
            inner.remove(&entry.message_id);
        }
        async { Ok(()) }.boxed()
    }

    fn hold(
        &self,
        entries: Vec<RetryEntry>,
        leased: bool,
    ) -> BoxFut<Result<Vec<bool>, StoreError>> {
        let mut inner = self.inner.lock();
        let created = entries
            .into_iter()
            .map(|entry| {
                if inner.entries.contains_key(&entry.message_id) {
                    return false;
                }
                inner.put(entry, leased);
                true
            })
            .collect();
        async move { Ok(created) }.boxed()
    }

    fn extend(
        &self,
        entries: Vec<RetryEntry>,
        until_ms: i64,
    ) -> BoxFut<Result<Vec<String>, StoreError>> {
        // One process: every lease is its own, so only a settled or superseded one is lost.
        let mut inner = self.inner.lock();
        let mut lost = Vec::new();
        for entry in entries {
            let current = inner.entries.get(&entry.message_id).cloned();
            let Some(current) =
                current.filter(|c| c.attempt == entry.attempt && c.resend == entry.resend)
            else {
                lost.push(entry.message_id);
                continue;
            };
            // The lease is the entry's due slot; move it further.
            let slot = (current.due_ms, current.message_id.clone());
            if inner.by_due.remove(&slot) {
                let until = until_ms.max(slot.0);
                inner.by_due.insert((until, slot.1));
                if let Some(e) = inner.entries.get_mut(&current.message_id) {
                    e.due_ms = until;
                }
            }
        }
        async move { Ok(lost) }.boxed()
    }

    fn entry(&self, message_id: String) -> BoxFut<Result<Option<RetryEntry>, StoreError>> {
        let e = self.inner.lock().entries.get(&message_id).cloned();
        async move { Ok(e) }.boxed()
    }

    fn next_due(&self) -> BoxFut<Result<Option<i64>, StoreError>> {
        let next = self.inner.lock().by_due.first().map(|(d, _)| *d);
        async move { Ok(next) }.boxed()
    }

    fn mark_sending(&self, entries: Vec<RetryEntry>) -> BoxFut<Result<Vec<String>, StoreError>> {
        self.mark_calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut inner = self.inner.lock();
        let mut lost = Vec::new();
        for entry in entries {
            let current = inner
                .entries
                .get(&entry.message_id)
                .is_some_and(|c| c.attempt == entry.attempt && c.resend == entry.resend);
            match inner.leased.get_mut(&entry.message_id) {
                Some(sending) if current => *sending = true,
                _ => lost.push(entry.message_id),
            }
        }
        async move { Ok(lost) }.boxed()
    }

    fn cancel(&self, message_id: String) -> BoxFut<Result<(), StoreError>> {
        self.inner.lock().remove(&message_id);
        async { Ok(()) }.boxed()
    }

    fn pending(&self) -> BoxFut<Result<usize, StoreError>> {
        let n = self.inner.lock().entries.len();
        async move { Ok(n) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::block_on as block;

    fn entry(id: &str, attempt: u32, due_ms: i64) -> RetryEntry {
        RetryEntry {
            message_id: id.into(),
            attempt,
            resend: 0,
            due_ms,
            lapsed: false,
        }
    }

    #[test]
    fn hold_creates_only_absent_entries_and_extend_reports_lost_leases() {
        let s = MemoryRetrySchedule::new();
        let held =
            futures::executor::block_on(s.hold(vec![entry("a", 1, 100), entry("b", 1, 100)], true))
                .unwrap();
        assert_eq!(held, vec![true, true]);
        let again =
            futures::executor::block_on(s.hold(vec![entry("a", 1, 5), entry("c", 1, 5)], true))
                .unwrap();
        assert_eq!(
            again,
            vec![false, true],
            "an existing entry is someone's already"
        );
        assert_eq!(futures::executor::block_on(s.next_due()).unwrap(), Some(5));
        // `b` moves on to attempt 2 (a callback's retry): its attempt-1 lease is lost.
        futures::executor::block_on(s.schedule(entry("b", 2, 50))).unwrap();
        let lost = futures::executor::block_on(
            s.extend(vec![entry("a", 1, 100), entry("b", 1, 100)], 1_000),
        )
        .unwrap();
        assert_eq!(lost, vec!["b".to_string()]);
        let a = futures::executor::block_on(s.entry("a".into()))
            .unwrap()
            .unwrap();
        assert_eq!(a.due_ms, 1_000, "the held lease was extended");
        let due = futures::executor::block_on(s.claim_due(60, 10, 10)).unwrap();
        let ids: Vec<_> = due.iter().map(|e| e.message_id.as_str()).collect();
        assert_eq!(ids, vec!["c", "b"]);
    }

    #[test]
    fn only_a_lease_marked_sending_that_ran_out_is_claimed_as_lapsed() {
        let s = MemoryRetrySchedule::new();
        let lapsed = |claimed: Vec<RetryEntry>| -> Vec<(String, bool)> {
            claimed
                .into_iter()
                .map(|e| (e.message_id, e.lapsed))
                .collect()
        };
        block(s.hold(vec![entry("held", 1, 0), entry("sending", 1, 0)], true)).unwrap();
        block(s.hold(vec![entry("adopted", 1, 0)], false)).unwrap();
        assert_eq!(
            block(s.mark_sending(vec![entry("sending", 1, 0), entry("gone", 1, 0)])).unwrap(),
            vec!["gone".to_string()]
        );
        let first = lapsed(block(s.claim_due(10, 100, 10)).unwrap());
        assert_eq!(
            first,
            vec![
                ("adopted".into(), false),
                ("held".into(), false),
                ("sending".into(), true)
            ],
            "only the send marked started is in doubt"
        );
        // Claimed again without a mark: not in doubt; scheduled anew: not leased.
        block(s.schedule(entry("sending", 2, 0))).unwrap();
        let again = lapsed(block(s.claim_due(200, 100, 10)).unwrap());
        assert!(again.iter().all(|(_, l)| !l), "{again:?}");
    }
}
