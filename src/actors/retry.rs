//! The retry actor: sweeps the durable due-time index every `retry.sweep_ms` (and whenever it
//! is woken early), claims what is due — atomically, so several instances fire each retry
//! once — and dispatches it again. On start it re-dispatches messages left `queued`.

use std::sync::Arc;

use actix::prelude::*;

use crate::domain::message::MessageStatus;

use super::context::Shared;
// A claimed retry fires again after LEASE_MS unless its outcome was recorded (a crash between
// claim and send loses nothing) or the dispatcher holding it extended it.
use super::dispatcher::{Dispatch, LEASE_MS};

const CLAIM_BATCH: usize = 256;

/// Sweep now (a key-expiry notification arrived, or a test wants it).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Wake;

pub struct RetryActor {
    shared: Arc<Shared>,
    sweeping: bool,
}

impl RetryActor {
    pub fn new(shared: Arc<Shared>) -> Self {
        RetryActor {
            shared,
            sweeping: false,
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.sweeping {
            return;
        }
        self.sweeping = true;
        let shared = self.shared.clone();
        let fut = async move {
            let ports = &shared.ports;
            loop {
                let now = ports.clock.now_ms();
                let due = match ports.retries.claim_due(now, LEASE_MS, CLAIM_BATCH).await {
                    Ok(d) => d,
                    Err(e) => {
                        tracing::warn!(error = %e, "retry sweep failed; next sweep retries");
                        return;
                    }
                };
                let n = due.len();
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
                    // A fallback whose hand-off was lost continues at the next provider.
                    let chain = shared.dispatchers_for(record.channel);
                    let index = record
                        .falling_back_from()
                        .and_then(|p| shared.provider_index(record.channel, p))
                        .map_or(0, |i| i + 1)
                        .min(chain.len().saturating_sub(1));
                    let Some(first) = chain.get(index).cloned() else {
                        continue;
                    };
                    ports.metrics.retries_fired.inc();
                    let _ = first
                        .send(Dispatch {
                            attempt: entry.attempt,
                            resend: entry.resend,
                            record,
                            provider_index: index,
                            lease: Some(entry),
                        })
                        .await;
                }
                if n < CLAIM_BATCH {
                    return;
                }
            }
        };
        ctx.spawn(fut.into_actor(self).map(|(), act, _| act.sweeping = false));
    }

    /// Messages still `queued` after a restart were never handed to a provider (or the
    /// outcome was lost): dispatch them again with the same attempt number, so the
    /// `Idempotency-Key` covers a send whose outcome is unknown.
    fn recover_queued(&mut self, ctx: &mut Context<Self>) {
        let shared = self.shared.clone();
        // Only what earlier runs left: this run's flushes dispatch what they create (a
        // message of this run can be `queued` here for a moment before its first send).
        let started_ms = shared.ports.clock.now_ms();
        let fut = async move {
            let queued = match shared.ports.docs.queued_messages(100_000, started_ms).await {
                Ok(q) => q,
                Err(e) => {
                    tracing::warn!(error = %e, "could not list queued messages at start");
                    return;
                }
            };
            if !queued.is_empty() {
                tracing::info!(count = queued.len(), "re-dispatching queued messages");
            }
            for record in queued {
                // A scheduled retry means the last attempt's outcome was recorded there
                // before the crash (the status write was still pending): the schedule fires it.
                match shared.ports.retries.entry(record.id.clone()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, id = record.id, "retry schedule unreadable; re-dispatching (same Idempotency-Key)");
                    }
                }
                if let Some(first) = shared.dispatchers_for(record.channel).first().cloned() {
                    let _ = first
                        .send(Dispatch {
                            attempt: record.attempts + 1,
                            resend: 0,
                            record,
                            provider_index: 0,
                            lease: None,
                        })
                        .await;
                }
            }
        };
        ctx.spawn(fut.into_actor(self));
    }
}

impl Actor for RetryActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.recover_queued(ctx);
        let every = self.shared.settings.retry_sweep;
        ctx.run_interval(every, |act, ctx| act.sweep(ctx));
    }
}

/// Stop sweeping (SIGTERM: the dispatchers drain what they have; nothing new is fired).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopRetries;

impl Handler<StopRetries> for RetryActor {
    type Result = ();

    fn handle(&mut self, _: StopRetries, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

impl Handler<Wake> for RetryActor {
    type Result = ();

    fn handle(&mut self, _: Wake, ctx: &mut Context<Self>) {
        self.sweep(ctx);
    }
}
