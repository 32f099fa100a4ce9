//! `cargo bench --bench residency`: what one resident user costs. The real pipeline (source,
//! partition actors, user shards, batchers) runs on stores that keep nothing, so the process
//! holds only what the shards hold; the bench feeds `HERALD_BENCH_USERS` (default 100,000)
//! typical users — 5 traits, 3 tags, 5 event names, 10 remembered message ids — waits until
//! every record is durable and every user resident, reads the RSS, does the same for as many
//! new users again, and reports the RSS slope per resident user. The heap estimate of one
//! state (`UserState::heap_bytes`) is printed beside it.
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
use herald::ports::{
    BoxFut, LoadedState, SeenPolicy, StateStore, StoreError, UserSnapshot, UsersWritten,
};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A state store that remembers nothing: every user is new, every claim and write holds.
struct NoState;

impl StateStore for NoState {
    fn load(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<LoadedState>, StoreError>> {
        let n = users.len();
        async move { Ok(vec![LoadedState::Absent; n]) }.boxed()
    }
    fn claim(&self, _: u64, c: Vec<(Arc<str>, u64)>) -> BoxFut<Result<Vec<bool>, StoreError>> {
        let n = c.len();
        async move { Ok(vec![true; n]) }.boxed()
    }
    fn save(
        &self,
        _: u64,
        u: Vec<Arc<UserSnapshot>>,
        _: SeenPolicy,
    ) -> BoxFut<Result<Vec<bool>, StoreError>> {
        let n = u.len();
        async move { Ok(vec![true; n]) }.boxed()
    }
}

/// A document store that keeps no user documents (messages are not triggered here).
struct NoDocs(Arc<dyn herald::ports::DocumentStore>);

impl herald::ports::DocumentStore for NoDocs {
    fn upsert_users(
        &self,
        _: Vec<Arc<UserSnapshot>>,
        _: i64,
    ) -> BoxFut<Result<UsersWritten, StoreError>> {
        async { Ok(UsersWritten::default()) }.boxed()
    }
    fn insert_messages(
        &self,
        m: Vec<herald::domain::message::MessageRecord>,
    ) -> BoxFut<Result<(), StoreError>> {
        self.0.insert_messages(m)
    }
    fn transition(
        &self,
        id: String,
        c: herald::domain::message::StatusChange,
    ) -> BoxFut<Result<herald::ports::TransitionResult, StoreError>> {
        self.0.transition(id, c)
    }
    fn record_early_callback(
        &self,
        id: String,
        c: herald::domain::message::StatusChange,
    ) -> BoxFut<Result<(), StoreError>> {
        self.0.record_early_callback(id, c)
    }
    fn get_message(
        &self,
        id: String,
    ) -> BoxFut<Result<Option<herald::domain::message::MessageRecord>, StoreError>> {
        self.0.get_message(id)
    }
    fn queued_messages(
        &self,
        limit: usize,
    ) -> BoxFut<Result<Vec<herald::domain::message::MessageRecord>, StoreError>> {
        self.0.queued_messages(limit)
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

async fn feed(rig: &EmbeddedRig, pipeline: &Pipeline, from: usize, to: usize) {
    for chunk_start in (from..to).step_by(10_000) {
        let records: Vec<_> = (chunk_start..(chunk_start + 10_000).min(to))
            .flat_map(typical_user)
            .collect();
        rig.source.append_all(records);
    }
    let started = Instant::now();
    while !(rig.source.fully_committed() && rig.metrics.users_resident() as usize >= to) {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "not resident in time"
        );
        pipeline.flush_now();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let the allocator settle the freed hand-off buffers.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

fn main() {
    let users: usize = std::env::var("HERALD_BENCH_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let toml = r#"
[source]
kind = "embedded"
[aggregator]
max_resident = 100000000
idle_ms = 3600000
[demo]
partitions = 4
"#;
    let config = Config::load_with(&[], &[("residency", toml)], &[]).expect("config");
    let rig = EmbeddedRig::new(&config, 1);
    let (first, second) = actix::System::new().block_on(async {
        let ports = rig.ports_with(
            Some(Arc::new(NoState)),
            Some(Arc::new(NoDocs(rig.docs.clone()))),
        );
        let pipeline = rig.start_with(&config, 1, ports);
        rig.source.assign_all();
        feed(&rig, &pipeline, 0, 1_000).await;
        let base = rss_bytes();
        feed(&rig, &pipeline, 1_000, users).await;
        let first = rss_bytes();
        feed(&rig, &pipeline, users, 2 * users).await;
        let second = rss_bytes();
        let _ = pipeline.shutdown().await;
        eprintln!(
            "rss: base {base}, {users} users {first}, {} users {second}",
            2 * users
        );
        (first, second)
    });
    let per_user = (second as f64 - first as f64) / users as f64;

    // The heap estimate of one typical state, applied as the shards apply it.
    let mut state = UserState::new();
    for (_, p) in typical_user(1) {
        let e = decode(&p, 1 << 20).unwrap();
        state.apply(None, &e, 0, DedupLimits::default());
    }
    let heap = state.heap_bytes() + std::mem::size_of::<UserState>();
    println!("resident users: {users} → {}", 2 * users);
    println!("RSS: {first} → {second} bytes");
    println!("per resident user (RSS slope): {per_user:.0} bytes");
    println!("one state's own bytes (estimate): {heap} bytes");
    let json = format!(
        "{{\"users\":{users},\"rss_first\":{first},\"rss_second\":{second},\"bytes_per_user\":{per_user:.0},\"state_estimate\":{heap}}}\n"
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    if std::fs::create_dir_all(&dir).is_ok() {
        let _ = std::fs::write(dir.join("residency.json"), json);
    }
}
