//! Batcher actors, one per user shard: each writes its shard's flushes — the users coalesced
//! since the previous flush, one snapshot per user — as bulk writes, retrying transient
//! errors with backoff (the source pauses meanwhile, G7). The order is what makes a repeat
//! harmless and a lost race safe (ARCHITECTURE.md, "One flush, step by step"):
//!
//! 1. insert the triggered `messages` (insert-if-absent, marked with the flush's token);
//! 2. mark the users in flux in the cache, then replace their `users` documents — profile and
//!    bookkeeping — each only at the version its state was loaded at (the fence: another
//!    owner's newer write makes the user stale);
//! 3. remove the messages this flush inserted for users that did not stand;
//! 4. refresh the state cache, clearing the marks (best effort);
//! 5. dead-letter what must be (quarantined users, refused documents, the triggers of
//!    refused messages);
//!
//! then lease and dispatch the new messages of the users that stood, and reply with the users
//! that turned out stale or refused.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::join_all;
use tracing::Instrument;

use crate::domain::feed::user_json;
use crate::domain::message::{MessageRecord, MessageStatus};
use crate::domain::suppression::{suppression_id, SuppressionReason};
use crate::ports::{DeadLetter, FeedRecord, RetryEntry, StoreError, UsersWritten};

use super::context::Shared;
use super::dispatcher::{Dispatch, DispatchAll, Dispatcher, LEASE_MS};
use super::messages::{Held, WriteBatch, WriteOutcome};
use super::supervision::contain_async;

const MAX_BACKOFF: Duration = Duration::from_secs(5);

type AHashSet<T> = std::collections::HashSet<T, ahash::RandomState>;
type AHashMap<K, V> = std::collections::HashMap<K, V, ahash::RandomState>;

pub struct Batcher {
    shard: usize,
    shared: Arc<Shared>,
}

impl Batcher {
    pub fn new(shard: usize, shared: Arc<Shared>) -> Self {
        Batcher { shard, shared }
    }
}

impl Actor for Batcher {
    type Context = Context<Self>;
}

impl Handler<WriteBatch> for Batcher {
    type Result = ResponseFuture<WriteOutcome>;

    fn handle(&mut self, batch: WriteBatch, _ctx: &mut Context<Self>) -> Self::Result {
        let shared = self.shared.clone();
        let shard = self.shard;
        let span = tracing::info_span!(
            "flush",
            shard,
            users = batch.snapshots.len(),
            events = batch.events
        );
        Box::pin(write(shared, shard, batch).instrument(span))
    }
}

async fn write(shared: Arc<Shared>, shard: usize, batch: WriteBatch) -> WriteOutcome {
    let ports = &shared.ports;
    let started = Instant::now();
    let mut outcome = WriteOutcome::default();
    let mut users = batch.snapshots;
    // Marks this flush's writes: after a lost answer, what carries it is this flush's own.
    let token: u64 = rand::random();

    // 1. Messages. One record per message id: a trigger applied twice within one flush (its
    // dedup id evicted by the user's events in between) names the same message twice.
    let now = ports.clock.now_ms();
    let mut messages = batch.messages;
    let first: Vec<bool> = {
        let mut ids: AHashSet<&str> =
            AHashSet::with_capacity_and_hasher(messages.len(), Default::default());
        messages.iter().map(|t| ids.insert(&t.message.id)).collect()
    };
    // The texts move into the records (what is read of `messages` below: ids, users,
    // triggers, policy reasons, stays). Lists are sized up front: a filter's collect grows a
    // vector a doubling at a time.
    let mut records: Vec<MessageRecord> = Vec::with_capacity(messages.len());
    records.extend(
        messages
            .iter_mut()
            .zip(first)
            .filter(|(_, first)| *first)
            .map(|(t, _)| MessageRecord::take_triggered(&mut t.message, now)),
    );
    // Suppressed addresses: the message is stored `skipped`, never sent.
    let mut asked: Vec<String> = Vec::with_capacity(records.len());
    asked.extend(
        records
            .iter()
            .filter(|r| matches!(r.status, MessageStatus::Queued | MessageStatus::Held))
            .filter_map(|r| Some(suppression_id(r.channel, r.to.as_deref()?))),
    );
    let mut suppressed_ids: AHashSet<String> = AHashSet::default();
    if !asked.is_empty() {
        let suppressed: AHashMap<String, SuppressionReason> =
            retry(&shared, shard, "suppressions", || {
                ports.docs.suppressed(asked.clone())
            })
            .await
            .into_iter()
            .collect();
        if !suppressed.is_empty() {
            for r in &mut records {
                let Some(to) = r.to.as_deref() else { continue };
                if let Some(reason) = suppressed.get(&suppression_id(r.channel, to)) {
                    if matches!(r.status, MessageStatus::Queued | MessageStatus::Held) {
                        r.skip(reason.skip_reason());
                        suppressed_ids.insert(r.id.clone());
                    }
                }
            }
        }
    }
    // Only what this flush created is dispatched: a trigger applied again (its dedup id
    // evicted, a replay after a crash before the user's document was written) finds its
    // message stored — sent, or being sent, by whoever created it.
    // Shared from here on: the store keeps what it inserts (in-process) and the dispatch takes
    // what it sends, without a copy of every record for the insert.
    let records: Vec<Arc<MessageRecord>> = records.into_iter().map(Arc::new).collect();
    let mut created: AHashSet<String> =
        AHashSet::with_capacity_and_hasher(records.len(), Default::default());
    let mut refused_messages: Vec<(String, String)> = Vec::new();
    if !records.is_empty() {
        let inserted = retry(&shared, shard, "messages", || {
            ports.docs.insert_messages(records.clone(), token)
        })
        .await;
        let existing = records.len() - inserted.created.len() - inserted.refused.len();
        if existing > 0 {
            tracing::debug!(
                shard,
                existing,
                "triggered messages already stored; not dispatched again"
            );
        }
        created.extend(inserted.created);
        // Counted when the document is created, so a replayed trigger is not counted again.
        for t in &messages {
            if let Some(reason) = t.message.policy_skip {
                if created.contains(&t.message.id) {
                    ports.metrics.policy_skipped(reason);
                }
            }
        }
        for (id, detail) in &inserted.refused {
            tracing::error!(shard, message = %id, error = %detail, "MongoDB refused the message's document; dead-lettering its trigger");
        }
        refused_messages = inserted.refused;
    }

    // 2. Documents, their users marked in flux in the cache first (a cache entry left marked
    // by a crash before step 4 loads as a miss, not as an older state). Best effort: the fence
    // still catches an older entry.
    if !users.is_empty() {
        let ids: Vec<std::sync::Arc<str>> = users.iter().map(|u| u.user_id.clone()).collect();
        match contain_async(ports.cache.begin_writes(ids)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(shard, error = %e, "users not marked in flux in the cache")
            }
            Err(panic) => ports
                .metrics
                .actor_restarted("batcher", &format!("state cache write panicked: {panic}")),
        }
        let now = ports.clock.now_ms();
        // The changelog's records go into a transaction before the documents are written:
        // acknowledged first, they precede in the topic any later version of their users
        // (which another owner can write only after loading this one), and committed only if
        // every user stood, so a reader never sees a state MongoDB refused.
        let changelog = ports.changelog.get(shard).cloned();
        if let Some(changelog) = &changelog {
            let records = changelog_records(&users, now);
            retry(&shared, shard, "changelog", || {
                let changelog = changelog.clone();
                let records = records.clone();
                async move {
                    changelog
                        .stage(records)
                        .await
                        .map_err(|e| StoreError::Transient(e.to_string()))
                }
            })
            .await;
        }
        let written = retry(&shared, shard, "users", || {
            ports.docs.upsert_users(users.clone(), token, now)
        })
        .await;
        ports
            .metrics
            .mongo_bulk_write_seconds
            .observe(started.elapsed().as_secs_f64());
        let UsersWritten { stale, refused } = written;
        let out: AHashSet<&str> = stale
            .iter()
            .map(|s| &**s)
            .chain(refused.iter().map(|(s, _)| &**s))
            .collect();
        let all_stood = out.is_empty();
        if !all_stood {
            users.retain(|u| !out.contains(&*u.user_id));
        }
        ports.metrics.documents_written("users", users.len() as u64);
        for (id, detail) in &refused {
            tracing::error!(shard, user_id = %id, error = %detail, "MongoDB refused the user's document; dead-lettering the records behind it");
        }
        outcome.stale.extend(stale);
        outcome.refused.extend(refused);
        if let Some(changelog) = &changelog {
            let committed = if all_stood {
                match changelog.commit().await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(shard, error = %e, "changelog transaction not committed; its users are written again");
                        false
                    }
                }
            } else {
                changelog.abort().await;
                false
            };
            if committed {
                ports.metrics.changelog_records(users.len() as u64);
            } else {
                ports.metrics.changelog_aborted();
                outcome
                    .republish
                    .extend(users.iter().map(|u| u.user_id.clone()));
            }
        }
    }

    // 3. The messages of users that did not stand were triggered by a state that is gone.
    if !outcome.stale.is_empty() || !outcome.refused.is_empty() {
        let gone: AHashSet<&str> = outcome
            .stale
            .iter()
            .map(|s| &**s)
            .chain(outcome.refused.iter().map(|(s, _)| &**s))
            .collect();
        let orphans: Vec<String> = records
            .iter()
            .filter(|r| gone.contains(r.user_id.as_str()) && created.contains(&r.id))
            .map(|r| r.id.clone())
            .collect();
        if !orphans.is_empty() {
            retry(&shared, shard, "messages of stale users", || {
                ports.docs.remove_created_messages(orphans.clone(), token)
            })
            .await;
            for id in &orphans {
                created.remove(id);
            }
        }
    }
    ports
        .metrics
        .documents_written("messages", created.len() as u64);
    // The feeds take the created messages (their documents' cursors make it durable).
    if ports.docs.feeds() {
        let fed: Vec<MessageRecord> = records
            .iter()
            .filter(|r| created.contains(&r.id))
            .map(|r| MessageRecord::clone(r))
            .collect();
        if !fed.is_empty() {
            ports.docs.feed_created(fed);
        }
    }
    for id in created.iter().filter(|id| suppressed_ids.contains(*id)) {
        if let Some(r) = records.iter().find(|r| &r.id == id) {
            let reason = r.error.as_deref().unwrap_or_default();
            ports
                .metrics
                .suppressed(reason.trim_start_matches("suppressed: "));
        }
    }

    // 4. The cache: best effort (an entry left older is found out by a later fenced write).
    if !users.is_empty() {
        match contain_async(ports.cache.save(users.clone())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(shard, error = %e, "state cache not refreshed"),
            Err(panic) => ports
                .metrics
                .actor_restarted("batcher", &format!("state cache write panicked: {panic}")),
        }
    }

    // 5. Dead letters: the flush's own, the records behind refused documents, and the
    // triggers of refused messages (their effect on the profile stands; the message, which
    // can never be stored, goes with its trigger to the dead-letter destination).
    let mut letters: Vec<DeadLetter> = batch.dead;
    let mut lettered: AHashSet<(u32, u64)> = AHashSet::default();
    for (id, detail) in &refused_messages {
        let trigger = messages
            .iter()
            .find(|t| &t.message.id == id)
            // Once per record (it may trigger several campaigns), and not when its user's
            // document was refused too (its records go below).
            .filter(|t| !outcome.refused.iter().any(|(u, _)| *u == t.user))
            .filter(|t| lettered.insert(t.trigger))
            .and_then(|t| {
                batch.applied.iter().find(|h| {
                    h.user == t.user && (h.record.partition, h.record.offset) == t.trigger
                })
            });
        let Some(Held { record, .. }) = trigger else {
            continue;
        };
        ports.metrics.store_refused(record.partition, detail);
        letters.push(DeadLetter {
            record: record.clone(),
            error: format!("store_refused: message {id}: {detail}"),
        });
    }
    if !outcome.refused.is_empty() {
        for Held { user, record, .. } in batch.applied.iter() {
            if let Some((_, detail)) = outcome.refused.iter().find(|(u, _)| u == user) {
                ports.metrics.store_refused(record.partition, detail);
                letters.push(DeadLetter {
                    record: record.clone(),
                    error: format!("store_refused: {detail}"),
                });
            }
        }
    }
    if !letters.is_empty() {
        retry(&shared, shard, "dead letters", || {
            let letters = letters.clone();
            let source = ports.source.clone();
            async move {
                source
                    .dead_letter(letters)
                    .await
                    .map_err(|e| StoreError::Transient(e.to_string()))
            }
        })
        .await;
    }
    tracing::debug!(
        messages = records.len(),
        took_ms = started.elapsed().as_millis() as u64,
        "flushed"
    );

    // Dispatch what the standing users triggered, each send holding a lease in the retry
    // schedule first: if this instance dies before the outcome is recorded, the lease runs
    // out and the send fires again (same attempt, same key) wherever the sweep claims it. A
    // message that already has an entry is someone else's to send (the reconciler adopted
    // it). A dispatcher whose queue is full parks the job (left to its lease, fired by the
    // sweep later): a slow or down provider never slows the flushes (G7 holds by the queue's
    // bound, the rest waits in the schedule).
    let (held, due): (Vec<Arc<MessageRecord>>, Vec<Arc<MessageRecord>>) = records
        .into_iter()
        .filter(|r| !r.status.is_terminal() && created.contains(&r.id))
        .filter(|r| !shared.dispatchers_for(r.channel).is_empty())
        .partition(|r| r.status == MessageStatus::Held);
    // A held message goes on the schedule for its window's end, not leased: nobody sends it
    // until then, and whichever instance claims it then checks its policy again. If this
    // write is lost, the reconciler puts it there from `messages`.
    let held: Vec<RetryEntry> = held
        .iter()
        .map(|r| RetryEntry {
            message_id: r.id.clone(),
            attempt: r.attempts + 1,
            resend: 0,
            due_ms: r.held_until.unwrap_or(now),
            lapsed: false,
        })
        .collect();
    if !held.is_empty() {
        retry(&shared, shard, "held messages", || {
            ports.retries.hold(held.clone(), false)
        })
        .await;
    }
    if due.is_empty() {
        return outcome;
    }
    let lease_until = ports.clock.now_ms() + LEASE_MS;
    let leases: Vec<RetryEntry> = due
        .iter()
        .map(|r| RetryEntry {
            message_id: r.id.clone(),
            attempt: r.attempts + 1,
            resend: 0,
            due_ms: lease_until,
            lapsed: false,
        })
        .collect();
    // An answer lost after the leases were written reads as "not created": those sends
    // then fire from the schedule when their leases run out — later, never lost.
    let held = retry(&shared, shard, "send leases", || {
        ports.retries.hold(leases.clone(), true)
    })
    .await;
    // One hand-off per provider, not one per message: its dispatcher takes them together
    // and marks their sends started in one call.
    let mut sends: Vec<(Addr<Dispatcher>, Vec<Dispatch>)> = Vec::new();
    for ((record, lease), held) in due.into_iter().zip(leases).zip(held) {
        if !held {
            continue;
        }
        let Some(first) = shared.dispatchers_for(record.channel).first() else {
            continue;
        };
        let job = Dispatch {
            resend: 0,
            attempt: lease.attempt,
            record,
            provider_index: 0,
            lease: Some(lease),
            park_if_full: true,
        };
        match sends.iter_mut().find(|(addr, _)| addr == first) {
            Some((_, jobs)) => jobs.push(job),
            None => sends.push((first.clone(), vec![job])),
        }
    }
    join_all(
        sends
            .into_iter()
            .map(|(addr, jobs)| addr.send(DispatchAll(jobs))),
    )
    .await;
    outcome
}

/// The flush's changelog records: each user's state as its document now reads, with the
/// version this write gives it.
fn changelog_records(
    users: &[std::sync::Arc<crate::ports::UserSnapshot>],
    now: i64,
) -> Vec<FeedRecord> {
    users
        .iter()
        .map(|u| {
            let merged_into = u.identity.as_deref().and_then(|i| i.merged_into.as_deref());
            let value = user_json(&u.user_id, &u.profile, merged_into, now, Some(u.version));
            FeedRecord {
                key: u.user_id.to_string(),
                value: serde_json::to_vec(&value).unwrap_or_default(),
            }
        })
        .collect()
}

/// Retries a write with backoff until it succeeds. A panic inside the adapter is contained
/// and counted as a batcher restart; the batch (the batcher's only state) is kept and retried.
async fn retry<T, F>(shared: &Shared, shard: usize, what: &str, mut write: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(10);
    loop {
        // The call itself may panic, not only the future it returns: contain both.
        match contain_async(async { write().await }).await {
            Ok(Ok(v)) => return v,
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
