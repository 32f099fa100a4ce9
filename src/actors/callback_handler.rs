//! Applies provider delivery callbacks (not an actor: the webhook receiver and the in-process
//! simulator call it directly, and it answers only once the effect is durable).
//!
//! A callback is matched to its message by Herald's id when it carries one, else by the
//! provider's id (Twilio). It changes nothing unless it comes from the provider that made the
//! message's current send and names that send (G12): a callback about an older send of its
//! provider, or a repeated one, is answered 2xx and ignored (the status machine absorbs the
//! rest); one from a provider that made no send of the message is refused (409); one that may
//! be about a send not recorded yet (the message waits on a send) is answered "call again"
//! (503). A suppression it carries is recorded whatever the message's status (a spam report
//! arrives after delivery), once its provider is known to have sent the message.

use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::domain::message::{MessageRecord, MessageStatus, StatusChange, StatusEvent};
use crate::domain::retry::RetryPolicy;
use crate::domain::suppression::Suppression;
use crate::ports::{
    BoxFut, Callback, CallbackError, CallbackSink, CallbackStatus, EarlyCallback, StoreError,
    TransitionResult,
};

use super::dispatcher::{schedule_retry, DispatcherPorts};

/// How callbacks that cannot apply yet are kept (`http.early_callback_ttl_ms`,
/// `http.early_callbacks_max`).
#[derive(Debug, Clone, Copy)]
pub struct EarlyCallbacks {
    pub ttl_ms: i64,
    pub max: u64,
}

/// Kept callbacks read per pass, and messages whose kept callbacks are tried at once.
const KEPT_PER_PASS: usize = 5_000;
const KEPT_CONCURRENCY: usize = 256;

/// How often kept callbacks are tried again.
pub const EARLY_CALLBACKS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

pub struct CallbackHandler {
    ports: DispatcherPorts,
    policy: RetryPolicy,
    rng: Arc<Mutex<SmallRng>>,
    early: EarlyCallbacks,
}

impl CallbackHandler {
    pub fn new(
        ports: DispatcherPorts,
        policy: RetryPolicy,
        early: EarlyCallbacks,
        seed: u64,
    ) -> Arc<Self> {
        Arc::new(CallbackHandler {
            ports,
            policy,
            rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))),
            early,
        })
    }

    /// Tries the kept callbacks again, each checked as on arrival: applied (or refused, or
    /// expired) ones are forgotten, the others kept. Answers how many were forgotten.
    pub async fn apply_kept(&self) -> Result<usize, StoreError> {
        use futures::StreamExt;
        let kept = self.ports.docs.early_callbacks(KEPT_PER_PASS).await?;
        // One group per send (message and provider id), oldest first inside each; groups at
        // once (their transitions are grouped by the store). Per send, not per message: a
        // callback about a send that will never be recorded (made by an instance killed before
        // it recorded it, then made again under a new id) must not hold back the callbacks of
        // the send that was recorded.
        let mut groups: Vec<Vec<EarlyCallback>> = Vec::new();
        type Send = (String, Option<String>);
        let mut by_send: std::collections::HashMap<Option<Send>, usize> = Default::default();
        for e in kept {
            let key = e
                .callback
                .as_ref()
                .ok()
                .and_then(|cb| Some((cb.message_id.clone()?, cb.provider_message_id.clone())));
            match by_send.get(&key) {
                Some(&g) if key.is_some() => groups[g].push(e),
                _ => {
                    by_send.insert(key, groups.len());
                    groups.push(vec![e]);
                }
            }
        }
        let results: Vec<Result<usize, StoreError>> = futures::stream::iter(groups)
            .map(|group| self.apply_kept_group(group))
            .buffer_unordered(KEPT_CONCURRENCY)
            .collect()
            .await;
        results.into_iter().sum()
    }

    /// One send's kept callbacks, in order, until one still cannot apply.
    async fn apply_kept_group(&self, group: Vec<EarlyCallback>) -> Result<usize, StoreError> {
        let mut forgotten = 0;
        for e in group {
            let now = self.ports.clock.now_ms();
            let outcome = match e.callback {
                Err(why) => {
                    tracing::warn!(
                        key = e.key,
                        why,
                        "a kept callback cannot be read; forgotten"
                    );
                    "unreadable"
                }
                Ok(cb) if e.expires_at_ms <= now => {
                    tracing::info!(provider = %cb.provider, message = ?cb.message_id, "a kept callback expired before its send was recorded");
                    "expired"
                }
                Ok(cb) => match self.apply(cb, false).await {
                    Ok(()) => "applied",
                    Err(CallbackError::NotItsSend(_)) => "refused",
                    Err(CallbackError::NotReady(_)) => break,
                    Err(CallbackError::Store(e)) => return Err(e),
                },
            };
            self.ports.metrics.early_callback(outcome);
            self.ports.docs.drop_early_callback(e.key).await?;
            forgotten += 1;
        }
        Ok(forgotten)
    }

    /// Applies what a status lookup found, checked as its callback would be; one that
    /// cannot apply yet is not kept (the next lookup asks again).
    pub async fn apply_looked_up(&self, callback: Callback) -> Result<(), CallbackError> {
        self.apply(callback, false).await
    }

    /// [`Self::handle`] with this handler's ports and policy.
    fn apply(&self, callback: Callback, keep: bool) -> BoxFut<Result<(), CallbackError>> {
        Self::handle(
            self.ports.clone(),
            self.policy,
            self.rng.clone(),
            self.early,
            callback,
            keep,
        )
        .boxed()
    }

    /// A callback that cannot apply yet: kept (when `keep`) to be applied once its send is
    /// recorded, else — or when too many are kept — the provider is asked to call again.
    async fn later(
        ports: &DispatcherPorts,
        early: EarlyCallbacks,
        cb: &Callback,
        message_id: &str,
        keep: bool,
    ) -> Result<(), CallbackError> {
        if keep {
            let expires = ports.clock.now_ms() + early.ttl_ms;
            let kept = ports
                .docs
                .keep_early_callback(message_id.to_string(), cb.clone(), expires, early.max)
                .await?;
            ports
                .metrics
                .early_callback(if kept { "kept" } else { "full" });
            if kept {
                return Ok(());
            }
        }
        Err(CallbackError::NotReady(message_id.to_string()))
    }

    async fn find(
        ports: &DispatcherPorts,
        cb: &Callback,
    ) -> Result<Option<Arc<MessageRecord>>, CallbackError> {
        Ok(match (&cb.message_id, &cb.provider_message_id) {
            (Some(id), _) => ports.docs.get_message(id.clone()).await?,
            (None, Some(pid)) => ports
                .docs
                .find_by_provider_message_id(cb.provider.clone(), pid.clone())
                .await?
                .map(Arc::new),
            (None, None) => None,
        })
    }

    async fn suppress(
        ports: &DispatcherPorts,
        cb: &Callback,
        record: &MessageRecord,
    ) -> Result<(), CallbackError> {
        let (Some(reason), Some(address)) = (cb.suppress, &record.to) else {
            return Ok(());
        };
        let suppression = Suppression {
            channel: record.channel,
            address: address.clone(),
            reason,
            provider: cb.provider.clone(),
            at: ports.clock.now_ms(),
        };
        let new = ports.docs.suppress(vec![suppression]).await?;
        if new > 0 {
            ports.metrics.suppressed(reason.as_str());
            tracing::info!(provider = %cb.provider, message = %record.id, reason = reason.as_str(), "address suppressed");
        }
        Ok(())
    }

    /// A callback naming a send the message does not know, while the message waits to send
    /// an attempt again because that attempt's answer was lost: it is that send's answer. Its
    /// id is recorded (`sent`), which cancels the resend, and the callback then applies.
    async fn adopt_in_doubt(
        ports: &DispatcherPorts,
        cb: &Callback,
        record: &MessageRecord,
        pid: &str,
    ) -> Result<Option<Arc<MessageRecord>>, CallbackError> {
        if record.status != MessageStatus::Retrying {
            return Ok(None);
        }
        let Some(entry) = ports.retries.entry(record.id.clone()).await? else {
            return Ok(None);
        };
        if entry.resend == 0 || entry.attempt != record.attempts {
            return Ok(None);
        }
        let change = StatusChange {
            event: StatusEvent::Sent,
            at: ports.clock.now_ms(),
            provider: Some(cb.provider.clone()),
            detail: None,
            provider_message_id: Some(pid.to_string()),
            attempt: Some(entry.attempt),
            expect_provider_message_id: None,
            look_up_at: None,
        };
        match ports.docs.transition(record.id.clone(), change).await? {
            TransitionResult::Applied(adopted) => {
                tracing::info!(message = %record.id, attempt = entry.attempt, "a callback answered an attempt whose answer was lost; its resend is cancelled");
                Ok(Some(adopted))
            }
            _ => Ok(None),
        }
    }

    /// Applies one callback; `keep`: one that cannot apply yet is kept rather than answered
    /// "call again".
    async fn handle(
        ports: DispatcherPorts,
        policy: RetryPolicy,
        rng: Arc<Mutex<SmallRng>>,
        early: EarlyCallbacks,
        cb: Callback,
        keep: bool,
    ) -> Result<(), CallbackError> {
        let now = ports.clock.now_ms();
        let retry_wanted = match cb.status {
            CallbackStatus::Delivered | CallbackStatus::NoChange => false,
            CallbackStatus::Failed => cb.retryable,
            CallbackStatus::Undelivered => true,
        };
        let event = match cb.status {
            CallbackStatus::Delivered => StatusEvent::Delivered,
            _ if retry_wanted => StatusEvent::Retrying,
            _ => StatusEvent::Failed,
        };
        let detail = cb
            .error
            .clone()
            .or_else(|| {
                (cb.status != CallbackStatus::Delivered)
                    .then(|| format!("{:?}", cb.status).to_lowercase())
            })
            .map(|e| format!("{}: {e}", cb.provider));
        let change = StatusChange {
            event,
            at: now,
            provider: Some(cb.provider.clone()),
            detail: detail.clone(),
            provider_message_id: None,
            attempt: None,
            expect_provider_message_id: cb.provider_message_id.clone(),
            look_up_at: None,
        };
        let Some(record) = Self::find(&ports, &cb).await? else {
            return match (&cb.message_id, &cb.provider_message_id) {
                // Not stored yet: kept, and applied (checked) once its send is recorded.
                (Some(id), _) if cb.status != CallbackStatus::NoChange => {
                    Self::later(&ports, early, &cb, id, keep).await
                }
                (Some(_), _) => Ok(()),
                // Only the provider's id, and no send carries it yet: its answer has not been
                // recorded; the provider is asked to call again (503).
                (None, Some(pid)) => Err(CallbackError::NotReady(format!(
                    "{} message {pid}",
                    cb.provider
                ))),
                (None, None) => Ok(()),
            };
        };
        if record.provider.as_deref() != Some(cb.provider.as_str()) {
            let sent_by_it = record.history.iter().any(|h| {
                h.status == MessageStatus::Sent && h.provider.as_deref() == Some(&cb.provider)
            });
            let waits_on_a_send = matches!(
                record.status,
                MessageStatus::Queued | MessageStatus::Retrying
            );
            if waits_on_a_send {
                // Its send (a first send, a retry, a fallback) may not be recorded yet.
                return Self::later(&ports, early, &cb, &record.id, keep).await;
            }
            if sent_by_it {
                // About an older send of its provider (before a fallback): stale.
                Self::suppress(&ports, &cb, &record).await?;
                return Ok(());
            }
            return Err(CallbackError::NotItsSend(format!(
                "{} made no send of message {}",
                cb.provider, record.id
            )));
        }
        let mut record = record;
        if let Some(pid) = &cb.provider_message_id {
            if !record.is_current_send(pid) {
                if record.knows_provider_message_id(pid) {
                    Self::suppress(&ports, &cb, &record).await?;
                    return Ok(()); // about an older send: stale
                }
                if record.status.is_terminal() {
                    return Ok(());
                }
                match Self::adopt_in_doubt(&ports, &cb, &record, pid).await? {
                    Some(adopted) => record = adopted,
                    None => return Self::later(&ports, early, &cb, &record.id, keep).await,
                }
            }
        }
        Self::suppress(&ports, &cb, &record).await?;
        if record.status.is_terminal() || cb.status == CallbackStatus::NoChange {
            return Ok(());
        }
        if retry_wanted {
            if cb.provider_message_id.is_some() && record.status == MessageStatus::Retrying {
                return Ok(()); // duplicate: the retry is already scheduled
            }
            schedule_retry(
                ports,
                policy,
                rng,
                record.id.clone(),
                record.attempts.max(1),
                0,
                Some(cb.provider),
                detail.unwrap_or_default(),
                cb.provider_message_id,
            )
            .await?;
            return Ok(());
        }
        // Let go of the record first: an in-process store then changes its own in place
        // rather than copying it for this reader.
        let id = record.id.clone();
        drop(record);
        match ports.docs.transition(id.clone(), change).await? {
            TransitionResult::NotReady => Self::later(&ports, early, &cb, &id, keep).await,
            TransitionResult::Applied(_)
            | TransitionResult::Ignored(_)
            | TransitionResult::NotFound => Ok(()),
        }
    }
}

impl CallbackSink for CallbackHandler {
    fn deliver(&self, callback: Callback) -> BoxFut<Result<(), CallbackError>> {
        self.apply(callback, true)
    }
}
