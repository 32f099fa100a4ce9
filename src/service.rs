//! `herald run`: the service on real backends (the edge: `anyhow`). The load generator,
//! `herald produce`, is in `produce.rs`.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail};
use futures::FutureExt;

use crate::actors::callback_journal::Journal;
use crate::actors::context::{Ports, Settings};
use crate::actors::{Pipeline, PipelineSpec};
use crate::adapters::http;
use crate::adapters::http::server::{HttpState, Listeners};
use crate::adapters::kafka::source::{KafkaSettings, KafkaSource};
use crate::adapters::mongo::docs::MongoDocumentStore;
use crate::adapters::rabbitmq;
use crate::adapters::rabbitmq::source::{RabbitSettings, RabbitSource};
use crate::adapters::redis::connection::RedisTarget;
use crate::adapters::redis::journal::RedisCallbackJournal;
use crate::adapters::redis::retry::{listen_for_wakeups, RedisRetrySchedule};
use crate::adapters::redis::state::RedisStateCache;
use crate::config::{mask_url_password, Config, SourceKind};
use crate::ingest_tier;
use crate::ports::{BoxFut, Clock, Probe, Source, SystemClock};
use crate::provider_setup;
use crate::telemetry::Metrics;

/// Retries `connect` until it succeeds or `timeout` passes; the error names the backend.
pub(crate) async fn within<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    what: &str,
    timeout: Duration,
    mut connect: impl FnMut() -> F,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut delay = Duration::from_millis(100);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let last =
            match tokio::time::timeout(remaining.max(Duration::from_millis(1)), connect()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
        if Instant::now() + delay >= deadline {
            bail!(
                "cannot reach {what} within {} ms: {last}",
                timeout.as_millis()
            );
        }
        tracing::warn!(what, error = %last, "backend not reachable yet; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

fn kafka_settings(config: &Config) -> KafkaSettings {
    KafkaSettings {
        brokers: config.kafka.brokers.clone(),
        topic: config.kafka.topic.clone(),
        group_id: config.kafka.group_id.clone(),
        group_instance_id: config.kafka.group_instance_id.clone(),
        partitions: config.kafka.partitions,
        options: config.kafka.option_strings(),
        // Two fetches ahead of the partition actor; beyond that the partition is paused.
        channel_capacity: 2 * config.pipeline.fetch_max_records,
    }
}

pub(crate) fn rabbit_settings(config: &Config) -> RabbitSettings {
    // Room for a full batch being flushed while the next one fills, within what a partition
    // may hold in flight anyway (the AMQP prefetch count is 16 bits).
    let prefetch = (config.batch.max_size * 2)
        .min(config.pipeline.max_in_flight_per_partition)
        .clamp(1, u16::MAX as usize) as u16;
    RabbitSettings {
        url: config.rabbitmq.url.clone(),
        exchange: config.rabbitmq.exchange.clone(),
        queues: config.rabbitmq.queues,
        prefetch,
    }
}

/// The RabbitMQ settings of `config` and a connection named `name` to its broker, retried for
/// up to `startup`.
pub(crate) async fn connect_rabbit(
    config: &Config,
    startup: Duration,
    name: &str,
) -> anyhow::Result<(RabbitSettings, lapin::Connection)> {
    let settings = rabbit_settings(config);
    let url = settings.url.clone();
    let conn = within(
        &format!("RabbitMQ at {}", mask_url_password(&url)),
        startup,
        || rabbitmq::source::connect(&url, name),
    )
    .await?;
    Ok((settings, conn))
}

/// The running source, whichever it is.
#[derive(Clone)]
enum RunningSource {
    Kafka(Arc<KafkaSource>),
    Rabbit(Arc<RabbitSource>),
}

impl RunningSource {
    async fn start(config: &Config, startup: Duration) -> anyhow::Result<RunningSource> {
        match config.source.kind {
            SourceKind::Kafka => {
                let settings = kafka_settings(config);
                let source = within(
                    &format!("Kafka at {}", config.kafka.brokers),
                    startup,
                    || KafkaSource::start(settings.clone(), Duration::from_secs(5).min(startup)),
                )
                .await?;
                tracing::info!(topic = %config.kafka.topic, group = %config.kafka.group_id, "herald running");
                Ok(RunningSource::Kafka(source))
            }
            SourceKind::Rabbitmq => {
                let (settings, conn) = connect_rabbit(config, startup, "herald").await?;
                // Not retried: a missing plugin or a conflicting queue does not fix itself.
                let source = RabbitSource::start(settings, conn).await?;
                tracing::info!(exchange = %config.rabbitmq.exchange, queues = config.rabbitmq.queues, "herald running");
                Ok(RunningSource::Rabbit(source))
            }
            SourceKind::Embedded => bail!("source.kind = \"embedded\" is for `herald demo`"),
        }
    }

    fn port(&self) -> Arc<dyn Source> {
        match self {
            RunningSource::Kafka(s) => s.clone(),
            RunningSource::Rabbit(s) => s.clone(),
        }
    }

    fn probe(&self) -> Arc<dyn Probe> {
        Arc::new(SourceProbe(self.clone()))
    }

    async fn close(&self) {
        match self {
            RunningSource::Kafka(s) => {
                let closer = s.clone();
                let _ = tokio::task::spawn_blocking(move || closer.close()).await;
            }
            RunningSource::Rabbit(s) => s.close().await,
        }
    }
}

/// Where Redis is: a cluster when `redis.cluster_nodes` is set, else `redis.url`.
fn redis_target(config: &Config) -> RedisTarget {
    match config.redis.cluster_node_list() {
        Some(nodes) => RedisTarget::Cluster { nodes },
        None => RedisTarget::Single {
            url: config.redis.url.clone(),
            retry_db: config.redis.retry_db,
        },
    }
}

/// How errors name Redis (passwords masked).
fn redis_name(target: &RedisTarget) -> String {
    match target {
        RedisTarget::Single { url, .. } => format!("Redis at {}", mask_url_password(url)),
        RedisTarget::Cluster { nodes } => format!(
            "the Redis Cluster at {}",
            nodes
                .iter()
                .map(|n| mask_url_password(n))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// Binds an optional listener (a taken port is a one-line error before anything starts).
pub(crate) fn bind(
    addr: Option<std::net::SocketAddr>,
    what: &str,
) -> anyhow::Result<Option<std::net::TcpListener>> {
    addr.map(|addr| {
        std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow!("{what}: cannot listen on {addr}: {e}"))
    })
    .transpose()
}

/// The comma-separated keys of the environment variable `var`, named by the key `key`: set
/// and holding at least one key.
pub(crate) fn keys_from_env(
    key: &str,
    var: &str,
) -> anyhow::Result<std::collections::HashSet<String>> {
    let value = std::env::var(var).map_err(|_| anyhow!("{key} names ${var}, which is not set"))?;
    let keys = http::key_list(&value);
    if keys.is_empty() {
        bail!("{key} names ${var}, which holds no key");
    }
    Ok(keys)
}

/// Runs the service until SIGINT/SIGTERM, then drains and commits (G6).
pub async fn run(config: Config) -> anyhow::Result<()> {
    if config.ingest.only {
        return ingest_tier::run_alone(config).await;
    }
    // The port first: a taken port is a one-line error before anything else starts.
    let listeners = Listeners::bind(config.http.listen, config.http.metrics_listen)?;
    let ingest_listener = bind(config.ingest.listen, "ingest")?;
    let write_keys = match &ingest_listener {
        Some(_) => keys_from_env("ingest.write_keys_env", &config.ingest.write_keys_env)?,
        None => Default::default(),
    };
    let api_listener = bind(config.http.api_listen, "read API")?;
    let api_keys = match &api_listener {
        Some(_) => keys_from_env("http.api_keys_env", &config.http.api_keys_env)?,
        None => Default::default(),
    };
    let providers = provider_setup::providers(&config)?;
    let receivers = provider_setup::receivers(&config, &config.http.public_url())?;
    let startup = Duration::from_millis(config.startup.timeout_ms);
    let target = redis_target(&config);
    let redis_name = redis_name(&target);
    let prefix = config.redis.prefix.clone();
    let state_ttl = config.redis.state_ttl_ms;
    let cache = within(&redis_name, startup, || {
        let (t, p) = (target.clone(), prefix.clone());
        async move {
            let s = RedisStateCache::connect(&t, &p, state_ttl).await?;
            s.ping().await?;
            Ok::<_, crate::ports::StoreError>(s)
        }
    })
    .await?;
    let mongo_url = config.mongo.url.clone();
    let database = config.mongo.database.clone();
    let write_concern = config.mongo.write_concern.clone();
    let docs = within(
        &format!("MongoDB at {}", mask_url_password(&mongo_url)),
        startup,
        || {
            let (u, d, w) = (mongo_url.clone(), database.clone(), write_concern.clone());
            async move {
                let s = MongoDocumentStore::connect(&u, &d, &w).await?;
                s.ping().await?;
                s.ensure_indexes().await?;
                Ok::<_, crate::ports::StoreError>(s)
            }
        },
    )
    .await?;
    let retries = within(&redis_name, startup, || {
        RedisRetrySchedule::connect(&target, &prefix)
    })
    .await?;
    let source = RunningSource::start(&config, startup).await?;

    let metrics = Metrics::shared();
    let feeds = crate::feed_setup::start(
        &config,
        startup,
        metrics.clone(),
        docs.database(),
        Arc::new(SystemClock),
    )
    .await?;
    let docs = match &feeds.messages {
        Some(sink) => docs.with_feeds(sink.clone()),
        None => docs,
    };
    metrics.declare_providers(config.providers.iter().map(|p| p.name.as_str()));
    let cache = Arc::new(cache);
    let docs = Arc::new(docs);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ports = Ports {
        source: source.port(),
        cache: cache.clone(),
        docs: docs.clone(),
        retries: Arc::new(retries),
        clock: clock.clone(),
        metrics: metrics.clone(),
        changelog: feeds.changelog,
    };
    let spec = PipelineSpec {
        settings: Settings::from_config(&config),
        campaigns: config.parsed_campaigns.clone(),
        providers,
        workers: config.workers(),
        batch_shards: config.batch_shards(),
        seed: std::process::id() as u64 ^ clock.now_ms() as u64,
    };
    let pipeline = Pipeline::start(spec, ports);
    let waker = pipeline.retry_waker();
    let wakeups = actix_web::rt::spawn(listen_for_wakeups(
        target.clone(),
        prefix.clone(),
        config.redis.configure_notifications,
        waker,
    ));
    let mut probes: Vec<Arc<dyn Probe>> = vec![
        source.probe(),
        Arc::new(RedisProbe(cache)),
        Arc::new(MongoProbe(docs.clone())),
    ];
    let ingest = match ingest_listener {
        Some(listener) => {
            let (server, probe) = ingest_tier::start(
                &config,
                listener,
                write_keys,
                clock.clone(),
                metrics.clone(),
            )?;
            probes.push(probe);
            Some(server)
        }
        None => None,
    };
    // With the journal, callbacks are answered once journaled and applied behind it.
    let callbacks = if config.http.callback_journal {
        let journal = within(&redis_name, startup, || {
            RedisCallbackJournal::connect(&target, &prefix)
        })
        .await?;
        let journal = Journal::new(
            Arc::new(journal),
            pipeline.callbacks(),
            clock.clone(),
            metrics.clone(),
            config.http.callback_journal_max_pending,
        );
        let receiver = journal.receiver.clone();
        actix_web::rt::spawn(journal.run());
        tracing::info!("callbacks are answered once journaled in Redis, applied behind");
        receiver as Arc<dyn crate::ports::CallbackSink>
    } else {
        pipeline.callbacks()
    };
    let api = match api_listener {
        Some(listener) => {
            let bound = listener
                .local_addr()
                .map_or_else(|_| "?".to_string(), |a| a.to_string());
            let state = http::api::ApiState {
                reads: docs.clone(),
                keys: api_keys,
            };
            let server = http::api::start(state, listener, 2)?;
            tracing::info!(listen = %bound, "read API listening");
            Some(server)
        }
        None => None,
    };
    let readiness = http::server::Readiness::new(probes);
    actix_web::rt::spawn(readiness.clone().run());
    let http_state = HttpState {
        receivers,
        callbacks,
        metrics: metrics.clone(),
        readiness,
        clock,
    };
    // The bound address, not the configured one (port 0 takes an ephemeral port).
    let bound = listeners
        .main
        .local_addr()
        .map_or_else(|_| config.http.listen.to_string(), |a| a.to_string());
    let servers = http::server::start(http_state, listeners, 2)?;
    tracing::info!(listen = %bound, "HTTP listening (webhooks, /metrics, /healthz, /readyz)");
    let reason = tokio::select! {
        r = shutdown_signal() => r,
        failure = pipeline.failed() => format!("failure: {failure}"),
    };
    tracing::info!(
        reason,
        "shutting down: draining in-flight work and committing"
    );
    // The ingest first: what it answered 200 for is in the broker already.
    if let Some(server) = ingest {
        server.stop(true).await;
    }
    if let Some(server) = api {
        server.stop(true).await;
    }
    let result = pipeline.shutdown().await;
    for server in servers {
        server.stop(true).await;
    }
    wakeups.abort();
    source.close().await;
    result.map_err(|e| anyhow!(e))?;
    let (p50, p99) = metrics.latency_percentiles_ms();
    tracing::info!(
        latency_p50_ms = p50,
        latency_p99_ms = p99,
        applied = metrics.applied.get(),
        "drained and committed; bye"
    );
    Ok(())
}

struct SourceProbe(RunningSource);
/// A blocking check (librdkafka's metadata request) run on the blocking pool.
pub(crate) fn off_the_runtime(
    check: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> BoxFut<Result<(), String>> {
    async move {
        tokio::task::spawn_blocking(check)
            .await
            .map_err(|e| e.to_string())?
    }
    .boxed()
}

struct RedisProbe(Arc<RedisStateCache>);
struct MongoProbe(Arc<MongoDocumentStore>);

impl Probe for SourceProbe {
    fn name(&self) -> &'static str {
        match self.0 {
            RunningSource::Kafka(_) => "kafka",
            RunningSource::Rabbit(_) => "rabbitmq",
        }
    }
    fn check(&self) -> BoxFut<Result<(), String>> {
        match &self.0 {
            RunningSource::Kafka(source) => {
                let source = source.clone();
                off_the_runtime(move || source.check_broker())
            }
            RunningSource::Rabbit(source) => futures::future::ready(source.check_broker()).boxed(),
        }
    }
}

impl Probe for RedisProbe {
    fn name(&self) -> &'static str {
        "redis"
    }
    fn check(&self) -> BoxFut<Result<(), String>> {
        let store = self.0.clone();
        async move { store.ping().await.map_err(|e| e.to_string()) }.boxed()
    }
}

impl Probe for MongoProbe {
    fn name(&self) -> &'static str {
        "mongodb"
    }
    fn check(&self) -> BoxFut<Result<(), String>> {
        let store = self.0.clone();
        async move { store.ping().await.map_err(|e| e.to_string()) }.boxed()
    }
}

pub(crate) async fn shutdown_signal() -> String {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return futures::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM".to_string(),
        _ = tokio::signal::ctrl_c() => "SIGINT".to_string(),
    }
}
