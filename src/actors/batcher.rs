//! Batcher actors, sharded by user: coalesce updates per user (at most one write per user per
//! flush, one flush in flight per batcher and so per user), flush on size or time. A flush
//! writes the `users` documents, then the new `messages`, then the user states with their
//! positions; only then are the offsets reported durable and the messages dispatched.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;
use tracing::Instrument;

use crate::domain::campaign::TriggeredMessage;
use crate::domain::message::MessageRecord;
use crate::domain::user::UserState;
use crate::ports::{DeadLetter, Record, StoreError};

use super::aggregator::{Aggregator, Reset};
use super::context::Shared;
use super::dispatcher::Dispatch;
use super::partition::{Durable, PartitionActor};
use super::supervision::contain_async;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A user's new state after some records, with what they triggered.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UserUpdate {
    pub state: Arc<UserState>,
    pub messages: Vec<TriggeredMessage>,
    pub partition: u32,
    pub owner: Addr<PartitionActor>,
    pub offsets: Vec<u64>,
    /// Events applied (for `herald_batch_size`).
    pub events: u64,
    /// Earliest record time among them (ms), for end-to-end latency.
    pub earliest_ms: i64,
    /// The applied records, dead-lettered if the store refuses the new state.
    pub raw: Vec<Record>,
    pub aggregator: Addr<Aggregator>,
}

/// Flush whatever is pending now (used on shutdown and by tests).
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushNow;

/// One user's coalesced updates.
struct PendingUser {
    state: Arc<UserState>,
    messages: Vec<TriggeredMessage>,
    /// Offsets to report per partition actor (one, unless the partition was restarted).
    offsets: Vec<(Addr<PartitionActor>, Vec<u64>)>,
    raw: Vec<Record>,
    aggregator: Addr<Aggregator>,
}

#[derive(Default)]
struct Pending {
    users: HashMap<String, PendingUser, ahash::RandomState>,
    events: u64,
    latency: Vec<(i64, u64)>,
    since: Option<Instant>,
}

impl Pending {
    fn add(&mut self, u: UserUpdate) {
        match self.users.get_mut(u.state.user_id.as_str()) {
            Some(entry) => {
                entry.state = u.state;
                entry.messages.extend(u.messages);
                entry.raw.extend(u.raw);
                entry.aggregator = u.aggregator;
                match entry.offsets.iter_mut().find(|(a, _)| *a == u.owner) {
                    Some((_, v)) => v.extend(u.offsets),
                    None => entry.offsets.push((u.owner, u.offsets)),
                }
            }
            None => {
                self.users.insert(
                    u.state.user_id.clone(),
                    PendingUser {
                        state: u.state,
                        messages: u.messages,
                        offsets: vec![(u.owner, u.offsets)],
                        raw: u.raw,
                        aggregator: u.aggregator,
                    },
                );
            }
        }
        self.events += u.events;
        self.latency.push((u.earliest_ms, u.events));
        self.since.get_or_insert_with(Instant::now);
    }
}

pub struct Batcher {
    shard: usize,
    shared: Arc<Shared>,
    pending: Pending,
    flushing: bool,
    timer: Option<SpawnHandle>,
}

impl Batcher {
    pub fn new(shard: usize, shared: Arc<Shared>) -> Self {
        Batcher {
            shard,
            shared,
            pending: Pending::default(),
            flushing: false,
            timer: None,
        }
    }

    fn maybe_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.pending.users.is_empty() {
            return;
        }
        let max_wait = self.shared.settings.batch_max_wait;
        let due = self.pending.since.is_some_and(|s| s.elapsed() >= max_wait);
        if self.pending.events as usize >= self.shared.settings.batch_max_size || due {
            self.flush(ctx);
        } else if self.timer.is_none() {
            let wait =
                max_wait.saturating_sub(self.pending.since.map_or(Duration::ZERO, |s| s.elapsed()));
            self.timer = Some(ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                act.maybe_flush(ctx);
            }));
        }
    }

    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        self.flushing = true;
        let batch = std::mem::take(&mut self.pending);
        let shared = self.shared.clone();
        let shard = self.shard;
        // Every log line of this flush (retries, refusals) carries its shard and size.
        let span = tracing::info_span!(
            "flush",
            shard,
            users = batch.users.len(),
            events = batch.events
        );
        let fut = async move {
            let ports = &shared.ports;
            let now = ports.clock.now_ms();
            let mut states: Vec<Arc<UserState>> =
                batch.users.values().map(|u| u.state.clone()).collect();
            let started = Instant::now();
            let refused = persist_users(&shared, shard, &mut states, now).await;
            ports
                .metrics
                .mongo_bulk_write_seconds
                .observe(started.elapsed().as_secs_f64());
            ports
                .metrics
                .documents_written("users", states.len() as u64);
            let records: Vec<MessageRecord> = batch
                .users
                .iter()
                .filter(|(id, _)| !refused.contains_key(id.as_str()))
                .flat_map(|(_, u)| u.messages.iter())
                .map(|m| MessageRecord::from_triggered(m, now))
                .collect();
            if !records.is_empty() {
                persist(&shared, shard, "messages", || {
                    ports.docs.insert_messages(records.clone())
                })
                .await;
                ports
                    .metrics
                    .documents_written("messages", records.len() as u64);
            }
            persist(&shared, shard, "user state", || {
                ports.state.save(states.clone())
            })
            .await;
            if !refused.is_empty() {
                dead_letter_refused(&shared, &batch, &refused).await;
            }
            tracing::debug!(
                messages = records.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "flushed"
            );
            (batch, records)
        }
        .instrument(span);
        ctx.spawn(fut.into_actor(self).map(|(batch, records), act, ctx| {
            act.after_flush(batch, records, ctx);
        }));
    }

    /// Everything of the batch is durable: report offsets, record metrics, dispatch.
    fn after_flush(
        &mut self,
        batch: Pending,
        records: Vec<MessageRecord>,
        ctx: &mut Context<Self>,
    ) {
        let metrics = &self.shared.ports.metrics;
        metrics.batch_size.observe(batch.events as f64);
        let now = self.shared.ports.clock.now_ms();
        for (earliest, n) in batch.latency {
            metrics.durable_latency(now - earliest, n);
        }
        for (_, user) in batch.users {
            for (owner, offsets) in user.offsets {
                owner.do_send(Durable { offsets });
            }
        }
        let sends: Vec<_> = records
            .into_iter()
            .filter(|r| !r.status.is_terminal())
            .filter_map(|r| {
                let first = self.shared.dispatchers_for(r.channel).first()?.clone();
                Some(first.send(Dispatch {
                    attempt: r.attempts + 1,
                    record: r,
                    provider_index: 0,
                    lease: None,
                }))
            })
            .collect();
        if sends.is_empty() {
            self.flushing = false;
            self.maybe_flush(ctx);
            return;
        }
        // Wait until dispatchers accepted the messages: a slow provider slows flushing,
        // which pauses the source instead of growing a queue (G7).
        ctx.spawn(join_all(sends).into_actor(self).map(|_, act, ctx| {
            act.flushing = false;
            act.maybe_flush(ctx);
        }));
    }
}

/// Upserts the `users` documents, retrying transient errors. Documents the store refuses
/// (bad data) are taken out of `states` and returned with the reason: their state is not
/// saved and their records go to the dead-letter destination instead (never retried forever,
/// never dropped silently).
async fn persist_users(
    shared: &Shared,
    shard: usize,
    states: &mut Vec<Arc<UserState>>,
    now: i64,
) -> HashMap<String, String> {
    let ports = &shared.ports;
    let mut refused = HashMap::new();
    let mut delay = Duration::from_millis(10);
    while !states.is_empty() {
        let attempt = states.clone();
        match contain_async(async { ports.docs.upsert_users(attempt, now).await }).await {
            Ok(Ok(())) => break,
            Ok(Err(StoreError::Refused { refused: docs })) => {
                for (id, detail) in docs {
                    tracing::error!(shard, user_id = %id, error = %detail, "MongoDB refused the user's document; dead-lettering the records behind it");
                    refused.insert(id, detail);
                }
                // The other documents were written (unordered write); writing them again is
                // idempotent and confirms it.
                states.retain(|s| !refused.contains_key(&s.user_id));
                continue;
            }
            Ok(Err(e)) => {
                tracing::warn!(shard, what = "users", error = %e, retry_in_ms = delay.as_millis() as u64, "write failed; the source pauses until it succeeds");
            }
            Err(panic) => {
                ports
                    .metrics
                    .actor_restarted("batcher", &format!("users write panicked: {panic}"));
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
    refused
}

/// Sends the records behind refused documents to the dead-letter destination (durably,
/// before their offsets count as done) and resets their aggregators to the last durable state.
async fn dead_letter_refused(shared: &Shared, batch: &Pending, refused: &HashMap<String, String>) {
    let ports = &shared.ports;
    let mut letters = Vec::new();
    for (user_id, detail) in refused {
        let Some(user) = batch.users.get(user_id.as_str()) else {
            continue;
        };
        for record in &user.raw {
            ports.metrics.store_refused(record.partition, detail);
            letters.push(DeadLetter {
                record: record.clone(),
                error: format!("store_refused: {detail}"),
            });
        }
        user.aggregator.do_send(Reset);
    }
    let mut delay = Duration::from_millis(10);
    loop {
        match ports.source.dead_letter(letters.clone()).await {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(error = %e, "dead-letter write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Retries a write with backoff until it succeeds. A panic inside the adapter is contained
/// and counted as a batcher restart; the batch (the batcher's only state) is kept and retried.
async fn persist<F>(shared: &Shared, shard: usize, what: &str, mut write: impl FnMut() -> F)
where
    F: std::future::Future<Output = Result<(), StoreError>>,
{
    let mut delay = Duration::from_millis(10);
    loop {
        // The call itself may panic, not only the future it returns: contain both.
        match contain_async(async { write().await }).await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => {
                tracing::warn!(shard, what, error = %e, retry_in_ms = delay.as_millis() as u64, "write failed; the source pauses until it succeeds");
            }
            Err(panic) => {
                shared
                    .ports
                    .metrics
                    .actor_restarted("batcher", &format!("{what} write panicked: {panic}"));
            }
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(MAX_BACKOFF);
    }
}

impl Actor for Batcher {
    type Context = Context<Self>;
}

impl Handler<UserUpdate> for Batcher {
    type Result = ();

    fn handle(&mut self, msg: UserUpdate, ctx: &mut Context<Self>) {
        self.pending.add(msg);
        self.maybe_flush(ctx);
    }
}

impl Handler<FlushNow> for Batcher {
    type Result = ();

    fn handle(&mut self, _: FlushNow, ctx: &mut Context<Self>) {
        if !self.flushing && !self.pending.users.is_empty() {
            self.flush(ctx);
        }
    }
}
