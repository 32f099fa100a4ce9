//! The message document and its strict status machine (REFERENCE.md §3).
//!
//! `delivered`, `failed` and `skipped` are terminal: nothing moves a message out of them,
//! and a late `sent` never overwrites `delivered`.

use serde::{Deserialize, Serialize};

use super::campaign::{Channel, TriggeredMessage};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    Queued,
    /// Waiting out the campaign's quiet hours until `held_until` (REFERENCE.md §12).
    Held,
    Sent,
    Retrying,
    Delivered,
    Failed,
    Skipped,
}

impl MessageStatus {
    pub const ALL: [MessageStatus; 7] = [
        MessageStatus::Queued,
        MessageStatus::Held,
        MessageStatus::Sent,
        MessageStatus::Retrying,
        MessageStatus::Delivered,
        MessageStatus::Failed,
        MessageStatus::Skipped,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            MessageStatus::Delivered | MessageStatus::Failed | MessageStatus::Skipped
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Queued => "queued",
            MessageStatus::Held => "held",
            MessageStatus::Sent => "sent",
            MessageStatus::Retrying => "retrying",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Failed => "failed",
            MessageStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<MessageStatus> {
        MessageStatus::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

/// Something that happened to a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusEvent {
    /// A provider accepted the send.
    Sent,
    /// A retry was scheduled (retryable send error, `undelivered` or retryable `failed` callback).
    Retrying,
    /// The provider reported delivery.
    Delivered,
    /// Terminal failure (non-retryable, or attempts exhausted).
    Failed,
    /// A held message's window ended and its policy still lets it go: it is sent now.
    Released,
    /// A held message fell in a window again (its user's time zone changed): held anew until
    /// the change's `held_until`.
    HeldAgain,
    /// Policy stopped a message before its first attempt (opted out while held, frequency
    /// capped): terminal, with the reason as its error.
    Skipped,
}

impl StatusEvent {
    pub const ALL: [StatusEvent; 7] = [
        StatusEvent::Sent,
        StatusEvent::Retrying,
        StatusEvent::Delivered,
        StatusEvent::Failed,
        StatusEvent::Released,
        StatusEvent::HeldAgain,
        StatusEvent::Skipped,
    ];

    /// The statuses from which this event is accepted; from any other it is ignored.
    pub fn allowed_from(self) -> &'static [MessageStatus] {
        use MessageStatus::*;
        match self {
            StatusEvent::Sent => &[Queued, Retrying],
            StatusEvent::Retrying => &[Queued, Sent, Retrying],
            StatusEvent::Delivered => &[Queued, Sent, Retrying],
            StatusEvent::Failed => &[Queued, Sent, Retrying],
            StatusEvent::Released | StatusEvent::HeldAgain => &[Held],
            StatusEvent::Skipped => &[Queued, Held],
        }
    }

    pub fn target(self) -> MessageStatus {
        match self {
            StatusEvent::Sent => MessageStatus::Sent,
            StatusEvent::Retrying => MessageStatus::Retrying,
            StatusEvent::Delivered => MessageStatus::Delivered,
            StatusEvent::Failed => MessageStatus::Failed,
            StatusEvent::Released => MessageStatus::Queued,
            StatusEvent::HeldAgain => MessageStatus::Held,
            StatusEvent::Skipped => MessageStatus::Skipped,
        }
    }
}

/// The pure transition function: `Some(new status)` or `None` when the event is ignored.
pub fn transition(from: MessageStatus, event: StatusEvent) -> Option<MessageStatus> {
    event.allowed_from().contains(&from).then(|| event.target())
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub status: MessageStatus,
    pub at: i64,
    pub provider: Option<String>,
    pub detail: Option<String>,
}

/// A requested status change with what to record alongside it.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusChange {
    pub event: StatusEvent,
    pub at: i64,
    pub provider: Option<String>,
    pub detail: Option<String>,
    pub provider_message_id: Option<String>,
    /// The attempt number this change belongs to, when it is known.
    pub attempt: Option<u32>,
    /// For callbacks: the provider message id the callback is about. If the document does
    /// not carry it yet (the callback overtook the send's own answer), the change is
    /// [`ApplyResult::NotReady`] and the caller asks the provider to call back again.
    pub expect_provider_message_id: Option<String>,
    /// For a `sent`: when to look the send up at its provider if no final callback came
    /// (`None`: its provider offers no lookup).
    pub look_up_at: Option<i64>,
}

/// What [`MessageRecord::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyResult {
    Applied,
    /// The status machine refused it (terminal status, or not allowed from here).
    Ignored,
    /// It refers to a send this document does not know about yet.
    NotReady,
}

/// The `messages` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub id: String,
    pub user_id: String,
    pub campaign: String,
    pub channel: Channel,
    pub to: Option<String>,
    pub body: String,
    /// Email subject, when the campaign has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    pub provider: Option<String>,
    pub status: MessageStatus,
    pub attempts: u32,
    pub provider_message_id: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub history: Vec<HistoryEntry>,
    /// While `sent`: when its status is next looked up at the provider (`None`: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lookup_at: Option<i64>,
    /// While `held`: when its quiet hours end (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<i64>,
}

impl MessageRecord {
    /// The initial document of a triggered message: `queued`; `held` until its quiet hours
    /// end; `skipped` or `failed` (its template did not render) with the reason.
    pub fn from_triggered(m: &TriggeredMessage, now_ms: i64) -> MessageRecord {
        MessageRecord::take_triggered(&mut m.clone(), now_ms)
    }

    /// [`MessageRecord::from_triggered`], moving the message's texts into the record instead
    /// of copying them: `m` keeps its id, channel, policy reason and times; its user,
    /// campaign, address, body, subject and skip or failure reason are left empty.
    pub fn take_triggered(m: &mut TriggeredMessage, now_ms: i64) -> MessageRecord {
        let (status, error) = if m.skipped.is_some() {
            (MessageStatus::Skipped, m.skipped.take())
        } else if m.failed.is_some() {
            (MessageStatus::Failed, m.failed.take())
        } else if m.held_until.is_some() {
            (MessageStatus::Held, None)
        } else {
            (MessageStatus::Queued, None)
        };
        MessageRecord {
            id: m.id.clone(),
            user_id: std::mem::take(&mut m.user_id),
            campaign: std::mem::take(&mut m.campaign),
            channel: m.channel,
            to: m.to.take(),
            body: std::mem::take(&mut m.body),
            subject: m.subject.take(),
            provider: None,
            status,
            attempts: 0,
            provider_message_id: None,
            error: error.clone(),
            created_at: now_ms,
            updated_at: now_ms,
            history: vec![HistoryEntry {
                status,
                at: now_ms,
                provider: None,
                detail: error,
            }],
            lookup_at: None,
            held_until: if status == MessageStatus::Held {
                m.held_until
            } else {
                None
            },
        }
    }

    /// Makes a message that was never sent `skipped` (its address turned out suppressed).
    pub fn skip(&mut self, reason: String) {
        if !matches!(self.status, MessageStatus::Queued | MessageStatus::Held) || self.attempts > 0
        {
            return;
        }
        self.status = MessageStatus::Skipped;
        self.held_until = None;
        self.error = Some(reason.clone());
        self.body.clear();
        self.subject = None;
        // As if it had been skipped from the start (it was never queued for a provider).
        self.history = vec![HistoryEntry {
            status: MessageStatus::Skipped,
            at: self.updated_at,
            provider: None,
            detail: Some(reason),
        }];
    }

    /// Applies a change if the status machine allows it.
    pub fn apply(&mut self, change: &StatusChange) -> ApplyResult {
        let Some(next) = transition(self.status, change.event) else {
            return ApplyResult::Ignored;
        };
        if change.event == StatusEvent::Retrying
            && change.attempt.is_some_and(|a| a < self.attempts)
        {
            // A retry decided for an older attempt, written after a newer one was made: the
            // newer attempt's outcome decides (it must not be set back to `retrying`).
            return ApplyResult::Ignored;
        }
        if let Some(expected) = &change.expect_provider_message_id {
            if !self
                .provider_message_id
                .as_deref()
                .is_some_and(|pid| names_send(expected, pid))
            {
                // About an older send of ours (stale): nothing to do. Unknown: not yet recorded.
                return if self.knows_provider_message_id(expected) {
                    ApplyResult::Ignored
                } else {
                    ApplyResult::NotReady
                };
            }
            if change.event == StatusEvent::Retrying && self.status == MessageStatus::Retrying {
                // The same callback again: the retry is already scheduled.
                return ApplyResult::Ignored;
            }
        }
        self.status = next;
        self.updated_at = change.at;
        // Only a `sent` message waits on a lookup, only a `held` one on its window's end
        // (carried in `look_up_at` by a `HeldAgain`).
        self.lookup_at = match change.event {
            StatusEvent::Sent => change.look_up_at,
            _ => None,
        };
        self.held_until = match change.event {
            StatusEvent::HeldAgain => change.look_up_at,
            _ => None,
        };
        if let Some(p) = &change.provider {
            self.provider = Some(p.clone());
        }
        if let Some(pid) = &change.provider_message_id {
            self.provider_message_id = Some(pid.clone());
        }
        if let Some(a) = change.attempt {
            self.attempts = self.attempts.max(a);
        }
        match change.event {
            StatusEvent::Sent
            | StatusEvent::Delivered
            | StatusEvent::Released
            | StatusEvent::HeldAgain => {}
            StatusEvent::Retrying | StatusEvent::Failed | StatusEvent::Skipped => {
                self.error = change.detail.clone()
            }
        }
        // A `sent` entry's detail is the provider message id, so late callbacks about an
        // older send can be told from callbacks that overtook their send.
        let detail = match change.event {
            StatusEvent::Sent => change.provider_message_id.clone().or(change.detail.clone()),
            _ => change.detail.clone(),
        };
        self.history.push(HistoryEntry {
            status: next,
            at: change.at,
            provider: change.provider.clone(),
            detail,
        });
        ApplyResult::Applied
    }

    /// Whether `provider_message_id` belongs to one of this message's sends.
    pub fn knows_provider_message_id(&self, provider_message_id: &str) -> bool {
        let named = |pid: Option<&str>| pid.is_some_and(|pid| names_send(provider_message_id, pid));
        named(self.provider_message_id.as_deref())
            || self
                .history
                .iter()
                .any(|h| h.status == MessageStatus::Sent && named(h.detail.as_deref()))
    }

    /// The provider that rejected the message's last attempt when the next one is to go to
    /// the following provider of the channel (a fallback in progress).
    pub fn falling_back_from(&self) -> Option<&str> {
        let last = self.history.last()?;
        (self.status == MessageStatus::Retrying
            && last.status == MessageStatus::Retrying
            && last
                .detail
                .as_deref()
                .is_some_and(|d| d.ends_with(FALLING_BACK)))
        .then_some(last.provider.as_deref())
        .flatten()
    }

    /// The send a message waiting on one is due, as `(attempt, resend)`: `queued` → its next
    /// attempt; `retrying` after an unknown outcome → that attempt again (resend `r`, `r` the
    /// unknown outcomes in a row); `retrying` otherwise → the next attempt. `None` for a
    /// message that waits on no send of Herald's (`sent`, or terminal).
    pub fn due_send(&self) -> Option<(u32, u32)> {
        match self.status {
            // A held message's first send is due at the window's end (the schedule entry
            // fires then, and the sweep checks its policy again before sending).
            MessageStatus::Queued | MessageStatus::Held => Some((self.attempts + 1, 0)),
            MessageStatus::Retrying => {
                let resends = self
                    .history
                    .iter()
                    .rev()
                    .take_while(|h| {
                        h.status == MessageStatus::Retrying
                            && h.detail
                                .as_deref()
                                .is_some_and(|d| d.ends_with(SENDING_AGAIN))
                    })
                    .count() as u32;
                if resends > 0 {
                    Some((self.attempts.max(1), resends))
                } else {
                    Some((self.attempts + 1, 0))
                }
            }
            _ => None,
        }
    }

    /// Whether a callback naming `provider_message_id` is about this message's current send.
    pub fn is_current_send(&self, provider_message_id: &str) -> bool {
        self.provider_message_id
            .as_deref()
            .is_some_and(|pid| names_send(provider_message_id, pid))
    }
}

/// How the detail of a `retrying` entry written for a fallback ends.
pub const FALLING_BACK: &str = "; falling back";

/// How the detail of a `retrying` entry written after an unknown outcome ends (the same
/// attempt is sent again, with the same key).
pub const SENDING_AGAIN: &str = "; outcome unknown, sent again with the same key";

/// Whether the id a callback names is the id a send was given: the same, or that id with a
/// `.`-separated suffix (SendGrid events name `<X-Message-ID>.<filter and queue>`).
pub fn names_send(named: &str, send_id: &str) -> bool {
    named == send_id
        || (!send_id.is_empty()
            && named.len() > send_id.len()
            && named.starts_with(send_id)
            && named.as_bytes()[send_id.len()] == b'.')
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use MessageStatus::*;

    /// A freshly triggered SMS, `queued` (also the actor tests' record).
    pub(crate) fn queued_record() -> MessageRecord {
        let m = crate::domain::campaign::TriggeredMessage {
            id: "c:m".into(),
            user_id: "u".into(),
            campaign: "c".into(),
            channel: crate::domain::campaign::Channel::Sms,
            to: Some("+1".into()),
            body: "b".into(),
            subject: None,
            skipped: None,
            policy_skip: None,
            failed: None,
            held_until: None,
            trigger_at: 0,
        };
        MessageRecord::from_triggered(&m, 0)
    }

    #[test]
    fn terminal_statuses_absorb_everything() {
        for from in [Delivered, Failed, Skipped] {
            for ev in StatusEvent::ALL {
                assert_eq!(transition(from, ev), None, "{from:?} {ev:?}");
            }
        }
    }

    #[test]
    fn late_sent_never_overwrites_delivered() {
        assert_eq!(transition(Sent, StatusEvent::Delivered), Some(Delivered));
        assert_eq!(transition(Delivered, StatusEvent::Sent), None);
        // A delivery callback that overtakes the send's own acknowledgement still wins.
        assert_eq!(transition(Queued, StatusEvent::Delivered), Some(Delivered));
    }

    #[test]
    fn a_retry_of_an_older_attempt_is_stale() {
        let mut r = queued_record();
        let change = |event, attempt| StatusChange {
            event,
            at: 1,
            provider: None,
            detail: None,
            provider_message_id: Some(format!("p{attempt}")),
            attempt: Some(attempt),
            expect_provider_message_id: None,
            look_up_at: None,
        };
        assert_eq!(r.apply(&change(StatusEvent::Sent, 2)), ApplyResult::Applied);
        assert_eq!(
            r.apply(&change(StatusEvent::Retrying, 1)),
            ApplyResult::Ignored
        );
        assert_eq!(r.status, Sent);
        // The attempt's own retry (an `undelivered` callback for attempt 2) still applies.
        assert_eq!(
            r.apply(&change(StatusEvent::Retrying, 2)),
            ApplyResult::Applied
        );
    }

    #[test]
    fn a_callback_names_a_send_by_its_id_or_a_dotted_extension_of_it() {
        assert!(names_send("abc", "abc"));
        assert!(names_send("abc.filter0001.1", "abc"));
        assert!(!names_send("abcd", "abc"));
        assert!(!names_send("ab", "abc"));
        assert!(!names_send(".x", ""));
    }

    #[test]
    fn a_waiting_message_is_due_its_next_attempt_or_the_same_one_after_unknown_outcomes() {
        let mut r = queued_record();
        assert_eq!(r.due_send(), Some((1, 0)));
        let change = |event, attempt, detail: &str| StatusChange {
            event,
            at: 1,
            provider: Some("p".into()),
            detail: Some(detail.to_string()),
            provider_message_id: None,
            attempt: Some(attempt),
            expect_provider_message_id: None,
            look_up_at: None,
        };
        let unknown = format!("p: timed out{SENDING_AGAIN}");
        r.apply(&change(StatusEvent::Retrying, 1, &unknown));
        assert_eq!(r.due_send(), Some((1, 1)), "attempt 1 again, first resend");
        r.apply(&change(StatusEvent::Retrying, 1, &unknown));
        assert_eq!(r.due_send(), Some((1, 2)));
        r.apply(&change(StatusEvent::Retrying, 1, "p: 503"));
        assert_eq!(
            r.due_send(),
            Some((2, 0)),
            "a known failure: the next attempt"
        );
        r.apply(&change(StatusEvent::Sent, 2, ""));
        assert_eq!(
            r.due_send(),
            None,
            "sent waits on the provider, not on Herald"
        );
        r.apply(&change(StatusEvent::Delivered, 2, ""));
        assert_eq!(r.due_send(), None);
    }

    #[test]
    fn retry_cycle() {
        assert_eq!(transition(Sent, StatusEvent::Retrying), Some(Retrying));
        assert_eq!(transition(Retrying, StatusEvent::Sent), Some(Sent));
        assert_eq!(transition(Sent, StatusEvent::Sent), None);
    }
}
