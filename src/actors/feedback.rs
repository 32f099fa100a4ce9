//! Feedback webhooks: each durable message change a `[[feedback]]` hook asked for becomes a
//! job in the durable schedule ([`FeedbackStore`]) before the change counts as fed (the
//! document store's feed cursor); a sender takes due jobs and POSTs them,
//! signed like provider callbacks (`X-Herald-Timestamp`, `X-Herald-Signature`), until the
//! hook answers 2xx, backing off as send retries do. The sender runs on its own task: a hook
//! that is down or slow never holds up ingestion or dispatch.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use futures::FutureExt;

use crate::domain::feedback::{body, event_id, hooks_for, job_id, retry_delay_ms, FeedbackHook};
use crate::domain::retry::RetryPolicy;
use crate::domain::signature::sign;
use crate::ports::{BoxFut, Clock, FeedError, FeedSink, FeedbackJob, FeedbackStore, MessageChange};
use crate::telemetry::Metrics;

/// Jobs taken per round.
const CLAIM: usize = 64;

/// Turns message changes into scheduled calls (the [`FeedSink`] side).
pub struct FeedbackEnqueuer {
    hooks: Arc<Vec<FeedbackHook>>,
    store: Arc<dyn FeedbackStore>,
    clock: Arc<dyn Clock>,
}

impl FeedSink for FeedbackEnqueuer {
    fn publish(&self, changes: Arc<Vec<MessageChange>>) -> BoxFut<Result<(), FeedError>> {
        let now = self.clock.now_ms();
        let mut jobs = Vec::new();
        for change in changes.iter() {
            let record = &change.record;
            let mut hooks = hooks_for(&self.hooks, record).peekable();
            if hooks.peek().is_none() {
                continue;
            }
            let event = event_id(record, change.seq);
            let payload = body(&event, record);
            for hook in hooks {
                jobs.push(FeedbackJob {
                    id: job_id(&event, hook),
                    url: hook.url.clone(),
                    body: payload.clone(),
                    attempts: 0,
                    due_ms: now,
                });
            }
        }
        let store = self.store.clone();
        async move {
            if jobs.is_empty() {
                return Ok(());
            }
            store
                .enqueue(jobs)
                .await
                .map_err(|e| FeedError(format!("feedback schedule: {e}")))
        }
        .boxed()
    }
}

/// Starts the sender; answers the sink that schedules calls.
pub fn start(
    hooks: Vec<FeedbackHook>,
    timeout: Duration,
    policy: RetryPolicy,
    store: Arc<dyn FeedbackStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> Arc<FeedbackEnqueuer> {
    let hooks = Arc::new(hooks);
    tokio::spawn(send_due(
        hooks.clone(),
        timeout,
        policy,
        store.clone(),
        clock.clone(),
        metrics,
    ));
    Arc::new(FeedbackEnqueuer {
        hooks,
        store,
        clock,
    })
}

/// Takes due jobs and calls their hooks, for as long as the process runs.
async fn send_due(
    hooks: Arc<Vec<FeedbackHook>>,
    timeout: Duration,
    policy: RetryPolicy,
    store: Arc<dyn FeedbackStore>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) {
    let secrets: HashMap<String, Vec<u8>> = hooks
        .iter()
        .map(|h| (h.url.clone(), h.secret.clone()))
        .collect();
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .build()
        .unwrap_or_default();
    // A taken job is out of other instances' reach until its call has had its time.
    let lease_ms = timeout.as_millis() as i64 + 5_000;
    loop {
        let now = clock.now_ms();
        let jobs = match store.claim_due(now, lease_ms, CLAIM).await {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "feedback schedule not readable; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if jobs.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let calls = jobs.into_iter().map(|job| {
            let client = client.clone();
            let secret = secrets.get(&job.url).cloned();
            let store = store.clone();
            let clock = clock.clone();
            let metrics = metrics.clone();
            async move {
                let Some(secret) = secret else {
                    // A hook no longer configured: its jobs are not this process's to send.
                    tracing::warn!(url = %job.url, "a feedback job for a hook not configured; left for an instance that has it");
                    return;
                };
                let delivered = call(&client, &secret, &job, &clock).await;
                let settled = if delivered {
                    metrics.feedback("delivered");
                    store.done(job.id.clone()).await
                } else {
                    metrics.feedback("retried");
                    let attempts = job.attempts + 1;
                    let delay = retry_delay_ms(&policy, attempts, rand::random::<f64>());
                    store
                        .retry_at(job.id.clone(), attempts, clock.now_ms() + delay as i64)
                        .await
                };
                if let Err(e) = settled {
                    // The lease runs out and the job is due again: called again, at least once.
                    tracing::warn!(job = %job.id, error = %e, "feedback outcome not recorded");
                }
            }
        });
        join_all(calls).await;
    }
}

/// One signed call; `true` on a 2xx answer.
async fn call(
    client: &reqwest::Client,
    secret: &[u8],
    job: &FeedbackJob,
    clock: &Arc<dyn Clock>,
) -> bool {
    let timestamp = (clock.now_ms() / 1000).to_string();
    let signature = sign(secret, &timestamp, &job.body);
    let answer = client
        .post(&job.url)
        .header("content-type", "application/json")
        .header("X-Herald-Timestamp", &timestamp)
        .header("X-Herald-Signature", signature)
        .body(job.body.clone())
        .send()
        .await;
    match answer {
        Ok(a) if a.status().is_success() => true,
        Ok(a) => {
            tracing::debug!(url = %job.url, status = a.status().as_u16(), "feedback hook refused; retried later");
            false
        }
        Err(e) => {
            tracing::debug!(url = %job.url, error = %e, "feedback hook not reached; retried later");
            false
        }
    }
}
