//! One partition actor per assigned partition (or queue): reads batches in order, decodes
//! them (invalid → dead letter), hands each batch's records to the users' owner shards (one
//! message per shard per batch, by user hash, whatever the partition), and commits the
//! durable watermark about once a second, on revoke and on shutdown.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::domain::event::decode_record;
use crate::domain::watermark::Watermark;
use crate::ports::{DeadLetter, PartitionReader, Record, SourceError};
use crate::prefetch::prefetch_bytes;

use super::context::Shared;
use super::messages::{
    Abandon, ApplyBatch, Drain, FlushNow, PartitionFailed, PartitionLink, PartitionReport,
    UserRecord,
};
use super::supervision::contain;

/// Poll again this soon when the source had nothing.
const IDLE_POLL: Duration = Duration::from_millis(5);
/// Retry a commit refused during a drain after this long.
const COMMIT_RETRY: Duration = Duration::from_millis(100);
/// Retry a failed fetch or dead-letter write after this long (doubling, capped).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

pub struct PartitionActor {
    partition: u32,
    shared: Arc<Shared>,
    reader: Arc<dyn PartitionReader>,
    supervisor: Recipient<PartitionFailed>,
    /// This incarnation as the shards see it; set when the actor starts, retired when it
    /// stops (the shards then drop what it handed over and did not apply yet).
    link: Option<Arc<PartitionLink>>,
    watermark: Watermark,
    last_committed: u64,
    committing: bool,
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
    /// The first offset this incarnation dispatched.
    first_offset: Option<u64>,
    /// The last fetch found nothing new: once what was read is durable it is committed at
    /// once, not at the next commit tick (a burst's end is not held back by the interval).
    idle: bool,
    /// Reading is paused at `max_in_flight_per_partition` and the shards were asked to write
    /// what they hold.
    capped: bool,
}

impl PartitionActor {
    pub fn new(
        partition: u32,
        shared: Arc<Shared>,
        reader: Arc<dyn PartitionReader>,
        supervisor: Recipient<PartitionFailed>,
    ) -> Self {
        let start = reader.start_offset();
        let span = tracing::info_span!("partition", partition, source = shared.ports.source.kind());
        PartitionActor {
            span,
            partition,
            shared,
            reader,
            supervisor,
            link: None,
            watermark: Watermark::starting_at(start),
            last_committed: start,
            committing: false,
            fetching: false,
            fetch_backoff: Duration::from_millis(10),
            dead_letters_in_flight: 0,
            draining: Vec::new(),
            failed: false,
            lost: false,
            first_offset: None,
            idle: false,
            capped: false,
        }
    }

    fn settings(&self) -> &super::context::Settings {
        &self.shared.settings
    }

    /// Whether this incarnation is still the partition's (not retired).
    fn alive(&self) -> bool {
        self.link.as_ref().is_some_and(|l| l.is_alive())
    }

    /// Nothing more comes from this partition for now: the shards write what they hold
    /// rather than wait for a fuller batch.
    fn ask_shards_to_flush(&self) {
        for shard in self.shared.shards() {
            shard.flush.do_send(FlushNow);
        }
    }

    /// Reads the next batch unless paused (draining, too much in flight, retired).
    fn pump(&mut self, ctx: &mut Context<Self>) {
        if self.fetching || !self.draining.is_empty() || self.failed || self.lost || !self.alive() {
            return;
        }
        if self.watermark.in_flight() >= self.settings().max_in_flight_per_partition {
            // Resumed by the next `Durable`: a slow store pauses the source (G7). Nothing more
            // is read until something is durable, so the shards write what they hold now
            // rather than wait out `batch.max_wait_ms` for a batch that cannot fill (one
            // larger than the partitions may hold in flight).
            if !self.capped {
                self.capped = true;
                self.ask_shards_to_flush();
            }
            return;
        }
        self.capped = false;
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
                    if !act.idle {
                        // The source has nothing more for now: the shards write what they
                        // hold instead of waiting for a fuller batch.
                        act.idle = true;
                        act.ask_shards_to_flush();
                        act.commit_if_idle(ctx);
                    }
                    ctx.run_later(IDLE_POLL, |act, ctx| act.pump(ctx));
                }
                Ok(batch) => {
                    act.fetch_backoff = Duration::from_millis(10);
                    act.idle = false;
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
        let shared = self.shared.clone();
        let shards = shared.shards();
        // Sized for an even spread (and a quarter more), so a shard's list rarely grows.
        let per_shard_guess = batch.len() * 5 / (4 * shards.len().max(1)) + 8;
        let mut per_shard: Vec<Vec<UserRecord>> = (0..shards.len())
            .map(|_| Vec::with_capacity(per_shard_guess))
            .collect();
        let mut dead = Vec::new();
        let mut records = batch.into_iter();
        while let Some(record) = records.next() {
            // The payloads are cold: each is asked for four records ahead of its decoding.
            if let Some(ahead) = records.as_slice().get(3) {
                prefetch_bytes(ahead.payload.as_ptr(), ahead.payload.len().min(512));
            }
            if let Err(e) = self.watermark.dispatch(record.offset) {
                if self
                    .first_offset
                    .is_some_and(|first| record.offset >= first)
                {
                    // A redelivery of a record this incarnation already holds.
                    tracing::warn!(partition = self.partition, error = %e, "skipping a record read twice");
                    continue;
                }
                // The reader went back past where this incarnation began: skipping would
                // commit past records nobody applied. Start again from the commit.
                let first = self.first_offset.unwrap_or_default();
                self.fail(
                    ctx,
                    "partition",
                    format!("the source went back to offset {} before this incarnation's first record ({first})", record.offset),
                );
                return;
            }
            self.first_offset.get_or_insert(record.offset);
            match decode_record(&record.payload, max_bytes) {
                Ok(event) => {
                    let ts = record.timestamp_ms.unwrap_or(event.timestamp_ms);
                    let shard = shared.shard_index(&event.user_id);
                    per_shard[shard].push(UserRecord::new(event, ts, record));
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
        let Some(link) = &self.link else { return };
        for (shard, records) in shards.iter().zip(per_shard) {
            if !records.is_empty() {
                shard.apply.do_send(ApplyBatch {
                    link: link.clone(),
                    records,
                });
            }
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
            self.commit_if_idle(ctx);
            self.pump(ctx);
        } else {
            self.try_finish_drain(ctx);
        }
    }

    /// Commits now if the source is idle and everything read is durable.
    fn commit_if_idle(&mut self, ctx: &mut Context<Self>) {
        if self.idle && self.watermark.in_flight() == 0 {
            self.commit(ctx);
        }
    }

    /// Commits the durable watermark if it moved.
    fn commit(&mut self, ctx: &mut Context<Self>) {
        let position = self.watermark.committable();
        if self.committing || self.lost || !self.alive() || position <= self.last_committed {
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
            } else if act.watermark.committable() > act.last_committed {
                // More became durable while this commit was out.
                act.commit_if_idle(ctx);
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
        if !self.lost && self.alive() && self.watermark.committable() > self.last_committed {
            self.commit(ctx);
            return;
        }
        self.finish_drain(ctx);
    }

    /// Replies to every drain with what was committed, then stops.
    fn finish_drain(&mut self, ctx: &mut Context<Self>) {
        let committed = self.last_committed;
        tracing::info!(partition = self.partition, committed, "partition drained");
        for done in self.draining.drain(..) {
            let _ = done.send(committed);
        }
        ctx.stop();
    }

    /// A contained panic: this incarnation stops and the supervisor restarts the partition
    /// from its committed position (replays are harmless, G2).
    fn fail(&mut self, ctx: &mut Context<Self>, actor: &'static str, cause: String) {
        let _in = self.span.clone().entered();
        if self.failed {
            return;
        }
        self.failed = true;
        if let Some(l) = &self.link {
            l.retire();
        }
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
        self.shared.ports.metrics.partition_assigned(
            self.shared.ports.source.kind(),
            self.partition,
            self.last_committed,
        );
        self.link = Some(PartitionLink::new(
            self.partition,
            ctx.address().recipient(),
        ));
        let commit_every = self.settings().commit_interval;
        ctx.run_interval(commit_every, |act, ctx| act.commit(ctx));
        self.pump(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        if let Some(l) = &self.link {
            l.retire();
        }
    }
}

impl Handler<PartitionReport> for PartitionActor {
    type Result = ();

    fn handle(&mut self, msg: PartitionReport, ctx: &mut Context<Self>) {
        match msg {
            PartitionReport::Durable(offsets) => {
                for o in offsets {
                    self.watermark.complete(o);
                }
                self.after_progress(ctx);
            }
        }
    }
}

impl Handler<Drain> for PartitionActor {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Context<Self>) {
        if self.draining.is_empty() {
            // A drain that cannot finish (a store down for good) must not hold the revoke,
            // and with it the consumer's poll, forever: give the partition up uncommitted.
            let deadline = self.settings().revoke_timeout;
            ctx.run_later(deadline, move |act, ctx| {
                if act.draining.is_empty() {
                    return;
                }
                let _in = act.span.clone().entered();
                tracing::warn!(
                    partition = act.partition,
                    committed = act.last_committed,
                    in_flight = act.watermark.in_flight(),
                    deadline_ms = deadline.as_millis() as u64,
                    "partition did not drain in time; giving it up without committing the rest"
                );
                act.shared.ports.metrics.drain_timed_out(act.partition);
                if let Some(l) = &act.link {
                    l.retire();
                }
                act.finish_drain(ctx);
            });
        }
        self.draining.push(msg.done);
        self.try_finish_drain(ctx);
    }
}

impl Handler<Abandon> for PartitionActor {
    type Result = ();

    fn handle(&mut self, _: Abandon, ctx: &mut Context<Self>) {
        let _in = self.span.clone().entered();
        tracing::warn!(
            partition = self.partition,
            committed = self.last_committed,
            "partition lost; what was not committed will be redelivered to its next owner"
        );
        self.lost = true;
        if let Some(l) = &self.link {
            l.retire();
        }
        self.finish_drain(ctx);
    }
}
