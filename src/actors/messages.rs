//! The messages between the actors, and the handles they hold of each other. Kept apart from
//! the actors so no actor module imports another's: a partition knows its user shards only as
//! `Recipient<ApplyBatch>`, a shard knows a partition only as a [`PartitionLink`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::domain::campaign::TriggeredMessage;
use crate::domain::event::Event;
use crate::domain::identity::Handover;
use crate::ports::{DeadLetter, Record, UserSnapshot};

/// One decoded record, with the raw record kept so a store refusal can dead-letter it.
pub struct UserRecord {
    pub event: Event,
    /// Record time (ms), for end-to-end latency.
    pub ts: i64,
    pub raw: Record,
    /// The user it applies to when that is not its own (`event.user_id`): its user was merged
    /// into this one, and the record forwarded.
    pub target: Option<Arc<str>>,
    /// How often it was forwarded.
    pub hops: u8,
}

impl UserRecord {
    pub fn new(event: Event, ts: i64, raw: Record) -> Self {
        UserRecord {
            event,
            ts,
            raw,
            target: None,
            hops: 0,
        }
    }

    /// The user this record applies to.
    pub fn key(&self) -> &str {
        self.target.as_deref().unwrap_or(&self.event.user_id)
    }
}

/// A partition incarnation as its user shards see it: where durability is reported, and
/// whether the incarnation may still commit.
pub struct PartitionLink {
    pub partition: u32,
    alive: AtomicBool,
    reports: Recipient<PartitionReport>,
}

impl PartitionLink {
    pub fn new(partition: u32, reports: Recipient<PartitionReport>) -> Arc<Self> {
        Arc::new(PartitionLink {
            partition,
            alive: AtomicBool::new(true),
            reports,
        })
    }

    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Everything below these offsets' records is durable (as far as this shard goes).
    pub fn durable(&self, offsets: Vec<u64>) {
        self.reports.do_send(PartitionReport::Durable(offsets));
    }

    /// The partition itself retires this incarnation (restart, revoke, loss).
    pub fn retire(&self) {
        self.alive.store(false, Ordering::Release);
    }
}

/// From a user shard to a partition incarnation.
#[derive(Message)]
#[rtype(result = "()")]
pub enum PartitionReport {
    /// Every effect of the records at these offsets is durable.
    Durable(Vec<u64>),
}

/// A partition's decoded records for the users one shard owns, in partition order.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ApplyBatch {
    pub link: Arc<PartitionLink>,
    pub records: Vec<UserRecord>,
}

/// Stop reading, wait until everything read is durable (or the deadline passes), commit,
/// reply with the committed position, then stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub done: oneshot::Sender<u64>,
}

/// The partition was lost (taken away without a revoke): stop at once, commit nothing.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Abandon;

/// A partition incarnation stopped (a contained panic).
#[derive(Message)]
#[rtype(result = "()")]
pub struct PartitionFailed {
    pub partition: u32,
    pub cause: String,
}

/// Drain every partition (shutdown); resolves when all are committed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DrainAll;

/// Which partitions run here (for tests and readiness).
#[derive(Message)]
#[rtype(result = "Vec<u32>")]
pub struct Running;

/// A child failed beyond its restart intensity.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Escalate {
    pub actor: &'static str,
    pub reason: String,
}

/// One shard's flush: the dirty users' snapshots and what they triggered, written by the
/// shard's batcher in order (messages, documents, cache, dead letters).
#[derive(Message)]
#[rtype(result = "WriteOutcome")]
pub struct WriteBatch {
    pub snapshots: Vec<Arc<UserSnapshot>>,
    pub messages: Vec<Triggered>,
    /// The applied records behind the snapshots (dead-lettered if refused): the shard's own
    /// list, shared — the shard takes it back once the write is settled.
    pub applied: Arc<Vec<Held>>,
    /// Records to dead-letter with this flush (quarantined users, earlier refusals).
    pub dead: Vec<DeadLetter>,
    /// Events applied (for `herald_batch_size`).
    pub events: u64,
}

/// A record applied to a user, kept until the state holding it is durable: if that state
/// turns out stale, the record is applied again to the newer one.
#[derive(Clone)]
pub struct Held {
    pub user: Arc<str>,
    pub link: Arc<PartitionLink>,
    pub record: Record,
}

/// A message a record triggered, with the record's position (dead-lettered if the store
/// refuses the message's document).
#[derive(Debug, Clone)]
pub struct Triggered {
    pub user: Arc<str>,
    pub trigger: (u32, u64),
    pub message: TriggeredMessage,
}

/// What became of a flush's users.
#[derive(Debug, Default)]
pub struct WriteOutcome {
    /// Another owner wrote a newer version: this state is stale and must not be used (the
    /// shard applies the user's records again to the newer one).
    pub stale: Vec<Arc<str>>,
    /// The store refused the document (bad data): its records were dead-lettered.
    pub refused: Vec<(Arc<str>, String)>,
    /// Written, but their changelog records were not committed (another user of the flush
    /// did not stand, or the commit failed): the shard reloads them and writes them again at
    /// the next version, whose records carry the same state.
    pub republish: Vec<Arc<str>>,
}

/// Between user shards: the steps of an identity merge (ARCHITECTURE.md, "Identity merge").
#[derive(Message)]
#[rtype(result = "()")]
pub enum MergeStep {
    /// Seal `source` into `into` (the alias's `userId`; to the shard owning `source`), and
    /// answer `target` (the live id `into` resolves to, where the merge happens) at shard
    /// `reply_to`.
    Seal {
        source: Arc<str>,
        into: Arc<str>,
        target: Arc<str>,
        reply_to: usize,
    },
    /// What the seal of `source` into `target` found (to the shard owning `target`).
    Answer {
        target: Arc<str>,
        source: Arc<str>,
        answer: SealAnswer,
    },
}

/// A seal's answer.
#[derive(Debug, Clone)]
pub enum SealAnswer {
    /// Sealed (durably): its profile and absorbed ids, to merge.
    Sealed(Handover),
    /// It was merged into this other id.
    Elsewhere(Arc<str>),
    /// A merge into it is under way.
    Busy,
    /// Its stored state cannot be read (the user is quarantined).
    Unreadable(String),
}

/// Flush whatever is pending now: a partition found nothing more to read, or reached its
/// in-flight cap (nothing more comes until something is durable), or the pipeline shuts down.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FlushNow;
