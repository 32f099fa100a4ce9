//! One dispatcher actor per provider: a token-bucket rate limit, a concurrency cap, a circuit
//! breaker, and the outcome of each send recorded through the message status machine —
//! `sent`, a durable retry, or a fallback to the next provider of the channel.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use crate::domain::campaign::Priority;
use crate::domain::message::{
    MessageRecord, MessageStatus, StatusChange, StatusEvent, FALLING_BACK, SENDING_AGAIN,
};
use crate::domain::policy::{FrequencyCap, Slot};
use crate::domain::retry::{RetryDecision, RetryPolicy};
use crate::domain::status_lookup::LookupSchedule;
use crate::domain::suppression::Suppression;
use crate::ports::{
    Clock, DocumentStore, Provider, RetryEntry, RetrySchedule, SendOutcome, SendRequest,
    StoreError, UnknownOutcome,
};
use crate::telemetry::Metrics;

use super::lanes::Lanes;
use super::supervision::contain_async;

/// Above this many queued jobs in its lane, a `Dispatch` that may be parked is (left to its
/// lease), and one that may not answers only once the lanes have room.
const QUEUE_LIMIT: usize = 10_000;

/// One attempt a dispatcher holds: message id, attempt, resend.
type HeldKey = (String, u32, u32);

fn held_key(job: &Dispatch) -> HeldKey {
    (job.record.id.clone(), job.attempt, job.resend)
}

/// How long a claimed retry stays leased: unless its outcome is recorded (or the lease
/// extended) by then, the schedule hands it out again.
pub const LEASE_MS: i64 = 15_000;
/// A dispatcher extends the leases of the jobs it holds (queued or sending) this often, so
/// a slow or rate-limited provider never makes an attempt fire twice.
const LEASE_EXTEND_EVERY: Duration = Duration::from_millis(LEASE_MS as u64 / 3);

/// Send attempt `attempt` of a message through this provider (or its fallbacks from
/// `provider_index` on). Resolves once the dispatcher has accepted the job (`true`), or
/// parked it (`false`: its queue is full and `park_if_full`; the job's lease fires it from
/// the schedule later). An attempt the dispatcher holds already is not taken twice.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct Dispatch {
    /// Shared with whoever built the job (a flush's records, the document store in process):
    /// the dispatcher only reads it, and lets go of it before recording an outcome, so a
    /// store that holds the same record changes it in place.
    pub record: Arc<MessageRecord>,
    pub attempt: u32,
    /// 0, or how many times attempt `attempt` is being sent again after an unknown outcome
    /// (same `Idempotency-Key`).
    pub resend: u32,
    pub provider_index: usize,
    /// The retry-schedule lease this attempt came from, completed once its outcome is
    /// durable (until then a crash lets the schedule fire it again).
    pub lease: Option<RetryEntry>,
    /// Leave the job to its lease rather than wait when the queue is full (flushes and sweeps
    /// never wait for a provider; ARCHITECTURE.md, "A send under outages").
    pub park_if_full: bool,
}

/// Several `Dispatch`es at once (a flush's sends for this provider): each is taken as a
/// `Dispatch` alone would be, then the queue is pumped once, so their sends are marked
/// started in one call to the retry schedule. Resolves once every job is accepted or parked.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DispatchAll(pub Vec<Dispatch>);

/// The channel's dispatchers in fallback order and this one's place in it (set once all
/// are started).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetChain {
    pub chain: Vec<Addr<Dispatcher>>,
    pub index: usize,
}

/// Resolves once the dispatcher has nothing queued, sending or being recorded (SIGTERM).
/// Answers whether it was idle already when asked: a round in which every dispatcher was
/// idle means no fallback handed anything on meanwhile.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct DrainSends;

/// Provider limits (`[[providers]]`).
#[derive(Debug, Clone)]
pub struct DispatcherSettings {
    pub rate_per_sec: u32,
    pub timeout: Duration,
    pub max_concurrency: usize,
    /// Consecutive retryable failures that open the circuit, and how long it stays open.
    pub circuit_failures: u32,
    pub circuit_open: Duration,
    pub retry: RetryPolicy,
    pub callback_base_url: String,
    pub on_unknown_outcome: UnknownOutcome,
    /// When a `sent` message of a provider that can be looked up is first looked up.
    pub lookups: LookupSchedule,
    /// What the dispatcher needs of each campaign; one not listed is `normal`, not critical.
    pub campaigns: Arc<std::collections::HashMap<String, CampaignRules>>,
    /// The frequency cap of this provider's channel (`[[frequency_caps]]`).
    pub cap: Option<FrequencyCap>,
}

/// A campaign's rules the dispatcher applies (REFERENCE.md §12).
#[derive(Debug, Clone, Copy, Default)]
pub struct CampaignRules {
    /// The lane its messages wait in.
    pub priority: Priority,
    /// Exempt from frequency caps.
    pub critical: bool,
}

/// A frequency-cap slot to take before a first send: (key, max, per_ms).
type CapAsk = (String, usize, i64);

/// What became of a send slot.
enum Attempt {
    /// The provider was asked: its answer.
    Sent(SendOutcome),
    /// The user's frequency cap for the channel is full: `skipped`, never sent.
    Capped,
    /// The cap could not be read or written: the job waits and asks again.
    CapUnknown(String),
}

/// What a dispatcher needs besides its provider.
#[derive(Clone)]
pub struct DispatcherPorts {
    pub docs: Arc<dyn DocumentStore>,
    pub retries: Arc<dyn RetrySchedule>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

struct Breaker {
    consecutive_failures: u32,
    open_until: Option<Instant>,
}

impl Breaker {
    fn is_open(&self, now: Instant) -> bool {
        self.open_until.is_some_and(|t| now < t)
    }
}

pub struct Dispatcher {
    provider: Arc<dyn Provider>,
    settings: DispatcherSettings,
    ports: DispatcherPorts,
    chain: Vec<Addr<Dispatcher>>,
    index: usize,
    queue: Lanes<Dispatch>,
    waiting: Vec<oneshot::Sender<()>>,
    in_flight: usize,
    tokens: f64,
    refilled: Instant,
    breaker: Breaker,
    pump_scheduled: bool,
    /// A pump is due once the completions ready now are handled (`pump_soon`).
    pump_soon: bool,
    rng: Arc<Mutex<SmallRng>>,
    /// `<callback_base_url>/<provider>`, where its provider posts callbacks.
    callback_url: Arc<str>,
    /// Outcome writes (status transitions, retry schedules, leases) still running.
    writes: usize,
    /// The retry leases of the jobs being marked, sent or having their outcome written
    /// (queued ones are in `queue`): extended until the outcome is durable.
    sending_leases: std::collections::HashMap<HeldKey, RetryEntry, ahash::RandomState>,
    /// Every attempt held here, from acceptance until its outcome is durable.
    held: std::collections::HashSet<HeldKey, ahash::RandomState>,
    drains: Vec<oneshot::Sender<bool>>,
}

impl Dispatcher {
    pub fn new(
        provider: Arc<dyn Provider>,
        settings: DispatcherSettings,
        ports: DispatcherPorts,
        seed: u64,
    ) -> Self {
        let callback_url = format!("{}/{}", settings.callback_base_url, provider.name()).into();
        Dispatcher {
            provider,
            callback_url,
            tokens: settings.rate_per_sec.max(1) as f64,
            settings,
            ports,
            chain: Vec::new(),
            index: 0,
            queue: Lanes::default(),
            waiting: Vec::new(),
            in_flight: 0,
            refilled: Instant::now(),
            breaker: Breaker {
                consecutive_failures: 0,
                open_until: None,
            },
            pump_scheduled: false,
            pump_soon: false,
            rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))),
            writes: 0,
            sending_leases: std::collections::HashMap::default(),
            held: std::collections::HashSet::default(),
            drains: Vec::new(),
        }
    }

    fn rules_of(&self, job: &Dispatch) -> CampaignRules {
        self.settings
            .campaigns
            .get(&job.record.campaign)
            .copied()
            .unwrap_or_default()
    }

    /// The lane a job waits in: its campaign's priority.
    fn lane_of(&self, job: &Dispatch) -> Priority {
        self.rules_of(job).priority
    }

    /// The cap slot a job must take before it goes: only a message never sent before (its
    /// first attempt at its first provider; a fallback or a retry was counted then), of a
    /// campaign that is not critical, on a capped channel.
    fn cap_ask(&self, job: &Dispatch) -> Option<CapAsk> {
        let cap = self.settings.cap?;
        let first = job.record.attempts == 0 && job.record.status == MessageStatus::Queued;
        (first && !self.rules_of(job).critical).then(|| {
            (
                format!("{}:{}", job.record.channel, job.record.user_id),
                cap.max,
                cap.per_ms,
            )
        })
    }

    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.in_flight == 0 && self.writes == 0
    }

    /// Runs an outcome write of attempt `key` in the background, counted until it is done (a
    /// drain waits); the attempt stays held, its lease extended, until then.
    fn spawn_write(
        &mut self,
        key: HeldKey,
        write: impl std::future::Future<Output = ()> + 'static,
        then: impl FnOnce(&mut Self) + 'static,
        ctx: &mut Context<Self>,
    ) {
        self.writes += 1;
        ctx.spawn(write.into_actor(self).map(move |(), act, _| {
            act.writes -= 1;
            act.release(&key);
            then(act);
            act.settle_drains();
        }));
    }

    /// The attempt is no longer this dispatcher's (its outcome is durable, or it was handed
    /// on or lost its lease).
    fn release(&mut self, key: &HeldKey) {
        self.held.remove(key);
        self.sending_leases.remove(key);
    }

    fn settle_drains(&mut self) {
        if self.is_idle() {
            for d in self.drains.drain(..) {
                let _ = d.send(false);
            }
        }
    }

    fn refill(&mut self, now: Instant) {
        let rate = self.settings.rate_per_sec.max(1) as f64;
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate.max(1.0));
        self.refilled = now;
    }

    fn schedule_pump(&mut self, ctx: &mut Context<Self>, after: Duration) {
        if !self.pump_scheduled {
            self.pump_scheduled = true;
            ctx.run_later(after, |act, ctx| {
                act.pump_scheduled = false;
                act.pump(ctx);
            });
        }
    }

    /// Pumps once every completion ready now has been handled (the context polls the
    /// future spawned here after the ones already ready): the slots they free are filled
    /// together, and their sends marked started in one call rather than one per completion.
    fn pump_soon(&mut self, ctx: &mut Context<Self>) {
        if !self.pump_soon {
            self.pump_soon = true;
            ctx.spawn(actix::fut::ready(()).map(|(), act: &mut Self, ctx| {
                act.pump_soon = false;
                act.pump(ctx);
            }));
        }
    }

    fn pump(&mut self, ctx: &mut Context<Self>) {
        let now = Instant::now();
        if self.breaker.is_open(now) {
            // Open circuit: hand the queue to the fallback if there is one, else wait.
            if let Some(next) = self.fallback_of(self.index) {
                while let Some(job) = self.queue.pop_front() {
                    self.held.remove(&held_key(&job));
                    next.do_send(Dispatch {
                        provider_index: job.provider_index + 1,
                        park_if_full: false,
                        ..job
                    });
                }
            } else {
                let wait = self
                    .breaker
                    .open_until
                    .map_or(self.settings.circuit_open, |t| t - now);
                self.schedule_pump(ctx, wait);
            }
            self.release_waiters();
            return;
        }
        self.refill(now);
        let mut starting = Vec::new();
        while self.in_flight + starting.len() < self.settings.max_concurrency
            && !self.queue.is_empty()
        {
            if self.tokens < 1.0 {
                let rate = self.settings.rate_per_sec.max(1) as f64;
                let wait = Duration::from_secs_f64((1.0 - self.tokens) / rate);
                self.schedule_pump(ctx, wait.max(Duration::from_millis(1)));
                break;
            }
            self.tokens -= 1.0;
            starting.push(self.queue.pop_front().expect("queue is not empty"));
        }
        self.mark_then_send(starting, ctx);
        self.release_waiters();
    }

    /// Each send is marked started in the schedule before it goes out, and only while its
    /// lease is still this process's attempt: a holder whose lease ran out and passed on never
    /// sends (G12), and a lease that runs out after the mark is not claimed by another process
    /// while this one is alive. Once the holder died, such a lease is claimed *lapsed*: sent
    /// again under the same key, or failed with `on_unknown_outcome = fail`; one that runs
    /// out before the mark (the send never started) is sent by whoever claims it.
    fn mark_then_send(&mut self, jobs: Vec<Dispatch>, ctx: &mut Context<Self>) {
        if jobs.is_empty() {
            return;
        }
        let leases: Vec<RetryEntry> = jobs.iter().filter_map(|j| j.lease.clone()).collect();
        // Counted as in flight while being marked (the concurrency cap and drains see them),
        // their leases extended meanwhile.
        for job in &jobs {
            if let Some(lease) = &job.lease {
                self.sending_leases.insert(held_key(job), lease.clone());
            }
        }
        self.in_flight += jobs.len();
        let retries = self.ports.retries.clone();
        ctx.spawn(
            async move { retries.mark_sending(leases).await }
                .into_actor(self)
                .map(move |marked, act, ctx| {
                    act.in_flight -= jobs.len();
                    match marked {
                        Ok(lost) => {
                            for job in jobs {
                                let gone = job
                                    .lease
                                    .as_ref()
                                    .is_some_and(|l| lost.contains(&l.message_id));
                                if gone {
                                    tracing::info!(message = %job.record.id, "a send whose lease passed to another holder is left to it");
                                    act.release(&held_key(&job));
                                } else {
                                    act.start_send(job, ctx);
                                }
                            }
                        }
                        Err(e) => {
                            // Nothing was sent: the jobs wait at the front of the queue.
                            tracing::warn!(provider = act.provider.name(), error = %e, "could not mark sends started; they wait");
                            for job in jobs.into_iter().rev() {
                                let lane = act.lane_of(&job);
                                act.queue.push_front(lane, job);
                            }
                            act.schedule_pump(ctx, Duration::from_millis(500));
                        }
                    }
                    act.settle_drains();
                }),
        );
    }

    fn release_waiters(&mut self) {
        if self.queue.longest() < QUEUE_LIMIT / 2 {
            for w in self.waiting.drain(..) {
                let _ = w.send(());
            }
        }
    }

    fn fallback_of(&self, index: usize) -> Option<Addr<Dispatcher>> {
        self.chain.get(index + 1).cloned()
    }

    /// Extends the leases of every job held here (queued or being sent) by [`LEASE_MS`]. A
    /// queued job whose lease is no longer this instance's (it ran out in a stall and another
    /// instance claimed it, or the attempt was settled or superseded) is dropped: its send is
    /// someone else's now.
    fn extend_leases(&mut self, ctx: &mut Context<Self>) {
        let leases: Vec<RetryEntry> = self
            .queue
            .iter()
            .filter_map(|j| j.lease.clone())
            .chain(self.sending_leases.values().cloned())
            .collect();
        if leases.is_empty() {
            return;
        }
        let until = self.ports.clock.now_ms() + LEASE_MS;
        let retries = self.ports.retries.clone();
        let asked = leases.clone();
        ctx.spawn(
            async move {
                match retries.extend(leases, until).await {
                    Ok(lost) => lost,
                    Err(e) => {
                        tracing::warn!(error = %e, "could not extend retry leases; they may fire again");
                        Vec::new()
                    }
                }
            }
            .into_actor(self)
            .map(move |lost, act, _| {
                if lost.is_empty() {
                    return;
                }
                let lost: std::collections::HashSet<String> = lost.into_iter().collect();
                let is_lost = |lease: &Option<RetryEntry>| {
                    lease
                        .as_ref()
                        .is_some_and(|l| lost.contains(&l.message_id) && asked.contains(l))
                };
                let before = act.queue.len();
                let held = &mut act.held;
                act.queue.retain(|job| {
                    let keep = !is_lost(&job.lease);
                    if !keep {
                        held.remove(&held_key(job));
                    }
                    keep
                });
                act.sending_leases
                    .retain(|_, l| !(lost.contains(&l.message_id) && asked.contains(l)));
                let dropped = before - act.queue.len();
                if dropped > 0 {
                    tracing::info!(
                        provider = act.provider.name(),
                        dropped,
                        "queued sends whose lease passed to another holder are left to it"
                    );
                    act.release_waiters();
                    act.settle_drains();
                }
            }),
        );
    }

    fn start_send(&mut self, job: Dispatch, ctx: &mut Context<Self>) {
        self.in_flight += 1;
        if let Some(lease) = &job.lease {
            self.sending_leases.insert(held_key(&job), lease.clone());
        }
        if job.record.to.is_none() {
            // Cannot happen for a queued message (no address means skipped), but never panic.
            self.in_flight -= 1;
            let retries = self.ports.retries.clone();
            let key = held_key(&job);
            self.spawn_write(key, complete_lease(retries, job.lease), |_| {}, ctx);
            return;
        }
        let request = SendRequest {
            message: job.record.clone(),
            attempt: job.attempt,
            callback_url: self.callback_url.clone(),
        };
        let provider = self.provider.clone();
        let timeout = self.settings.timeout;
        let cap = self.cap_ask(&job);
        let docs = self.ports.docs.clone();
        let now_ms = self.ports.clock.now_ms();
        let message_id = job.record.id.clone();
        let fut = async move {
            // Counted when dispatched, once per message (REFERENCE.md §12).
            if let Some((key, max, per_ms)) = cap {
                match docs
                    .take_cap_slot(key, message_id, now_ms, max, per_ms)
                    .await
                {
                    Ok(Slot::Full) => return Attempt::Capped,
                    Ok(Slot::Taken | Slot::AlreadyCounted) => {}
                    Err(e) => return Attempt::CapUnknown(e.to_string()),
                }
            }
            let send = async move { provider.send(request).await };
            Attempt::Sent(
                match tokio::time::timeout(timeout, contain_async(send)).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(panic)) => SendOutcome::Retryable {
                        retry_after_ms: None,
                        detail: format!("provider adapter panicked: {panic}"),
                    },
                    // The request may have reached the provider: its outcome is unknown.
                    Err(_) => SendOutcome::Unknown {
                        detail: format!("no answer within {} ms", timeout.as_millis()),
                    },
                },
            )
        };
        ctx.spawn(fut.into_actor(self).map(move |attempt, act, ctx| {
            act.in_flight -= 1;
            match attempt {
                Attempt::Sent(outcome) => act.on_outcome(job, outcome, ctx),
                Attempt::Capped => act.skip_capped(job, ctx),
                Attempt::CapUnknown(e) => {
                    tracing::warn!(provider = act.provider.name(), message = %job.record.id, error = %e, "could not count the message against its frequency cap; it waits");
                    let lane = act.lane_of(&job);
                    act.queue.push_front(lane, job);
                    act.schedule_pump(ctx, Duration::from_millis(500));
                }
            }
            act.pump_soon(ctx);
            act.settle_drains();
        }));
    }

    /// Records a status change durably (in the background; the status machine orders it),
    /// then settles the attempt's retry lease.
    fn record(&mut self, job: Dispatch, change: StatusChange, ctx: &mut Context<Self>) {
        let docs = self.ports.docs.clone();
        let retries = self.ports.retries.clone();
        let key = held_key(&job);
        let id = job.record.id.clone();
        let lease = job.lease;
        // The record is let go of here, before the write runs: an in-process store then
        // changes its own copy in place rather than copying it for this reader.
        drop(job.record);
        let write = async move {
            write_with_retry(|| docs.transition(id.clone(), change.clone())).await;
            complete_lease(retries, lease).await;
        };
        self.spawn_write(key, write, |_| {}, ctx);
    }

    /// The user's frequency cap for the channel is full: the message is `skipped`
    /// (`frequency_capped`) and never sent; its lease settles once that is durable.
    fn skip_capped(&mut self, job: Dispatch, ctx: &mut Context<Self>) {
        self.ports.metrics.policy_skipped("frequency_capped");
        let change = StatusChange {
            event: StatusEvent::Skipped,
            at: self.ports.clock.now_ms(),
            provider: None,
            detail: Some("frequency_capped".to_string()),
            provider_message_id: None,
            attempt: None,
            expect_provider_message_id: None,
            look_up_at: None,
        };
        self.record(job, change, ctx);
    }

    /// A lease that ran out while its holder was sending (it died or stalled): the send
    /// may have reached the provider. With `on_unknown_outcome = fail` that is a failure,
    /// not a second send.
    fn fail_in_doubt(&mut self, job: Dispatch, ctx: &mut Context<Self>) {
        let name = self.provider.name().to_string();
        self.ports.metrics.dispatch_outcome(&name, "unknown");
        tracing::warn!(provider = %name, message = %job.record.id, attempt = job.attempt, "a send's holder stopped before its outcome was recorded; failed (on_unknown_outcome = fail)");
        let change = StatusChange {
            event: StatusEvent::Failed,
            at: self.ports.clock.now_ms(),
            provider: Some(name.clone()),
            detail: Some(format!(
                "{name}: the instance sending attempt {} stopped before its outcome was recorded; outcome unknown (on_unknown_outcome = fail)",
                job.attempt
            )),
            provider_message_id: None,
            attempt: Some(job.attempt),
            expect_provider_message_id: None,
            look_up_at: None,
        };
        self.record(job, change, ctx);
    }

    fn on_outcome(&mut self, job: Dispatch, outcome: SendOutcome, ctx: &mut Context<Self>) {
        let name = self.provider.name().to_string();
        let metrics = self.ports.metrics.clone();
        let outcome = match outcome {
            SendOutcome::Unknown { detail } => match self.settings.on_unknown_outcome {
                UnknownOutcome::Retry if job.resend + 1 < self.settings.retry.max_attempts => {
                    // The same attempt again, with the same key: a provider that honours
                    // `Idempotency-Key` answers the first send's result; an answer or callback
                    // for the first send meanwhile cancels the resend.
                    metrics.dispatch_outcome(&name, "unknown");
                    self.breaker.consecutive_failures += 1;
                    let fut = schedule_resend(
                        self.ports.clone(),
                        self.settings.retry,
                        self.rng.clone(),
                        job.record.id.clone(),
                        job.attempt,
                        job.resend + 1,
                        name.clone(),
                        format!("{name}: {detail}{SENDING_AGAIN}"),
                    );
                    let retries = self.ports.retries.clone();
                    let key = held_key(&job);
                    let lease = job.lease;
                    self.spawn_write(
                        key,
                        async move {
                            fut.await;
                            complete_lease(retries, lease).await;
                        },
                        |_| {},
                        ctx,
                    );
                    return;
                }
                UnknownOutcome::Retry => SendOutcome::Retryable {
                    retry_after_ms: None,
                    detail: format!("{detail}; outcome unknown after {} resends", job.resend),
                },
                UnknownOutcome::Fail => {
                    metrics.dispatch_outcome(&name, "unknown");
                    let change = StatusChange {
                        event: StatusEvent::Failed,
                        at: self.ports.clock.now_ms(),
                        provider: Some(name.clone()),
                        detail: Some(format!(
                            "{name}: {detail}; outcome unknown (on_unknown_outcome = fail)"
                        )),
                        provider_message_id: None,
                        attempt: Some(job.attempt),
                        expect_provider_message_id: None,
                        look_up_at: None,
                    };
                    self.record(job, change, ctx);
                    return;
                }
            },
            other => other,
        };
        match outcome {
            SendOutcome::Unknown { .. } => unreachable!("mapped above"),
            SendOutcome::Accepted {
                provider_message_id,
            } => {
                metrics.dispatch_outcome(&name, "sent");
                self.breaker.consecutive_failures = 0;
                self.breaker.open_until = None;
                let now = self.ports.clock.now_ms();
                let change = StatusChange {
                    event: StatusEvent::Sent,
                    at: now,
                    provider: Some(name),
                    detail: None,
                    provider_message_id: Some(provider_message_id),
                    attempt: Some(job.attempt),
                    expect_provider_message_id: None,
                    look_up_at: if self.provider.can_look_up() {
                        self.settings.lookups.first(now)
                    } else {
                        None
                    },
                };
                self.record(job, change, ctx);
            }
            SendOutcome::Retryable {
                retry_after_ms,
                detail,
            } => {
                metrics.dispatch_outcome(&name, "retryable");
                self.breaker.consecutive_failures += 1;
                if self.breaker.consecutive_failures >= self.settings.circuit_failures {
                    tracing::warn!(provider = %name, "circuit opened after repeated failures");
                    self.breaker.open_until = Some(Instant::now() + self.settings.circuit_open);
                    self.breaker.consecutive_failures = 0;
                }
                let detail = format!("{name}: {detail}");
                let fut = schedule_retry(
                    self.ports.clone(),
                    self.settings.retry,
                    self.rng.clone(),
                    job.record.id.clone(),
                    job.attempt,
                    retry_after_ms.unwrap_or(0),
                    Some(name),
                    detail,
                    None,
                );
                let retries = self.ports.retries.clone();
                let key = held_key(&job);
                let lease = job.lease;
                let fut = async move {
                    let _ = fut.await;
                    complete_lease(retries, lease).await;
                };
                self.spawn_write(key, fut, |_| {}, ctx);
            }
            SendOutcome::Rejected { detail, suppress } => {
                metrics.dispatch_outcome(&name, "rejected");
                let detail = format!("{name} rejected: {detail}");
                if let (Some(reason), Some(address)) = (suppress, job.record.to.clone()) {
                    // The address itself is refused (opted out, unregistered): no fallback
                    // either; the suppression first, so a crash leaves it recorded.
                    let suppression = Suppression {
                        channel: job.record.channel,
                        address,
                        reason,
                        provider: name.clone(),
                        at: self.ports.clock.now_ms(),
                    };
                    let change = StatusChange {
                        event: StatusEvent::Failed,
                        at: self.ports.clock.now_ms(),
                        provider: Some(name),
                        detail: Some(format!(
                            "{detail} (address suppressed: {})",
                            reason.as_str()
                        )),
                        provider_message_id: None,
                        attempt: Some(job.attempt),
                        expect_provider_message_id: None,
                        look_up_at: None,
                    };
                    let docs = self.ports.docs.clone();
                    let id = job.record.id.clone();
                    let retries = self.ports.retries.clone();
                    let key = held_key(&job);
                    let lease = job.lease;
                    let write = async move {
                        let new =
                            write_with_retry(|| docs.suppress(vec![suppression.clone()])).await;
                        if new > 0 {
                            metrics.suppressed(reason.as_str());
                        }
                        write_with_retry(|| docs.transition(id.clone(), change.clone())).await;
                        complete_lease(retries, lease).await;
                    };
                    self.spawn_write(key, write, |_| {}, ctx);
                } else if let Some(next) = self.chain.get(job.provider_index + 1).cloned() {
                    // Ordered fallback: the next attempt is scheduled first (leased, so it
                    // fires only if this hand-off is lost in a crash — and then at the next
                    // provider, which `retrying … falling back` names), then why, then the
                    // next provider gets the job with that lease (it extends it while held).
                    let now = self.ports.clock.now_ms();
                    let entry = RetryEntry {
                        message_id: job.record.id.clone(),
                        attempt: job.attempt + 1,
                        resend: 0,
                        due_ms: now + LEASE_MS,
                        lapsed: false,
                    };
                    let change = StatusChange {
                        event: StatusEvent::Retrying,
                        at: now,
                        provider: Some(name),
                        detail: Some(format!("{detail}{FALLING_BACK}")),
                        provider_message_id: None,
                        attempt: Some(job.attempt),
                        expect_provider_message_id: None,
                        look_up_at: None,
                    };
                    let docs = self.ports.docs.clone();
                    let retries = self.ports.retries.clone();
                    let id = job.record.id.clone();
                    let lease = entry.clone();
                    let fut = async move {
                        write_with_retry(|| retries.hand_off(entry.clone())).await;
                        write_with_retry(|| docs.transition(id.clone(), change.clone())).await;
                    };
                    self.spawn_write(
                        held_key(&job),
                        fut,
                        move |_| {
                            next.do_send(Dispatch {
                                attempt: job.attempt + 1,
                                resend: 0,
                                provider_index: job.provider_index + 1,
                                record: job.record,
                                lease: Some(lease),
                                park_if_full: false,
                            });
                        },
                        ctx,
                    );
                } else {
                    let change = StatusChange {
                        event: StatusEvent::Failed,
                        at: self.ports.clock.now_ms(),
                        provider: Some(name),
                        detail: Some(detail),
                        provider_message_id: None,
                        attempt: Some(job.attempt),
                        expect_provider_message_id: None,
                        look_up_at: None,
                    };
                    self.record(job, change, ctx);
                }
            }
        }
    }
}

/// Settles a retry lease (retrying until the schedule answers: a lease left open only makes
/// the attempt fire again, with the same `Idempotency-Key`).
async fn complete_lease(retries: Arc<dyn RetrySchedule>, lease: Option<RetryEntry>) {
    if let Some(entry) = lease {
        write_with_retry(|| retries.complete(entry.clone())).await;
    }
}

/// After attempt `attempt` failed retryably: schedule the next one durably and mark the
/// message `retrying`, or mark it `failed` when attempts are exhausted. Shared by the
/// dispatchers and the callback handler.
#[allow(clippy::too_many_arguments)]
pub async fn schedule_retry(
    ports: DispatcherPorts,
    policy: RetryPolicy,
    rng: Arc<Mutex<SmallRng>>,
    message_id: String,
    attempt: u32,
    min_delay_ms: u64,
    provider: Option<String>,
    detail: String,
    expect_provider_message_id: Option<String>,
) -> Result<(), StoreError> {
    let unit: f64 = rng.lock().gen();
    let now = ports.clock.now_ms();
    let (event, detail) = match policy.decide(attempt, unit, min_delay_ms) {
        RetryDecision::RetryAfter {
            attempt: next,
            delay_ms,
        } => {
            // The schedule first: if we crash before the status write, the retry still fires
            // (it only fires for messages that are not terminal).
            let entry = RetryEntry {
                message_id: message_id.clone(),
                attempt: next,
                resend: 0,
                due_ms: now + delay_ms as i64,
                lapsed: false,
            };
            write_with_retry(|| ports.retries.schedule(entry.clone())).await;
            ports.metrics.retries_scheduled.inc();
            (StatusEvent::Retrying, detail)
        }
        RetryDecision::GiveUp => (
            StatusEvent::Failed,
            format!("{detail} (gave up after {attempt} attempts)"),
        ),
    };
    let change = StatusChange {
        event,
        at: now,
        provider,
        detail: Some(detail),
        provider_message_id: None,
        attempt: Some(attempt),
        expect_provider_message_id,
        look_up_at: None,
    };
    write_with_retry(|| ports.docs.transition(message_id.clone(), change.clone())).await;
    Ok(())
}

/// After attempt `attempt` got no answer: schedule resend `resend` of the same attempt (same
/// `Idempotency-Key`) and mark the message `retrying` at that attempt.
#[allow(clippy::too_many_arguments)]
pub async fn schedule_resend(
    ports: DispatcherPorts,
    policy: RetryPolicy,
    rng: Arc<Mutex<SmallRng>>,
    message_id: String,
    attempt: u32,
    resend: u32,
    provider: String,
    detail: String,
) {
    let unit: f64 = rng.lock().gen();
    let now = ports.clock.now_ms();
    // Backs off like attempts do: the n-th resend waits as long as attempt n + 1 would.
    let delay_ms = match policy.decide(resend, unit, 0) {
        RetryDecision::RetryAfter { delay_ms, .. } => delay_ms,
        RetryDecision::GiveUp => policy.max_delay_ms,
    };
    let entry = RetryEntry {
        message_id: message_id.clone(),
        attempt,
        resend,
        due_ms: now + delay_ms as i64,
        lapsed: false,
    };
    write_with_retry(|| ports.retries.schedule(entry.clone())).await;
    ports.metrics.retries_scheduled.inc();
    let change = StatusChange {
        event: StatusEvent::Retrying,
        at: now,
        provider: Some(provider),
        detail: Some(detail),
        provider_message_id: None,
        attempt: Some(attempt),
        expect_provider_message_id: None,
        look_up_at: None,
    };
    write_with_retry(|| ports.docs.transition(message_id.clone(), change.clone())).await;
}

/// Retries a store write with backoff until it succeeds (the store being down pauses this
/// message's progress; nothing is dropped).
pub async fn write_with_retry<T, F>(mut write: impl FnMut() -> F) -> T
where
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(10);
    loop {
        // The call itself may panic, not only the future it returns: contain both.
        match contain_async(async { write().await }).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => tracing::warn!(error = %e, "message store write failed; retrying"),
            Err(panic) => tracing::error!(panic, "message store write panicked; retrying"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(LEASE_EXTEND_EVERY, |act, ctx| act.extend_leases(ctx));
    }
}

impl Handler<SetChain> for Dispatcher {
    type Result = ();

    fn handle(&mut self, msg: SetChain, _ctx: &mut Context<Self>) {
        self.chain = msg.chain;
        self.index = msg.index;
    }
}

impl Handler<DrainSends> for Dispatcher {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, _: DrainSends, ctx: &mut Context<Self>) -> ResponseFuture<bool> {
        if self.breaker.is_open(Instant::now()) && self.fallback_of(self.index).is_none() {
            // Nobody to send to before the circuit closes: what is queued is leased in the
            // retry schedule and fires when its lease runs out (here after a restart, or at
            // another instance), rather than hold the exit.
            if !self.queue.is_empty() {
                tracing::warn!(
                    provider = self.provider.name(),
                    left = self.queue.len(),
                    "circuit open at shutdown; queued sends fire again when their leases run out"
                );
                for job in self.queue.take_all() {
                    self.held.remove(&held_key(&job));
                }
                self.release_waiters();
            }
        }
        if self.is_idle() {
            return Box::pin(async { true });
        }
        self.pump(ctx);
        if self.is_idle() {
            // The pump handed the queue on (an open circuit with a fallback).
            return Box::pin(async { false });
        }
        let (tx, rx) = oneshot::channel();
        self.drains.push(tx);
        Box::pin(async move { rx.await.unwrap_or(false) })
    }
}

/// How a dispatcher took a job.
enum Taken {
    /// Answered at once: `true` taken (held here already, or failed in doubt), `false`
    /// parked (left to its lease).
    Settled(bool),
    /// Queued in this lane.
    Queued(Priority),
}

impl Dispatcher {
    /// Takes one job into the queue (or settles it at once); the caller pumps.
    fn take(&mut self, msg: Dispatch, ctx: &mut Context<Self>) -> Taken {
        let key = held_key(&msg);
        if self.held.contains(&key) {
            // This very attempt is queued, being sent or recorded here already: the schedule
            // handed it out again (its lease ran out in a stall and this process's own sweep
            // claimed it). One send of it.
            tracing::debug!(provider = self.provider.name(), message = %msg.record.id, attempt = msg.attempt, "an attempt held already is not taken twice");
            return Taken::Settled(true);
        }
        let lapsed = msg.lease.as_ref().is_some_and(|l| l.lapsed);
        if lapsed && self.settings.on_unknown_outcome == UnknownOutcome::Fail {
            self.held.insert(key);
            self.fail_in_doubt(msg, ctx);
            return Taken::Settled(true);
        }
        let lane = self.lane_of(&msg);
        if self.queue.len_of(lane) >= QUEUE_LIMIT && msg.park_if_full && msg.lease.is_some() {
            // Left to its lease: the sweep claims it again once that runs out.
            self.ports
                .metrics
                .dispatch_outcome(self.provider.name(), "parked");
            return Taken::Settled(false);
        }
        self.held.insert(key);
        self.queue.push_back(lane, msg);
        Taken::Queued(lane)
    }

    /// After a pump: a sender whose job went into a lane that is still full waits until the
    /// lanes have room (`release_waiters`).
    fn room(&mut self, lanes: &[Priority]) -> Option<oneshot::Receiver<()>> {
        if lanes.iter().all(|l| self.queue.len_of(*l) < QUEUE_LIMIT) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.push(tx);
        Some(rx)
    }
}

impl Handler<Dispatch> for Dispatcher {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, msg: Dispatch, ctx: &mut Context<Self>) -> ResponseFuture<bool> {
        let lane = match self.take(msg, ctx) {
            Taken::Settled(taken) => return Box::pin(async move { taken }),
            Taken::Queued(lane) => lane,
        };
        self.pump(ctx);
        match self.room(&[lane]) {
            None => Box::pin(async { true }),
            Some(rx) => Box::pin(async move {
                let _ = rx.await;
                true
            }),
        }
    }
}

impl Handler<DispatchAll> for Dispatcher {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: DispatchAll, ctx: &mut Context<Self>) -> ResponseFuture<()> {
        let mut lanes = Vec::new();
        for job in msg.0 {
            if let Taken::Queued(lane) = self.take(job, ctx) {
                if !lanes.contains(&lane) {
                    lanes.push(lane);
                }
            }
        }
        if lanes.is_empty() {
            return Box::pin(async {});
        }
        self.pump(ctx);
        match self.room(&lanes) {
            None => Box::pin(async {}),
            Some(rx) => Box::pin(async move {
                let _ = rx.await;
            }),
        }
    }
}

#[cfg(test)]
#[path = "dispatcher_tests.rs"]
mod tests;
