//! `[changelog]`: the Kafka topics downstream systems read at their own pace — the users'
//! states (compacted) and the messages' transitions; `[[feedback]]`: signed webhooks telling
//! an application of its messages' statuses.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChangelogConfig {
    /// The compacted topic of user states; empty = off.
    #[serde(default)]
    pub topic: String,
    /// The topic of message transitions; empty = off.
    #[serde(default)]
    pub messages_topic: String,
    /// `min.compaction.lag.ms` of the topics Herald creates: a record stays readable at least
    /// this long before a newer one of its key may replace it.
    #[serde(default = "default_min_compaction_lag_ms")]
    pub min_compaction_lag_ms: u64,
    /// `transaction.timeout.ms` of the changelog's producers: a flush whose transaction is
    /// open longer is aborted by the broker and published again. It is also how long readers
    /// (`read_committed`) may wait past the records of an instance killed mid-flush.
    #[serde(default = "default_transaction_timeout_ms")]
    pub transaction_timeout_ms: u64,
}

impl Default for ChangelogConfig {
    fn default() -> Self {
        ChangelogConfig {
            topic: String::new(),
            messages_topic: String::new(),
            min_compaction_lag_ms: default_min_compaction_lag_ms(),
            transaction_timeout_ms: default_transaction_timeout_ms(),
        }
    }
}

impl ChangelogConfig {
    /// The users' changelog topic, if on.
    pub fn users_topic(&self) -> Option<&str> {
        Some(self.topic.trim()).filter(|t| !t.is_empty())
    }

    /// The messages' topic, if on.
    pub fn messages_topic(&self) -> Option<&str> {
        Some(self.messages_topic.trim()).filter(|t| !t.is_empty())
    }
}

fn default_min_compaction_lag_ms() -> u64 {
    60_000
}

fn default_transaction_timeout_ms() -> u64 {
    10_000
}

/// One `[[feedback]]` hook.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    /// Where the events are POSTed.
    pub url: String,
    /// The environment variable holding the signing secret.
    pub secret_env: String,
    /// The message statuses this hook is told of.
    pub statuses: Vec<String>,
    /// How long a call may take before it counts as failed (and is tried again).
    #[serde(default = "default_feedback_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_feedback_timeout_ms() -> u64 {
    5_000
}
