//! The HTTP ingest's wiring: its publisher to the source's broker, its server, and
//! `ingest.only` — an instance that runs the ingest alone (with `/metrics`, `/healthz` and
//! `/readyz`), so the tier that answers clients scales apart from the engine that consumes what
//! it publishes. Such an instance connects to the broker only: no pipeline, no Redis, no
//! MongoDB, no webhooks (every `/webhooks/…` request is answered 404).

use std::collections::{HashMap, HashSet};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail};
use futures::FutureExt;

use crate::adapters::http;
use crate::adapters::http::ingest::IngestState;
use crate::adapters::http::server::{HttpState, Listeners, Readiness};
use crate::adapters::kafka::publisher::KafkaPublisher;
use crate::adapters::kafka::source::ensure_topics;
use crate::adapters::rabbitmq;
use crate::adapters::rabbitmq::publisher::RabbitPublisher;
use crate::config::{Config, SourceKind};
use crate::ports::{
    BoxFut, Callback, CallbackError, CallbackSink, Clock, EventPublisher, Probe, SystemClock,
};
use crate::service::{
    bind, connect_rabbit, keys_from_env, off_the_runtime, rabbit_settings, shutdown_signal, within,
};
use crate::telemetry::Metrics;

/// The ingest's server on `listener`, and the probe `/readyz` asks about its broker.
pub(crate) fn start(
    config: &Config,
    listener: TcpListener,
    write_keys: HashSet<String>,
    clock: Arc<dyn Clock>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(actix_web::dev::ServerHandle, Arc<dyn Probe>)> {
    let publisher = IngestPublisher::new(config)?;
    let state = IngestState::new(
        publisher.port(),
        write_keys,
        config.ingest.rate_per_sec_per_key,
        config.ingest.rate_per_sec_per_peer,
        Duration::from_millis(config.ingest.timeout_ms),
        config.limits.max_message_bytes,
        config.ingest.max_in_flight_bytes,
        clock,
        metrics,
    );
    let bound = listener
        .local_addr()
        .map_or_else(|_| "?".to_string(), |a| a.to_string());
    let server = http::ingest::start(state, listener, 2)?;
    tracing::info!(listen = %bound, "HTTP ingest listening (Segment's Tracking API)");
    Ok((server, Arc::new(publisher)))
}

/// `herald run` with `ingest.only`: until SIGINT/SIGTERM, then every request in flight is
/// answered (its messages acknowledged by the broker or 503) before the process exits.
pub(crate) async fn run_alone(config: Config) -> anyhow::Result<()> {
    let listeners = Listeners::bind(config.http.listen, config.http.metrics_listen)?;
    let listener = bind(config.ingest.listen, "ingest")?
        .ok_or_else(|| anyhow!("ingest.only needs ingest.listen"))?;
    let write_keys = keys_from_env("ingest.write_keys_env", &config.ingest.write_keys_env)?;
    // The engine's sources create these too; an ingest tier may start before any engine.
    create_destinations(&config).await?;
    let metrics = Metrics::shared();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let (ingest, probe) = start(
        &config,
        listener,
        write_keys,
        clock.clone(),
        metrics.clone(),
    )?;
    let readiness = Readiness::new(vec![probe]);
    actix_web::rt::spawn(readiness.clone().run());
    let state = HttpState {
        receivers: HashMap::new(),
        callbacks: Arc::new(NoCallbacks),
        metrics,
        readiness,
        clock,
    };
    let servers = http::server::start(state, listeners, 1)?;
    tracing::info!("running the ingest only: no pipeline, no webhooks");
    let reason = shutdown_signal().await;
    tracing::info!(
        reason,
        "shutting down: answering the ingest's requests in flight"
    );
    ingest.stop(true).await;
    for server in servers {
        server.stop(true).await;
    }
    tracing::info!("drained; bye");
    Ok(())
}

/// The topic and its dead-letter topic (Kafka), or the exchange, its queues and the
/// dead-letter queue (RabbitMQ), as the engine's source declares them. Idempotent.
async fn create_destinations(config: &Config) -> anyhow::Result<()> {
    let startup = Duration::from_millis(config.startup.timeout_ms);
    match config.source.kind {
        SourceKind::Kafka => {
            let (topic, dlq) = (&config.kafka.topic, format!("{}.dlq", config.kafka.topic));
            let options = config.kafka.option_strings();
            let topics = [(topic.as_str(), config.kafka.partitions), (dlq.as_str(), 1)];
            within(
                &format!("Kafka at {}", config.kafka.brokers),
                startup,
                || ensure_topics(&config.kafka.brokers, &options, &topics, startup),
            )
            .await
        }
        SourceKind::Rabbitmq => {
            let (settings, conn) = connect_rabbit(config, startup, "herald-ingest-setup").await?;
            let channel = conn.create_channel().await?;
            // Not retried: a missing plugin or a conflicting queue does not fix itself.
            rabbitmq::source::declare_topology(&channel, &settings).await?;
            let _ = conn.close(0, "declared".into()).await;
            Ok(())
        }
        SourceKind::Embedded => bail!("the ingest needs source.kind kafka or rabbitmq"),
    }
}

/// The callbacks of an instance without a pipeline: none arrive (no provider is configured
/// to receive, so `/webhooks/…` answers 404 before this is asked).
struct NoCallbacks;

impl CallbackSink for NoCallbacks {
    fn deliver(&self, callback: Callback) -> BoxFut<Result<(), CallbackError>> {
        futures::future::ready(Err(CallbackError::NotReady(format!(
            "{}'s callback: this instance runs only the ingest",
            callback.provider
        ))))
        .boxed()
    }
}

/// The ingest's publisher, to the configured source's broker.
#[derive(Clone)]
pub(crate) enum IngestPublisher {
    Kafka(KafkaPublisher),
    Rabbit(RabbitPublisher),
}

impl IngestPublisher {
    pub(crate) fn new(config: &Config) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(config.ingest.timeout_ms);
        Ok(match config.source.kind {
            SourceKind::Kafka => IngestPublisher::Kafka(KafkaPublisher::new(
                &config.kafka.brokers,
                &config.kafka.option_strings(),
                &config.kafka.topic,
                timeout,
            )?),
            SourceKind::Rabbitmq => {
                IngestPublisher::Rabbit(RabbitPublisher::new(rabbit_settings(config)))
            }
            SourceKind::Embedded => bail!("the ingest needs source.kind kafka or rabbitmq"),
        })
    }

    pub(crate) fn port(&self) -> Arc<dyn EventPublisher> {
        match self {
            IngestPublisher::Kafka(p) => Arc::new(p.clone()),
            IngestPublisher::Rabbit(p) => Arc::new(p.clone()),
        }
    }
}

impl Probe for IngestPublisher {
    fn name(&self) -> &'static str {
        "ingest"
    }
    fn check(&self) -> BoxFut<Result<(), String>> {
        match self {
            IngestPublisher::Kafka(p) => {
                let p = p.clone();
                off_the_runtime(move || p.check_broker())
            }
            IngestPublisher::Rabbit(p) => {
                let p = p.clone();
                async move { p.check_broker().await }.boxed()
            }
        }
    }
}
