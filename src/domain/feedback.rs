//! Feedback webhooks (`[[feedback]]`): which message changes a hook is told of, the event's
//! stable id, its body, and when a failed call is tried again.

use serde_json::json;

use super::feed::message_event_json;
use super::message::{MessageRecord, MessageStatus};
use super::retry::RetryPolicy;

/// One `[[feedback]]` hook.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackHook {
    pub url: String,
    pub secret: Vec<u8>,
    pub statuses: Vec<MessageStatus>,
}

/// A message change's id: the message, the change's place in its `history` and the status it
/// reached — the same for every repeat of its delivery.
pub fn event_id(m: &MessageRecord, seq: u32) -> String {
    format!("{}:{seq}:{}", m.id, m.status.as_str())
}

/// A delivery's id in the schedule: one per event and hook.
pub fn job_id(event_id: &str, hook: &FeedbackHook) -> String {
    format!("{event_id}@{}", hook.url)
}

/// What a hook is sent: `{"event_id", "message"}`.
pub fn body(event_id: &str, m: &MessageRecord) -> Vec<u8> {
    serde_json::to_vec(&json!({"event_id": event_id, "message": message_event_json(m)}))
        .unwrap_or_default()
}

/// The hooks told of this change.
pub fn hooks_for<'a>(
    hooks: &'a [FeedbackHook],
    m: &'a MessageRecord,
) -> impl Iterator<Item = &'a FeedbackHook> {
    hooks.iter().filter(|h| h.statuses.contains(&m.status))
}

/// The delay before call `attempts + 1` after `attempts` failed ones: the send retries'
/// backoff (full jitter under a doubling ceiling), never giving up. `unit` is uniform in
/// `[0, 1)`.
pub fn retry_delay_ms(policy: &RetryPolicy, attempts: u32, unit: f64) -> u64 {
    let ceiling = policy.ceiling_ms(attempts.max(1));
    ((ceiling as f64) * unit.clamp(0.0, 1.0)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_hooks_filter_by_status() {
        let mut m = MessageRecord {
            id: "welcome:u1-1".into(),
            user_id: "u1".into(),
            campaign: "welcome".into(),
            channel: crate::domain::campaign::Channel::Sms,
            to: Some("+15550000001".into()),
            body: "Hi".into(),
            subject: None,
            provider: Some("sim".into()),
            status: MessageStatus::Delivered,
            attempts: 2,
            provider_message_id: None,
            error: None,
            created_at: 0,
            updated_at: 0,
            history: Vec::new(),
            lookup_at: None,
            held_until: None,
        };
        assert_eq!(event_id(&m, 3), "welcome:u1-1:3:delivered");
        let hooks = vec![
            FeedbackHook {
                url: "http://a/x".into(),
                secret: b"s".to_vec(),
                statuses: vec![MessageStatus::Delivered, MessageStatus::Failed],
            },
            FeedbackHook {
                url: "http://b/y".into(),
                secret: b"t".to_vec(),
                statuses: vec![MessageStatus::Sent],
            },
        ];
        assert_eq!(hooks_for(&hooks, &m).count(), 1);
        m.status = MessageStatus::Sent;
        assert_eq!(hooks_for(&hooks, &m).next().unwrap().url, "http://b/y");
        assert_eq!(job_id("e", &hooks[0]), "e@http://a/x");
        let b: serde_json::Value = serde_json::from_slice(&body("e", &m)).unwrap();
        assert_eq!(b["event_id"], "e");
        assert_eq!(b["message"]["status"], "sent");
        let policy = RetryPolicy {
            base_ms: 100,
            max_delay_ms: 1_000,
            max_attempts: 1,
        };
        assert_eq!(retry_delay_ms(&policy, 1, 0.999), 99);
        assert_eq!(retry_delay_ms(&policy, 30, 0.5), 500);
    }
}
