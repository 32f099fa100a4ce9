//! `cargo bench --bench residency`: what one resident user costs. The real pipeline (source,
//! partition actors, user shards, batchers) runs on stores that keep nothing. Two runs, each in
//! a fresh process, feed the same input — 2 × `HERALD_BENCH_USERS` (default 100,000) typical
//! users: 5 traits, 3 tags, 5 event names, 10 remembered message ids — one with
//! `aggregator.max_resident` = N, one with 2 × N; once every record is durable, each reads its
//! RSS and the resident-user gauge. The input (the embedded source keeps its log) and every
//! other cost are the same in both, so the RSS slope between them is what a resident user
//! costs. The pair runs twice: as the allocator is configured by default, and with freed
//! memory returned to the system at once (`MIMALLOC_PURGE_DELAY=0`), which leaves out memory
//! freed during the run that mimalloc keeps a while (it moves the first figure by ±100 B from
//! run to run). Both pairs run with users live (`aggregator.pack_after_ms = 0`) and again with
//! them packed (`pack_after_ms = 1`: measured once every resident user is packed). The heap
//! estimate of one state (`UserState::heap_bytes`) and the size of its packed form are printed
//! beside them.
//!
//! Results go to `target/bench/residency.json`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use herald::actors::Pipeline;
use herald::config::Config;
use herald::domain::event::decode;
use herald::domain::user::{DedupLimits, UserState};
use herald::embedded::EmbeddedRig;
use herald::ports::{BoxFut, StateCache, StoreError, StoredUser, UserSnapshot, UsersWritten};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A state cache that remembers nothing: every load misses.
struct NoState;

impl StateCache for NoState {
    fn load(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<Option<UserState>>, StoreError>> {
        let n = users.len();
        async move { Ok(vec![None; n]) }.boxed()
    }
    fn begin_writes(&self, _: Vec<Arc<str>>) -> BoxFut<Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }
    fn save(&self, _: Vec<Arc<UserSnapshot>>) -> BoxFut<Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }
}

/// A document store that keeps no user documents (every user is new, every write holds;
/// messages are not triggered here).
struct NoDocs(Arc<dyn herald::ports::DocumentStore>);

impl herald::ports::DocumentStore for NoDocs {
    fn load_users(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<StoredUser>, StoreError>> {
        let n = users.len();
        async move { Ok(vec![StoredUser::Absent; n]) }.boxed()
    }
    fn upsert_users(
        &self,
        _: Vec<Arc<UserSnapshot>>,
        _: u64,
        _: i64,
    ) -> BoxFut<Result<UsersWritten, StoreError>> {
        async { Ok(UsersWritten::default()) }.boxed()
    }
    fn remove_created_messages(&self, _: Vec<String>, _: u64) -> BoxFut<Result<(), StoreError>> {
        async { Ok(()) }.boxed()
    }
    fn insert_messages(
        &self,
        m: Vec<Arc<herald::domain::message::MessageRecord>>,
        token: u64,
    ) -> BoxFut<Result<herald::ports::InsertedMessages, StoreError>> {
        self.0.insert_messages(m, token)
    }
    fn transition(
        &self,
        id: String,
        c: herald::domain::message::StatusChange,
    ) -> BoxFut<Result<herald::ports::TransitionResult, StoreError>> {
        self.0.transition(id, c)
    }
    fn keep_early_callback(
        &self,
        id: String,
        cb: herald::ports::Callback,
        expires: i64,
        max: u64,
    ) -> BoxFut<Result<bool, StoreError>> {
        self.0.keep_early_callback(id, cb, expires, max)
    }
    fn early_callbacks(
        &self,
        limit: usize,
    ) -> BoxFut<Result<Vec<herald::ports::EarlyCallback>, StoreError>> {
        self.0.early_callbacks(limit)
    }
    fn drop_early_callback(&self, key: String) -> BoxFut<Result<(), StoreError>> {
        self.0.drop_early_callback(key)
    }
    fn get_message(
        &self,
        id: String,
    ) -> BoxFut<Result<Option<Arc<herald::domain::message::MessageRecord>>, StoreError>> {
        self.0.get_message(id)
    }
    fn take_cap_slot(
        &self,
        key: String,
        message_id: String,
        now_ms: i64,
        max: usize,
        per_ms: i64,
    ) -> BoxFut<Result<herald::domain::policy::Slot, StoreError>> {
        self.0.take_cap_slot(key, message_id, now_ms, max, per_ms)
    }
    fn count_status(
        &self,
        status: herald::domain::message::MessageStatus,
    ) -> BoxFut<Result<u64, StoreError>> {
        self.0.count_status(status)
    }
    fn lookups_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<herald::domain::message::MessageRecord>, StoreError>> {
        self.0.lookups_due(now_ms, limit)
    }
    fn claim_lookup(
        &self,
        id: String,
        due_ms: i64,
        next_ms: Option<i64>,
    ) -> BoxFut<Result<bool, StoreError>> {
        self.0.claim_lookup(id, due_ms, next_ms)
    }
    fn stalled_messages(
        &self,
        idle_before: i64,
        from: herald::ports::StalledFrom,
        limit: usize,
    ) -> BoxFut<Result<Vec<herald::domain::message::MessageRecord>, StoreError>> {
        self.0.stalled_messages(idle_before, from, limit)
    }
    fn find_by_provider_message_id(
        &self,
        provider: String,
        pid: String,
    ) -> BoxFut<Result<Option<herald::domain::message::MessageRecord>, StoreError>> {
        self.0.find_by_provider_message_id(provider, pid)
    }
    fn suppress(
        &self,
        s: Vec<herald::domain::suppression::Suppression>,
    ) -> BoxFut<Result<usize, StoreError>> {
        self.0.suppress(s)
    }
    fn suppressed(
        &self,
        ids: Vec<String>,
    ) -> BoxFut<Result<Vec<(String, herald::domain::suppression::SuppressionReason)>, StoreError>>
    {
        self.0.suppressed(ids)
    }
}

/// A typical user's ten messages: two identifies (5 traits, 3 tags) and eight tracks over
/// five event names.
fn typical_user(u: usize) -> Vec<(String, Bytes)> {
    let user = format!("user-{u:08}");
    let mut out = Vec::new();
    for i in 0..2 {
        out.push(format!(
            r#"{{"messageId":"{user}-i{i}","type":"identify","userId":"{user}","timestamp":"2026-11-23T10:00:0{i}Z","traits":{{"email":"{user}@example.com","phone":"+1555{u:07}","first_name":"Ada{i}","plan":"pro","subscribed":true}},"tags":{{"add":["vip","beta","newsletter"]}}}}"#
        ));
    }
    for i in 0..8 {
        let event = ["viewed", "clicked", "added_to_cart", "bought", "shared"][i % 5];
        out.push(format!(
            r#"{{"messageId":"{user}-t{i}","type":"track","userId":"{user}","timestamp":"2026-11-23T10:01:0{i}Z","event":"{event}"}}"#
        ));
    }
    out.into_iter()
        .map(|p| (user.clone(), Bytes::from(p)))
        .collect()
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

async fn feed(rig: &EmbeddedRig, pipeline: &Pipeline, users: usize, resident: usize, packed: bool) {
    for chunk_start in (0..users).step_by(10_000) {
        let records: Vec<_> = (chunk_start..(chunk_start + 10_000).min(users))
            .flat_map(typical_user)
            .collect();
        rig.source.append_all(records);
    }
    let started = Instant::now();
    let mut last = -1;
    loop {
        pipeline.flush_now();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rig.metrics.users_resident();
        // Done: everything committed and the resident count settled (at `resident`, or at
        // the shards' caps, which hash spread makes a little lower) — and, packing, every
        // resident user packed.
        let all_packed = !packed || rig.metrics.users_packed() == now;
        if rig.source.fully_committed() && now == last && now as usize <= resident && all_packed {
            break;
        }
        last = now;
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not settled in time"
        );
    }
    // Let the allocator settle the freed hand-off buffers — and, packing, the live states
    // packing freed, which mimalloc returns to the system after its purge delay.
    let settle = if packed { 3_000 } else { 500 };
    tokio::time::sleep(Duration::from_millis(settle)).await;
}

/// One run (in this process): `users` users fed, at most `max_resident` resident, packed or
/// live; prints `rss <bytes> resident <n>`.
fn child(users: usize, max_resident: usize, packed: bool) {
    let pack_after_ms = u8::from(packed);
    let toml = format!(
        r#"
[source]
kind = "embedded"
[aggregator]
max_resident = {max_resident}
idle_ms = 3600000
pack_after_ms = {pack_after_ms}
[demo]
partitions = 4
"#
    );
    let config = Config::load_with(&[], &[("residency", &toml)], &[]).expect("config");
    let rig = EmbeddedRig::new(&config, 1);
    actix::System::new().block_on(async {
        let ports = rig.ports_with(
            Some(Arc::new(NoState)),
            Some(Arc::new(NoDocs(rig.docs.clone()))),
        );
        let pipeline = rig.start_with(&config, 1, ports);
        rig.source.assign_all();
        feed(&rig, &pipeline, users, max_resident.min(users), packed).await;
        println!(
            "rss {} resident {}",
            rss_bytes(),
            rig.metrics.users_resident()
        );
        let _ = pipeline.shutdown().await;
    });
}

/// One measuring child; `purge_at_once` runs it with mimalloc returning freed memory to the
/// system at once (`MIMALLOC_PURGE_DELAY=0`) instead of after its delay.
fn run_child(users: usize, max_resident: usize, purge_at_once: bool, packed: bool) -> (f64, f64) {
    let mut child = std::process::Command::new(std::env::current_exe().expect("own path"));
    child.env(
        "HERALD_RESIDENCY_CHILD",
        format!("{users},{max_resident},{}", u8::from(packed)),
    );
    if purge_at_once {
        child.env("MIMALLOC_PURGE_DELAY", "0");
    }
    let out = child.output().expect("run the measuring child");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("rss "))
        .unwrap_or_else(|| {
            panic!(
                "child said: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let parts: Vec<&str> = line.split_whitespace().collect();
    (parts[1].parse().unwrap(), parts[3].parse().unwrap())
}

fn main() {
    herald::huge_pages::disable().expect("transparent huge pages off");
    if let Ok(spec) = std::env::var("HERALD_RESIDENCY_CHILD") {
        let parts: Vec<usize> = spec.split(',').map(|p| p.parse().unwrap()).collect();
        child(parts[0], parts[1], parts[2] == 1);
        return;
    }
    let users: usize = std::env::var("HERALD_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // The slope between a run with `users` resident and one with twice as many.
    let slope = |purge_at_once: bool, packed: bool| {
        let (first, r1) = run_child(2 * users, users, purge_at_once, packed);
        let (second, r2) = run_child(2 * users, 2 * users, purge_at_once, packed);
        ((second - first) / (r2 - r1), (r1, r2), (first, second))
    };
    let (per_user, (r1, r2), (first, second)) = slope(false, false);
    // The same with freed memory returned at once: what stays is what the resident users
    // hold (with the allocator's size classes), not memory freed during the run that
    // mimalloc keeps for a while before returning it.
    let (per_user_live, _, _) = slope(true, false);
    let (per_packed, _, _) = slope(false, true);
    let (per_packed_live, _, _) = slope(true, true);

    // The heap estimate of one typical state, applied as the shards apply it.
    let mut state = UserState::new();
    for (_, p) in typical_user(1) {
        let e = decode(&p, 1 << 20).unwrap();
        state.apply(None, &e, 0, DedupLimits::default());
    }
    let heap = state.heap_bytes() + std::mem::size_of::<UserState>();
    let packed_len = herald::domain::packed_state::pack(&state).map_or(0, |p| p.heap_bytes());
    println!(
        "input: {} typical users (10 messages each), the same in both runs",
        2 * users
    );
    println!("resident users: {r1} → {r2}");
    println!("RSS: {first} → {second} bytes");
    println!("per resident user (RSS slope): {per_user:.0} bytes");
    println!("per resident user, freed memory returned at once: {per_user_live:.0} bytes");
    println!("per packed resident user (RSS slope): {per_packed:.0} bytes");
    println!("per packed resident user, freed memory returned at once: {per_packed_live:.0} bytes");
    println!("one state's own bytes (estimate): {heap} bytes; packed: {packed_len} bytes");
    let json = format!(
        "{{\"resident_first\":{r1},\"resident_second\":{r2},\"rss_first\":{first},\"rss_second\":{second},\"bytes_per_user\":{per_user:.0},\"bytes_per_user_purged\":{per_user_live:.0},\"bytes_per_packed_user\":{per_packed:.0},\"bytes_per_packed_user_purged\":{per_packed_live:.0},\"state_estimate\":{heap},\"packed_state\":{packed_len}}}\n"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("residency.json"), json);
    }
}
