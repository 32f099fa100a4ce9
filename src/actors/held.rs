//! A held message's window ended: its schedule entry fired and one instance claimed it. The
//! policy is checked again against the user's stored profile (MongoDB, the system of record)
//! before the first send — opted out meanwhile: `skipped`; in a window again (its time zone
//! changed): `held` anew, rescheduled for that window's end; else `queued`, and sent.
//!
//! Each step is one status transition the status machine allows from `held` only, so an
//! entry claimed twice (its lease ran out while the first claimer was slow) moves the message
//! once: the second finds it `queued` (and sends it as any claimed first send, the attempt
//! fenced by its lease) or terminal.

use std::sync::Arc;

use crate::domain::campaign::skip_text;
use crate::domain::message::{MessageRecord, MessageStatus, StatusChange, StatusEvent};
use crate::domain::policy::{decide, Decision};
use crate::domain::profile::Profile;
use crate::ports::{RetryEntry, StoredUser, TransitionResult};

use super::context::Shared;

/// What firing a held message came to.
pub enum Fired {
    /// Released: send it now (it reads `queued`).
    Send(Arc<MessageRecord>),
    /// Skipped, held anew, or settled by someone else: nothing to send.
    Settled,
}

pub async fn fire(
    shared: &Shared,
    record: Arc<MessageRecord>,
    entry: &RetryEntry,
) -> Result<Fired, String> {
    let ports = &shared.ports;
    let now = ports.clock.now_ms();
    let decision = match shared.campaigns.iter().find(|c| c.id == record.campaign) {
        // The campaign was removed from the configuration: nothing holds the message back.
        None => Decision::Send,
        Some(campaign) => {
            let user: Arc<str> = Arc::from(record.user_id.as_str());
            let stored = ports
                .docs
                .load_users(vec![user])
                .await
                .map_err(|e| e.to_string())?;
            let profile = match stored.into_iter().next() {
                Some(StoredUser::Found(state)) => state.profile,
                Some(StoredUser::WithoutBookkeeping(profile)) => profile,
                _ => Profile::default(),
            };
            decide(
                &campaign.policy(),
                &profile,
                now,
                shared.settings.trigger.default_tz,
            )
        }
    };
    let (event, detail, until) = match &decision {
        Decision::Send => (StatusEvent::Released, None, None),
        Decision::Skip(reason) => (StatusEvent::Skipped, Some(skip_text(reason)), None),
        Decision::Hold(until) => (StatusEvent::HeldAgain, None, Some(*until)),
    };
    let change = StatusChange {
        event,
        at: now,
        provider: None,
        detail,
        provider_message_id: None,
        attempt: None,
        expect_provider_message_id: None,
        look_up_at: until,
    };
    // Let go of the record first: an in-process store then changes its own in place.
    let id = record.id.clone();
    drop(record);
    let result = ports
        .docs
        .transition(id.clone(), change)
        .await
        .map_err(|e| e.to_string())?;
    match (result, decision) {
        (TransitionResult::Applied(record), Decision::Send) => Ok(Fired::Send(record)),
        (TransitionResult::Applied(_), Decision::Skip(reason)) => {
            ports.metrics.policy_skipped(reason.code());
            let _ = ports.retries.complete(entry.clone()).await;
            Ok(Fired::Settled)
        }
        (TransitionResult::Applied(_), Decision::Hold(until)) => {
            let again = RetryEntry {
                due_ms: until,
                ..entry.clone()
            };
            ports
                .retries
                .schedule(again)
                .await
                .map_err(|e| e.to_string())?;
            Ok(Fired::Settled)
        }
        // Released by another claimer meanwhile: send it as that claim would.
        (TransitionResult::Ignored(MessageStatus::Queued), _) => {
            match ports.docs.get_message(id).await {
                Ok(Some(r)) if r.status == MessageStatus::Queued => Ok(Fired::Send(r)),
                Ok(_) => Ok(Fired::Settled),
                Err(e) => Err(e.to_string()),
            }
        }
        _ => {
            let _ = ports.retries.complete(entry.clone()).await;
            Ok(Fired::Settled)
        }
    }
}
