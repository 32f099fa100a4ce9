//! Status lookups: a message still `sent` long after its send (its provider never called
//! back, or the callback was lost) is looked up at its provider, and the answer is applied
//! as that callback would have been — through the same checks (G12), so a lookup can never
//! settle a message its provider did not send.
//!
//! Every instance runs the passes; a lookup is taken by moving the message's `lookup_at` on,
//! conditionally on the value read, so one instance makes each lookup. Lookups are limited
//! per provider (per instance) by a token bucket; the ones over the limit stay due for the
//! next pass.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use parking_lot::Mutex;

use crate::domain::message::MessageRecord;
use crate::domain::rate_limit::TokenBucket;
use crate::domain::status_lookup::LookupSchedule;
use crate::ports::{Callback, CallbackError, LookupOutcome, Provider, StoreError};

use super::callback_handler::CallbackHandler;
use super::dispatcher::DispatcherPorts;

/// How lookups are made (`[reconcile]`).
#[derive(Debug, Clone, Copy)]
pub struct LookupSettings {
    pub schedule: LookupSchedule,
    /// Lookups per second per provider.
    pub per_sec: f64,
    /// How often due lookups are looked for.
    pub every: Duration,
}

/// Due lookups read per pass.
const PER_PASS: usize = 1_000;
/// Lookups under way at once.
const CONCURRENCY: usize = 32;

pub struct StatusLookups {
    ports: DispatcherPorts,
    providers: HashMap<String, Arc<dyn Provider>>,
    callbacks: Arc<CallbackHandler>,
    settings: LookupSettings,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

/// One lookup to make.
struct Job {
    message: MessageRecord,
    provider: Arc<dyn Provider>,
    provider_message_id: String,
    due_at: i64,
}

impl StatusLookups {
    pub fn new(
        ports: DispatcherPorts,
        providers: Vec<Arc<dyn Provider>>,
        callbacks: Arc<CallbackHandler>,
        settings: LookupSettings,
    ) -> Arc<Self> {
        let providers = providers
            .into_iter()
            .map(|p| (p.name().to_string(), p))
            .collect();
        Arc::new(StatusLookups {
            ports,
            providers,
            callbacks,
            settings,
            buckets: Mutex::default(),
        })
    }

    pub fn every(&self) -> Duration {
        self.settings.every
    }

    /// Makes the lookups due now, as many as the providers' limits allow. Answers how many
    /// it made.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        let ports = &self.ports;
        let now = ports.clock.now_ms();
        let due = ports.docs.lookups_due(now, PER_PASS).await?;
        let mut jobs = Vec::new();
        let mut limited: HashSet<String> = HashSet::new();
        for message in due {
            let Some(due_at) = message.lookup_at else {
                continue;
            };
            let name = message.provider.clone().unwrap_or_default();
            let provider = self.providers.get(&name).filter(|p| p.can_look_up());
            let (Some(provider), Some(pid)) = (provider, message.provider_message_id.clone())
            else {
                // Its provider is not configured any more (or cannot be asked): no lookups.
                if ports.docs.claim_lookup(message.id, due_at, None).await? {
                    ports.metrics.status_lookup(&name, "unsupported");
                }
                continue;
            };
            if self
                .settings
                .schedule
                .is_expired(message.updated_at, due_at)
            {
                if ports.docs.claim_lookup(message.id, due_at, None).await? {
                    ports.metrics.status_lookup(&name, "expired");
                }
                continue;
            }
            if limited.contains(&name) {
                continue;
            }
            let allowed = self
                .buckets
                .lock()
                .entry(name.clone())
                .or_insert_with(|| TokenBucket::new(self.settings.per_sec, now))
                .take(now)
                .is_ok();
            if !allowed {
                // The rest of this provider's lookups wait for the next pass.
                limited.insert(name);
                continue;
            }
            jobs.push(Job {
                message,
                provider: provider.clone(),
                provider_message_id: pid,
                due_at,
            });
        }
        let results: Vec<Result<bool, StoreError>> = futures::stream::iter(jobs)
            .map(|job| self.look_up(job))
            .buffer_unordered(CONCURRENCY)
            .collect()
            .await;
        let mut made = 0;
        for r in results {
            made += usize::from(r?);
        }
        Ok(made)
    }

    /// Takes one lookup and makes it; `false` when another instance took it.
    async fn look_up(&self, job: Job) -> Result<bool, StoreError> {
        let ports = &self.ports;
        let Job {
            message,
            provider,
            provider_message_id,
            due_at,
        } = job;
        let name = provider.name().to_string();
        let next = self
            .settings
            .schedule
            .next(message.updated_at, ports.clock.now_ms());
        if !ports
            .docs
            .claim_lookup(message.id.clone(), due_at, next)
            .await?
        {
            return Ok(false);
        }
        let outcome = match provider.look_up(provider_message_id.clone()).await {
            LookupOutcome::Final {
                status,
                error,
                retryable,
            } => {
                let callback = Callback {
                    provider: name.clone(),
                    message_id: Some(message.id.clone()),
                    provider_message_id: Some(provider_message_id),
                    status,
                    error,
                    retryable,
                    suppress: None,
                };
                match self.callbacks.apply_looked_up(callback).await {
                    Ok(()) => format!("{status:?}").to_lowercase(),
                    Err(CallbackError::NotReady(_)) => "pending".into(),
                    Err(CallbackError::NotItsSend(why)) => {
                        tracing::warn!(message = %message.id, why, "a lookup's answer is not about the message's send");
                        "refused".into()
                    }
                    // The next lookup (already scheduled) asks again.
                    Err(CallbackError::Store(e)) => return Err(e),
                }
            }
            LookupOutcome::Pending => "pending".into(),
            LookupOutcome::NotFound => "not_found".into(),
            LookupOutcome::Unavailable(detail) => {
                tracing::debug!(provider = %name, message = %message.id, detail, "status lookup failed; the next one asks again");
                "error".into()
            }
        };
        ports.metrics.status_lookup(&name, &outcome);
        Ok(true)
    }
}
