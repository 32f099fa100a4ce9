//! The retry actor: sweeps the durable due-time index every `retry.sweep_ms` (and whenever it
//! is woken early), claims what is due — atomically, so several instances fire each retry
//! once — and dispatches it again. It also runs the reconciler (at start, then every
//! `retry.reconcile_ms`), which adopts messages waiting on a send that nobody holds.

use std::sync::Arc;

use actix::prelude::*;

use crate::domain::message::MessageStatus;

use super::context::Shared;
use super::held::{fire as fire_held, Fired};
use super::reconciler::reconcile;
// A claimed retry fires again after LEASE_MS unless its outcome was recorded (a crash between
// claim and send loses nothing) or the dispatcher holding it extended it.
use super::dispatcher::{Dispatch, LEASE_MS};

/// How long a heartbeat keeps this process alive for the schedule: a send it marked started is
/// not claimed by another process before then (longer than a Redis stall the leases may not
/// survive; ARCHITECTURE.md, "A send under outages").
pub const HOLDER_ALIVE_MS: i64 = 2 * LEASE_MS;
/// How often the process says it is alive.
const HEARTBEAT_EVERY: std::time::Duration = std::time::Duration::from_millis(5_000);

const CLAIM_BATCH: usize = 256;

/// Sweep now (a key-expiry notification arrived, or a test wants it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

/// A message is stranded when nothing holds it for this long after its last change (a send
/// being stored and leased takes milliseconds; a held lease is extended every few seconds).
const RECONCILE_IDLE_MS: i64 = 2 * LEASE_MS;

pub struct RetryActor {
    shared: Arc<Shared>,
    sweeping: bool,
    reconciling: bool,
    /// SIGTERM: no more sweeps or adoptions; heartbeats go on while the dispatchers drain.
    stopped: Arc<std::sync::atomic::AtomicBool>,
}

impl RetryActor {
    pub fn new(shared: Arc<Shared>) -> Self {
        RetryActor {
            shared,
            sweeping: false,
            reconciling: false,
            stopped: Arc::default(),
        }
    }

    fn is_stopped(&self) -> bool {
        self.stopped.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let ports = self.shared.ports.clone();
        ctx.spawn(
            async move {
                let now = ports.clock.now_ms();
                if let Err(e) = ports.retries.heartbeat(now, now + HOLDER_ALIVE_MS).await {
                    tracing::warn!(error = %e, "could not renew this process's liveness in the retry schedule");
                }
            }
            .into_actor(self),
        );
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.sweeping || self.is_stopped() {
            return;
        }
        self.sweeping = true;
        let shared = self.shared.clone();
        let stopped = self.stopped.clone();
        let fut = async move {
            let ports = &shared.ports;
            // A schedule that lost entries (Redis restarted empty, flushed, failed over) is
            // rebuilt from `messages` at once.
            let lost = match ports.retries.lost_entries().await {
                Ok(lost) => lost,
                Err(e) => {
                    tracing::warn!(error = %e, "retry sweep failed; next sweep retries");
                    return false;
                }
            };
            loop {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    return lost;
                }
                let now = ports.clock.now_ms();
                let due = match ports.retries.claim_due(now, LEASE_MS, CLAIM_BATCH).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "retry sweep failed; next sweep retries");
                        return lost;
                    }
                };
                let n = due.len();
                let mut parked = false;
                for entry in due {
                    let record = match ports.docs.get_message(entry.message_id.clone()).await {
                        Ok(Some(r)) => r,
                        Ok(None) => {
                            let _ = ports.retries.complete(entry).await;
                            continue;
                        }
                        Err(e) => {
                            // The lease runs out and the entry fires again: nothing is lost.
                            tracing::warn!(error = %e, id = entry.message_id, "retry load failed; it fires again after its lease");
                            continue;
                        }
                    };
                    let settled = if entry.resend > 0 {
                        // A resend of an attempt whose answer was lost: only while the message
                        // still waits on that attempt (an answer or a callback for it since,
                        // or a newer attempt, settled it).
                        record.status != MessageStatus::Retrying || record.attempts != entry.attempt
                    } else {
                        record.attempts >= entry.attempt
                    };
                    if record.status.is_terminal() || settled {
                        // Settled already (terminal, or this attempt was made: a lease that
                        // ran out after the send was recorded). By attempt number, not by
                        // status: a retry scheduled by a callback is due while the message
                        // still reads `sent` (its `retrying` is written after the schedule).
                        let _ = ports.retries.complete(entry).await;
                        continue;
                    }
                    // A held message's window ended: its policy decides again first.
                    let record = if record.status == MessageStatus::Held {
                        match fire_held(&shared, record, &entry).await {
                            Ok(Fired::Send(record)) => record,
                            Ok(Fired::Settled) => continue,
                            Err(e) => {
                                tracing::warn!(error = %e, id = entry.message_id, "a held message could not be released; it fires again after its lease");
                                continue;
                            }
                        }
                    } else {
                        record
                    };
                    // A fallback whose hand-off was lost continues at the next provider.
                    let chain = shared.dispatchers_for(record.channel);
                    let index = record
                        .falling_back_from()
                        .and_then(|p| shared.provider_index(record.channel, p))
                        .map_or(0, |i| i + 1)
                        .min(chain.len().saturating_sub(1));
                    let Some(first) = chain.get(index).cloned() else {
                        // No provider for the channel (configuration changed): nothing can
                        // send it; the reconciler adopts it again once one is configured.
                        tracing::warn!(id = record.id, channel = ?record.channel, "no provider for the message's channel; its send waits");
                        let _ = ports.retries.complete(entry).await;
                        continue;
                    };
                    let taken = first
                        .send(Dispatch {
                            attempt: entry.attempt,
                            resend: entry.resend,
                            record,
                            provider_index: index,
                            lease: Some(entry),
                            park_if_full: true,
                        })
                        .await
                        .unwrap_or(false);
                    if taken {
                        ports.metrics.retries_fired.inc();
                    } else {
                        parked = true;
                    }
                }
                // A dispatcher that parks jobs is full: what is still due waits for the next
                // sweep rather than be claimed only to be parked.
                if n < CLAIM_BATCH || parked {
                    return lost;
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(|lost, act, ctx| {
            act.sweeping = false;
            if lost {
                tracing::warn!("the retry schedule lost entries (its Redis restarted empty, was flushed or failed over); rebuilding it from messages");
                let now = act.shared.ports.clock.now_ms();
                act.reconcile(ctx, now);
            }
        }));
    }

    /// Adopts stranded messages (see [`reconcile`]), then sweeps for them at once. The
    /// first pass at start takes everything changed before this start (what an instance
    /// that died left); later passes what stayed unchanged for [`RECONCILE_IDLE_MS`].
    fn reconcile(&mut self, ctx: &mut Context<Self>, idle_before_ms: i64) {
        if self.reconciling || self.is_stopped() {
            return;
        }
        self.reconciling = true;
        let shared = self.shared.clone();
        let fut = async move {
            match reconcile(&shared, idle_before_ms).await {
                Ok(0) => false,
                Ok(n) => {
                    tracing::info!(
                        count = n,
                        "messages waiting on a send nobody held were adopted; the sweep sends them"
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reconciling stranded messages failed; the next pass retries");
                    false
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(|adopted, act, ctx| {
            act.reconciling = false;
            if adopted {
                act.sweep(ctx);
            }
        }));
    }
}

impl Actor for RetryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.heartbeat(ctx);
        ctx.run_interval(HEARTBEAT_EVERY, |act, ctx| act.heartbeat(ctx));
        let started_ms = self.shared.ports.clock.now_ms();
        self.reconcile(ctx, started_ms);
        let every = self.shared.settings.retry_sweep;
        ctx.run_interval(every, |act, ctx| act.sweep(ctx));
        ctx.run_interval(self.shared.settings.reconcile_every, |act, ctx| {
            let idle_before = act.shared.ports.clock.now_ms() - RECONCILE_IDLE_MS;
            act.reconcile(ctx, idle_before);
        });
    }
}

/// Stop sweeping (SIGTERM: the dispatchers drain what they have; nothing new is fired). The
/// heartbeats go on, so the sends being drained stay this process's.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopRetries;

impl Handler<StopRetries> for RetryActor {
    type Result = ();

    fn handle(&mut self, _: StopRetries, _ctx: &mut Context<Self>) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Handler<Wake> for RetryActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.sweep(ctx);
    }
}
