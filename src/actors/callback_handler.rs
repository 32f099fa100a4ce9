//! Applies provider delivery callbacks (not an actor: the webhook receiver and the in-process
//! simulator call it directly, and it answers only once the effect is durable).

use std::sync::Arc;

use futures::FutureExt;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::domain::message::{MessageStatus, StatusChange, StatusEvent};
use crate::domain::retry::RetryPolicy;
use crate::ports::{
    BoxFut, Callback, CallbackError, CallbackSink, CallbackStatus, TransitionResult,
};

use super::dispatcher::{schedule_retry, DispatcherPorts};

pub struct CallbackHandler {
    ports: DispatcherPorts,
    policy: RetryPolicy,
    rng: Arc<Mutex<SmallRng>>,
}

impl CallbackHandler {
    pub fn new(ports: DispatcherPorts, policy: RetryPolicy, seed: u64) -> Arc<Self> {
        Arc::new(CallbackHandler {
            ports,
            policy,
            rng: Arc::new(Mutex::new(SmallRng::seed_from_u64(seed))),
        })
    }

    async fn handle(
        ports: DispatcherPorts,
        policy: RetryPolicy,
        rng: Arc<Mutex<SmallRng>>,
        cb: Callback,
    ) -> Result<(), CallbackError> {
        let now = ports.clock.now_ms();
        let retry_wanted = match cb.status {
            CallbackStatus::Delivered => false,
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
        };
        let Some(record) = ports.docs.get_message(cb.message_id.clone()).await? else {
            // Not stored yet: keep it, it is applied when the message is inserted.
            ports
                .docs
                .record_early_callback(cb.message_id, change)
                .await?;
            return Ok(());
        };
        if record.status.is_terminal() {
            return Ok(());
        }
        if let Some(pid) = &cb.provider_message_id {
            if record.provider_message_id.as_ref() != Some(pid) {
                if record.knows_provider_message_id(pid) {
                    return Ok(()); // about an older send: stale
                }
                return Err(CallbackError::NotReady(cb.message_id));
            }
            if retry_wanted && record.status == MessageStatus::Retrying {
                return Ok(()); // duplicate: the retry is already scheduled
            }
        }
        if retry_wanted {
            schedule_retry(
                ports,
                policy,
                rng,
                cb.message_id,
                record.attempts.max(1),
                0,
                Some(cb.provider),
                detail.unwrap_or_default(),
                cb.provider_message_id,
            )
            .await?;
            return Ok(());
        }
        match ports.docs.transition(cb.message_id.clone(), change).await? {
            TransitionResult::NotReady => Err(CallbackError::NotReady(cb.message_id)),
            TransitionResult::Applied(_)
            | TransitionResult::Ignored(_)
            | TransitionResult::NotFound => Ok(()),
        }
    }
}

impl CallbackSink for CallbackHandler {
    fn deliver(&self, callback: Callback) -> BoxFut<Result<(), CallbackError>> {
        Self::handle(self.ports.clone(), self.policy, self.rng.clone(), callback).boxed()
    }
}
