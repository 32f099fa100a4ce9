//! What every actor of one pipeline shares: settings, ports, metrics and the addresses of
//! the long-lived actors.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::Addr;

use crate::config::Config;
use crate::domain::campaign::{Campaign, Channel};
use crate::domain::retry::RetryPolicy;
use crate::domain::user::DedupLimits;
use crate::ports::{Clock, DocumentStore, RetrySchedule, Source, StateStore};
use crate::telemetry::Metrics;

use super::batcher::Batcher;
use super::dispatcher::Dispatcher;

/// The numbers the actors run by (from [`Config`]).
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_message_bytes: usize,
    pub dedup: DedupLimits,
    pub batch_max_size: usize,
    pub batch_max_wait: Duration,
    pub aggregator_idle: Duration,
    pub aggregators_per_partition: usize,
    pub max_in_flight_per_partition: usize,
    pub fetch_max_records: usize,
    pub commit_interval: Duration,
    pub retry: RetryPolicy,
    pub retry_sweep: Duration,
    pub callback_base_url: String,
    pub shutdown_timeout: Duration,
}

impl Settings {
    pub fn from_config(c: &Config) -> Settings {
        Settings {
            max_message_bytes: c.limits.max_message_bytes,
            dedup: c.dedup_limits(),
            batch_max_size: c.batch.max_size,
            batch_max_wait: Duration::from_millis(c.batch.max_wait_ms),
            aggregator_idle: Duration::from_millis(c.aggregator.idle_ms),
            aggregators_per_partition: c.aggregator.max_per_partition,
            max_in_flight_per_partition: c.pipeline.max_in_flight_per_partition,
            fetch_max_records: c.pipeline.fetch_max_records,
            commit_interval: Duration::from_millis(c.pipeline.commit_interval_ms),
            retry: c.retry_policy(),
            retry_sweep: Duration::from_millis(c.retry.sweep_ms),
            callback_base_url: format!("{}/webhooks", c.http.public_url()),
            shutdown_timeout: Duration::from_millis(c.shutdown.timeout_ms),
        }
    }
}

/// The ports a pipeline runs on.
#[derive(Clone)]
pub struct Ports {
    pub source: Arc<dyn Source>,
    pub state: Arc<dyn StateStore>,
    pub docs: Arc<dyn DocumentStore>,
    pub retries: Arc<dyn RetrySchedule>,
    pub clock: Arc<dyn Clock>,
    pub metrics: Arc<Metrics>,
}

/// Shared by every actor of a pipeline.
pub struct Shared {
    pub settings: Settings,
    pub ports: Ports,
    pub campaigns: Vec<Campaign>,
    /// Set right after the batchers start (they need `Shared` themselves).
    pub batchers: Arc<OnceLock<Vec<Addr<Batcher>>>>,
    /// Dispatchers per channel, in fallback order.
    pub dispatchers: Vec<(Channel, Vec<Addr<Dispatcher>>)>,
}

impl Shared {
    /// The batcher shard that owns a user (stable, so one user always has one batcher).
    pub fn batcher_for(&self, user_id: &str) -> &Addr<Batcher> {
        let batchers = self
            .batchers
            .get()
            .expect("batchers start before any partition");
        &batchers[crate::adapters::memory_state::shard_of(user_id, batchers.len())]
    }

    pub fn dispatchers_for(&self, channel: Channel) -> &[Addr<Dispatcher>] {
        self.dispatchers
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, d)| d.as_slice())
            .unwrap_or(&[])
    }
}
