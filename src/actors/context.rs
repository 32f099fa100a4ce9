//! What every actor of one pipeline shares: settings, ports, metrics and the addresses of
//! the long-lived actors.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::{Addr, Recipient};

use crate::config::Config;
use crate::domain::campaign::{Campaign, Channel};
use crate::domain::retry::RetryPolicy;
use crate::domain::user::DedupLimits;
use crate::ports::{ChangelogWriter, Clock, DocumentStore, RetrySchedule, Source, StateCache};
use crate::telemetry::Metrics;

use super::dispatcher::Dispatcher;
use super::messages::{ApplyBatch, Escalate, FlushNow, MergeStep};

/// The numbers the actors run by (from [`Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_message_bytes: usize,
    /// `limits.max_profile_bytes`: the largest profile JSON an event may make.
    pub max_profile_bytes: usize,
    pub dedup: DedupLimits,
    pub batch_max_size: usize,
    pub batch_max_wait: Duration,
    pub aggregator_idle: Duration,
    /// `aggregator.pack_after_ms` (`None`: 0, never).
    pub pack_after: Option<Duration>,
    /// Most users resident in memory on this instance (all shards together).
    pub max_resident: usize,
    /// How long a revoked partition may take to drain before it is given up uncommitted.
    pub revoke_timeout: Duration,
    pub max_in_flight_per_partition: usize,
    pub fetch_max_records: usize,
    pub commit_interval: Duration,
    pub retry: RetryPolicy,
    pub retry_sweep: Duration,
    pub reconcile_every: Duration,
    pub callback_base_url: String,
    pub early_callbacks: super::callback_handler::EarlyCallbacks,
    pub lookups: super::status_lookup::LookupSettings,
    pub merge: MergeSettings,
    /// What campaigns evaluate triggers with (its `now_ms` is set per trigger).
    pub trigger: crate::domain::campaign::TriggerContext,
    /// `[[frequency_caps]]`.
    pub caps: Vec<crate::domain::policy::FrequencyCap>,
    pub shutdown_timeout: Duration,
    /// Poison records per minute on one shard beyond which the shard escalates
    /// (`pipeline.max_poison_per_minute`).
    pub max_poison_per_minute: usize,
    /// Fault injection for tests (`HERALD_FAULT_PANIC_ON`, comma-separated messageIds): the
    /// application of a record with one of these ids panics.
    pub fault_panic_on: Vec<String>,
}

/// Identity merge (`[merge]`).
#[derive(Debug, Clone)]
pub struct MergeSettings {
    pub max_ids: usize,
    pub blocked: crate::domain::merge::BlockedIds,
    pub mark_ttl_ms: i64,
}

/// The environment variable that names messageIds whose application panics (tests of poison
/// records against the real binary).
pub const FAULT_PANIC_ON: &str = "HERALD_FAULT_PANIC_ON";

impl Settings {
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            trigger: c.trigger_context(0),
            caps: c.parsed_caps.clone(),
            max_message_bytes: c.limits.max_message_bytes,
            max_profile_bytes: c.limits.max_profile_bytes,
            dedup: c.dedup_limits(),
            batch_max_size: c.batch.max_size,
            batch_max_wait: Duration::from_millis(c.batch.max_wait_ms),
            aggregator_idle: Duration::from_millis(c.aggregator.idle_ms),
            pack_after: (c.aggregator.pack_after_ms > 0)
                .then(|| Duration::from_millis(c.aggregator.pack_after_ms)),
            max_resident: c.aggregator.max_resident,
            revoke_timeout: Duration::from_millis(c.pipeline.revoke_timeout_ms),
            max_in_flight_per_partition: c.pipeline.max_in_flight_per_partition,
            fetch_max_records: c.pipeline.fetch_max_records,
            commit_interval: Duration::from_millis(c.pipeline.commit_interval_ms),
            retry: c.retry_policy(),
            retry_sweep: Duration::from_millis(c.retry.sweep_ms),
            reconcile_every: Duration::from_millis(c.retry.reconcile_ms),
            callback_base_url: format!("{}/webhooks", c.http.public_url()),
            early_callbacks: super::callback_handler::EarlyCallbacks {
                ttl_ms: c.http.early_callback_ttl_ms as i64,
                max: c.http.early_callbacks_max,
            },
            lookups: super::status_lookup::LookupSettings {
                schedule: crate::domain::status_lookup::LookupSchedule {
                    after_ms: c.reconcile.status_after_ms as i64,
                    max_age_ms: c.reconcile.max_age_ms as i64,
                },
                per_sec: c.reconcile.lookups_per_sec,
                every: Duration::from_millis(c.reconcile.lookup_every_ms),
            },
            merge: MergeSettings {
                max_ids: c.merge.max_ids,
                // Checked by `Config::load`.
                blocked: crate::domain::merge::BlockedIds::new(&c.merge.blocked_ids)
                    .unwrap_or_default(),
                mark_ttl_ms: c.merge.mark_ttl_ms as i64,
            },
            shutdown_timeout: Duration::from_millis(c.shutdown.timeout_ms),
            max_poison_per_minute: c.pipeline.max_poison_per_minute,
            fault_panic_on: std::env::var(FAULT_PANIC_ON)
                .map(|v| {
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Whether applying the record with this messageId must panic (fault injection).
    pub fn fault_panic(&self, message_id: &str) -> bool {
        !self.fault_panic_on.is_empty() && self.fault_panic_on.iter().any(|m| m == message_id)
    }
}

/// The ports a pipeline runs on.
#[derive(Clone)]
pub struct Ports {
    pub source: Arc<dyn Source>,
    /// The cache of user states in front of `docs` (the system of record).
    pub cache: Arc<dyn StateCache>,
    pub docs: Arc<dyn DocumentStore>,
    pub retries: Arc<dyn RetrySchedule>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
    /// The users' changelog, one writer per user shard (empty: off).
    pub changelog: Vec<Arc<dyn ChangelogWriter>>,
}

/// Shared by every actor of a pipeline.
pub struct Shared {
    pub settings: Settings,
    pub ports: Ports,
    pub campaigns: Vec<Campaign>,
    /// The user shards (each user's one owner), set right after they start (they need
    /// `Shared` themselves).
    pub shards: OnceLock<Vec<Shard>>,
    /// Dispatchers per channel, in fallback order.
    pub dispatchers: Vec<(Channel, Vec<Addr<Dispatcher>>)>,
    /// Their providers' names, in the same order.
    pub provider_names: Vec<(Channel, Vec<String>)>,
    /// The root supervisor, where faults beyond a restart intensity go (set once started).
    pub root: OnceLock<Recipient<Escalate>>,
}

impl Shared {
    /// The shard that owns a user: a stable hash of the user key, whatever partition or
    /// queue carried the record (G8).
    pub fn shard_index(&self, user_id: &str) -> usize {
        let n = self.shards.get().map_or(1, Vec::len);
        crate::domain::keys::owner_shard(user_id, n)
    }

    pub fn shards(&self) -> &[Shard] {
        self.shards.get().map_or(&[], Vec::as_slice)
    }

    /// Where in the channel's fallback order a provider stands.
    pub fn provider_index(&self, channel: Channel, name: &str) -> Option<usize> {
        self.provider_names
            .iter()
            .find(|(c, _)| *c == channel)
            .and_then(|(_, names)| names.iter().position(|n| n == name))
    }

    /// Reports a failure beyond what restarting or dead-lettering can absorb: the process
    /// exits non-zero (crash-only at the top).
    pub fn escalate(&self, actor: &'static str, reason: String) {
        match self.root.get() {
            Some(root) => root.do_send(Escalate { actor, reason }),
            None => tracing::error!(
                actor,
                reason,
                "escalation before the root supervisor started"
            ),
        }
    }

    pub fn dispatchers_for(&self, channel: Channel) -> &[Addr<Dispatcher>] {
        self.dispatchers
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, d)| d.as_slice())
            .unwrap_or(&[])
    }
}

/// A user shard's handles.
#[derive(Clone)]
pub struct Shard {
    pub apply: Recipient<ApplyBatch>,
    pub flush: Recipient<FlushNow>,
    pub merge: Recipient<MergeStep>,
}
