//! A user shard's part in identity merges (ARCHITECTURE.md, "Identity merge"). An alias
//! marks its target absorbing and pauses the target's records; once the mark is durable the
//! source's shard is asked to seal the source, and answers once the seal is durable; the
//! target then merges the handed-over profile in (with the alias's own position, so the
//! merge and the record that it happened are one write) and its records go on. Records of a
//! sealed id are forwarded to the id it was merged into.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use crate::domain::identity::{alias_step, gives_way, seal_step, AliasStep, Handover, SealStep};
use crate::domain::user::Position;
use crate::ports::DeadLetter;

use super::super::messages::{ApplyBatch, MergeStep, PartitionLink, SealAnswer, UserRecord};
use super::{Applied, Counts, Held, UserShard};

/// Most hops a forwarded record makes before it is taken for a cycle of merged ids (which
/// the protocol never creates) and dead-lettered.
const MAX_HOPS: u8 = 32;
/// The longest wait before a busy source is asked again.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A merge into a resident user, under way: the user's records wait behind it.
pub(super) struct MergeJob {
    /// The id being merged in (another one after a retarget).
    source: Arc<str>,
    link: Arc<PartitionLink>,
    /// The alias record, reported durable with the merged state.
    record: UserRecord,
    stage: Stage,
    /// Busy answers so far (the wait grows with them).
    busy: u32,
}

impl MergeJob {
    /// The alias record, for a reload of its user (its merge starts again from there).
    pub(super) fn into_held(self, user: Arc<str>) -> Held {
        Held {
            user,
            link: self.link,
            record: self.record.raw,
        }
    }

    /// Whether its target counts as merging for a seal of the target: not once it gave way.
    pub(super) fn blocks_seal(&self) -> bool {
        !matches!(self.stage, Stage::Backoff { gave_way: true })
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The mark is being written; the seal is asked once it is durable.
    Marking,
    /// The seal was asked.
    Sealing,
    /// Waiting to ask again (the source was busy) or, having given way, to start over.
    Backoff { gave_way: bool },
}

/// A seal asked of a source: sealed into `into`, answered to `target` at shard `reply_to`.
#[derive(Clone)]
pub(super) struct SealRequest {
    pub(super) into: Arc<str>,
    pub(super) target: Arc<str>,
    pub(super) reply_to: usize,
}

/// A seal's answer, sent once the source's state behind it is durable.
pub(super) struct Reply {
    pub(super) source: Arc<str>,
    pub(super) request: SealRequest,
    pub(super) answer: SealAnswer,
}

impl UserShard {
    /// Where a record stands in its partition, for replay protection: none for a forwarded
    /// record (it came from another id's order; a position it set could make its new user
    /// skip its own earlier records still on their way), nor where positions are per session.
    pub(super) fn position_of(&self, record: &UserRecord) -> Option<Position> {
        (record.target.is_none() && self.shared.ports.source.durable_positions()).then_some(
            Position {
                partition: record.raw.partition,
                offset: record.raw.offset,
            },
        )
    }

    /// A record of a sealed id: to the id it was merged into, whose shard reports it durable.
    pub(super) fn forward(
        &mut self,
        link: &Arc<PartitionLink>,
        mut record: UserRecord,
        into: Arc<str>,
    ) -> Applied {
        if record.hops >= MAX_HOPS {
            let error = format!(
                "merge_cycle: forwarded {MAX_HOPS} times from {:?} without reaching a live id",
                record.event.user_id
            );
            self.shared.ports.metrics.merge_refused("merge_cycle");
            self.dead_letter(link, record.raw, error);
            return Applied::DeadLettered;
        }
        record.hops += 1;
        let shard = self.shared.shard_index(&into);
        record.target = Some(into);
        self.shared.ports.metrics.messages_forwarded.inc();
        self.shared.shards()[shard].apply.do_send(ApplyBatch {
            link: link.clone(),
            records: vec![record],
        });
        Applied::Forwarded
    }

    pub(super) fn dead_letter(
        &mut self,
        link: &Arc<PartitionLink>,
        record: crate::ports::Record,
        error: String,
    ) {
        self.acc.offset(link, record.offset);
        self.acc.dead.push(DeadLetter { error, record });
    }

    /// An alias record for the live, resident user in `slot` (step 1).
    pub(super) fn alias(
        &mut self,
        slot: usize,
        link: &Arc<PartitionLink>,
        record: UserRecord,
        previous: Arc<str>,
        now_ms: i64,
    ) -> Applied {
        let position = self.position_of(&record);
        let metrics = self.shared.ports.metrics.clone();
        let merge = &self.shared.settings.merge;
        let target = self.residents[slot].key.clone();
        let state = &self.residents[slot].entity.state;
        if state.is_replay(position, &record.event.message_id) {
            self.acc.offset(link, record.raw.offset);
            return Applied::Skipped;
        }
        match alias_step(
            &previous,
            &record.event.user_id,
            &target,
            state,
            merge.max_ids,
            &merge.blocked,
        ) {
            AliasStep::Blocked(detail) => {
                metrics.merge_refused("blocked_id");
                self.dead_letter(link, record.raw, format!("blocked_id: {detail}"));
                Applied::DeadLettered
            }
            AliasStep::Limit(detail) => {
                metrics.merge_refused("merge_limit");
                self.dead_letter(link, record.raw, format!("merge_limit: {detail}"));
                Applied::DeadLettered
            }
            AliasStep::Nothing(why) => {
                metrics.merge(why.outcome());
                self.acc.offset(link, record.raw.offset);
                Applied::Skipped
            }
            AliasStep::Merge => {
                let entity = &mut self.residents[slot].entity;
                entity.state.mark_absorbing(&previous, now_ms);
                entity.job = Some(Box::new(MergeJob {
                    source: previous,
                    link: link.clone(),
                    record,
                    stage: Stage::Marking,
                    busy: 0,
                }));
                self.mark_dirty(slot);
                self.paused.entry(target.clone()).or_default();
                self.acc.marks.push(target);
                Applied::Pending
            }
        }
    }

    /// After a flush: the merges whose marks it made durable ask for their seals (step 2).
    pub(super) fn ask_seals(&mut self, marked: Vec<Arc<str>>) {
        for target in marked {
            let Some(slot) = self.residents.find(&target) else {
                continue;
            };
            let Some(job) = self.residents[slot].entity.job.as_mut() else {
                continue;
            };
            if job.stage == Stage::Marking {
                job.stage = Stage::Sealing;
                let source = job.source.clone();
                let into: Arc<str> = Arc::from(job.record.event.user_id.as_str());
                self.send_seal(source, into, target);
            }
        }
    }

    fn send_seal(&self, source: Arc<str>, into: Arc<str>, target: Arc<str>) {
        let shard = self.shared.shard_index(&source);
        self.shared.shards()[shard].merge.do_send(MergeStep::Seal {
            source,
            into,
            target,
            reply_to: self.index,
        });
    }

    fn send_answer(&self, reply: Reply) {
        let shards = self.shared.shards();
        if let Some(shard) = shards.get(reply.request.reply_to) {
            shard.merge.do_send(MergeStep::Answer {
                target: reply.request.target,
                source: reply.source,
                answer: reply.answer,
            });
        }
    }

    /// A seal of `source` (step 2), in the source's order: behind its load if it is not
    /// resident.
    pub(super) fn handle_seal(&mut self, source: Arc<str>, request: SealRequest) {
        if self.loading.contains_key(&source) || !self.residents.contains(&source) {
            self.seals.entry(source.clone()).or_default().push(request);
            if !self.loading.contains_key(&source) {
                self.loading.insert(source.clone(), Vec::new());
                self.load_queue.push(source);
            }
            return;
        }
        let now_ms = self.shared.ports.clock.now_ms();
        self.seal_resident(source, request, now_ms);
    }

    /// The seals that waited for `source` to load.
    pub(super) fn seals_after_load(&mut self, source: &Arc<str>, now_ms: i64) {
        if let Some(requests) = self.seals.remove(source) {
            for r in requests {
                self.seal_resident(source.clone(), r, now_ms);
            }
        }
    }

    fn seal_resident(&mut self, source: Arc<str>, request: SealRequest, now_ms: i64) {
        let Some(slot) = self.residents.find(&source) else {
            return;
        };
        let ttl = self.shared.settings.merge.mark_ttl_ms;
        let entity = &mut self.residents[slot].entity;
        let into = request.into.clone();
        let reply = |answer| Reply {
            source: source.clone(),
            request: request.clone(),
            answer,
        };
        if let Some(reason) = &entity.quarantined {
            let answer = SealAnswer::Unreadable(reason.to_string());
            self.send_answer(reply(answer));
            return;
        }
        let merging = entity.job.as_ref().is_some_and(|j| j.blocks_seal());
        let answer = match seal_step(&entity.state, &into, merging, now_ms, ttl) {
            SealStep::Busy => {
                self.send_answer(reply(SealAnswer::Busy));
                return;
            }
            SealStep::Seal => {
                entity.state.seal(&into);
                let handover = entity.state.handed_over();
                self.mark_dirty(slot);
                // Its records wait until the seal is durable, then go to `into`.
                self.paused.entry(source.clone()).or_default();
                SealAnswer::Sealed(handover)
            }
            SealStep::AlreadySealed(handover) => SealAnswer::Sealed(handover),
            SealStep::Elsewhere(x) => SealAnswer::Elsewhere(Arc::from(x)),
        };
        if self.residents[slot].entity.durable() {
            self.send_answer(reply(answer));
        } else {
            self.acc.replies.push(reply(answer));
            self.acc.touch();
        }
    }

    /// After a flush: the seals it made durable are answered, and the sealed ids' records go
    /// on (to where they were merged). A seal whose write was stale waits for its source's
    /// reload; one whose write the store refused is answered as unreadable.
    pub(super) fn answer_seals(
        &mut self,
        replies: Vec<Reply>,
        stale: &[Arc<str>],
        refused: &[(Arc<str>, String)],
    ) {
        let mut sealed: Vec<Arc<str>> = Vec::new();
        for mut reply in replies {
            if stale.contains(&reply.source) {
                self.seals
                    .entry(reply.source.clone())
                    .or_default()
                    .push(reply.request);
                continue;
            }
            if let Some((_, detail)) = refused.iter().find(|(u, _)| *u == reply.source) {
                reply.answer = SealAnswer::Unreadable(format!("the store refused it: {detail}"));
            }
            if !sealed.contains(&reply.source) {
                sealed.push(reply.source.clone());
            }
            self.send_answer(reply);
        }
        for source in sealed {
            let merging = self
                .residents
                .find(&source)
                .is_some_and(|s| self.residents[s].entity.job.is_some());
            if !merging {
                self.resume(&source);
            }
        }
    }

    /// What a seal found, at the target (step 3).
    pub(super) fn handle_answer(
        &mut self,
        target: Arc<str>,
        source: Arc<str>,
        answer: SealAnswer,
        ctx: &mut Context<Self>,
    ) {
        let Some(slot) = self.residents.find(&target) else {
            // Reloaded meanwhile: its alias is applied again from the start.
            return;
        };
        let metrics = self.shared.ports.metrics.clone();
        let now_ms = self.shared.ports.clock.now_ms();
        let entity = &mut self.residents[slot].entity;
        let Some(job) = entity.job.as_mut() else {
            return;
        };
        if job.source != source || job.stage != Stage::Sealing {
            return;
        }
        match answer {
            SealAnswer::Sealed(handover) => self.finish(slot, Some(handover), "merged"),
            SealAnswer::Elsewhere(x) => {
                metrics.merge("retargeted");
                if x == target || entity.state.has_absorbed(&x) {
                    self.finish(slot, None, "already_merged");
                } else {
                    // The alias is about the id the source was merged into now.
                    entity.state.mark_absorbing(&x, now_ms);
                    job.source = x;
                    job.stage = Stage::Marking;
                    self.mark_dirty(slot);
                    self.acc.marks.push(target);
                }
            }
            SealAnswer::Busy => {
                job.busy += 1;
                let gave_way = gives_way(&source, &target);
                if gave_way {
                    entity.state.clear_absorbing();
                    metrics.merge("gave_way");
                }
                job.stage = Stage::Backoff { gave_way };
                let wait = (Duration::from_millis(5) * 2u32.saturating_pow(job.busy.min(8)))
                    .min(MAX_BACKOFF);
                if gave_way {
                    self.mark_dirty(slot);
                }
                ctx.run_later(wait, move |act, ctx| {
                    act.after_backoff(target, source);
                    act.start_loads(ctx);
                    act.maybe_flush(ctx);
                });
            }
            SealAnswer::Unreadable(reason) => {
                let job = entity.job.take().expect("checked above");
                entity.state.clear_absorbing();
                self.mark_dirty(slot);
                self.shared
                    .ports
                    .metrics
                    .state_unreadable_record(job.record.raw.partition, &reason);
                let error = format!("state_unreadable: previousId {source:?}: {reason}");
                self.dead_letter(&job.link, job.record.raw, error);
                self.resume(&target);
            }
        }
    }

    fn after_backoff(&mut self, target: Arc<str>, source: Arc<str>) {
        let Some(slot) = self.residents.find(&target) else {
            return;
        };
        let entity = &mut self.residents[slot].entity;
        let Some(job) = entity.job.as_mut() else {
            return;
        };
        match job.stage {
            _ if job.source != source => {}
            Stage::Backoff { gave_way: false } => {
                job.stage = Stage::Sealing;
                let into: Arc<str> = Arc::from(job.record.event.user_id.as_str());
                self.send_seal(source, into, target);
            }
            Stage::Backoff { gave_way: true } => {
                // Start over from step 1: the alias goes back in front of the records that
                // waited behind it.
                let job = entity.job.take().expect("checked above");
                let waiting = self.paused.entry(target.clone()).or_default();
                waiting.insert(0, (job.link, job.record));
                self.resume(&target);
            }
            Stage::Marking | Stage::Sealing => {}
        }
    }

    /// The merge is done (or found to change nothing): one state holding the merged profile,
    /// the source among the absorbed, the mark cleared and the alias's position; the alias is
    /// reported durable with it, and the records that waited go on.
    fn finish(&mut self, slot: usize, handover: Option<Handover>, outcome: &'static str) {
        let now_ms = self.shared.ports.clock.now_ms();
        let dedup = self.shared.settings.dedup;
        let key = self.residents[slot].key.clone();
        let Some(job) = self.residents[slot].entity.job.take() else {
            return;
        };
        let position = self.position_of(&job.record);
        let entity = &mut self.residents[slot].entity;
        match &handover {
            Some(h) => {
                entity.state.absorb(&job.source, h);
                entity.size_bound = super::saturate(entity.state.profile.serialized_len());
            }
            None => entity.state.clear_absorbing(),
        }
        entity
            .state
            .apply(position, &job.record.event, now_ms, dedup);
        self.mark_dirty(slot);
        self.acc.offset(&job.link, job.record.raw.offset);
        self.acc.applied.push(job.into_held(key.clone()));
        self.shared.ports.metrics.merge(outcome);
        self.resume(&key);
    }

    /// The records that waited behind a merge or a seal go on, in order.
    pub(super) fn resume(&mut self, key: &Arc<str>) {
        let Some(waiting) = self.paused.remove(key) else {
            return;
        };
        let tick = self.now_tick();
        let now_ms = self.shared.ports.clock.now_ms();
        let mut counts = Counts::default();
        for (link, record) in waiting {
            if link.is_alive() {
                self.route(&link, record, None, now_ms, tick, &mut counts);
            }
        }
        self.count(counts);
    }

    /// Drops a resident user, returning in order what it held outside the flushes: its
    /// merge's alias record, then the records waiting behind it. Its seal answers not sent
    /// yet wait for its reload.
    pub(super) fn unload(&mut self, key: &Arc<str>) -> Vec<Held> {
        let mut out = Vec::new();
        if let Some(slot) = self.residents.find(key) {
            if let Some(job) = self.residents[slot].entity.job.take() {
                out.push(job.into_held(key.clone()));
            }
            self.evict(slot);
        }
        if let Some(waiting) = self.paused.remove(key) {
            out.extend(waiting.into_iter().map(|(link, r)| Held {
                user: key.clone(),
                link,
                record: r.raw,
            }));
        }
        let (mine, others): (Vec<Reply>, Vec<Reply>) = std::mem::take(&mut self.acc.replies)
            .into_iter()
            .partition(|r| r.source == *key);
        self.acc.replies = others;
        for r in mine {
            self.seals.entry(key.clone()).or_default().push(r.request);
        }
        out
    }
}
