//! The actor system: supervision, mailboxes, batching, commit tracking, backpressure.
//! One actor per file; the messages between them in [`messages`], so no actor module imports
//! another's. [`Pipeline`] wires the tree: a root supervisor over the source supervisor (one
//! partition actor per partition or queue), the user shards (each user's one owner, hosting
//! its aggregator) with a batcher each, one dispatcher per provider and the retry actor.

pub mod batcher;
pub mod callback_handler;
pub mod callback_journal;
pub mod context;
pub mod dispatcher;
pub mod feedback;
pub mod held;
pub mod lanes;
pub mod messages;
pub mod partition;
pub mod reconciler;
pub mod retry;
pub mod root;
pub mod source_supervisor;
pub mod state_loader;
pub mod status_lookup;
pub mod supervision;
pub mod user_shard;

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::watch;

use crate::domain::campaign::{Campaign, Channel};
use crate::ports::{CallbackSink, Provider, UnknownOutcome};

use batcher::Batcher;
use callback_handler::CallbackHandler;
use context::{Ports, Settings, Shard, Shared};
use dispatcher::{
    CampaignRules, Dispatcher, DispatcherPorts, DispatcherSettings, DrainSends, SetChain,
};
use messages::{FlushNow, Running};
use retry::{RetryActor, StopRetries, Wake};
use root::{Attach, RootSupervisor, Shutdown};
use source_supervisor::SourceSupervisor;
use status_lookup::StatusLookups;
use user_shard::UserShard;

/// A provider with its place in its channel's fallback order.
pub struct ProviderSpec {
    pub provider: Arc<dyn Provider>,
    pub channel: Channel,
    pub priority: u32,
    pub rate_per_sec: u32,
    pub timeout: Duration,
    pub max_concurrency: usize,
    pub circuit_failures: u32,
    pub circuit_open: Duration,
    pub on_unknown_outcome: UnknownOutcome,
}

/// Everything a pipeline is built from.
pub struct PipelineSpec {
    pub settings: Settings,
    pub campaigns: Vec<Campaign>,
    pub providers: Vec<ProviderSpec>,
    pub workers: usize,
    pub batch_shards: usize,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{0}")]
    Failed(String),
    #[error("shutdown did not finish within {0:?}")]
    ShutdownTimeout(Duration),
}

/// A running pipeline. Start it inside an actix `System`.
pub struct Pipeline {
    root: Addr<RootSupervisor>,
    source: Addr<SourceSupervisor>,
    retry: Addr<RetryActor>,
    shared: Arc<Shared>,
    callbacks: Arc<CallbackHandler>,
    arbiters: Vec<Arbiter>,
    failure: watch::Receiver<Option<String>>,
}

impl Pipeline {
    pub fn start(spec: PipelineSpec, ports: Ports) -> Pipeline {
        let workers = spec.workers.max(1);
        let arbiters: Vec<Arbiter> = (0..workers).map(|_| Arbiter::new()).collect();
        let handles: Vec<ArbiterHandle> = arbiters.iter().map(|a| a.handle()).collect();

        let dispatcher_ports = DispatcherPorts {
            docs: ports.docs.clone(),
            retries: ports.retries.clone(),
            clock: ports.clock.clone(),
            metrics: ports.metrics.clone(),
        };
        let mut providers = spec.providers;
        providers.sort_by_key(|p| p.priority);
        let campaigns: Arc<std::collections::HashMap<String, CampaignRules>> = Arc::new(
            spec.campaigns
                .iter()
                .map(|c| {
                    let rules = CampaignRules {
                        priority: c.priority,
                        critical: c.critical,
                    };
                    (c.id.clone(), rules)
                })
                .collect(),
        );
        let mut by_channel: Vec<(Channel, Vec<Addr<Dispatcher>>)> = Vec::new();
        let mut names: Vec<(Channel, Vec<String>)> = Vec::new();
        let looked_up: Vec<Arc<dyn Provider>> =
            providers.iter().map(|p| p.provider.clone()).collect();
        for (i, p) in providers.into_iter().enumerate() {
            match names.iter_mut().find(|(c, _)| *c == p.channel) {
                Some((_, v)) => v.push(p.provider.name().to_string()),
                None => names.push((p.channel, vec![p.provider.name().to_string()])),
            }
            let settings = DispatcherSettings {
                rate_per_sec: p.rate_per_sec,
                timeout: p.timeout,
                max_concurrency: p.max_concurrency,
                circuit_failures: p.circuit_failures.max(1),
                circuit_open: p.circuit_open,
                retry: spec.settings.retry,
                callback_base_url: spec.settings.callback_base_url.clone(),
                on_unknown_outcome: p.on_unknown_outcome,
                lookups: spec.settings.lookups.schedule,
                campaigns: campaigns.clone(),
                cap: spec
                    .settings
                    .caps
                    .iter()
                    .find(|c| c.channel == p.channel)
                    .copied(),
            };
            let addr = Dispatcher::new(
                p.provider,
                settings,
                dispatcher_ports.clone(),
                spec.seed ^ (i as u64 + 1),
            )
            .start();
            match by_channel.iter_mut().find(|(c, _)| *c == p.channel) {
                Some((_, v)) => v.push(addr),
                None => by_channel.push((p.channel, vec![addr])),
            }
        }
        for (_, chain) in &by_channel {
            for (index, d) in chain.iter().enumerate() {
                d.do_send(SetChain {
                    chain: chain.clone(),
                    index,
                });
            }
        }

        let shared = Arc::new(Shared {
            settings: spec.settings.clone(),
            ports: ports.clone(),
            campaigns: spec.campaigns,
            shards: Default::default(),
            dispatchers: by_channel,
            provider_names: names,
            root: Default::default(),
        });
        let shard_count = spec.batch_shards.max(1);
        let shards: Vec<Shard> = (0..shard_count)
            .map(|i| {
                let arbiter = &handles[i % handles.len()];
                let s = shared.clone();
                let batcher = Batcher::start_in_arbiter(arbiter, move |_| Batcher::new(i, s));
                let s = shared.clone();
                let addr = UserShard::start_in_arbiter(arbiter, move |_| {
                    UserShard::new(i, shard_count, s, batcher)
                });
                Shard {
                    apply: addr.clone().recipient(),
                    flush: addr.clone().recipient(),
                    merge: addr.recipient(),
                }
            })
            .collect();
        let _ = shared.shards.set(shards);

        let dispatcher_ports_for_lookups = dispatcher_ports.clone();
        let callbacks = CallbackHandler::new(
            dispatcher_ports,
            spec.settings.retry,
            spec.settings.early_callbacks,
            spec.seed ^ 0xca11,
        );
        // Callbacks kept because their send was not recorded yet are tried again until they
        // apply or expire.
        let kept = callbacks.clone();
        actix::spawn(async move {
            loop {
                tokio::time::sleep(callback_handler::EARLY_CALLBACKS_EVERY).await;
                if let Err(e) = kept.apply_kept().await {
                    tracing::warn!(error = %e, "kept callbacks not tried again; the next pass does");
                }
            }
        });
        // Messages still `sent` long after their send are looked up at their providers.
        let lookups = StatusLookups::new(
            dispatcher_ports_for_lookups,
            looked_up,
            callbacks.clone(),
            spec.settings.lookups,
        );
        actix::spawn(async move {
            loop {
                tokio::time::sleep(lookups.every()).await;
                if let Err(e) = lookups.pass().await {
                    tracing::warn!(error = %e, "status lookups not made; the next pass does");
                }
            }
        });
        let retry = RetryActor::new(shared.clone()).start();
        let (failure_tx, failure) = watch::channel(None);
        let root = RootSupervisor::new(failure_tx).start();
        let _ = shared.root.set(root.clone().recipient());
        let source =
            SourceSupervisor::new(shared.clone(), handles, root.clone().recipient()).start();
        root.do_send(Attach(source.clone().recipient()));
        Pipeline {
            root,
            source,
            retry,
            shared,
            callbacks,
            arbiters,
            failure,
        }
    }

    /// The callback entry point (the webhook receiver and in-process providers use it).
    pub fn callbacks(&self) -> Arc<dyn CallbackSink> {
        self.callbacks.clone()
    }

    pub async fn running_partitions(&self) -> Vec<u32> {
        self.source.send(Running).await.unwrap_or_default()
    }

    /// Asks the retry actor to sweep now.
    pub fn wake_retries(&self) {
        self.retry.do_send(Wake);
    }

    /// A handle that wakes the retry actor (for the Redis key-expiry listener).
    pub fn retry_waker(&self) -> impl Fn() + Send + Sync + 'static {
        let retry = self.retry.clone();
        move || retry.do_send(Wake)
    }

    /// Asks every user shard to flush what it holds now.
    pub fn flush_now(&self) {
        for s in self.shared.shards() {
            s.flush.do_send(FlushNow);
        }
    }

    /// Resolves with the reason when a failure escalated to the root.
    pub async fn failed(&self) -> String {
        let mut rx = self.failure.clone();
        loop {
            if let Some(reason) = rx.borrow().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                futures::future::pending::<()>().await;
            }
        }
    }

    pub fn failure(&self) -> Option<String> {
        self.failure.borrow().clone()
    }

    /// G6: stop consuming, let in-flight records become durable, commit, stop the workers.
    pub async fn shutdown(self) -> Result<(), PipelineError> {
        let timeout = self.shared.settings.shutdown_timeout;
        let retry = self.retry.clone();
        let root = self.root.clone();
        let shared = self.shared.clone();
        let drain = async move {
            // The source first: the last flushes hand their messages to the dispatchers.
            let _ = root.send(Shutdown).await;
            // No new retries; a claimed one not sent fires again after its lease.
            let _ = retry.send(StopRetries).await;
            // Then the sends: until a round in which every dispatcher was idle already
            // (a fallback may hand a job on to a dispatcher that answered before).
            let dispatchers: Vec<_> = shared
                .dispatchers
                .iter()
                .flat_map(|(_, chain)| chain.iter().cloned())
                .collect();
            loop {
                let idle =
                    futures::future::join_all(dispatchers.iter().map(|d| d.send(DrainSends))).await;
                if idle.into_iter().all(|r| r.unwrap_or(true)) {
                    break;
                }
            }
        };
        let drained = tokio::time::timeout(timeout, drain).await;
        for a in &self.arbiters {
            a.stop();
        }
        if let Some(reason) = self.failure.borrow().clone() {
            return Err(PipelineError::Failed(reason));
        }
        match drained {
            Ok(_) => Ok(()),
            Err(_) => Err(PipelineError::ShutdownTimeout(timeout)),
        }
    }
}
