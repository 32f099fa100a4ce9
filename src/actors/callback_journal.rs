//! The callback journal's two sides (`http.callback_journal`). The webhook receiver appends
//! each verified callback to the durable journal and answers 2xx once it is there, so a
//! provider's callbacks are taken at the journal's rate, not the document store's, and keep
//! being taken while the store is down. The applier, in every instance, reads the journal in
//! large groups and applies each callback through the same [`CallbackSink`] the receiver uses
//! without a journal (so the transitions are grouped into a few store commands), removing
//! entries once applied. An entry that cannot apply yet (its send is not recorded, the store
//! is unreachable) stays and is read again after [`RETRY_IDLE_MS`], by any instance; one that
//! still cannot apply after [`MAX_AGE_MS`] is given up, logged and counted.

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
/// Callbacks applied at once (their transitions are grouped by the document store).
const APPLY_CONCURRENCY: usize = 1_024;
/// An entry left unapplied is read again after this long.
pub const RETRY_IDLE_MS: u64 = 2_000;
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
        loop {
            match self.journal.read_new(READ_MAX, 500).await {
                Ok(entries) => self.apply_all(entries).await,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the callback journal failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if last_reclaim.elapsed() >= Duration::from_millis(RETRY_IDLE_MS / 2) {
                last_reclaim = std::time::Instant::now();
                match self.journal.reclaim(RETRY_IDLE_MS, READ_MAX).await {
                    Ok(entries) => self.apply_all(entries).await,
                    Err(e) => {
                        tracing::warn!(error = %e, "reclaiming callback journal entries failed")
                    }
                }
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
        let done: Vec<String> = futures::stream::iter(entries)
            .map(|entry| async move {
                let outcome = self.apply_one(&entry, now).await;
                matches!(outcome, Applied::Done).then_some(entry.id)
            })
            .buffer_unordered(APPLY_CONCURRENCY)
            .filter_map(|id| async move { id })
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
