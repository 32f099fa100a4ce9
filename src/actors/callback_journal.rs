//! The callback journal's two sides (`http.callback_journal`). The webhook receiver appends
//! each verified callback to the durable journal and answers 2xx once it is there, so a
//! provider's callbacks are taken at the journal's rate, not the document store's, and keep
//! being taken while the store is down. The applier, in every instance, reads the journal in
//! large groups and applies each callback through the same [`CallbackSink`] the receiver uses
//! without a journal (so the transitions are grouped into a few store commands), removing
//! entries once applied. The callbacks of one message are applied one after the other, in
//! journal order (different messages' at once). An entry that cannot apply yet (the store is
//! unreachable), and every later one of its message in that round, stays and is read again
//! after [`RETRY_IDLE_MS`] — longer than one application may take, so an entry is never
//! applied twice at once — by any instance; one that still cannot apply after [`MAX_AGE_MS`]
//! is given up, logged and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};

use crate::ports::{
    BoxFut, Callback, CallbackError, CallbackJournal, CallbackSink, Clock, JournalEntry, StoreError,
};
use crate::telemetry::Metrics;

/// Entries read per round.
const READ_MAX: usize = 2_000;
/// Messages whose callbacks are applied at once (their transitions are grouped by the document
/// store).
const APPLY_CONCURRENCY: usize = 1_024;
/// An entry left unapplied is read again after this long: past [`APPLY_TIMEOUT`], so an entry
/// still being applied somewhere is not taken again meanwhile.
pub const RETRY_IDLE_MS: u64 = 30_000;
/// How often the journal's backlog is measured (the receiver's `max_pending` check).
const BACKLOG_EVERY: Duration = Duration::from_secs(1);
/// An entry still not applicable this long after it was appended is given up.
pub const MAX_AGE_MS: i64 = 15 * 60 * 1000;
/// One application that has not finished after this long is left for a later round: a
/// store request that never answers must not hold the whole applier (and with it every
/// entry after it) for ever.
const APPLY_TIMEOUT: Duration = Duration::from_secs(20);

/// The receiver's side: appends, refusing (503) once `max_pending` entries wait.
pub struct JournaledCallbacks {
    journal: Arc<dyn CallbackJournal>,
    max_pending: u64,
    /// The journal's length as last measured by the applier.
    pending: Arc<AtomicU64>,
}

impl JournaledCallbacks {
    fn append(&self, callbacks: Vec<Callback>) -> BoxFut<Result<(), CallbackError>> {
        let pending = self.pending.load(Ordering::Relaxed);
        let limit = self.max_pending;
        if pending >= limit {
            // Bounded: a store that stays down makes callbacks wait at the provider (503),
            // never fill Redis without limit.
            return async move {
                Err(CallbackError::Store(StoreError::Transient(format!(
                    "the callback journal holds {pending} callbacks not applied yet (limit {limit})"
                ))))
            }
            .boxed();
        }
        let journal = self.journal.clone();
        async move { journal.append(callbacks).await.map_err(CallbackError::from) }.boxed()
    }
}

impl CallbackSink for JournaledCallbacks {
    fn deliver(&self, callback: Callback) -> BoxFut<Result<(), CallbackError>> {
        self.append(vec![callback])
    }

    fn deliver_all(&self, callbacks: Vec<Callback>) -> BoxFut<Result<(), CallbackError>> {
        self.append(callbacks)
    }
}

/// What became of one entry.
enum Applied {
    Done,
    /// Not applicable yet: left for a later round.
    Later,
}

/// The journal, its receiver side, and the applier to run.
pub struct Journal {
    pub receiver: Arc<JournaledCallbacks>,
    applier: Applier,
}

struct Applier {
    journal: Arc<dyn CallbackJournal>,
    apply: Arc<dyn CallbackSink>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
    pending: Arc<AtomicU64>,
}

impl Journal {
    pub fn new(
        journal: Arc<dyn CallbackJournal>,
        apply: Arc<dyn CallbackSink>,
        clock: Arc<dyn Clock>,
        metrics: Arc<Metrics>,
        max_pending: u64,
    ) -> Self {
        let pending = Arc::new(AtomicU64::new(0));
        Journal {
            receiver: Arc::new(JournaledCallbacks {
                journal: journal.clone(),
                max_pending,
                pending: pending.clone(),
            }),
            applier: Applier {
                journal,
                apply,
                clock,
                metrics,
                pending,
            },
        }
    }

    /// Applies the journal until the process ends (entries left are durable: the next
    /// start, or another instance, applies them).
    pub async fn run(self) {
        self.applier.run().await
    }
}

impl Applier {
    async fn run(self) {
        let mut last_reclaim = std::time::Instant::now();
        let mut last_backlog = std::time::Instant::now();
        loop {
            match self.journal.read_new(READ_MAX, 500).await {
                Ok(entries) => self.apply_all(entries).await,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the callback journal failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if last_reclaim.elapsed() >= Duration::from_millis(RETRY_IDLE_MS / 4) {
                last_reclaim = std::time::Instant::now();
                match self.journal.reclaim(RETRY_IDLE_MS, READ_MAX).await {
                    Ok(entries) => self.apply_all(entries).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "reclaiming callback journal entries failed")
                    }
                }
            }
            if last_backlog.elapsed() >= BACKLOG_EVERY {
                last_backlog = std::time::Instant::now();
                if let Ok(n) = self.journal.backlog().await {
                    self.pending.store(n, Ordering::Relaxed);
                    self.metrics.callback_journal_pending(n);
                }
            }
        }
    }

    async fn apply_all(&self, entries: Vec<JournalEntry>) {
        if entries.is_empty() {
            return;
        }
        let now = self.clock.now_ms();
        // One group per message, in journal order inside each.
        let mut groups: Vec<Vec<JournalEntry>> = Vec::new();
        let mut by_message: std::collections::HashMap<String, usize> = Default::default();
        for entry in entries {
            let key = match &entry.callback {
                Ok(cb) => cb.message_id.clone().unwrap_or_else(|| {
                    format!(
                        "{}/{}",
                        cb.provider,
                        cb.provider_message_id.as_deref().unwrap_or_default()
                    )
                }),
                Err(_) => entry.id.clone(),
            };
            match by_message.get(&key) {
                Some(&g) => groups[g].push(entry),
                None => {
                    by_message.insert(key, groups.len());
                    groups.push(vec![entry]);
                }
            }
        }
        let done: Vec<String> = futures::stream::iter(groups)
            .map(|group| async move {
                let mut done = Vec::with_capacity(group.len());
                for entry in group {
                    // A later callback of a message never overtakes one left for later.
                    match self.apply_one(&entry, now).await {
                        Applied::Done => done.push(entry.id),
                        Applied::Later => break,
                    }
                }
                done
            })
            .buffer_unordered(APPLY_CONCURRENCY)
            .flat_map(futures::stream::iter)
            .collect()
            .await;
        if let Err(e) = self.journal.settle(done).await {
            // Applied but not removed: they apply again later, which changes nothing.
            tracing::warn!(error = %e, "settling callback journal entries failed");
        }
    }

    async fn apply_one(&self, entry: &JournalEntry, now: i64) -> Applied {
        let callback = match &entry.callback {
            Ok(cb) => cb.clone(),
            Err(why) => {
                tracing::error!(entry = entry.id, error = %why, "callback journal entry dropped");
                self.metrics.callback_journal_dropped("unreadable");
                return Applied::Done;
            }
        };
        let provider = callback.provider.clone();
        let applied = tokio::time::timeout(APPLY_TIMEOUT, self.apply.deliver(callback)).await;
        let Ok(applied) = applied else {
            tracing::warn!(
                entry = entry.id,
                provider,
                timeout_ms = APPLY_TIMEOUT.as_millis() as u64,
                "applying a journaled callback did not finish in time; it is read again"
            );
            return Applied::Later;
        };
        match applied {
            Ok(()) => Applied::Done,
            Err(e) => {
                let age = entry.appended_ms().map_or(0, |t| now - t);
                if age > MAX_AGE_MS {
                    tracing::error!(entry = entry.id, provider, error = %e, age_ms = age, "a journaled callback could not be applied for too long; given up");
                    self.metrics.callback_journal_dropped("expired");
                    return Applied::Done;
                }
                match e {
                    CallbackError::NotItsSend(_) => {
                        tracing::warn!(entry = entry.id, provider, error = %e, "a journaled callback about a send its provider did not make; dropped");
                        self.metrics.callback_journal_dropped("not_its_send");
                        return Applied::Done;
                    }
                    CallbackError::NotReady(_) => {
                        tracing::debug!(entry = entry.id, provider, error = %e, "journaled callback not applicable yet")
                    }
                    CallbackError::Store(_) => {
                        tracing::warn!(entry = entry.id, provider, error = %e, "journaled callback not applied; it is read again")
                    }
                }
                Applied::Later
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::{CallbackStatus, SystemClock};
    use parking_lot::Mutex;

    /// A journal whose entries are given to `apply_all` directly; it records what is settled.
    #[derive(Default)]
    struct Settled(Mutex<Vec<String>>);

    impl CallbackJournal for Settled {
        fn append(&self, _: Vec<Callback>) -> BoxFut<Result<(), StoreError>> {
            async { Ok(()) }.boxed()
        }
        fn read_new(&self, _: usize, _: u64) -> BoxFut<Result<Vec<JournalEntry>, StoreError>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn reclaim(&self, _: u64, _: usize) -> BoxFut<Result<Vec<JournalEntry>, StoreError>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn settle(&self, ids: Vec<String>) -> BoxFut<Result<(), StoreError>> {
            self.0.lock().extend(ids);
            async { Ok(()) }.boxed()
        }
        fn backlog(&self) -> BoxFut<Result<u64, StoreError>> {
            async { Ok(0) }.boxed()
        }
    }

    /// Applies callbacks slowly when their error says "slow", refuses (store down) those
    /// whose error says "down", and records the order they were applied in.
    #[derive(Default, Clone)]
    struct Recording(Arc<Mutex<Vec<String>>>);

    impl CallbackSink for Recording {
        fn deliver(&self, cb: Callback) -> BoxFut<Result<(), CallbackError>> {
            let label = cb.error.clone().unwrap_or_default();
            let applied = format!("{}:{label}", cb.message_id.clone().unwrap_or_default());
            let log = self.0.clone();
            async move {
                if label.contains("slow") {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                if label.contains("down") {
                    return Err(CallbackError::Store(StoreError::Transient("down".into())));
                }
                log.lock().push(applied);
                Ok(())
            }
            .boxed()
        }
    }

    fn entry(id: &str, message: &str, label: &str) -> JournalEntry {
        JournalEntry {
            id: id.into(),
            callback: Ok(Callback {
                provider: "sim".into(),
                message_id: Some(message.into()),
                provider_message_id: None,
                status: CallbackStatus::Delivered,
                error: Some(label.into()),
                retryable: false,
                suppress: None,
            }),
        }
    }

    #[tokio::test]
    async fn one_messages_callbacks_apply_in_order_and_wait_behind_one_left_for_later() {
        let journal = Arc::new(Settled::default());
        let sink = Recording::default();
        let applier = Applier {
            journal: journal.clone(),
            apply: Arc::new(sink.clone()),
            clock: Arc::new(SystemClock),
            metrics: Arc::new(Metrics::new()),
            pending: Arc::default(),
        };
        applier
            .apply_all(vec![
                entry("1", "m", "slow first"),
                entry("2", "other", "x"),
                entry("3", "m", "second"),
                entry("4", "n", "down"),
                entry("5", "n", "after down"),
            ])
            .await;
        let order = sink.0.lock().clone();
        let m: Vec<&String> = order.iter().filter(|l| l.starts_with("m:")).collect();
        assert_eq!(m, ["m:slow first", "m:second"], "{order:?}");
        assert!(!order.iter().any(|l| l.starts_with("n:")), "{order:?}");
        let mut settled = journal.0.lock().clone();
        settled.sort();
        assert_eq!(settled, ["1", "2", "3"], "entries 4 and 5 stay for later");
    }
}
