//! User shards: the one owner of every user whose key hashes to it, whatever partition or
//! queue carries the user's records (G8). A shard hosts its users' aggregators as light
//! entities (the Akka-sharding / Orleans shape: an entity is a state in the shard's table, not
//! an actor of its own), applies each user's records in arrival order — one partition's
//! records arrive in partition order, as one mailbox delivers them — skips replays and
//! duplicates, evaluates campaigns, and coalesces dirty users into flushes that its batcher
//! writes, one flush in flight at a time.
//!
//! A user not resident is loaded from the state store (many per round trip) while its records
//! wait; at most `aggregator.max_resident` (over all shards) stay resident: beyond it, and
//! after `aggregator.idle_ms` without records, durable users are passivated, the least
//! valuable first (a CLOCK sweep whose second chances count recent use).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::domain::campaign::{evaluate_all, TriggeredMessage};
use crate::domain::profile::growth_bound;
use crate::domain::user::{ApplyOutcome, Position, UserState};
use crate::ports::{DeadLetter, LoadedState, Record, SeenPolicy, UserSnapshot};

use super::batcher::Batcher;
use super::context::Shared;
use super::messages::{ApplyBatch, FlushNow, PartitionLink, UserRecord, WriteBatch, WriteOutcome};
use super::supervision::{contain, contain_async};

/// Users per state-store load.
const LOAD_CHUNK: usize = 1000;
/// Loads in flight per shard.
const MAX_LOADS: usize = 4;
/// Most second chances a frequently used user earns against passivation.
const MAX_HITS: u8 = 3;

/// A resident user.
struct Entity {
    state: UserState,
    /// Why its stored state cannot be read: its records are dead-lettered until an operator
    /// repairs it (the state is left in the store untouched).
    quarantined: Option<Arc<str>>,
    /// Changed since its last snapshot.
    dirty: bool,
    /// A snapshot of it is being written.
    in_flight: bool,
    /// CLOCK second chances (recent use).
    hits: u8,
    /// Seconds since the shard started, at its last record.
    last_active: u32,
    /// Partitions (mod 64) whose records it applied since its last durable write: the ones to
    /// fence if that state turns out stale.
    touched: u64,
    /// An upper bound of its profile's JSON size: exact when measured, then grown by each
    /// applied record's [`growth_bound`]. Only when it nears `limits.max_profile_bytes` is the
    /// profile measured again, so the limit costs nothing for profiles far below it.
    size_bound: usize,
}

impl Entity {
    fn new(state: UserState, quarantined: Option<Arc<str>>) -> Self {
        Entity {
            size_bound: state.profile.serialized_len(),
            state,
            quarantined,
            dirty: false,
            in_flight: false,
            hits: 0,
            last_active: 0,
            touched: 0,
        }
    }

    fn durable(&self) -> bool {
        !self.dirty && !self.in_flight
    }
}

struct Slot {
    key: Arc<str>,
    entity: Entity,
}

/// What applying one record did.
enum Applied {
    Changed,
    /// A replay or a duplicate.
    Skipped,
    /// Dead-lettered: a quarantined user's record, or one that would make the profile too
    /// large.
    DeadLettered,
    /// The domain panicked: the user was dropped and its partitions fenced.
    Failed,
}

/// Records of a user waiting for its state to load.
type Waiting = Vec<(Arc<PartitionLink>, UserRecord)>;

/// What the next flush writes and reports.
#[derive(Default)]
struct Batch {
    dirty: Vec<Arc<str>>,
    offsets: Vec<(Arc<PartitionLink>, Vec<u64>)>,
    messages: Vec<(Arc<str>, TriggeredMessage)>,
    raw: Vec<(Arc<str>, Record)>,
    dead: Vec<DeadLetter>,
    events: u64,
    records: usize,
    latency: Vec<(i64, u64)>,
    since: Option<Instant>,
}

impl Batch {
    fn offset(&mut self, link: &Arc<PartitionLink>, offset: u64) {
        self.records += 1;
        self.since.get_or_insert_with(Instant::now);
        match self.offsets.last_mut() {
            Some((l, v)) if Arc::ptr_eq(l, link) => v.push(offset),
            _ => match self.offsets.iter_mut().find(|(l, _)| Arc::ptr_eq(l, link)) {
                Some((_, v)) => v.push(offset),
                None => self.offsets.push((link.clone(), vec![offset])),
            },
        }
    }

    fn is_empty(&self) -> bool {
        self.records == 0 && self.dead.is_empty()
    }

    /// Takes a user's records and messages out (its state is gone).
    fn forget(&mut self, user: &str) -> Vec<Record> {
        self.dirty.retain(|u| &**u != user);
        self.messages.retain(|(u, _)| &**u != user);
        let mut taken = Vec::new();
        self.raw.retain(|(u, r)| {
            if &**u == user {
                taken.push(r.clone());
                false
            } else {
                true
            }
        });
        taken
    }
}

pub struct UserShard {
    index: usize,
    shared: Arc<Shared>,
    batcher: Addr<Batcher>,
    users: HashMap<Arc<str>, u32, ahash::RandomState>,
    slots: Vec<Slot>,
    hand: usize,
    cap: usize,
    loading: HashMap<Arc<str>, Waiting, ahash::RandomState>,
    load_queue: Vec<Arc<str>>,
    loads_in_flight: usize,
    acc: Batch,
    flushing: bool,
    timer: Option<SpawnHandle>,
    /// Partition incarnations that handed records to this shard (to fence by partition).
    links: Vec<Arc<PartitionLink>>,
    started: Instant,
}

impl UserShard {
    pub fn new(index: usize, shards: usize, shared: Arc<Shared>, batcher: Addr<Batcher>) -> Self {
        let cap = (shared.settings.max_resident / shards.max(1)).max(1);
        UserShard {
            index,
            shared,
            batcher,
            users: HashMap::default(),
            slots: Vec::new(),
            hand: 0,
            cap,
            loading: HashMap::default(),
            load_queue: Vec::new(),
            loads_in_flight: 0,
            acc: Batch::default(),
            flushing: false,
            timer: None,
            links: Vec::new(),
            started: Instant::now(),
        }
    }

    fn now_tick(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    fn remember_link(&mut self, link: &Arc<PartitionLink>) {
        if !self.links.iter().any(|l| Arc::ptr_eq(l, link)) {
            self.links.retain(|l| l.is_alive());
            self.links.push(link.clone());
        }
    }

    fn handle_batch(&mut self, batch: ApplyBatch, ctx: &mut Context<Self>) {
        self.remember_link(&batch.link);
        let tick = self.now_tick();
        let now_ms = self.shared.ports.clock.now_ms();
        let mut applied = 0u64;
        let mut skipped = 0u64;
        let mut earliest = i64::MAX;
        for record in batch.records {
            let key = record.event.user_id.as_str();
            if let Some(waiting) = self.loading.get_mut(key) {
                waiting.push((batch.link.clone(), record));
                continue;
            }
            let Some(&slot) = self.users.get(key) else {
                let key: Arc<str> = Arc::from(key);
                self.loading
                    .insert(key.clone(), vec![(batch.link.clone(), record)]);
                self.load_queue.push(key);
                continue;
            };
            earliest = earliest.min(record.ts);
            match self.apply_one(slot as usize, &batch.link, record, now_ms, tick) {
                Applied::Changed => applied += 1,
                Applied::Skipped => skipped += 1,
                Applied::DeadLettered | Applied::Failed => {}
            }
        }
        self.count(applied, skipped, earliest);
        self.start_loads(ctx);
        self.maybe_flush(ctx);
    }

    fn count(&mut self, applied: u64, skipped: u64, earliest: i64) {
        let metrics = &self.shared.ports.metrics;
        metrics.applied.inc_by(applied);
        metrics.duplicates.inc_by(skipped);
        if applied > 0 {
            self.acc.events += applied;
            self.acc.latency.push((earliest, applied));
        }
    }

    /// Applies one record to a resident user.
    fn apply_one(
        &mut self,
        slot: usize,
        link: &Arc<PartitionLink>,
        record: UserRecord,
        now_ms: i64,
        tick: u32,
    ) -> Applied {
        let shared = &self.shared;
        let Slot { key, entity } = &mut self.slots[slot];
        entity.last_active = tick;
        entity.hits = (entity.hits + 1).min(MAX_HITS);
        let offset = record.raw.offset;
        if let Some(reason) = &entity.quarantined {
            shared
                .ports
                .metrics
                .state_unreadable_record(record.raw.partition, reason);
            self.acc.dead.push(DeadLetter {
                error: format!("state_unreadable: {reason}"),
                record: record.raw,
            });
            self.acc.offset(link, offset);
            return Applied::DeadLettered;
        }
        // Only offsets that mean the same message forever protect against replays; a
        // RabbitMQ delivery's position is per session, so there the messageId alone does.
        let position = shared.ports.source.durable_positions().then_some(Position {
            partition: record.raw.partition,
            offset,
        });
        entity.touched |= 1 << (record.raw.partition % 64);
        let limit = shared.settings.max_profile_bytes;
        let growth = growth_bound(record.raw.payload.len());
        let near_limit = entity.size_bound.saturating_add(growth) > limit;
        let applied = contain(|| {
            let mut too_large = None;
            let outcome = if near_limit {
                // Applied to a copy and measured: the profile changes only if it stays within.
                let mut next = entity.state.clone();
                let outcome = next.apply(position, &record.event, now_ms, shared.settings.dedup);
                let size = next.profile.serialized_len();
                if outcome == ApplyOutcome::Applied && size > limit {
                    too_large = Some(size);
                } else {
                    entity.state = next;
                    entity.size_bound = size;
                }
                outcome
            } else {
                let outcome =
                    entity
                        .state
                        .apply(position, &record.event, now_ms, shared.settings.dedup);
                entity.size_bound += growth;
                outcome
            };
            let messages = if outcome == ApplyOutcome::Applied
                && too_large.is_none()
                && !shared.campaigns.is_empty()
            {
                evaluate_all(&shared.campaigns, &record.event, &entity.state.profile)
            } else {
                Vec::new()
            };
            (outcome, messages, too_large)
        });
        let (outcome, messages, too_large) = match applied {
            Ok(v) => v,
            Err(cause) => {
                // The state may be half-changed: drop it, and have every partition that fed it
                // since its last durable write read again from its commit.
                shared
                    .ports
                    .metrics
                    .actor_restarted("aggregator", &format!("user {key}: {cause}"));
                let (key, touched) = (key.clone(), entity.touched);
                self.evict(slot);
                self.acc.forget(&key);
                self.fence(touched, &key);
                return Applied::Failed;
            }
        };
        if let Some(size) = too_large {
            let detail = format!(
                "the profile would be {size} bytes, over limits.max_profile_bytes = {limit}"
            );
            shared
                .ports
                .metrics
                .profile_too_large_record(record.raw.partition, &detail);
            self.acc.dead.push(DeadLetter {
                error: format!("profile_too_large: {detail}"),
                record: record.raw,
            });
            self.acc.offset(link, offset);
            return Applied::DeadLettered;
        }
        if outcome != ApplyOutcome::Applied {
            self.acc.offset(link, offset);
            return Applied::Skipped;
        }
        if !entity.dirty {
            entity.dirty = true;
            self.acc.dirty.push(key.clone());
        }
        for m in messages {
            self.acc.messages.push((key.clone(), m));
        }
        self.acc.raw.push((key.clone(), record.raw));
        self.acc.offset(link, offset);
        Applied::Changed
    }

    /// Loads queued users' states, a chunk per round trip.
    fn start_loads(&mut self, ctx: &mut Context<Self>) {
        while self.loads_in_flight < MAX_LOADS && !self.load_queue.is_empty() {
            let n = self.load_queue.len().min(LOAD_CHUNK);
            let users: Vec<Arc<str>> = self.load_queue.drain(..n).collect();
            self.loads_in_flight += 1;
            let store = self.shared.ports.state.clone();
            let metrics = self.shared.ports.metrics.clone();
            let shard = self.index;
            let fut = async move {
                let mut delay = Duration::from_millis(10);
                loop {
                    // The call itself may panic, not only its future: contain both.
                    match contain_async(async { store.load(users.clone()).await }).await {
                        Ok(Ok(states)) if states.len() == users.len() => return (users, states),
                        Ok(Ok(_)) => tracing::warn!(
                            shard,
                            "state load answered the wrong number of users; retrying"
                        ),
                        Ok(Err(e)) => {
                            tracing::warn!(shard, error = %e, "state load failed; retrying")
                        }
                        Err(panic) => metrics.actor_restarted(
                            "aggregator",
                            &format!("state load panicked: {panic}"),
                        ),
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            };
            ctx.spawn(fut.into_actor(self).map(|(users, states), act, ctx| {
                act.loads_in_flight -= 1;
                act.install(users, states);
                act.passivate_to_cap();
                act.start_loads(ctx);
                act.maybe_flush(ctx);
            }));
        }
    }

    /// Makes loaded users resident and applies the records that waited for them.
    fn install(&mut self, users: Vec<Arc<str>>, states: Vec<LoadedState>) {
        let tick = self.now_tick();
        let now_ms = self.shared.ports.clock.now_ms();
        let mut applied = 0u64;
        let mut skipped = 0u64;
        let mut earliest = i64::MAX;
        for (key, loaded) in users.into_iter().zip(states) {
            let Some(waiting) = self.loading.remove(&key) else {
                continue;
            };
            let entity = match loaded {
                LoadedState::Found(state) => Entity::new(state, None),
                LoadedState::Absent => Entity::new(UserState::new(), None),
                LoadedState::Unreadable(reason) => {
                    tracing::error!(
                        shard = self.index,
                        user_id = %key,
                        error = %reason,
                        "stored state cannot be read; quarantining the user (its records go to the dead-letter destination, the stored state is left as it is)"
                    );
                    self.shared.ports.metrics.state_unreadable();
                    Entity::new(UserState::new(), Some(Arc::from(reason.as_str())))
                }
            };
            let slot = self.slots.len();
            self.slots.push(Slot {
                key: key.clone(),
                entity,
            });
            self.users.insert(key, slot as u32);
            self.shared.ports.metrics.aggregators_changed(1);
            for (link, record) in waiting {
                earliest = earliest.min(record.ts);
                match self.apply_one(slot, &link, record, now_ms, tick) {
                    Applied::Changed => applied += 1,
                    Applied::Skipped => skipped += 1,
                    Applied::DeadLettered => {}
                    // Evicted, its partitions fenced: the rest comes again.
                    Applied::Failed => break,
                }
            }
        }
        self.count(applied, skipped, earliest);
    }

    fn evict(&mut self, slot: usize) {
        let removed = self.slots.swap_remove(slot);
        self.users.remove(&removed.key);
        if slot < self.slots.len() {
            let moved = self.slots[slot].key.clone();
            self.users.insert(moved, slot as u32);
        }
        self.shared.ports.metrics.aggregators_changed(-1);
    }

    /// Passivates durable users until the shard is back at its cap: a CLOCK sweep, where a
    /// recently used user loses a second chance instead of its place.
    fn passivate_to_cap(&mut self) {
        let mut budget = self.slots.len() * (MAX_HITS as usize + 1);
        while self.slots.len() > self.cap && budget > 0 {
            budget -= 1;
            if self.hand >= self.slots.len() {
                self.hand = 0;
            }
            let e = &mut self.slots[self.hand].entity;
            if !e.durable() {
                self.hand += 1;
            } else if e.hits > 0 {
                e.hits -= 1;
                self.hand += 1;
            } else {
                self.evict(self.hand);
            }
        }
    }

    /// Passivates durable users idle for `aggregator.idle_ms`.
    fn passivate_idle(&mut self) {
        let idle = self.shared.settings.aggregator_idle.as_secs() as u32;
        let now = self.now_tick();
        let mut i = 0;
        while i < self.slots.len() {
            let e = &self.slots[i].entity;
            if e.durable() && now.saturating_sub(e.last_active) >= idle.max(1) {
                self.evict(i);
            } else {
                i += 1;
            }
        }
    }

    fn maybe_flush(&mut self, ctx: &mut Context<Self>) {
        if self.flushing || self.acc.is_empty() {
            return;
        }
        let max_wait = self.shared.settings.batch_max_wait;
        let waited = self.acc.since.map_or(Duration::ZERO, |s| s.elapsed());
        if self.acc.records >= self.shared.settings.batch_max_size
            || waited >= max_wait
            || self.acc.dirty.is_empty() && self.acc.dead.is_empty()
        {
            // (Replays and duplicates alone need no write: only the order of reports.)
            self.flush(ctx);
        } else if self.timer.is_none() {
            self.timer = Some(ctx.run_later(max_wait - waited, |act, ctx| {
                act.timer = None;
                act.maybe_flush(ctx);
            }));
        }
    }

    /// Snapshots the dirty users and hands the flush to the batcher.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if let Some(t) = self.timer.take() {
            ctx.cancel_future(t);
        }
        let batch = std::mem::take(&mut self.acc);
        let mut snapshots = Vec::with_capacity(batch.dirty.len());
        for key in &batch.dirty {
            let Some(&slot) = self.users.get(key) else {
                continue;
            };
            let e = &mut self.slots[slot as usize].entity;
            if !e.dirty {
                continue;
            }
            e.dirty = false;
            e.in_flight = true;
            snapshots.push(Arc::new(UserSnapshot {
                user_id: key.clone(),
                version: e.state.version + 1,
                profile: e.state.profile.clone(),
                positions: e.state.positions.clone(),
                seen_added: e.state.seen.take_unsaved(),
            }));
        }
        if snapshots.is_empty() && batch.dead.is_empty() {
            self.after_flush(batch, Vec::new(), WriteOutcome::default(), ctx);
            return;
        }
        self.flushing = true;
        let dedup = self.shared.settings.dedup;
        let write = WriteBatch {
            snapshots: snapshots.clone(),
            messages: batch.messages,
            raw: batch.raw,
            dead: batch.dead,
            seen: SeenPolicy {
                expire_before_ms: self.shared.ports.clock.now_ms() - dedup.window_ms,
                max_ids: dedup.max_ids,
            },
            events: batch.events,
        };
        let rest = Batch {
            offsets: batch.offsets,
            latency: batch.latency,
            events: batch.events,
            ..Batch::default()
        };
        let send = self.batcher.send(write);
        ctx.spawn(send.into_actor(self).map(move |result, act, ctx| {
            let outcome = match result {
                Ok(outcome) => outcome,
                // The batcher is gone (shutdown): nothing of this flush counts as durable.
                Err(_) => {
                    act.flushing = false;
                    return;
                }
            };
            act.after_flush(rest, snapshots, outcome, ctx);
        }));
    }

    /// The flush is written: settle its users, report durability, go on.
    fn after_flush(
        &mut self,
        batch: Batch,
        snapshots: Vec<Arc<UserSnapshot>>,
        outcome: WriteOutcome,
        ctx: &mut Context<Self>,
    ) {
        self.flushing = false;
        let metrics = self.shared.ports.metrics.clone();
        for key in &outcome.stale {
            // Another owner moved this user on: what this shard applied since its last
            // durable write is not in the store and never will be. Its partitions start again
            // from their commits (fenced before any report below reaches them).
            metrics.stale_write();
            if let Some(&slot) = self.users.get(key) {
                let touched = self.slots[slot as usize].entity.touched;
                self.evict(slot as usize);
                self.acc.forget(key);
                self.fence(touched, key);
            }
        }
        for (key, detail) in &outcome.refused {
            // The batcher dead-lettered this flush's records of the user; later ones were
            // applied on top of the refused state, so they follow them.
            if let Some(&slot) = self.users.get(key) {
                self.evict(slot as usize);
            }
            for record in self.acc.forget(key) {
                metrics.store_refused(record.partition, detail);
                self.acc.dead.push(DeadLetter {
                    error: format!(
                        "store_refused: an earlier record of this user was refused: {detail}"
                    ),
                    record,
                });
            }
        }
        for snap in &snapshots {
            if let Some(&slot) = self.users.get(&snap.user_id) {
                let e = &mut self.slots[slot as usize].entity;
                if e.in_flight && e.state.version + 1 == snap.version {
                    e.in_flight = false;
                    e.state.version = snap.version;
                    if !e.dirty {
                        e.touched = 0;
                    }
                }
            }
        }
        metrics.batch_size.observe(batch.events as f64);
        let now = self.shared.ports.clock.now_ms();
        for (earliest, n) in batch.latency {
            metrics.durable_latency(now - earliest, n);
        }
        for (link, offsets) in batch.offsets {
            link.durable(offsets);
        }
        self.passivate_to_cap();
        self.maybe_flush(ctx);
    }

    /// Fences every live partition incarnation whose partition is in `touched` (mod 64).
    fn fence(&mut self, touched: u64, user: &str) {
        for link in &self.links {
            if touched & (1 << (link.partition % 64)) != 0 && link.is_alive() {
                tracing::warn!(
                    shard = self.index,
                    partition = link.partition,
                    user_id = user,
                    "a newer state of this user was written by another owner; restarting the partition from its commit"
                );
                link.fence(format!("user {user}: state superseded by another owner"));
            }
        }
    }
}

impl Actor for UserShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let idle = self.shared.settings.aggregator_idle;
        let sweep = (idle / 4).clamp(Duration::from_millis(250), Duration::from_secs(15));
        ctx.run_interval(sweep, |act, _| act.passivate_idle());
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.shared
            .ports
            .metrics
            .aggregators_changed(-(self.slots.len() as i64));
    }
}

impl Handler<ApplyBatch> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: ApplyBatch, ctx: &mut Context<Self>) {
        self.handle_batch(msg, ctx);
    }
}

impl Handler<FlushNow> for UserShard {
    type Result = ();

    fn handle(&mut self, _: FlushNow, ctx: &mut Context<Self>) {
        if !self.flushing && !self.acc.is_empty() {
            self.flush(ctx);
        }
    }
}
