//! User shards: the one owner, on this instance, of every user whose key hashes to it, whatever
//! partition or queue carries the user's records (G8). A shard hosts its users' aggregators as
//! light entities (the Akka-sharding / Orleans shape: an entity is a state in the shard's
//! table, not an actor of its own), applies each user's records in arrival order — one
//! partition's records arrive in partition order, as one mailbox delivers them — skips replays
//! and duplicates, evaluates campaigns, and coalesces dirty users into flushes that its
//! batcher writes, one flush in flight at a time.
//!
//! A user not resident is loaded (many per round trip: the cache, then the system of record)
//! while its records wait; at most `aggregator.max_resident` (over all shards) stay resident:
//! beyond it, and after `aggregator.idle_ms` without records, durable users are passivated,
//! the least valuable first (a CLOCK sweep whose second chances count recent use).
//!
//! An alias merges one user into another through messages between shards
//! ([`merge`]); a merged user's records are forwarded to the user it was merged into.
//!
//! A user whose write turns out stale (another instance moved it on), or whose application
//! panicked, is dropped and its records since its last durable write are applied again to a
//! reloaded state (ARCHITECTURE.md, "Ownership across instances"): no partition restarts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;

use crate::domain::campaign::{evaluate_all, TriggerContext};
use crate::domain::event::{decode_record, EventKind};
use crate::domain::keys::message_fingerprint;
use crate::domain::profile::growth_bound;
use crate::domain::thin_str::ThinStr;
use crate::domain::user::{ApplyOutcome, UserState};
use crate::ports::{DeadLetter, LoadedState, UserSnapshot};

use super::batcher::Batcher;
use super::context::Shared;
use super::messages::{
    ApplyBatch, FlushNow, Held, MergeStep, PartitionLink, Triggered, UserRecord, WriteBatch,
    WriteOutcome,
};
use super::state_loader;
use super::supervision::{contain, contain_async, RestartIntensity};

mod merge;
mod residents;

use merge::{MergeJob, Reply, SealRequest};
use residents::Residents;

/// Users per load.
const LOAD_CHUNK: usize = 1000;
/// Loads in flight per shard.
const MAX_LOADS: usize = 4;
/// Most second chances a frequently used user earns against passivation.
const MAX_HITS: u8 = 3;
/// Panics of one record before it is dead-lettered as poison.
const POISON_AFTER: u8 = 2;
/// Longest an idle sweep holds the shard at a time (and the pause before it goes on).
const SWEEP_SLICE: Duration = Duration::from_millis(5);
/// Records whose panics are remembered (beyond it the memory is cleared: a record then needs
/// two more panics).
const POISON_MEMORY: usize = 10_000;

/// A resident user.
struct Entity {
    /// Boxed: the slot stays small, so a packed user's slot is not a live state's size.
    state: Box<UserState>,
    /// Why its stored state cannot be read: its records are dead-lettered until an operator
    /// repairs it (the state is left in the store untouched).
    quarantined: Option<ThinStr>,
    /// Changed since its last snapshot.
    dirty: bool,
    /// A snapshot of it is being written.
    in_flight: bool,
    /// CLOCK second chances (recent use).
    hits: u8,
    /// Seconds since the shard started, at its last record.
    last_active: u32,
    /// An upper bound of its profile's JSON size: exact when measured, then grown by each
    /// applied record's [`growth_bound`]. Only when it nears `limits.max_profile_bytes` is the
    /// profile measured again, so the limit costs nothing for profiles far below it.
    /// 32 bits, saturating (`u32::MAX`: unknown), so the bookkeeping packs into 16 bytes.
    size_bound: u32,
    /// A merge into this user under way (its records wait behind it).
    job: Option<Box<MergeJob>>,
}

/// Resident users per shard from which a batch's users are looked up ahead of applying it:
/// ~800 bytes each, 8,192 of them fill ~6.5 MB, past what the processor's own caches hold.
const WARM_ABOVE: usize = 8192;

/// In the list of a batch's slots: the record's user was not found resident and live.
const NO_SLOT: u32 = u32::MAX;

/// A byte count in the entity's 32 bits, saturating (a bound only needs to stay an upper one).
fn saturate(bytes: usize) -> u32 {
    u32::try_from(bytes).unwrap_or(u32::MAX)
}

impl Entity {
    fn new(state: UserState, quarantined: Option<ThinStr>) -> Self {
        let size_bound = saturate(state.profile.serialized_len());
        Entity {
            quarantined,
            ..Entity::new_sized(state, size_bound)
        }
    }

    /// A durable user whose size bound is known (an unpacked one).
    fn new_sized(state: UserState, size_bound: u32) -> Self {
        Entity {
            state: Box::new(state),
            quarantined: None,
            dirty: false,
            in_flight: false,
            hits: 0,
            last_active: 0,
            size_bound,
            job: None,
        }
    }

    /// Nothing of it waits to be written (it may be passivated).
    fn durable(&self) -> bool {
        !self.dirty && !self.in_flight && self.job.is_none()
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
    /// Dead-lettered: a quarantined user's record, one that would make the profile too large,
    /// or a poison record.
    DeadLettered,
    /// The domain panicked: the user was dropped and its records queued for a reload.
    Failed,
    /// Its user was merged into another: sent on to that one's shard.
    Forwarded,
    /// An alias whose merge is under way: reported when the merge is durable.
    Pending,
}

/// Records of a user waiting for its state to load, in order.
type Waiting = Vec<(Arc<PartitionLink>, UserRecord)>;

/// What the next flush writes and reports.
#[derive(Default)]
struct Batch {
    /// The dirty users and the slots they were in when they became dirty.
    dirty: Vec<(Arc<str>, u32)>,
    /// The offsets this flush reports durable, per partition incarnation (replays,
    /// duplicates and dead letters included).
    offsets: Vec<(Arc<PartitionLink>, Vec<u64>)>,
    messages: Vec<Triggered>,
    /// The records applied to the dirty users, in order.
    applied: Vec<Held>,
    dead: Vec<DeadLetter>,
    events: u64,
    records: usize,
    latency: Vec<(i64, u64)>,
    since: Option<Instant>,
    /// Users whose merge marks this flush writes: their seals are asked once it is durable.
    marks: Vec<Arc<str>>,
    /// Seal answers sent once this flush is durable.
    replies: Vec<Reply>,
    /// Room for one partition's offsets, from the last flush (see `sized_like`).
    offsets_hint: usize,
}

impl Batch {
    /// An empty batch with room for as much as `last` held (the next flush is likely as big:
    /// its lists then do not grow, and reallocate, one doubling at a time).
    fn sized_like(last: &Batch) -> Batch {
        Batch {
            dirty: Vec::with_capacity(last.dirty.len()),
            messages: Vec::with_capacity(last.messages.len()),
            applied: Vec::with_capacity(last.applied.len()),
            offsets_hint: last.offsets.iter().map(|(_, o)| o.len()).max().unwrap_or(0),
            ..Batch::default()
        }
    }

    /// Something was added that needs a write (the flush timer starts).
    fn touch(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    fn offset(&mut self, link: &Arc<PartitionLink>, offset: u64) {
        self.records += 1;
        self.since.get_or_insert_with(Instant::now);
        match self.offsets.last_mut() {
            Some((l, v)) if Arc::ptr_eq(l, link) => v.push(offset),
            _ => match self.offsets.iter_mut().find(|(l, _)| Arc::ptr_eq(l, link)) {
                Some((_, v)) => v.push(offset),
                None => {
                    let mut offsets = Vec::with_capacity(self.offsets_hint.max(1));
                    offsets.push(offset);
                    self.offsets.push((link.clone(), offsets));
                }
            },
        }
    }

    fn is_empty(&self) -> bool {
        self.records == 0
            && self.dead.is_empty()
            && self.dirty.is_empty()
            && self.replies.is_empty()
    }

    /// Takes a user's applied records out, with their offsets (they are applied again to a
    /// reloaded state, and reported with that), and drops its messages (triggered by a state
    /// that is gone).
    fn take_user(&mut self, user: &str) -> Vec<Held> {
        self.dirty.retain(|(u, _)| &**u != user);
        self.messages.retain(|t| &*t.user != user);
        let mut taken = Vec::new();
        let mut kept = Vec::with_capacity(self.applied.len());
        for h in self.applied.drain(..) {
            if &*h.user == user {
                taken.push(h);
            } else {
                kept.push(h);
            }
        }
        self.applied = kept;
        self.forget_offsets(&taken);
        taken
    }

    /// Removes the offsets of `held` from what this batch reports.
    fn forget_offsets(&mut self, held: &[Held]) {
        if held.is_empty() {
            return;
        }
        let drop: std::collections::HashSet<(usize, u64), ahash::RandomState> = held
            .iter()
            .map(|h| (Arc::as_ptr(&h.link) as usize, h.record.offset))
            .collect();
        let mut removed = 0;
        for (link, offsets) in &mut self.offsets {
            let ptr = Arc::as_ptr(link) as usize;
            let before = offsets.len();
            offsets.retain(|o| !drop.contains(&(ptr, *o)));
            removed += before - offsets.len();
        }
        self.offsets.retain(|(_, o)| !o.is_empty());
        self.records = self.records.saturating_sub(removed);
    }
}

pub struct UserShard {
    index: usize,
    shared: Arc<Shared>,
    batcher: Addr<Batcher>,
    residents: Residents,
    hand: usize,
    cap: usize,
    loading: HashMap<Arc<str>, Waiting, ahash::RandomState>,
    /// Records of resident users waiting behind a merge into them, or their own seal.
    paused: HashMap<Arc<str>, Waiting, ahash::RandomState>,
    /// Seals of users waiting for them to load.
    seals: HashMap<Arc<str>, Vec<SealRequest>, ahash::RandomState>,
    /// Users to load from the cache first.
    load_queue: Vec<Arc<str>>,
    /// Users to load from the system of record only (their cached state was found stale).
    fresh_queue: Vec<Arc<str>>,
    loads_in_flight: usize,
    /// Users whose changelog record was not committed: written again once reloaded.
    republish: std::collections::HashSet<Arc<str>, ahash::RandomState>,
    acc: Batch,
    flushing: bool,
    /// A partition said it has nothing more for now, or can read no more until something is
    /// durable (`FlushNow`): what is pending is written at once rather than after
    /// `batch.max_wait_ms`, until records arrive again.
    idle: bool,
    /// This shard's share of `herald_users_packed` as last reported.
    packed_reported: i64,
    /// An idle sweep is under way (in slices).
    sweeping: bool,
    timer: Option<SpawnHandle>,
    /// How often each record whose application panicked did so, by (partition, offset,
    /// messageId fingerprint).
    panics: HashMap<(u32, u64, u64), u8, ahash::RandomState>,
    /// Poison records in the last minute: beyond `pipeline.max_poison_per_minute`, a fault.
    poison_rate: RestartIntensity,
    started: Instant,
    /// The slots [`UserShard::warm`] found (kept to reuse its allocation).
    warm_slots: Vec<u32>,
}

impl UserShard {
    pub fn new(index: usize, shards: usize, shared: Arc<Shared>, batcher: Addr<Batcher>) -> Self {
        let cap = (shared.settings.max_resident / shards.max(1)).max(1);
        let poison_rate = RestartIntensity::new(
            shared.settings.max_poison_per_minute,
            Duration::from_secs(60),
        );
        UserShard {
            index,
            shared,
            batcher,
            residents: Residents::default(),
            hand: 0,
            cap,
            loading: HashMap::default(),
            paused: HashMap::default(),
            seals: HashMap::default(),
            load_queue: Vec::new(),
            fresh_queue: Vec::new(),
            loads_in_flight: 0,
            republish: Default::default(),
            acc: Batch::default(),
            flushing: false,
            idle: false,
            packed_reported: 0,
            sweeping: false,
            timer: None,
            panics: HashMap::default(),
            poison_rate,
            started: Instant::now(),
            warm_slots: Vec::new(),
        }
    }

    fn now_tick(&self) -> u32 {
        self.started.elapsed().as_secs() as u32
    }

    fn handle_batch(&mut self, batch: ApplyBatch, ctx: &mut Context<Self>) {
        if !batch.link.is_alive() {
            // A retired incarnation (revoked, lost, restarted): its successor reads these
            // records again from the commit, and must find them unapplied.
            tracing::debug!(
                shard = self.index,
                partition = batch.link.partition,
                records = batch.records.len(),
                "dropping a batch of a retired partition incarnation"
            );
            return;
        }
        let tick = self.now_tick();
        let now_ms = self.shared.ports.clock.now_ms();
        self.idle = false;
        let hints = self.warm(&batch.records);
        let mut counts = Counts::default();
        for (i, record) in batch.records.into_iter().enumerate() {
            let hint = hints.get(i).copied().filter(|&s| s != NO_SLOT);
            self.route(&batch.link, record, hint, now_ms, tick, &mut counts);
        }
        self.warm_slots = hints;
        self.count(counts);
        self.start_loads(ctx);
        self.maybe_flush(ctx);
    }

    /// Asks for the batch's resident users before applying it (`crate::prefetch`): their
    /// lookups first, in a loop of their own so that they overlap in the processor, then the
    /// parts their records change.
    ///
    /// Returns each record's slot as its lookup found it ([`NO_SLOT`]: not resident and
    /// live), so that applying the record need not hash and probe again; the list is handed
    /// back to `warm_slots` for the next batch. Empty below [`WARM_ABOVE`] resident users:
    /// they stay in the processor's caches, and a loop of their own would only cost.
    fn warm(&mut self, records: &[UserRecord]) -> Vec<u32> {
        let mut slots = std::mem::take(&mut self.warm_slots);
        slots.clear();
        if self.residents.len() < WARM_ABOVE {
            return slots;
        }
        slots.extend(
            records
                .iter()
                .map(|r| self.residents.warm(r.key()).unwrap_or(NO_SLOT)),
        );
        for &slot in slots.iter().filter(|&&s| s != NO_SLOT) {
            self.residents.warm_parts(slot);
        }
        slots
    }

    /// Going through `items` (each naming a slot) at `i`: asks for what the items a few
    /// places ahead will need, each step of [`Residents::warm_slot`] at its own distance.
    fn warm_ahead<T>(&self, items: &[T], i: usize, slot: impl Fn(&T) -> u32) {
        if let Some(item) = items.get(i + 12) {
            self.residents.warm_slot(slot(item));
        }
        if let Some(item) = items.get(i + 6) {
            self.residents.warm_state(slot(item));
        }
        if let Some(item) = items.get(i + 3) {
            self.residents.warm_parts(slot(item));
        }
    }

    /// Applies a record to its resident user, or queues it behind the user's load. `hint`:
    /// the slot the user was found in before the batch, taken if it still holds this key.
    fn route(
        &mut self,
        link: &Arc<PartitionLink>,
        record: UserRecord,
        hint: Option<u32>,
        now_ms: i64,
        tick: u32,
        counts: &mut Counts,
    ) {
        let key = record.key();
        if let Some(waiting) = self.paused.get_mut(key) {
            waiting.push((link.clone(), record));
            return;
        }
        if let Some(waiting) = self.loading.get_mut(key) {
            waiting.push((link.clone(), record));
            return;
        }
        let found = match hint {
            Some(slot) if self.residents.holds(slot, key) => Some(slot as usize),
            _ => self.residents.find(key),
        };
        let Some(slot) = found else {
            let key: Arc<str> = Arc::from(key);
            self.loading
                .insert(key.clone(), vec![(link.clone(), record)]);
            self.load_queue.push(key);
            return;
        };
        counts.earliest = counts.earliest.min(record.ts);
        match self.apply_one(slot, link, record, now_ms, tick) {
            Applied::Changed => counts.applied += 1,
            Applied::Skipped => counts.skipped += 1,
            Applied::DeadLettered | Applied::Failed | Applied::Forwarded | Applied::Pending => {}
        }
    }

    fn count(&mut self, counts: Counts) {
        let metrics = &self.shared.ports.metrics;
        metrics.applied.inc_by(counts.applied);
        metrics.duplicates.inc_by(counts.skipped);
        if counts.applied > 0 {
            self.acc.events += counts.applied;
            self.acc.latency.push((counts.earliest, counts.applied));
        }
    }

    /// The user in `slot` changed outside a record's application (a merge step): written
    /// with the next flush.
    fn mark_dirty(&mut self, slot: usize) {
        let Slot { key, entity } = &mut self.residents[slot];
        if !entity.dirty {
            entity.dirty = true;
            self.acc.dirty.push((key.clone(), slot as u32));
        }
        self.acc.touch();
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
        let position = self.position_of(&record);
        let shared = &self.shared;
        let Slot { entity, .. } = &mut self.residents[slot];
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
        if let Some(into) = entity.state.merged_into() {
            // Merged: its own replays are skipped, anything else goes where it was merged.
            if entity.state.is_replay(position, &record.event.message_id) {
                self.acc.offset(link, offset);
                return Applied::Skipped;
            }
            let into: Arc<str> = Arc::from(into);
            return self.forward(link, record, into);
        }
        if let EventKind::Alias { previous_id } = &record.event.kind {
            let previous: Arc<str> = Arc::from(previous_id.as_str());
            return self.alias(slot, link, record, previous, now_ms);
        }
        let shared = &self.shared;
        let Slot { key, entity } = &mut self.residents[slot];
        let limit = shared.settings.max_profile_bytes;
        let growth = growth_bound(record.raw.payload.len());
        // A saturated bound is unknown: measured like one near the limit.
        let bound = match entity.size_bound {
            u32::MAX => usize::MAX,
            b => b as usize,
        };
        let near_limit = bound.saturating_add(growth) > limit;
        let fault = shared.settings.fault_panic(&record.event.message_id);
        let applied = contain(|| {
            if fault {
                panic!("fault injection: applying {}", record.event.message_id);
            }
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
                    entity.size_bound = saturate(size);
                }
                outcome
            } else {
                let outcome =
                    entity
                        .state
                        .apply(position, &record.event, now_ms, shared.settings.dedup);
                entity.size_bound = entity.size_bound.saturating_add(saturate(growth));
                outcome
            };
            let messages = if outcome == ApplyOutcome::Applied
                && too_large.is_none()
                && !shared.campaigns.is_empty()
            {
                let ctx = TriggerContext {
                    now_ms,
                    ..shared.settings.trigger
                };
                evaluate_all(
                    &shared.campaigns,
                    &record.event,
                    &entity.state.profile,
                    &ctx,
                )
            } else {
                Vec::new()
            };
            (outcome, messages, too_large)
        });
        let (outcome, messages, too_large) = match applied {
            Ok(v) => v,
            Err(cause) => {
                let key = key.clone();
                self.failed(key, link, record, cause);
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
            if outcome == ApplyOutcome::ReplayedPosition && !shared.ports.changelog.is_empty() {
                // A replay: the state holding it may be one whose changelog transaction a
                // crash left uncommitted. Written again at the next version, it is published;
                // held like an applied record, its offset waits for that write.
                if !entity.dirty {
                    entity.dirty = true;
                    self.acc.dirty.push((key.clone(), slot as u32));
                }
                self.acc.applied.push(Held {
                    user: key.clone(),
                    link: link.clone(),
                    record: record.raw,
                });
            }
            self.acc.offset(link, offset);
            return Applied::Skipped;
        }
        if !entity.dirty {
            entity.dirty = true;
            self.acc.dirty.push((key.clone(), slot as u32));
        }
        for message in messages {
            self.acc.messages.push(Triggered {
                user: key.clone(),
                trigger: (record.raw.partition, record.raw.offset),
                message,
            });
        }
        self.acc.applied.push(Held {
            user: key.clone(),
            link: link.clone(),
            record: record.raw,
        });
        self.acc.offset(link, offset);
        Applied::Changed
    }

    /// The application of `record` to the user in `slot` panicked: its state may be
    /// half-changed, so it is dropped and the user's records since its last snapshot are
    /// applied again to a reloaded state. The record itself goes with them the first time,
    /// and to the dead-letter destination the second.
    fn failed(
        &mut self,
        key: Arc<str>,
        link: &Arc<PartitionLink>,
        record: UserRecord,
        cause: String,
    ) {
        let metrics = self.shared.ports.metrics.clone();
        metrics.actor_restarted("aggregator", &format!("user {key}: {cause}"));
        let mut held = self.acc.take_user(&key);
        held.extend(self.unload(&key));
        let id = (
            record.raw.partition,
            record.raw.offset,
            message_fingerprint(&record.event.message_id),
        );
        if self.panics.len() >= POISON_MEMORY {
            self.panics.clear();
        }
        let panics = self.panics.entry(id).or_insert(0);
        *panics += 1;
        if *panics >= POISON_AFTER {
            self.panics.remove(&id);
            tracing::error!(
                shard = self.index,
                user_id = %key,
                partition = record.raw.partition,
                offset = record.raw.offset,
                message_id = %record.event.message_id,
                panic = %cause,
                "applying this record panicked twice; dead-lettering it as poison"
            );
            metrics.poison_record(record.raw.partition, &cause);
            self.acc.offset(link, record.raw.offset);
            self.acc.dead.push(DeadLetter {
                error: format!("poison: applying it panicked twice: {cause}"),
                record: record.raw,
            });
            if !self.poison_rate.allow(Instant::now()) {
                self.shared.escalate(
                    "aggregator",
                    format!(
                        "more than {} poison records within a minute on shard {}: a fault, not bad data; last: {cause}",
                        self.shared.settings.max_poison_per_minute, self.index
                    ),
                );
            }
        } else {
            held.push(Held {
                user: key.clone(),
                link: link.clone(),
                record: record.raw,
            });
        }
        self.requeue(key, held, false);
    }

    /// Puts a dropped user's records back in front of its queue, in order, and loads it
    /// again (`fresh`: from the system of record, its cached state being stale).
    fn requeue(&mut self, key: Arc<str>, held: Vec<Held>, fresh: bool) {
        let max_bytes = self.shared.settings.max_message_bytes;
        let mut records: Waiting = Vec::with_capacity(held.len());
        for h in held {
            if !h.link.is_alive() {
                // Its incarnation is gone: the successor reads it again from the commit.
                continue;
            }
            match decode_record(&h.record.payload, max_bytes) {
                Ok(event) => {
                    let ts = h.record.timestamp_ms.unwrap_or(event.timestamp_ms);
                    let mut record = UserRecord::new(event, ts, h.record);
                    if record.event.user_id != *key {
                        // Forwarded to it from a merged id.
                        record.target = Some(key.clone());
                    }
                    records.push((h.link, record));
                }
                // It decoded when it was read; the same bytes decode the same way.
                Err(e) => {
                    tracing::error!(user_id = %key, error = %e, "a held record no longer decodes")
                }
            }
        }
        match self.loading.get_mut(&key) {
            Some(waiting) => {
                records.append(waiting);
                *waiting = records;
                if fresh {
                    if let Some(i) = self.load_queue.iter().position(|k| *k == key) {
                        self.load_queue.swap_remove(i);
                        self.fresh_queue.push(key);
                    }
                }
            }
            None => {
                self.loading.insert(key.clone(), records);
                if fresh {
                    self.fresh_queue.push(key);
                } else {
                    self.load_queue.push(key);
                }
            }
        }
    }

    /// Loads queued users' states, a chunk per round trip.
    fn start_loads(&mut self, ctx: &mut Context<Self>) {
        while self.loads_in_flight < MAX_LOADS
            && !(self.load_queue.is_empty() && self.fresh_queue.is_empty())
        {
            let fresh = !self.fresh_queue.is_empty();
            let queue = if fresh {
                &mut self.fresh_queue
            } else {
                &mut self.load_queue
            };
            let n = queue.len().min(LOAD_CHUNK);
            let users: Vec<Arc<str>> = queue.drain(..n).collect();
            self.loads_in_flight += 1;
            let shared = self.shared.clone();
            let shard = self.index;
            let fut = async move {
                let mut delay = Duration::from_millis(10);
                loop {
                    // The call itself may panic, not only its future: contain both.
                    let load = contain_async(async {
                        state_loader::load(&shared.ports, users.clone(), fresh).await
                    })
                    .await;
                    match load {
                        Ok(Ok(states)) if states.len() == users.len() => return (users, states),
                        Ok(Ok(_)) => tracing::warn!(
                            shard,
                            "state load answered the wrong number of users; retrying"
                        ),
                        Ok(Err(e)) => {
                            tracing::warn!(shard, error = %e, "state load failed; retrying")
                        }
                        Err(panic) => shared.ports.metrics.actor_restarted(
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
        let mut counts = Counts::default();
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
                    Entity::new(UserState::new(), Some(ThinStr::new(&reason)))
                }
            };
            self.residents.push(key.clone(), entity);
            self.shared.ports.metrics.aggregators_changed(1);
            for (link, record) in waiting {
                if link.is_alive() {
                    self.route(&link, record, None, now_ms, tick, &mut counts);
                }
            }
            if self.republish.remove(&key) {
                if let Some(slot) = self.residents.find(&key) {
                    self.mark_dirty(slot);
                }
            }
            self.seals_after_load(&key, now_ms);
        }
        self.count(counts);
    }

    fn evict(&mut self, slot: usize) {
        if self.residents.remove(slot) {
            self.shared.ports.metrics.aggregators_changed(-1);
        }
    }

    /// Brings `herald_users_packed`, `herald_users_unpacked` (and the resident count, for users
    /// passivated because their packed bytes did not read back) up to date with this shard's
    /// residents.
    fn report_packed(&mut self) {
        let metrics = &self.shared.ports.metrics;
        let lost = self.residents.take_lost();
        if lost > 0 {
            metrics.aggregators_changed(-(lost as i64));
        }
        let unpacked = self.residents.take_unpacked();
        if unpacked > 0 {
            metrics.users_unpacked.inc_by(unpacked as u64);
        }
        let now = self.residents.packed() as i64;
        if now != self.packed_reported {
            metrics.packed_changed(now - self.packed_reported);
            self.packed_reported = now;
        }
    }

    /// Passivates durable users until the shard is back at its cap: a CLOCK sweep, where a
    /// recently used user loses a second chance instead of its place.
    fn passivate_to_cap(&mut self) {
        let mut budget = self.residents.span() * (MAX_HITS as usize + 1);
        while self.residents.len() > self.cap && budget > 0 {
            budget -= 1;
            if self.hand >= self.residents.span() {
                self.hand = 0;
            }
            let slot = self.hand;
            self.hand += 1;
            let Some(user) = self.residents.standing(slot) else {
                continue;
            };
            if user.durable {
                if *user.hits > 0 {
                    *user.hits -= 1;
                } else {
                    self.evict(slot);
                }
            }
        }
    }

    /// Starts a pass over the residents (in slices, see [`UserShard::sweep_from`]) unless one
    /// is under way.
    fn sweep_idle(&mut self, ctx: &mut Context<Self>) {
        if !self.sweeping {
            self.sweeping = true;
            self.sweep_from(0, ctx);
        }
        self.report_packed();
    }

    /// From `slot` on, passivates durable users idle for `aggregator.idle_ms` and packs those
    /// quiet for `aggregator.pack_after_ms`, for at most [`SWEEP_SLICE`] at a time: a shard
    /// with a million residents goes on answering its mailbox between slices instead of
    /// stalling its records for the whole pass. A user touched between two slices has a
    /// newer `last_active` when the pass reaches it, so it is left as it is.
    fn sweep_from(&mut self, mut slot: usize, ctx: &mut Context<Self>) {
        // Whole seconds, as `last_active` counts them: at least one.
        let idle = (self.shared.settings.aggregator_idle.as_secs() as u32).max(1);
        let pack_after = self
            .shared
            .settings
            .pack_after
            .map(|after| (after.as_secs() as u32).max(1));
        let now = self.now_tick();
        let started = Instant::now();
        while slot < self.residents.span() {
            if slot % 64 == 0 && started.elapsed() >= SWEEP_SLICE {
                ctx.run_later(SWEEP_SLICE, move |act, ctx| act.sweep_from(slot, ctx));
                self.report_packed();
                return;
            }
            let quiet_for = match self.residents.standing(slot) {
                Some(u) if u.durable => Some((now.saturating_sub(u.last_active), u.packed)),
                _ => None,
            };
            match quiet_for {
                Some((quiet, _)) if quiet >= idle => self.evict(slot),
                Some((quiet, false)) if pack_after.is_some_and(|after| quiet >= after) => {
                    self.residents.pack(slot);
                }
                _ => {}
            }
            slot += 1;
        }
        self.sweeping = false;
        self.report_packed();
    }

    fn maybe_flush(&mut self, ctx: &mut Context<Self>) {
        // Every handler ends here: users unpacked or passivated meanwhile are counted.
        self.report_packed();
        if self.flushing || self.acc.is_empty() {
            return;
        }
        let max_wait = self.shared.settings.batch_max_wait;
        let waited = self.acc.since.map_or(Duration::ZERO, |s| s.elapsed());
        if self.acc.records >= self.shared.settings.batch_max_size
            || waited >= max_wait
            || self.idle
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
        let next = Batch::sized_like(&self.acc);
        let batch = std::mem::replace(&mut self.acc, next);
        // The dedup window as stored: what is older than `dedup.window_ms` is dropped.
        let seen_since = self.shared.ports.clock.now_ms() - self.shared.settings.dedup.window_ms;
        let mut snapshots = Vec::with_capacity(batch.dirty.len());
        let mut slots = Vec::with_capacity(batch.dirty.len());
        for (i, (key, slot)) in batch.dirty.iter().enumerate() {
            self.warm_ahead(&batch.dirty, i, |(_, slot)| *slot);
            let Some(slot) = self.residents.locate(*slot, key) else {
                continue;
            };
            slots.push(slot as u32);
            let e = &mut self.residents[slot].entity;
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
                seen: {
                    // Sized up front: a filter's collect grows its vector a doubling at a time.
                    let mut seen = Vec::with_capacity(e.state.seen.len());
                    seen.extend(e.state.seen.entries().filter(|(_, at)| *at >= seen_since));
                    seen
                },
                identity: e.state.identity.clone(),
            }));
        }
        if snapshots.is_empty() && batch.dead.is_empty() {
            self.after_flush(batch, Vec::new(), Vec::new(), WriteOutcome::default(), ctx);
            return;
        }
        self.flushing = true;
        let applied = Arc::new(batch.applied);
        let write = WriteBatch {
            snapshots: snapshots.clone(),
            messages: batch.messages,
            applied: applied.clone(),
            dead: batch.dead,
            events: batch.events,
        };
        let mut rest = Batch {
            offsets: batch.offsets,
            latency: batch.latency,
            events: batch.events,
            marks: batch.marks,
            replies: batch.replies,
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
            // The batcher has let go of the list by now; a copy only if it has not.
            rest.applied = Arc::try_unwrap(applied).unwrap_or_else(|shared| (*shared).clone());
            act.after_flush(rest, snapshots, slots, outcome, ctx);
        }));
    }

    /// The flush is written: settle its users, report durability, go on.
    fn after_flush(
        &mut self,
        mut batch: Batch,
        snapshots: Vec<Arc<UserSnapshot>>,
        slots: Vec<u32>,
        outcome: WriteOutcome,
        ctx: &mut Context<Self>,
    ) {
        self.flushing = false;
        let metrics = self.shared.ports.metrics.clone();
        for key in &outcome.stale {
            // Another owner moved this user on: what this shard applied to it since its
            // last durable write is applied again, in order, to the state MongoDB holds.
            metrics.stale_write();
            let mut held = batch.take_user(key);
            held.extend(self.acc.take_user(key));
            held.extend(self.unload(key));
            tracing::debug!(
                shard = self.index,
                user_id = %key,
                records = held.len(),
                "a newer state of this user was written elsewhere; applying its records again to it"
            );
            self.requeue(key.clone(), held, true);
        }
        for key in &outcome.republish {
            // Written, but its changelog record was not committed: reloaded, its records
            // are replays, which make it dirty again (and so do the marks below for a user
            // with none), and the next flush publishes it at the next version.
            let mut held = batch.take_user(key);
            held.extend(self.acc.take_user(key));
            held.extend(self.unload(key));
            self.requeue(key.clone(), held, true);
            self.republish.insert(key.clone());
        }
        for (key, detail) in &outcome.refused {
            // The batcher dead-lettered this flush's records of the user; later ones were
            // applied on top of the refused state, so they follow them.
            let mut later = self.acc.take_user(key);
            later.extend(self.unload(key));
            for h in later {
                metrics.store_refused(h.record.partition, detail);
                self.acc.offset(&h.link, h.record.offset);
                self.acc.dead.push(DeadLetter {
                    error: format!(
                        "store_refused: an earlier record of this user was refused: {detail}"
                    ),
                    record: h.record,
                });
            }
        }
        for (i, (snap, &slot)) in snapshots.iter().zip(&slots).enumerate() {
            self.warm_ahead(&slots, i, |slot| *slot);
            if let Some(slot) = self.residents.locate(slot, &snap.user_id) {
                let e = &mut self.residents[slot].entity;
                if e.in_flight && e.state.version + 1 == snap.version {
                    e.in_flight = false;
                    e.state.version = snap.version;
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
        self.answer_seals(batch.replies, &outcome.stale, &outcome.refused);
        self.ask_seals(batch.marks);
        self.start_loads(ctx);
        self.passivate_to_cap();
        self.maybe_flush(ctx);
    }
}

/// What one pass of applications did (for the metrics).
struct Counts {
    applied: u64,
    skipped: u64,
    /// The earliest record time among the applied (for the end-to-end latency).
    earliest: i64,
}

impl Default for Counts {
    fn default() -> Self {
        Counts {
            applied: 0,
            skipped: 0,
            earliest: i64::MAX,
        }
    }
}

impl Actor for UserShard {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let settings = &self.shared.settings;
        let soonest = settings.pack_after.map_or(settings.aggregator_idle, |p| {
            p.min(settings.aggregator_idle)
        });
        let sweep = (soonest / 4).clamp(Duration::from_millis(250), Duration::from_secs(15));
        ctx.run_interval(sweep, |act, ctx| act.sweep_idle(ctx));
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.shared
            .ports
            .metrics
            .aggregators_changed(-(self.residents.len() as i64));
        self.shared
            .ports
            .metrics
            .packed_changed(-self.packed_reported);
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
        self.idle = true;
        if !self.flushing && !self.acc.is_empty() {
            self.flush(ctx);
        }
    }
}

impl Handler<MergeStep> for UserShard {
    type Result = ();

    fn handle(&mut self, msg: MergeStep, ctx: &mut Context<Self>) {
        match msg {
            MergeStep::Seal {
                source,
                into,
                target,
                reply_to,
            } => self.handle_seal(
                source,
                SealRequest {
                    into,
                    target,
                    reply_to,
                },
            ),
            MergeStep::Answer {
                target,
                source,
                answer,
            } => self.handle_answer(target, source, answer, ctx),
        }
        self.start_loads(ctx);
        self.maybe_flush(ctx);
    }
}
