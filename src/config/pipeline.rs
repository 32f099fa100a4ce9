//! `[batch]`, `[dedup]`, `[aggregator]`, `[pipeline]`, `[retry]` and `[limits]`: how events
//! flow through the actors, and the bounds on them.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_size: usize,
    pub max_wait_ms: u64,
    pub shards: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    pub window_ms: i64,
    pub max_ids_per_user: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    pub idle_ms: u64,
    /// Most users held in memory per instance; beyond it the least valuable durable ones are
    /// passivated.
    pub max_resident: usize,
    /// A durable user idle this long is packed (its state kept as compact bytes, unpacked by
    /// its next record); 0 never packs.
    #[serde(default = "default_pack_after_ms")]
    pub pack_after_ms: u64,
    /// Before users had one owner whatever their partition, the cap was per partition. Still
    /// accepted so old files load; ignored (see `max_resident`).
    #[serde(default)]
    pub max_per_partition: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub max_in_flight_per_partition: usize,
    pub fetch_max_records: usize,
    pub commit_interval_ms: u64,
    pub workers: usize,
    /// A revoked partition that has not drained by then is given up without a commit (its
    /// records go to the next owner, whose fenced writes win).
    pub revoke_timeout_ms: u64,
    /// Records whose application panicked twice are dead-lettered as poison; more than this
    /// many in a minute on one shard is a fault, escalated (the process exits non-zero).
    #[serde(default = "default_max_poison_per_minute")]
    pub max_poison_per_minute: usize,
}

fn default_max_poison_per_minute() -> usize {
    100
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub base_ms: u64,
    pub max_delay_ms: u64,
    pub max_attempts: u32,
    pub sweep_ms: u64,
    /// How often the reconciler looks for messages waiting on a send that nobody holds.
    pub reconcile_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    /// The largest stored profile (its serialized state) Herald accepts; an event that would
    /// grow one past it is dead-lettered as `profile_too_large`.
    #[serde(default = "default_max_profile_bytes")]
    pub max_profile_bytes: usize,
    /// The longest rendered message body or subject; a longer one makes the message `failed`.
    #[serde(default = "default_max_message_body_bytes")]
    pub max_message_body_bytes: usize,
}

fn default_pack_after_ms() -> u64 {
    10_000
}

fn default_max_profile_bytes() -> usize {
    1_048_576
}

fn default_max_message_body_bytes() -> usize {
    65_536
}

/// Status lookups for messages whose provider never called back (`[reconcile]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcileConfig {
    /// A message still `sent` this long after its send is looked up at its provider.
    pub status_after_ms: u64,
    /// Lookups stop this long after the send.
    pub max_age_ms: u64,
    /// Lookups per second per provider, at most.
    pub lookups_per_sec: f64,
    /// How often due lookups are looked for.
    pub lookup_every_ms: u64,
}

impl Default for ReconcileConfig {
    fn default() -> Self {
        ReconcileConfig {
            status_after_ms: 600_000,
            max_age_ms: 3 * 24 * 3_600_000,
            lookups_per_sec: 10.0,
            lookup_every_ms: 1_000,
        }
    }
}

/// Identity merge (`alias`, `[merge]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeConfig {
    /// A profile that absorbed this many ids takes no more (`merge_limit`).
    pub max_ids: usize,
    /// Ids no alias may name besides the built-in placeholders: regular expressions, each
    /// matching a whole id (`blocked_id`).
    pub blocked_ids: Vec<String>,
    /// A merge's mark on its target older than this is one left behind, and not honoured.
    pub mark_ttl_ms: u64,
}

impl Default for MergeConfig {
    fn default() -> Self {
        MergeConfig {
            max_ids: 100,
            blocked_ids: Vec::new(),
            mark_ttl_ms: 600_000,
        }
    }
}
