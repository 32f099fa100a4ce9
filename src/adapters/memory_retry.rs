//! In-memory retry schedule: a due-time index, claimed atomically under one lock.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;

use crate::ports::{BoxFut, RetryEntry, RetrySchedule, StoreError};

#[derive(Default)]
struct Inner {
    by_due: BTreeSet<(i64, String)>,
    entries: HashMap<String, RetryEntry>,
}

#[derive(Default)]
pub struct MemoryRetrySchedule {
    inner: Mutex<Inner>,
}

impl MemoryRetrySchedule {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl RetrySchedule for MemoryRetrySchedule {
    fn schedule(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>> {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.entries.remove(&entry.message_id) {
            inner.by_due.remove(&(old.due_ms, old.message_id));
        }
        inner
            .by_due
            .insert((entry.due_ms, entry.message_id.clone()));
        inner.entries.insert(entry.message_id.clone(), entry);
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
            if let Some(e) = inner.entries.get_mut(&id) {
                out.push(e.clone());
                e.due_ms = now_ms + lease_ms;
            }
        }
        async move { Ok(out) }.boxed()
    }

    fn complete(&self, entry: RetryEntry) -> BoxFut<Result<(), StoreError>> {
        let mut inner = self.inner.lock();
        let current = inner.entries.get(&entry.message_id).cloned();
        if let Some(current) =
            current.filter(|c| c.attempt == entry.attempt && c.resend == entry.resend)
        {
            inner.entries.remove(&entry.message_id);
            inner.by_due.remove(&(current.due_ms, current.message_id));
        }
        async { Ok(()) }.boxed()
    }

    fn extend(&self, entries: Vec<RetryEntry>, until_ms: i64) -> BoxFut<Result<(), StoreError>> {
        let mut inner = self.inner.lock();
        for entry in entries {
            let current = inner.entries.get(&entry.message_id).cloned();
            let Some(current) =
                current.filter(|c| c.attempt == entry.attempt && c.resend == entry.resend)
            else {
                continue;
            };
            // The lease is the due slot the claim moved it to; move it further.
            let leased = inner
                .by_due
                .iter()
                .find(|(_, id)| *id == current.message_id)
                .cloned();
            if let Some(slot) = leased {
                inner.by_due.remove(&slot);
                inner.by_due.insert((until_ms.max(slot.0), slot.1));
            }
        }
        async { Ok(()) }.boxed()
    }

    fn entry(&self, message_id: String) -> BoxFut<Result<Option<RetryEntry>, StoreError>> {
        let e = self.inner.lock().entries.get(&message_id).cloned();
        async move { Ok(e) }.boxed()
    }

    fn next_due(&self) -> BoxFut<Result<Option<i64>, StoreError>> {
        let next = self.inner.lock().by_due.first().map(|(d, _)| *d);
        async move { Ok(next) }.boxed()
    }

    fn cancel(&self, message_id: String) -> BoxFut<Result<(), StoreError>> {
        let mut inner = self.inner.lock();
        if let Some(old) = inner.entries.remove(&message_id) {
            inner.by_due.remove(&(old.due_ms, old.message_id));
        }
        async { Ok(()) }.boxed()
    }

    fn pending(&self) -> BoxFut<Result<usize, StoreError>> {
        let n = self.inner.lock().entries.len();
        async move { Ok(n) }.boxed()
    }
}
