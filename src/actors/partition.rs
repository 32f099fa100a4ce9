//! One partition actor per assigned partition (or queue): reads batches in order, decodes
//! them (invalid → dead letter), routes each user's records to that user's aggregator, and
//! commits the durable watermark about once a second, on revoke and on shutdown.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::domain::event::decode;
use crate::domain::watermark::Watermark;
use crate::ports::{DeadLetter, PartitionReader, Record, SourceError};

use super::aggregator::{Aggregator, Apply, UserRecord, UserRecords};
use super::context::Shared;
use super::source_supervisor::{PartitionFailed, SourceSupervisor};
use super::supervision::contain;

/// Poll again this soon when the source had nothing.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Retry a commit refused during a drain after this long.
const COMMIT_RETRY: Duration = Duration::from_millis(100);
/// Retry a failed fetch or dead-letter write after this long (doubling, capped).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Everything below these offsets (of this partition incarnation) is durable.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Durable {
    pub offsets: Vec<u64>,
}

/// Stop reading, wait until everything read is durable, commit, reply with the committed
/// position, then stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub done: oneshot::Sender<u64>,
}

/// An aggregator of this partition panicked: its in-memory state is suspect.
#[derive(Message)]
#[rtype(result = "()")]
pub struct AggregatorFailed {
    pub user_id: String,
    pub cause: String,
}

struct AggregatorEntry {
    addr: Addr<Aggregator>,
    last_offset: u64,
    last_active: Instant,
}

pub struct PartitionActor {
    partition: u32,
    shared: Arc<Shared>,
    reader: Arc<dyn PartitionReader>,
    supervisor: Addr<SourceSupervisor>,
    /// Cleared when this incarnation is replaced: its aggregators drop what they still hold.
    alive: Arc<AtomicBool>,
    watermark: Watermark,
    last_committed: u64,
    committing: bool,
    aggregators: HashMap<String, AggregatorEntry, ahash::RandomState>,
    fetching: bool,
    fetch_backoff: Duration,
    dead_letters_in_flight: usize,
    draining: Vec<oneshot::Sender<u64>>,
    failed: bool,
    /// Every log line of this partition (and of its commits and dead letters) is in it.
    span: tracing::Span,
    /// The source took the partition away (a closed RabbitMQ channel): nothing more can be
    /// committed; a drain finishes once the in-flight work is durable.
    lost: bool,
}

impl PartitionActor {
    pub fn new(
        partition: u32,
        shared: Arc<Shared>,
        reader: Arc<dyn PartitionReader>,
        supervisor: Addr<SourceSupervisor>,
    ) -> Self {
        let start = reader.start_offset();
        let span = tracing::info_span!("partition", partition, source = shared.ports.source.kind());
        PartitionActor {
            span,
            partition,
            shared,
            reader,
            supervisor,
            alive: Arc::new(AtomicBool::new(true)),
            watermark: Watermark::starting_at(start),
            last_committed: start,
            committing: false,
            aggregators: HashMap::default(),
            fetching: false,
            fetch_backoff: Duration::from_millis(10),
            dead_letters_in_flight: 0,
            draining: Vec::new(),
            failed: false,
            lost: false,
        }
    }

    fn settings(&self) -> &super::context::Settings {
        &self.shared.settings
    }

    /// Reads the next batch unless paused (draining, too much in flight, too many aggregators).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.fetching || !self.draining.is_empty() || self.failed || self.lost {
            return;
        }
        if self.watermark.in_flight() >= self.settings().max_in_flight_per_partition {
            // Resumed by the next `Durable`: a slow store pauses the source (G7).
            return;
        }
        if self.aggregators.len() >= self.settings().aggregators_per_partition {
            self.passivate(Instant::now(), true);
            if self.aggregators.len() >= self.settings().aggregators_per_partition {
                ctx.run_later(IDLE_POLL, |act, ctx| act.pump(ctx));
                return;
            }
        }
        self.fetching = true;
        let fut = self.reader.fetch(self.settings().fetch_max_records);
        ctx.spawn(fut.into_actor(self).map(|result, act, ctx| {
            act.fetching = false;
            if !act.draining.is_empty() {
                // A drain arrived while this fetch was out: what it read is processed (and
                // waited for) like anything else in flight, then the drain may finish.
                if let Ok(batch) = result {
                    if !batch.is_empty() {
                        if let Err(cause) = contain(|| act.process(batch, ctx)) {
                            act.fail(ctx, "partition", cause);
                            return;
                        }
                    }
                }
                act.try_finish_drain(ctx);
                return;
            }
            match result {
                Ok(batch) if batch.is_empty() => {
                    act.fetch_backoff = Duration::from_millis(10);
                    ctx.run_later(IDLE_POLL, |act, ctx| act.pump(ctx));
                }
                Ok(batch) => {
                    act.fetch_backoff = Duration::from_millis(10);
                    if let Err(cause) = contain(|| act.process(batch, ctx)) {
                        act.fail(ctx, "partition", cause);
                        return;
                    }
                    act.pump(ctx);
                }
                Err(e) => {
                    let _in = act.span.clone().entered();
                    tracing::warn!(partition = act.partition, error = %e, "fetch failed; backing off");
                    let delay = act.fetch_backoff;
                    act.fetch_backoff = (delay * 2).min(MAX_BACKOFF);
                    ctx.run_later(delay, |act, ctx| act.pump(ctx));
                }
            }
        }));
    }

    /// Decodes a batch and hands each user's records to its aggregator, in order.
    fn process(&mut self, batch: Vec<Record>, ctx: &mut Context<Self>) {
        let _in = self.span.clone().entered();
        let ports = &self.shared.ports;
        ports
            .metrics
            .records_consumed(ports.source.kind(), self.partition, batch.len() as u64);
        if self.watermark.next() == self.reader.start_offset() {
            if let Some(first) = batch.first() {
                // Operators (and the SIGTERM test) see where a partition resumed.
                tracing::info!(
                    partition = self.partition,
                    offset = first.offset,
                    "first record read"
                );
            }
        }
        let max_bytes = self.settings().max_message_bytes;
        let mut groups: Vec<(String, UserRecords)> = Vec::new();
        let mut index: HashMap<String, usize, ahash::RandomState> = HashMap::default();
        let mut dead = Vec::new();
        for record in batch {
            if let Err(e) = self.watermark.dispatch(record.offset) {
                tracing::error!(partition = self.partition, error = %e, "skipping out-of-order record");
                continue;
            }
            match decode(&record.payload, max_bytes) {
                Ok(event) => {
                    let ts = record.timestamp_ms.unwrap_or(event.timestamp_ms);
                    let slot = match index.get(event.user_id.as_str()) {
                        Some(i) => *i,
                        None => {
                            index.insert(event.user_id.clone(), groups.len());
                            groups.push((event.user_id.clone(), Vec::new()));
                            groups.len() - 1
                        }
                    };
                    groups[slot].1.push(UserRecord {
                        event,
                        ts,
                        raw: record,
                    });
                }
                Err(rejection) => {
                    ports.metrics.invalid_record(
                        rejection.reason,
                        self.partition,
                        &rejection.detail,
                    );
                    dead.push(DeadLetter {
                        error: rejection.to_string(),
                        record,
                    });
                }
            }
        }
        if !dead.is_empty() {
            self.write_dead_letters(dead, ctx);
        }
        let now = Instant::now();
        for (user_id, records) in groups {
            let last_offset = records.last().map(|r| r.raw.offset).unwrap_or(0);
            let addr = match self.aggregators.get_mut(user_id.as_str()) {
                Some(entry) => {
                    entry.last_offset = last_offset;
                    entry.last_active = now;
                    entry.addr.clone()
                }
                None => {
                    let addr = Aggregator::new(
                        user_id.clone(),
                        self.partition,
                        self.shared.clone(),
                        ctx.address(),
                        self.alive.clone(),
                    )
                    .start();
                    self.aggregators.insert(
                        user_id,
                        AggregatorEntry {
                            addr: addr.clone(),
                            last_offset,
                            last_active: now,
                        },
                    );
                    addr
                }
            };
            addr.do_send(Apply { records });
        }
    }

    /// Dead letters must be durable before their offsets count as done (G3, G5).
    fn write_dead_letters(&mut self, letters: Vec<DeadLetter>, ctx: &mut Context<Self>) {
        self.dead_letters_in_flight += 1;
        let offsets: Vec<u64> = letters.iter().map(|l| l.record.offset).collect();
        let source = self.shared.ports.source.clone();
        let partition = self.partition;
        let fut = async move {
            let mut delay = Duration::from_millis(10);
            loop {
                match source.dead_letter(letters.clone()).await {
                    Ok(()) => return,
                    Err(e) => {
                        tracing::warn!(partition, error = %e, "dead-letter write failed; retrying");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(MAX_BACKOFF);
                    }
                }
            }
        };
        let fut = fut.instrument(self.span.clone());
        ctx.spawn(fut.into_actor(self).map(move |(), act, ctx| {
            act.dead_letters_in_flight -= 1;
            for o in offsets {
                act.watermark.complete(o);
            }
            act.after_progress(ctx);
        }));
    }

    fn after_progress(&mut self, ctx: &mut Context<Self>) {
        if self.draining.is_empty() {
            self.pump(ctx);
        } else {
            self.try_finish_drain(ctx);
        }
    }

    /// Commits the durable watermark if it moved.
    fn commit(&mut self, ctx: &mut Context<Self>) {
        let position = self.watermark.committable();
        if self.committing || self.lost || position <= self.last_committed {
            // Nothing new to commit; the lag still moves with the high watermark.
            let hw = self.shared.ports.source.high_watermark(self.partition);
            let metrics = &self.shared.ports.metrics;
            metrics.committed(self.partition, self.last_committed, hw);
            metrics.source_paused(
                self.partition,
                self.shared.ports.source.is_paused(self.partition),
            );
            return;
        }
        self.committing = true;
        let fut = self.shared.ports.source.commit(self.partition, position);
        ctx.spawn(fut.into_actor(self).map(move |result, act, ctx| {
            let _in = act.span.clone().entered();
            act.committing = false;
            match result {
                Ok(()) => {
                    act.last_committed = act.last_committed.max(position);
                    let source = &act.shared.ports.source;
                    let hw = source.high_watermark(act.partition);
                    let paused = source.is_paused(act.partition);
                    act.shared.ports.metrics.committed(act.partition, position, hw);
                    act.shared.ports.metrics.source_paused(act.partition, paused);
                }
                Err(SourceError::Lost(_)) => {
                    tracing::warn!(
                        partition = act.partition,
                        committed = act.last_committed,
                        "partition lost; what was not committed will be redelivered"
                    );
                    act.lost = true;
                }
                Err(e) => {
                    tracing::warn!(partition = act.partition, error = %e, "commit failed; will retry");
                    if !act.draining.is_empty() {
                        // Not at once: a broker that refuses commits needs a moment.
                        ctx.run_later(COMMIT_RETRY, |act, ctx| act.try_finish_drain(ctx));
                        return;
                    }
                }
            }
            if !act.draining.is_empty() {
                act.try_finish_drain(ctx);
            }
        }));
    }

    fn try_finish_drain(&mut self, ctx: &mut Context<Self>) {
        let _in = self.span.clone().entered();
        if self.fetching
            || self.committing
            || self.dead_letters_in_flight > 0
            || self.watermark.in_flight() > 0
        {
            return;
        }
        if !self.lost && self.watermark.committable() > self.last_committed {
            self.commit(ctx);
            return;
        }
        let committed = self.last_committed;
        tracing::info!(partition = self.partition, committed, "partition drained");
        for done in self.draining.drain(..) {
            let _ = done.send(committed);
        }
        ctx.stop();
    }

    /// Stops idle aggregators whose every update is durable (their state reloads from the
    /// store on the next event). With `to_cap`, also the least recently used durable ones
    /// until the partition is 10% below its cap.
    fn passivate(&mut self, now: Instant, to_cap: bool) {
        let durable_below = self.watermark.committable();
        let idle = self.settings().aggregator_idle;
        self.aggregators.retain(|_, e| {
            !(e.last_offset < durable_below && now.duration_since(e.last_active) >= idle)
        });
        let cap = self.settings().aggregators_per_partition;
        if to_cap && self.aggregators.len() >= cap {
            let target = cap - cap / 10 - 1;
            let mut eligible: Vec<(Instant, String)> = self
                .aggregators
                .iter()
                .filter(|(_, e)| e.last_offset < durable_below)
                .map(|(k, e)| (e.last_active, k.clone()))
                .collect();
            eligible.sort_unstable();
            let excess = self.aggregators.len().saturating_sub(target);
            for (_, k) in eligible.into_iter().take(excess) {
                self.aggregators.remove(&k);
            }
        }
    }

    /// A contained panic: this incarnation stops and the supervisor restarts the partition
    /// from its committed position (replays are harmless, G2).
    fn fail(&mut self, ctx: &mut Context<Self>, actor: &'static str, cause: String) {
        let _in = self.span.clone().entered();
        if self.failed {
            return;
        }
        self.failed = true;
        self.alive.store(false, Ordering::Release);
        self.shared.ports.metrics.actor_restarted(actor, &cause);
        self.supervisor.do_send(PartitionFailed {
            partition: self.partition,
            cause,
        });
        ctx.stop();
    }
}

impl Actor for PartitionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let _in = self.span.clone().entered();
        tracing::info!(
            partition = self.partition,
            from = self.last_committed,
            "partition started"
        );
        let commit_every = self.settings().commit_interval;
        ctx.run_interval(commit_every, |act, ctx| act.commit(ctx));
        let idle = self.settings().aggregator_idle;
        let sweep = (idle / 4).clamp(Duration::from_millis(10), Duration::from_secs(5));
        ctx.run_interval(sweep, |act, _| act.passivate(Instant::now(), false));
        self.pump(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.alive.store(false, Ordering::Release);
        self.aggregators.clear();
    }
}

impl Handler<Durable> for PartitionActor {
    type Result = ();

    fn handle(&mut self, msg: Durable, ctx: &mut Context<Self>) {
        for o in msg.offsets {
            self.watermark.complete(o);
        }
        self.after_progress(ctx);
    }
}

impl Handler<Drain> for PartitionActor {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) {
        self.draining.push(msg.done);
        self.try_finish_drain(ctx);
    }
}

impl Handler<AggregatorFailed> for PartitionActor {
    type Result = ();

    fn handle(&mut self, msg: AggregatorFailed, ctx: &mut Context<Self>) {
        let cause = format!("user {}: {}", msg.user_id, msg.cause);
        self.fail(ctx, "aggregator", cause);
    }
}
