//! The reconciler: finds messages waiting on a send (`queued`, `retrying`) that no retry
//! schedule entry holds, and adopts each with an entry due one lease from now, which the retry
//! sweep then claims (a lease owned by the claiming instance) and fires. One lease later, not
//! at once: when the entry was lost with Redis while its send was in flight, the send records
//! its outcome first, and the fired entry then finds the attempt made and sends nothing.
//!
//! Every send Herald starts holds an entry from before it goes out, and every retry is
//! scheduled before the message reads `retrying`, so a waiting message without one was
//! stranded: its instance died between storing the message and leasing its first send, or
//! the schedule itself was lost (Redis restarted without persistence, flushed, failed over). Adoption creates the
//! entry only if the message still has none: a batcher that stored the message and is just
//! about to lease its send finds the entry and leaves the send to the sweep, so whichever
//! comes first owns it and the send fires once.

use crate::domain::message::{MessageRecord, MessageStatus};
use crate::ports::{RetryEntry, StalledFrom};

use super::context::Shared;
use super::dispatcher::LEASE_MS;

/// Messages read per page.
const PAGE: usize = 1_000;

/// Adopts every message waiting on a send whose last change was before `idle_before_ms` and
/// that no entry holds. Answers how many it adopted. Pages in `updated_at` order; a full
/// page's last millisecond (a flush changes many messages at once) is read again by `_id`,
/// so no message is skipped and none is read twice.
pub async fn reconcile(shared: &Shared, idle_before_ms: i64) -> Result<usize, String> {
    let ports = &shared.ports;
    if let Ok(held) = ports.docs.count_status(MessageStatus::Held).await {
        ports.metrics.messages_held.set(held as i64);
    }
    let mut adopted = 0;
    let mut from = StalledFrom::Start;
    loop {
        let mut page = ports
            .docs
            .stalled_messages(idle_before_ms, from.clone(), PAGE)
            .await
            .map_err(|e| e.to_string())?;
        let full = page.len() >= PAGE;
        let next = match (&from, page.last()) {
            (_, None) => None,
            (StalledFrom::Tied { at, .. }, Some(last)) => Some(if full {
                StalledFrom::Tied {
                    at: *at,
                    after_id: last.id.clone(),
                }
            } else {
                StalledFrom::After(*at)
            }),
            (_, Some(_)) if full => {
                // The page may end inside its last millisecond: that one is read by `_id`.
                let at = page.iter().map(|r| r.updated_at).max().unwrap_or(0);
                page.retain(|r| r.updated_at < at);
                Some(StalledFrom::Tied {
                    at,
                    after_id: String::new(),
                })
            }
            (_, Some(_)) => None,
        };
        adopted += adopt(shared, &page).await?;
        match next {
            Some(n) => from = n,
            None => break,
        }
    }
    Ok(adopted)
}

/// Creates an entry, due one lease from now, for each message of `page` that has none.
async fn adopt(shared: &Shared, page: &[MessageRecord]) -> Result<usize, String> {
    let ports = &shared.ports;
    let due = ports.clock.now_ms() + LEASE_MS;
    let entries: Vec<RetryEntry> = page
        .iter()
        // A channel without providers now (configuration changed) has nobody to send.
        .filter(|r| !shared.dispatchers_for(r.channel).is_empty())
        .filter_map(|r| {
            let (attempt, resend) = r.due_send()?;
            Some(RetryEntry {
                message_id: r.id.clone(),
                attempt,
                resend,
                // A held message waits out its window first.
                due_ms: r.held_until.map_or(due, |until| until.max(due)),
                lapsed: false,
            })
        })
        .collect();
    if entries.is_empty() {
        return Ok(0);
    }
    let created = ports
        .retries
        .hold(entries.clone(), false)
        .await
        .map_err(|e| e.to_string())?;
    let mut adopted = 0;
    for (entry, _) in entries.iter().zip(&created).filter(|(_, c)| **c) {
        tracing::debug!(
            message = entry.message_id,
            attempt = entry.attempt,
            "a message waiting on a send nobody held is adopted"
        );
        ports.metrics.messages_reconciled.inc();
        adopted += 1;
    }
    Ok(adopted)
}
