//! Actor tests of the whole pipeline on embedded adapters: revoke/reassign, contained panics,
//! a stalled store, passivation, the commit watermark, and dead letters.

#[path = "common/oracle.rs"]
mod oracle;

#[allow(dead_code)]
#[path = "common/aliases.rs"]
mod aliases;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use herald::actors::Pipeline;
use herald::adapters::memory::source::EmbeddedSource;
use herald::config::Config;
use herald::domain::event::{decode, RejectReason};
use herald::domain::keys::message_fingerprint;
use herald::domain::message::{MessageRecord, StatusChange};
use herald::domain::suppression::{Suppression, SuppressionReason};
use herald::domain::user::{UserProfile, UserState};
use herald::embedded::EmbeddedRig;
use herald::ports::{
    AssignmentEvent, BoxFut, Callback, DeadLetter, DocumentStore, EarlyCallback, InsertedMessages,
    PartitionReader, Source, SourceError, StateCache, StoreError, StoredUser, TransitionResult,
    UserSnapshot, UsersWritten,
};
use herald::workload::{MessageKind, Workload, WorkloadSpec};
use tokio::sync::mpsc;

const TEST_TOML: &str = r#"
[source]
kind = "embedded"
[batch]
max_size = 500
max_wait_ms = 10
shards = 2
[pipeline]
commit_interval_ms = 10
max_in_flight_per_partition = 400
fetch_max_records = 100
workers = 2
[demo]
partitions = 4
"#;

fn config(extra: &str) -> Config {
    Config::load_with(&[], &[("test", TEST_TOML), ("test extra", extra)], &[]).expect("test config")
}

fn workload(events: u64, users: u64, seed: u64) -> Vec<(String, Bytes, MessageKind)> {
    Workload::new(WorkloadSpec::new(events, users, seed))
        .map(|m| (m.key, m.payload, m.kind))
        .collect()
}

/// The reference model's result for a workload (tests/common/oracle.rs: no Herald decoder or
/// state machine involved).
fn replay(msgs: &[(String, Bytes, MessageKind)]) -> BTreeMap<String, UserProfile> {
    oracle::replay(
        msgs.iter()
            .filter(|(_, _, kind)| *kind != MessageKind::Invalid)
            .map(|(_, p, _)| &p[..]),
    )
}

/// Awaits a condition (polling), failing the test with `what` after `secs`.
async fn until(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn run<F: Future<Output = ()>>(f: F) {
    actix::System::new().block_on(f);
}

async fn finish(pipeline: Pipeline) {
    pipeline.shutdown().await.expect("clean shutdown");
}

// ---------- fault-injecting adapters ----------

/// A document store whose writes can be held (a stalled MongoDB) or panic once.
struct FaultyDocs {
    inner: Arc<dyn DocumentStore>,
    open: Arc<AtomicBool>,
    panics_left: AtomicU32,
    blocked_writes: Arc<AtomicUsize>,
    /// `users` writes that may still complete; every later one hangs (a process about to
    /// crash: nothing after it becomes durable).
    writes_left: Arc<AtomicI64>,
    /// `users` writes that completed.
    writes_done: Arc<AtomicUsize>,
}

impl FaultyDocs {
    fn new(inner: Arc<dyn DocumentStore>) -> Arc<Self> {
        Arc::new(FaultyDocs {
            inner,
            open: Arc::new(AtomicBool::new(true)),
            panics_left: AtomicU32::new(0),
            blocked_writes: Arc::new(AtomicUsize::new(0)),
            writes_left: Arc::new(AtomicI64::new(i64::MAX)),
            writes_done: Arc::new(AtomicUsize::new(0)),
        })
    }
}

impl DocumentStore for FaultyDocs {
    fn load_users(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<StoredUser>, StoreError>> {
        self.inner.load_users(users)
    }
    fn remove_created_messages(
        &self,
        ids: Vec<String>,
        token: u64,
    ) -> BoxFut<Result<(), StoreError>> {
        self.inner.remove_created_messages(ids, token)
    }
    fn upsert_users(
        &self,
        users: Vec<Arc<UserSnapshot>>,
        token: u64,
        now_ms: i64,
    ) -> BoxFut<Result<UsersWritten, StoreError>> {
        if self
            .panics_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("injected document store panic");
        }
        let open = self.open.clone();
        let blocked = self.blocked_writes.clone();
        let inner = self.inner.clone();
        let hang = self.writes_left.fetch_sub(1, Ordering::SeqCst) <= 0;
        let done = self.writes_done.clone();
        async move {
            if hang {
                return futures::future::pending().await;
            }
            if !open.load(Ordering::SeqCst) {
                blocked.fetch_add(1, Ordering::SeqCst);
                while !open.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            let written = inner.upsert_users(users, token, now_ms).await;
            done.fetch_add(1, Ordering::SeqCst);
            written
        }
        .boxed()
    }
    fn insert_messages(
        &self,
        m: Vec<Arc<MessageRecord>>,
        token: u64,
    ) -> BoxFut<Result<InsertedMessages, StoreError>> {
        self.inner.insert_messages(m, token)
    }
    fn transition(
        &self,
        id: String,
        c: StatusChange,
    ) -> BoxFut<Result<TransitionResult, StoreError>> {
        self.inner.transition(id, c)
    }
    fn keep_early_callback(
        &self,
        id: String,
        cb: Callback,
        expires: i64,
        max: u64,
    ) -> BoxFut<Result<bool, StoreError>> {
        self.inner.keep_early_callback(id, cb, expires, max)
    }
    fn early_callbacks(&self, limit: usize) -> BoxFut<Result<Vec<EarlyCallback>, StoreError>> {
        self.inner.early_callbacks(limit)
    }
    fn drop_early_callback(&self, key: String) -> BoxFut<Result<(), StoreError>> {
        self.inner.drop_early_callback(key)
    }
    fn get_message(&self, id: String) -> BoxFut<Result<Option<Arc<MessageRecord>>, StoreError>> {
        self.inner.get_message(id)
    }
    fn take_cap_slot(
        &self,
        key: String,
        message_id: String,
        now_ms: i64,
        max: usize,
        per_ms: i64,
    ) -> BoxFut<Result<herald::domain::policy::Slot, StoreError>> {
        self.inner
            .take_cap_slot(key, message_id, now_ms, max, per_ms)
    }
    fn count_status(
        &self,
        status: herald::domain::message::MessageStatus,
    ) -> BoxFut<Result<u64, StoreError>> {
        self.inner.count_status(status)
    }
    fn lookups_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>> {
        self.inner.lookups_due(now_ms, limit)
    }
    fn claim_lookup(
        &self,
        id: String,
        due_ms: i64,
        next_ms: Option<i64>,
    ) -> BoxFut<Result<bool, StoreError>> {
        self.inner.claim_lookup(id, due_ms, next_ms)
    }
    fn stalled_messages(
        &self,
        idle_before: i64,
        from: herald::ports::StalledFrom,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>> {
        self.inner.stalled_messages(idle_before, from, limit)
    }
    fn find_by_provider_message_id(
        &self,
        provider: String,
        pid: String,
    ) -> BoxFut<Result<Option<MessageRecord>, StoreError>> {
        self.inner.find_by_provider_message_id(provider, pid)
    }
    fn suppress(&self, s: Vec<Suppression>) -> BoxFut<Result<usize, StoreError>> {
        self.inner.suppress(s)
    }
    fn suppressed(
        &self,
        ids: Vec<String>,
    ) -> BoxFut<Result<Vec<(String, SuppressionReason)>, StoreError>> {
        self.inner.suppressed(ids)
    }
}

/// A state cache that counts loads and can panic on the next load.
struct CountingState {
    inner: Arc<dyn StateCache>,
    loads: AtomicUsize,
    panics_left: AtomicU32,
}

impl CountingState {
    fn over(rig: &EmbeddedRig) -> Arc<CountingState> {
        Arc::new(CountingState {
            inner: rig.cache.clone(),
            loads: AtomicUsize::new(0),
            panics_left: AtomicU32::new(0),
        })
    }
}

/// Starts the pipeline on `state` and waits until `first` is committed.
async fn first_half(
    rig: &EmbeddedRig,
    cfg: &Config,
    first: &[(String, Bytes, MessageKind)],
    state: &Arc<CountingState>,
) -> Pipeline {
    rig.source
        .append_all(first.iter().map(|(k, p, _)| (k.clone(), p.clone())));
    let pipeline = rig.start_with(cfg, 4, rig.ports_with(Some(state.clone()), None));
    rig.source.assign_all();
    until("first half committed", 60, || rig.source.fully_committed()).await;
    pipeline
}

impl StateCache for CountingState {
    fn load(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<Option<UserState>>, StoreError>> {
        self.loads.fetch_add(users.len(), Ordering::SeqCst);
        if self
            .panics_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            panic!("injected state store panic");
        }
        self.inner.load(users)
    }
    fn begin_writes(&self, users: Vec<Arc<str>>) -> BoxFut<Result<(), StoreError>> {
        self.inner.begin_writes(users)
    }
    fn save(&self, users: Vec<Arc<UserSnapshot>>) -> BoxFut<Result<(), StoreError>> {
        self.inner.save(users)
    }
}

/// A document store that refuses (as MongoDB refuses bad data) the document of any user
/// whose traits hold `poison`, and of any message whose body holds it, writing the others.
struct RefusingDocs {
    inner: Arc<dyn DocumentStore>,
}

impl DocumentStore for RefusingDocs {
    fn load_users(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<StoredUser>, StoreError>> {
        self.inner.load_users(users)
    }
    fn remove_created_messages(
        &self,
        ids: Vec<String>,
        token: u64,
    ) -> BoxFut<Result<(), StoreError>> {
        self.inner.remove_created_messages(ids, token)
    }
    fn upsert_users(
        &self,
        users: Vec<Arc<UserSnapshot>>,
        token: u64,
        now_ms: i64,
    ) -> BoxFut<Result<UsersWritten, StoreError>> {
        let (bad, good): (Vec<_>, Vec<_>) = users
            .into_iter()
            .partition(|u| u.profile.traits.get("poison").is_some());
        let write = self.inner.upsert_users(good, token, now_ms);
        async move {
            let mut written = write.await?;
            written.refused.extend(
                bad.iter()
                    .map(|u| (u.user_id.clone(), "document failed validation".to_string())),
            );
            Ok(written)
        }
        .boxed()
    }
    fn insert_messages(
        &self,
        m: Vec<Arc<MessageRecord>>,
        token: u64,
    ) -> BoxFut<Result<InsertedMessages, StoreError>> {
        let (bad, good): (Vec<_>, Vec<_>) = m.into_iter().partition(|m| m.body.contains("poison"));
        let insert = self.inner.insert_messages(good, token);
        async move {
            let mut inserted = insert.await?;
            inserted.refused.extend(
                bad.into_iter()
                    .map(|m| (m.id.clone(), "document failed validation".to_string())),
            );
            Ok(inserted)
        }
        .boxed()
    }
    fn transition(
        &self,
        id: String,
        c: StatusChange,
    ) -> BoxFut<Result<TransitionResult, StoreError>> {
        self.inner.transition(id, c)
    }
    fn keep_early_callback(
        &self,
        id: String,
        cb: Callback,
        expires: i64,
        max: u64,
    ) -> BoxFut<Result<bool, StoreError>> {
        self.inner.keep_early_callback(id, cb, expires, max)
    }
    fn early_callbacks(&self, limit: usize) -> BoxFut<Result<Vec<EarlyCallback>, StoreError>> {
        self.inner.early_callbacks(limit)
    }
    fn drop_early_callback(&self, key: String) -> BoxFut<Result<(), StoreError>> {
        self.inner.drop_early_callback(key)
    }
    fn get_message(&self, id: String) -> BoxFut<Result<Option<Arc<MessageRecord>>, StoreError>> {
        self.inner.get_message(id)
    }
    fn take_cap_slot(
        &self,
        key: String,
        message_id: String,
        now_ms: i64,
        max: usize,
        per_ms: i64,
    ) -> BoxFut<Result<herald::domain::policy::Slot, StoreError>> {
        self.inner
            .take_cap_slot(key, message_id, now_ms, max, per_ms)
    }
    fn count_status(
        &self,
        status: herald::domain::message::MessageStatus,
    ) -> BoxFut<Result<u64, StoreError>> {
        self.inner.count_status(status)
    }
    fn lookups_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>> {
        self.inner.lookups_due(now_ms, limit)
    }
    fn claim_lookup(
        &self,
        id: String,
        due_ms: i64,
        next_ms: Option<i64>,
    ) -> BoxFut<Result<bool, StoreError>> {
        self.inner.claim_lookup(id, due_ms, next_ms)
    }
    fn stalled_messages(
        &self,
        idle_before: i64,
        from: herald::ports::StalledFrom,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>> {
        self.inner.stalled_messages(idle_before, from, limit)
    }
    fn find_by_provider_message_id(
        &self,
        provider: String,
        pid: String,
    ) -> BoxFut<Result<Option<MessageRecord>, StoreError>> {
        self.inner.find_by_provider_message_id(provider, pid)
    }
    fn suppress(&self, s: Vec<Suppression>) -> BoxFut<Result<usize, StoreError>> {
        self.inner.suppress(s)
    }
    fn suppressed(
        &self,
        ids: Vec<String>,
    ) -> BoxFut<Result<Vec<(String, SuppressionReason)>, StoreError>> {
        self.inner.suppressed(ids)
    }
}

// ---------- tests ----------

#[test]
fn revoked_partition_mid_stream_loses_and_doubles_nothing() {
    let cfg = config("");
    let rig = EmbeddedRig::new(&cfg, 1);
    let msgs = workload(20_000, 500, 1);
    rig.source
        .append_all(msgs.iter().map(|(k, p, _)| (k.clone(), p.clone())));
    let docs = FaultyDocs::new(rig.docs.clone());
    docs.open.store(false, Ordering::SeqCst);
    run(async {
        let pipeline = rig.start_with(&cfg, 1, rig.ports_with(None, Some(docs.clone())));
        rig.source.assign_all();
        // Partition 0 has read up to its in-flight cap and is stuck on the stalled store.
        until("writes blocked", 10, || {
            docs.blocked_writes.load(Ordering::SeqCst) > 0
        })
        .await;
        let revoked = rig.source.revoke(&[0]);
        docs.open.store(true, Ordering::SeqCst);
        revoked.await.expect("revoke completes after draining");
        let committed = rig.source.committed(0);
        assert!(committed > 0, "drain committed what was read");
        assert!(
            committed < rig.source.end_offset(0),
            "revoked mid-stream ({committed} of {})",
            rig.source.end_offset(0)
        );
        assert!(!pipeline.running_partitions().await.contains(&0));
        rig.source.assign(&[0]);
        until("all committed", 60, || rig.source.fully_committed()).await;
        finish(pipeline).await;
    });
    assert_eq!(rig.docs.users(), replay(&msgs));
    let invalid = msgs.iter().filter(|m| m.2 == MessageKind::Invalid).count();
    assert_eq!(
        rig.source.dead_letters().len(),
        invalid,
        "each invalid record dead-lettered once"
    );
}

#[test]
fn panics_in_adapters_restart_actors_and_state_stays_correct() {
    let cfg = config("");
    let rig = EmbeddedRig::new(&cfg, 2);
    let msgs = workload(10_000, 300, 2);
    rig.source
        .append_all(msgs.iter().map(|(k, p, _)| (k.clone(), p.clone())));
    let docs = FaultyDocs::new(rig.docs.clone());
    docs.panics_left.store(1, Ordering::SeqCst);
    let state = Arc::new(CountingState {
        inner: rig.cache.clone(),
        loads: AtomicUsize::new(0),
        panics_left: AtomicU32::new(1),
    });
    run(async {
        let pipeline = rig.start_with(
            &cfg,
            2,
            rig.ports_with(Some(state.clone()), Some(docs.clone())),
        );
        rig.source.assign_all();
        until("all committed", 60, || rig.source.fully_committed()).await;
        assert!(pipeline.failure().is_none());
        finish(pipeline).await;
    });
    assert_eq!(
        docs.panics_left.load(Ordering::SeqCst),
        0,
        "document store panicked"
    );
    assert_eq!(
        state.panics_left.load(Ordering::SeqCst),
        0,
        "state store panicked"
    );
    let text = rig.metrics.render();
    assert!(
        text.contains(r#"herald_actor_restarts_total{actor="batcher"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"herald_actor_restarts_total{actor="aggregator"} 1"#),
        "{text}"
    );
    assert_eq!(rig.docs.users(), replay(&msgs));
}

#[test]
fn stalled_document_store_bounds_memory_and_the_pipeline_resumes() {
    let cfg = config("");
    let rig = EmbeddedRig::new(&cfg, 3);
    let msgs = workload(40_000, 2_000, 3);
    rig.source
        .append_all(msgs.iter().map(|(k, p, _)| (k.clone(), p.clone())));
    let docs = FaultyDocs::new(rig.docs.clone());
    docs.open.store(false, Ordering::SeqCst);
    // Per partition: at most the in-flight cap plus one fetch is ever read ahead.
    let bound =
        4 * (cfg.pipeline.max_in_flight_per_partition + cfg.pipeline.fetch_max_records) as u64;
    run(async {
        let pipeline = rig.start_with(&cfg, 3, rig.ports_with(None, Some(docs.clone())));
        rig.source.assign_all();
        until("writes blocked", 10, || {
            docs.blocked_writes.load(Ordering::SeqCst) > 0
        })
        .await;
        until("every partition reached its cap", 10, || {
            rig.metrics.consumed_total() >= 4 * cfg.pipeline.max_in_flight_per_partition as u64
        })
        .await;
        // Asserting that nothing more happens needs some time to pass.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let consumed = rig.metrics.consumed_total();
        assert!(
            consumed <= bound,
            "read {consumed} records while stalled (bound {bound})"
        );
        assert!(consumed < msgs.len() as u64);
        assert_eq!(
            rig.source.total_committed(),
            0,
            "nothing committed while nothing is durable"
        );
        docs.open.store(true, Ordering::SeqCst);
        until("all committed", 60, || rig.source.fully_committed()).await;
        finish(pipeline).await;
    });
    assert_eq!(rig.docs.users(), replay(&msgs));
}

/// A batch larger than the partitions may hold in flight can never fill: a partition at its
/// cap reads nothing more until something is durable. The shards then write what they hold at
/// once; with `batch.max_wait_ms` at ten minutes, nothing would be written before the deadline
/// below if they waited for it.
#[test]
fn partitions_at_their_in_flight_cap_have_the_shards_write_what_they_hold() {
    let cfg = config("[batch]\nmax_size = 1000000\nmax_wait_ms = 600000\n");
    let rig = EmbeddedRig::new(&cfg, 7);
    let msgs = workload(20_000, 1_000, 7);
    rig.source
        .append_all(msgs.iter().map(|(k, p, _)| (k.clone(), p.clone())));
    run(async {
        let pipeline = rig.start_with(&cfg, 7, rig.ports_with(None, None));
        rig.source.assign_all();
        until("all committed", 60, || rig.source.fully_committed()).await;
        finish(pipeline).await;
    });
    assert_eq!(rig.docs.users(), replay(&msgs));
}

#[test]
fn aggregators_passivate_and_reactivate_with_their_state() {
    let cfg = config("[aggregator]\nidle_ms = 30\n");
    let rig = EmbeddedRig::new(&cfg, 4);
    let first = workload(3_000, 100, 4);
    let second = workload(3_000, 100, 5);
    let state = CountingState::over(&rig);
    run(async {
        let pipeline = first_half(&rig, &cfg, &first, &state).await;
        until("aggregators passivated", 10, || {
            rig.metrics.aggregators_active.get() == 0
        })
        .await;
        let loads_before = state.loads.load(Ordering::SeqCst);
        rig.source
            .append_all(second.iter().map(|(k, p, _)| (k.clone(), p.clone())));
        until("second half committed", 60, || rig.source.fully_committed()).await;
        assert!(
            state.loads.load(Ordering::SeqCst) >= loads_before + 90,
            "reactivated aggregators reloaded their state"
        );
        finish(pipeline).await;
    });
    let all: Vec<_> = first.iter().chain(second.iter()).cloned().collect();
    assert_eq!(rig.docs.users(), replay(&all));
}

#[test]
fn packed_users_unpack_with_their_state_and_their_dedup_window() {
    let cfg = config("[aggregator]\nidle_ms = 600000\npack_after_ms = 1\n");
    let rig = EmbeddedRig::new(&cfg, 4);
    let first = workload(3_000, 100, 6);
    let second = workload(3_000, 100, 7);
    // Re-published copies of the first half's valid records (new offsets, same messageIds):
    // only a dedup window that survived packing tells them apart.
    let republished: Vec<_> = first
        .iter()
        .filter(|(_, _, kind)| *kind != MessageKind::Invalid)
        .step_by(7)
        .cloned()
        .collect();
    let state = CountingState::over(&rig);
    run(async {
        let pipeline = first_half(&rig, &cfg, &first, &state).await;
        until("every resident user packed", 20, || {
            let resident = rig.metrics.users_resident();
            resident > 0 && rig.metrics.users_packed() == resident
        })
        .await;
        let loads_before = state.loads.load(Ordering::SeqCst);
        let duplicates_before = rig.metrics.duplicates.get();
        rig.source.append_all(
            republished
                .iter()
                .chain(second.iter())
                .map(|(k, p, _)| (k.clone(), p.clone())),
        );
        until("second half committed", 60, || rig.source.fully_committed()).await;
        assert_eq!(
            state.loads.load(Ordering::SeqCst),
            loads_before,
            "packed users are unpacked, not reloaded"
        );
        assert!(
            rig.metrics.duplicates.get() >= duplicates_before + republished.len() as u64,
            "every re-published record is a duplicate"
        );
        finish(pipeline).await;
    });
    let all: Vec<_> = first.iter().chain(second.iter()).cloned().collect();
    assert_eq!(rig.docs.users(), replay(&all));
}

/// A source that, at every commit, checks that each valid record below the committed position
/// is reflected in the durable user state (its messageId is in the dedup window its document
/// holds).
struct CheckingSource {
    inner: Arc<EmbeddedSource>,
    docs: Arc<herald::adapters::memory::docs::MemoryDocumentStore>,
    violations: Arc<AtomicUsize>,
    commits: Arc<AtomicUsize>,
    payloads: HashMap<(u32, u64), Bytes>,
}

impl Source for CheckingSource {
    fn kind(&self) -> &'static str {
        "embedded"
    }
    fn take_assignments(&self) -> Option<mpsc::UnboundedReceiver<AssignmentEvent>> {
        self.inner.take_assignments()
    }
    fn reader(&self, p: u32) -> Result<Arc<dyn PartitionReader>, SourceError> {
        self.inner.reader(p)
    }
    fn commit(&self, partition: u32, next_offset: u64) -> BoxFut<Result<(), SourceError>> {
        let from = self.inner.committed(partition);
        for offset in from..next_offset {
            let payload = &self.payloads[&(partition, offset)];
            if let Ok(e) = decode(payload, 1 << 20) {
                let durable = self
                    .docs
                    .stored(&e.user_id)
                    .is_some_and(|s| s.seen.contains(message_fingerprint(&e.message_id)));
                if !durable {
                    self.violations.fetch_add(1, Ordering::SeqCst);
                }
            }
        }
        self.commits.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(partition, next_offset)
    }
    fn dead_letter(&self, letters: Vec<DeadLetter>) -> BoxFut<Result<(), SourceError>> {
        self.inner.dead_letter(letters)
    }
    fn high_watermark(&self, p: u32) -> Option<u64> {
        self.inner.high_watermark(p)
    }
}

#[test]
fn the_commit_position_never_passes_an_undurable_record() {
    let cfg = config("");
    let rig = EmbeddedRig::new(&cfg, 6);
    let msgs = workload(20_000, 1_000, 6);
    let mut payloads = HashMap::new();
    for (k, p, _) in &msgs {
        let pos = rig.source.append(k, p.clone());
        payloads.insert(pos, p.clone());
    }
    let checking = Arc::new(CheckingSource {
        inner: rig.source.clone(),
        docs: rig.docs.clone(),
        violations: Arc::new(AtomicUsize::new(0)),
        commits: Arc::new(AtomicUsize::new(0)),
        payloads,
    });
    run(async {
        let mut ports = rig.ports_with(None, None);
        ports.source = checking.clone();
        let pipeline = rig.start_with(&cfg, 6, ports);
        rig.source.assign_all();
        until("all committed", 60, || rig.source.fully_committed()).await;
        finish(pipeline).await;
    });
    assert!(
        checking.commits.load(Ordering::SeqCst) > 4,
        "several commits happened"
    );
    assert_eq!(checking.violations.load(Ordering::SeqCst), 0);
    for p in 0..rig.source.partitions() {
        let h = rig.source.commit_history(p);
        assert!(
            h.windows(2).all(|w| w[0] < w[1]),
            "commits only move forward"
        );
    }
}

#[test]
fn every_rejection_reason_is_dead_lettered_and_the_partition_goes_on() {
    let cfg = config("[limits]\nmax_message_bytes = 400\n[demo]\npartitions = 1\n");
    let rig = EmbeddedRig::new(&cfg, 7);
    let ok = |i: u32| {
        format!(
            r#"{{"messageId":"ok-{i}","type":"track","userId":"u-1","timestamp":"2026-11-23T10:00:0{i}Z","event":"e"}}"#
        )
    };
    let bad: Vec<(RejectReason, Vec<u8>)> = vec![
        (RejectReason::TooLarge, format!(r#"{{"pad":"{}"}}"#, "x".repeat(500)).into_bytes()),
        (RejectReason::NotUtf8, vec![0xff, 0xfe, b'{']),
        (RejectReason::NotJson, b"{nope".to_vec()),
        (RejectReason::NotObject, b"[1,2,3]".to_vec()),
        (RejectReason::MissingField, br#"{"type":"track","userId":"u-1","timestamp":"2026-11-23T10:00:00Z","event":"e"}"#.to_vec()),
        (RejectReason::BadField, br#"{"messageId":7,"type":"track","userId":"u-1","timestamp":"2026-11-23T10:00:00Z","event":"e"}"#.to_vec()),
        (RejectReason::UnknownType, br#"{"messageId":"x","type":"pageview","userId":"u-1","timestamp":"2026-11-23T10:00:00Z"}"#.to_vec()),
        (RejectReason::BadTimestamp, br#"{"messageId":"x","type":"track","userId":"u-1","timestamp":"soon","event":"e"}"#.to_vec()),
        (RejectReason::BadEventName, br#"{"messageId":"x","type":"track","userId":"u-1","timestamp":"2026-11-23T10:00:00Z","event":"a/b"}"#.to_vec()),
    ];
    assert_eq!(bad.len(), RejectReason::ALL.len(), "every reason covered");
    let mut valid = Vec::new();
    for (i, (_, payload)) in bad.iter().enumerate() {
        rig.source.append("u-1", Bytes::from(payload.clone()));
        let good = ok(i as u32);
        rig.source
            .append("u-1", Bytes::from(good.clone().into_bytes()));
        valid.push(good.clone().into_bytes());
    }
    run(async {
        let pipeline = rig.start(&cfg, 7);
        rig.source.assign_all();
        until("all committed", 30, || rig.source.fully_committed()).await;
        finish(pipeline).await;
    });
    let letters = rig.source.dead_letters();
    assert_eq!(letters.len(), bad.len());
    for ((reason, payload), letter) in bad.iter().zip(&letters) {
        assert!(
            letter.error.starts_with(reason.code()),
            "{} vs {}",
            letter.error,
            reason.code()
        );
        assert_eq!(
            &letter.record.payload[..],
            &payload[..],
            "original bytes kept"
        );
    }
    let text = rig.metrics.render();
    for reason in RejectReason::ALL {
        let line = format!(
            "herald_events_invalid_total{{reason=\"{}\"}} 1",
            reason.code()
        );
        assert!(text.contains(&line), "missing {line}");
    }
    assert_eq!(
        rig.docs.users(),
        oracle::replay(valid.iter().map(|p| &p[..]))
    );
}

#[test]
fn the_demo_runs_the_whole_messaging_path_and_verifies() {
    let env: Vec<(String, String)> = Vec::new();
    let demo_toml =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let cfg = Config::load_with(
        &[],
        &[("demo", &demo_toml), ("test", "[pipeline]\nworkers = 2\n")],
        &env,
    )
    .unwrap();
    let report = herald::demo::run(
        cfg,
        herald::demo::DemoArgs {
            events: 30_000,
            users: 3_000,
            seed: 9,
            visitors: herald::demo::VISITOR_RATE,
        },
    )
    .expect("demo runs");
    assert!(report.mismatches.is_empty(), "{:?}", report.mismatches);
    assert!(report.statuses.get("delivered").copied().unwrap_or(0) > 0);
    assert!(report.statuses.get("skipped").copied().unwrap_or(0) > 0);
    assert!(report.retries_fired > 0, "retries happened");
    assert!(report.duplicates > 0 && report.invalid > 0);
}

/// A message document the store refuses (a validator, a size limit) can never be written: its
/// trigger is dead-lettered, its effect on the profile stands, and the shard goes on.
#[test]
fn a_message_the_store_refuses_dead_letters_its_trigger_and_the_shard_goes_on() {
    let cfg = config(
        r#"
[demo]
partitions = 2

[[campaigns]]
id = "ping"
on_event = "ping"
channel = "sms"
template = "Note: {{traits.note}}"
"#,
    );
    let rig = EmbeddedRig::new(&cfg, 3);
    let mut records = Vec::new();
    let mut push = |user: String, body: String| {
        let text = format!(
            r#"{{"messageId":"m-{}","userId":"{user}","timestamp":"2026-11-23T10:00:00Z",{body}}}"#,
            records.len()
        );
        rig.source
            .append(&user, Bytes::from(text.clone().into_bytes()));
        records.push(text.into_bytes());
    };
    for i in 0..40 {
        let note = if i == 7 { "poison" } else { "fine" };
        push(
            format!("u-{i}"),
            format!(r#""type":"identify","traits":{{"phone":"+1555{i:07}","note":"{note}"}}"#),
        );
        for _ in 0..3 {
            push(format!("u-{i}"), r#""type":"track","event":"ping""#.into());
        }
    }
    run(async {
        let docs = Arc::new(RefusingDocs {
            inner: rig.docs.clone(),
        });
        let pipeline = rig.start_with(&cfg, 3, rig.ports_with(None, Some(docs)));
        rig.source.assign_all();
        until("all committed", 30, || rig.source.fully_committed()).await;
        finish(pipeline).await;
    });
    let letters = rig.source.dead_letters();
    assert_eq!(letters.len(), 3, "u-7's three pings: {letters:?}");
    for l in &letters {
        assert_eq!(l.record.key.as_deref(), Some(&b"u-7"[..]));
        assert!(
            l.error.starts_with("store_refused: message ping:m-"),
            "{}",
            l.error
        );
    }
    // The other 117 messages are stored; every record's effect on the profiles stands.
    let messages = rig.docs.messages();
    assert_eq!(messages.len(), 117);
    assert!(messages.iter().all(|m| m.user_id != "u-7"));
    assert_eq!(
        rig.docs.users(),
        oracle::replay(records.iter().map(|r| &r[..]))
    );
}

#[test]
fn documents_the_store_refuses_dead_letter_their_records_and_nothing_else_is_lost() {
    let cfg = config("[demo]\npartitions = 1\n");
    let rig = EmbeddedRig::new(&cfg, 8);
    let mut valid = Vec::new();
    let mut push = |user: &str, body: String| {
        let text = format!(
            r#"{{"messageId":"m-{}","userId":"{user}","timestamp":"2026-11-23T10:00:00Z",{body}}}"#,
            valid.len()
        );
        rig.source
            .append(user, Bytes::from(text.clone().into_bytes()));
        valid.push(text.into_bytes());
    };
    for round in 0..50 {
        push("u-good", r#""type":"track","event":"tick""#.into());
        push("u-bad", r#""type":"track","event":"tick""#.into());
        if round == 20 {
            push(
                "u-bad",
                r#""type":"identify","traits":{"poison":true}"#.into(),
            );
        }
    }
    run(async {
        let docs = Arc::new(RefusingDocs {
            inner: rig.docs.clone(),
        });
        let pipeline = rig.start_with(&cfg, 8, rig.ports_with(None, Some(docs)));
        rig.source.assign_all();
        until("all committed", 30, || rig.source.fully_committed()).await;
        finish(pipeline).await;
    });
    let letters = rig.source.dead_letters();
    assert!(
        letters
            .iter()
            .any(|l| std::str::from_utf8(&l.record.payload)
                .unwrap()
                .contains("\"poison\":true")),
        "the poisoning record is dead-lettered"
    );
    assert!(letters.iter().all(|l| l.error.starts_with("store_refused")));
    // Everything not dead-lettered is in `users`, exactly once, in order.
    let kept: Vec<&[u8]> = valid
        .iter()
        .filter(|p| !letters.iter().any(|l| l.record.payload[..] == p[..]))
        .map(|p| &p[..])
        .collect();
    assert!(
        letters
            .iter()
            .all(|l| l.record.key.as_deref() == Some(&b"u-bad"[..])),
        "only u-bad's records went"
    );
    let users = rig.docs.users();
    assert_eq!(users, oracle::replay(kept));
    assert_eq!(users["u-good"].event_count, 50);
    let text = rig.metrics.render();
    assert!(
        text.contains(&format!(
            "herald_events_invalid_total{{reason=\"store_refused\"}} {}",
            letters.len()
        )),
        "{text}"
    );
}

/// A callback whose message never appears is kept for `http.early_callback_ttl_ms`, then
/// forgotten (counted `expired`); past `http.early_callbacks_max` kept ones, the provider is
/// asked to call again (503) instead.
#[test]
fn early_callbacks_expire_and_are_capped() {
    use herald::ports::{CallbackError, CallbackStatus};
    let cfg = config("[http]\nearly_callback_ttl_ms = 1500\nearly_callbacks_max = 2\n");
    let rig = EmbeddedRig::new(&cfg, 5);
    let callback = |id: &str| Callback {
        provider: "sim".into(),
        message_id: Some(id.into()),
        provider_message_id: Some(format!("p-{id}")),
        status: CallbackStatus::Delivered,
        error: None,
        retryable: false,
        suppress: None,
    };
    run(async {
        let pipeline = rig.start(&cfg, 5);
        let sink = pipeline.callbacks();
        sink.deliver(callback("welcome:a")).await.expect("kept");
        sink.deliver(callback("welcome:b")).await.expect("kept");
        assert!(matches!(
            sink.deliver(callback("welcome:c")).await,
            Err(CallbackError::NotReady(_))
        ));
        let docs = rig.docs.clone();
        until("both kept callbacks expire", 30, || {
            futures::executor::block_on(docs.early_callbacks(10))
                .unwrap()
                .is_empty()
        })
        .await;
        finish(pipeline).await;
    });
    let text = rig.metrics.render();
    for (outcome, n) in [("kept", 2), ("full", 1), ("expired", 2)] {
        assert!(
            text.contains(&format!(
                "herald_early_callbacks_total{{outcome=\"{outcome}\"}} {n}"
            )),
            "{outcome}: {text}"
        );
    }
    assert!(rig.docs.messages().is_empty());
}

/// Identity merge, a crash at each step: each alias phase of a random stream (visitors into
/// users, chains, cycles and retargets) runs until the k-th `users` write, for every k, and the
/// process "crashes" there (later writes never land, nothing after them is committed); a
/// restart on the same stores and log finishes it, and users and merged ids equal the
/// reference model's (ARCHITECTURE.md, "Identity merge": what a crash at each step leaves).
#[test]
fn a_crash_after_any_write_of_the_merges_is_finished_by_the_restart() {
    let cfg = config("[shutdown]\ntimeout_ms = 300\n");
    let stream = aliases::AliasStream::new(5, 12, 8, 150);
    // Runs `source` until every record is committed, or — with `crash_after` — until that many
    // users writes completed, then stops as a crash would (the shutdown times out on the
    // hanging writes; nothing after them is durable or committed). Returns the writes done.
    let run_on = |rig: &EmbeddedRig, source: Arc<EmbeddedSource>, crash_after: Option<i64>| {
        let docs = FaultyDocs::new(rig.docs.clone());
        if let Some(k) = crash_after {
            docs.writes_left.store(k, Ordering::SeqCst);
        }
        let done = docs.writes_done.clone();
        run(async {
            let mut ports = rig.ports_with(None, Some(docs.clone()));
            ports.source = source.clone();
            let pipeline = rig.start_with(&cfg, 5, ports);
            source.assign_all();
            match crash_after {
                None => {
                    until("all committed", 60, || source.fully_committed()).await;
                    finish(pipeline).await;
                }
                Some(k) => {
                    until("the writes before the crash", 60, || {
                        done.load(Ordering::SeqCst) as i64 >= k || source.fully_committed()
                    })
                    .await;
                    let _ = pipeline.shutdown().await;
                }
            }
        });
        done.load(Ordering::SeqCst) as i64
    };
    let publish = |source: &EmbeddedSource, phase: usize| {
        for (key, payload) in &stream.phases[phase] {
            source.append(key, Bytes::from(payload.clone()));
        }
    };
    // The phases before `phase` done, `phase` published and not read yet.
    let before = |phase: usize| {
        let rig = EmbeddedRig::new(&cfg, 5);
        let mut source = rig.source.clone();
        for p in 0..phase {
            publish(&source, p);
            run_on(&rig, source.clone(), None);
            source = source.reopen();
        }
        publish(&source, phase);
        (rig, source)
    };
    let mut crashes = 0;
    for phase in 1..=3 {
        let want = stream.expected(phase + 1);
        let (rig, source) = before(phase);
        let writes = run_on(&rig, source, None);
        for k in 0..writes {
            let (rig, source) = before(phase);
            run_on(&rig, source.clone(), Some(k));
            let source = source.reopen();
            run_on(&rig, source.clone(), None);
            assert!(source.fully_committed());
            let users = rig.docs.users();
            let differ: Vec<String> = want
                .users
                .iter()
                .filter(|(id, p)| users.get(*id) != Some(p))
                .map(|(id, p)| format!("{id}:\n  want {p:?}\n  got  {:?}", users.get(id)))
                .chain(
                    users
                        .keys()
                        .filter(|id| !want.users.contains_key(*id))
                        .map(|id| format!("{id}: not in the model")),
                )
                .collect();
            assert!(
                differ.is_empty(),
                "phase {phase}, crash after write {k}: {differ:#?}"
            );
            assert_eq!(
                rig.docs.merged(),
                want.merged,
                "phase {phase}, crash after write {k}"
            );
            crashes += 1;
        }
    }
    let merged = stream.expected(4).merged.len();
    assert!(
        crashes >= 15 && merged >= 8,
        "{crashes} crashes, {merged} merged"
    );
    eprintln!("{merged} merged ids; a crash after each of {crashes} users writes");
}
