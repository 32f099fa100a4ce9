//! The embedded rig: the real actor pipeline on in-process adapters (source, stores, retry
//! schedule, simulated providers). Used by `herald demo`, the benchmark and the actor tests.

use std::sync::Arc;
use std::time::Duration;

use crate::actors::context::{Ports, Settings};
use crate::actors::{Pipeline, PipelineSpec, ProviderSpec};
use crate::adapters::memory::docs::MemoryDocumentStore;
use crate::adapters::memory::retry::MemoryRetrySchedule;
use crate::adapters::memory::source::EmbeddedSource;
use crate::adapters::memory::state::MemoryStateCache;
use crate::adapters::providers::sim::{SimBehaviour, SimulatedProvider};
use crate::config::Config;
use crate::domain::campaign::Channel;
use crate::ports::{Clock, DocumentStore, StateCache, SystemClock};
use crate::telemetry::Metrics;

pub struct EmbeddedRig {
    pub source: Arc<EmbeddedSource>,
    pub cache: Arc<MemoryStateCache>,
    pub docs: Arc<MemoryDocumentStore>,
    pub retries: Arc<MemoryRetrySchedule>,
    pub metrics: Arc<Metrics>,
    pub providers: Vec<Arc<SimulatedProvider>>,
    pub clock: Arc<dyn Clock>,
}

impl EmbeddedRig {
    pub fn new(config: &Config, seed: u64) -> EmbeddedRig {
        let sim = &config.demo.simulator;
        let providers = config
            .providers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let behaviour = SimBehaviour {
                    fail_rate: sim.fail_rate,
                    throttle_rate: sim.throttle_rate,
                    reject_rate: sim
                        .reject_rate_by_provider
                        .get(&p.name)
                        .copied()
                        .unwrap_or(sim.reject_rate),
                    undelivered_rate: sim.undelivered_rate,
                    latency_ms: sim.latency_ms,
                    callback_latency_ms: sim.callback_latency_ms,
                };
                SimulatedProvider::new(
                    p.name.clone(),
                    behaviour,
                    seed.wrapping_add(i as u64 * 7919),
                )
            })
            .collect();
        EmbeddedRig {
            source: EmbeddedSource::new(config.demo.partitions),
            cache: MemoryStateCache::new(),
            docs: MemoryDocumentStore::new(),
            retries: MemoryRetrySchedule::new(),
            metrics: Metrics::shared(),
            providers,
            clock: Arc::new(SystemClock),
        }
    }

    /// The rig's ports, optionally with another state cache and document store (fault
    /// injection).
    pub fn ports_with(
        &self,
        cache: Option<Arc<dyn StateCache>>,
        docs: Option<Arc<dyn DocumentStore>>,
    ) -> Ports {
        Ports {
            source: self.source.clone(),
            cache: cache.unwrap_or_else(|| self.cache.clone()),
            docs: docs.unwrap_or_else(|| self.docs.clone()),
            retries: self.retries.clone(),
            clock: self.clock.clone(),
            metrics: self.metrics.clone(),
            changelog: Vec::new(),
        }
    }

    pub fn spec(&self, config: &Config, seed: u64) -> PipelineSpec {
        let providers = config
            .providers
            .iter()
            .zip(&self.providers)
            .filter_map(|(p, sim)| {
                Some(ProviderSpec {
                    provider: sim.clone(),
                    channel: Channel::parse(&p.channel)?,
                    priority: p.priority,
                    rate_per_sec: p.rate_per_sec,
                    timeout: Duration::from_millis(p.timeout_ms),
                    max_concurrency: p.max_concurrency,
                    circuit_failures: p.circuit_failures,
                    circuit_open: Duration::from_millis(p.circuit_open_ms),
                    on_unknown_outcome: Default::default(),
                })
            })
            .collect();
        PipelineSpec {
            settings: Settings::from_config(config),
            campaigns: config.parsed_campaigns.clone(),
            providers,
            workers: config.workers(),
            batch_shards: config.batch_shards(),
            seed,
        }
    }

    /// Starts the pipeline (inside an actix `System`) and connects the simulated providers'
    /// callbacks to it. Partitions are not assigned yet: call `source.assign_all()`.
    pub fn start_with(&self, config: &Config, seed: u64, ports: Ports) -> Pipeline {
        let pipeline = Pipeline::start(self.spec(config, seed), ports);
        for p in &self.providers {
            p.connect(pipeline.callbacks());
        }
        pipeline
    }

    pub fn start(&self, config: &Config, seed: u64) -> Pipeline {
        self.start_with(config, seed, self.ports_with(None, None))
    }

    /// Records fully committed, no message left in flight, no retry pending (the schedule
    /// holds only the entries of `held` messages, due when their quiet hours end).
    pub fn quiescent(&self) -> bool {
        use crate::ports::RetrySchedule;
        let held = self.docs.status_counts().get("held").copied().unwrap_or(0);
        self.source.fully_committed()
            && self.docs.unfinished() == 0
            && futures::executor::block_on(self.retries.pending()).unwrap_or(usize::MAX) <= held
    }
}
