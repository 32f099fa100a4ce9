//! One aggregator actor per active user: holds the user's state in memory (loaded from the
//! state store when it starts), applies the user's records in order, skips replays and
//! duplicates, evaluates campaigns, and hands the new state to the user's batcher.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::domain::campaign::{evaluate_all, TriggeredMessage};
use crate::domain::event::Event;
use crate::domain::user::{ApplyOutcome, Position, UserState};
use crate::ports::Record;

use super::batcher::UserUpdate;
use super::context::Shared;
use super::partition::{AggregatorFailed, Durable, PartitionActor};
use super::supervision::{contain, contain_async};

/// One decoded record, with the raw record kept so a store refusal can dead-letter it.
pub struct UserRecord {
    pub event: Event,
    /// Record time (ms), for end-to-end latency.
    pub ts: i64,
    pub raw: Record,
}

/// A user's records from one batch, in partition order.
pub type UserRecords = Vec<UserRecord>;

#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply {
    pub records: UserRecords,
}

pub struct Aggregator {
    user_id: String,
    partition: u32,
    shared: Arc<Shared>,
    owner: Addr<PartitionActor>,
    owner_alive: Arc<AtomicBool>,
    state: Arc<UserState>,
}

impl Aggregator {
    pub fn new(
        user_id: String,
        partition: u32,
        shared: Arc<Shared>,
        owner: Addr<PartitionActor>,
        owner_alive: Arc<AtomicBool>,
    ) -> Self {
        Aggregator {
            state: Arc::new(UserState::new(user_id.clone())),
            user_id,
            partition,
            shared,
            owner,
            owner_alive,
        }
    }

    /// Applies records; returns the offsets, applied count, triggered messages and the
    /// earliest record time.
    fn apply(&mut self, records: UserRecords) -> Applied {
        let now = self.shared.ports.clock.now_ms();
        let limits = self.shared.settings.dedup;
        let campaigns = &self.shared.campaigns;
        let durable_positions = self.shared.ports.source.durable_positions();
        let state = Arc::make_mut(&mut self.state);
        let mut out = Applied {
            offsets: Vec::with_capacity(records.len()),
            applied: 0,
            messages: Vec::new(),
            earliest_ms: i64::MAX,
            raw: Vec::with_capacity(records.len()),
        };
        for UserRecord { event, ts, raw } in records {
            out.offsets.push(raw.offset);
            out.earliest_ms = out.earliest_ms.min(ts);
            // Only offsets that mean the same message forever protect against replays; a
            // RabbitMQ delivery's position is per session, so there the messageId alone does.
            let position = durable_positions.then_some(Position {
                partition: self.partition,
                offset: raw.offset,
            });
            match state.apply(position, &event, now, limits) {
                ApplyOutcome::Applied => {
                    out.applied += 1;
                    out.raw.push(raw);
                    if !campaigns.is_empty() {
                        out.messages
                            .extend(evaluate_all(campaigns, &event, &state.profile));
                    }
                }
                ApplyOutcome::ReplayedPosition | ApplyOutcome::DuplicateId => {}
            }
        }
        out
    }
}

struct Applied {
    offsets: Vec<u64>,
    applied: u64,
    messages: Vec<TriggeredMessage>,
    earliest_ms: i64,
    /// The applied records (what a refusal of the new state dead-letters).
    raw: Vec<Record>,
}

/// The store refused this user's new state: the records behind it were dead-lettered, so
/// forget the in-memory state and reload the last durable one before applying more.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Reset;

/// Loads a user's durable state, retrying transient errors; `Err` is a contained panic.
async fn load_state(
    store: Arc<dyn crate::ports::StateStore>,
    user_id: String,
) -> Result<Option<UserState>, String> {
    let mut delay = Duration::from_millis(10);
    loop {
        match contain_async(async { store.load(&user_id).await }).await {
            Ok(Ok(state)) => return Ok(state),
            Ok(Err(e)) => {
                tracing::warn!(user_id, error = %e, "state load failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(panic) => return Err(panic),
        }
    }
}

impl Aggregator {
    /// Holds the mailbox until the durable state is loaded.
    fn load(&mut self, ctx: &mut Context<Self>) {
        let load = load_state(self.shared.ports.state.clone(), self.user_id.clone());
        ctx.wait(load.into_actor(self).map(|result, act, ctx| match result {
            Ok(Some(state)) => act.state = Arc::new(state),
            Ok(None) => act.state = Arc::new(UserState::new(act.user_id.clone())),
            Err(cause) => {
                act.owner.do_send(AggregatorFailed {
                    user_id: act.user_id.clone(),
                    cause: format!("state load panicked: {cause}"),
                });
                ctx.stop();
            }
        }));
    }
}

impl Actor for Aggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.shared.ports.metrics.aggregators_changed(1);
        // Until the state is loaded, no record is processed (`wait` holds the mailbox).
        self.load(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.shared.ports.metrics.aggregators_changed(-1);
    }
}

impl Handler<Apply> for Aggregator {
    type Result = ();

    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) {
        if !self.owner_alive.load(Ordering::Acquire) {
            // The partition was restarted: the new incarnation re-reads these records.
            ctx.stop();
            return;
        }
        let applied = match contain(|| self.apply(msg.records)) {
            Ok(a) => a,
            Err(cause) => {
                self.owner.do_send(AggregatorFailed {
                    user_id: self.user_id.clone(),
                    cause,
                });
                ctx.stop();
                return;
            }
        };
        let metrics = &self.shared.ports.metrics;
        let total = applied.offsets.len() as u64;
        metrics.applied.inc_by(applied.applied);
        metrics.duplicates.inc_by(total - applied.applied);
        if applied.applied == 0 {
            // Nothing to write: replays and duplicates are done as soon as they are seen.
            self.owner.do_send(Durable {
                offsets: applied.offsets,
            });
            return;
        }
        self.shared.batcher_for(&self.user_id).do_send(UserUpdate {
            state: self.state.clone(),
            messages: applied.messages,
            partition: self.partition,
            owner: self.owner.clone(),
            offsets: applied.offsets,
            events: applied.applied,
            earliest_ms: applied.earliest_ms,
            raw: applied.raw,
            aggregator: ctx.address(),
        });
    }
}

impl Handler<Reset> for Aggregator {
    type Result = ();

    fn handle(&mut self, _: Reset, ctx: &mut Context<Self>) {
        self.load(ctx);
    }
}
