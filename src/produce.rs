//! `herald produce`: the load generator. Publishes the deterministic workload (the one
//! `herald demo` and the tests replay) to the configured source, keyed by user, with the
//! broker's acknowledgement of every message (Kafka idempotent producer, RabbitMQ publisher
//! confirms). The edge: `anyhow`.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::adapters::kafka::source::{client_config, ensure_topics};
use crate::adapters::rabbitmq;
use crate::config::{mask_url_password, Config, SourceKind};
use crate::service::{rabbit_settings, within};
use crate::workload::{Workload, WorkloadSpec};

/// Publishes a deterministic workload to the configured source.
pub async fn produce(config: Config, spec: WorkloadSpec, rate: Option<u64>) -> anyhow::Result<()> {
    match config.source.kind {
        SourceKind::Kafka => produce_kafka(config, spec, rate).await,
        SourceKind::Rabbitmq => produce_rabbit(config, spec, rate).await,
        SourceKind::Embedded => {
            bail!("`herald produce` publishes to kafka or rabbitmq; source.kind is \"embedded\"")
        }
    }
}

fn progress_bar(events: u64) -> ProgressBar {
    let bar = ProgressBar::new(events);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} produced ({per_sec})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// Waits until message number `sent` is due at `rate` messages/s.
async fn pace(rate: Option<u64>, sent: u64, started: Instant) {
    if let Some(r) = rate {
        let due = Duration::from_secs_f64(sent as f64 / r.max(1) as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Publishes to the consistent-hash exchange (declaring the topology first, so nothing is
/// unroutable) with publisher confirms: it returns only when the broker confirmed every
/// message, and fails on the first refused one.
async fn produce_rabbit(
    config: Config,
    spec: WorkloadSpec,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    let settings = rabbit_settings(&config);
    let startup = Duration::from_millis(config.startup.timeout_ms);
    let url = settings.url.clone();
    let conn = within(
        &format!("RabbitMQ at {}", mask_url_password(&url)),
        startup,
        || rabbitmq::source::connect(&url, "herald-produce"),
    )
    .await?;
    let channel = rabbitmq::source::confirming_channel(&conn).await?;
    rabbitmq::source::declare_topology(&channel, &settings).await?;
    let bar = progress_bar(spec.events);
    let started = Instant::now();
    let mut pending = futures::stream::FuturesOrdered::new();
    for (sent, m) in (0_u64..).zip(Workload::new(spec)) {
        pace(rate, sent, started).await;
        let confirm =
            rabbitmq::source::publish(&channel, &settings.exchange, &m.key, &m.payload, None)
                .await?;
        pending.push_back(confirm);
        while pending.len() >= 5_000 {
            if let Some(r) = pending.next().await {
                r?;
                bar.inc(1);
            }
        }
    }
    while let Some(r) = pending.next().await {
        r?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    let _ = conn.close(200, "produced".into()).await;
    eprintln!(
        "produced {} messages to exchange {} in {:.2} s",
        spec.events,
        settings.exchange,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn produce_kafka(
    config: Config,
    spec: WorkloadSpec,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    let brokers = config.kafka.brokers.clone();
    let topic = config.kafka.topic.clone();
    let options = config.kafka.option_strings();
    let startup = Duration::from_millis(config.startup.timeout_ms);
    within(&format!("Kafka at {brokers}"), startup, || {
        let b = brokers.clone();
        let t = topic.clone();
        let o = options.clone();
        let parts = config.kafka.partitions;
        async move {
            ensure_topics(
                &b,
                &o,
                &[(&t, parts), (&format!("{t}.dlq"), 1)],
                Duration::from_secs(5),
            )
            .await
        }
    })
    .await?;
    // librdkafka's own batching (linger.ms 5, batch.size 1 MB) and the idempotent producer.
    let producer: FutureProducer = client_config(&brokers, &options)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "200000")
        .create()
        .context("creating the Kafka producer")?;
    let bar = progress_bar(spec.events);
    let started = Instant::now();
    let mut pending = futures::stream::FuturesOrdered::new();
    use futures::StreamExt;
    for (sent, m) in (0_u64..).zip(Workload::new(spec)) {
        pace(rate, sent, started).await;
        loop {
            let record = FutureRecord::to(&topic)
                .key(m.key.as_bytes())
                .payload(&m.payload[..]);
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push_back(delivery);
                    break;
                }
                Err((e, _)) => {
                    // Local queue full: wait for deliveries, then enqueue again.
                    if pending.is_empty() {
                        bail!("cannot enqueue to Kafka: {e}");
                    }
                    settle(pending.next().await, &bar)?;
                }
            }
        }
        while pending.len() >= 10_000 {
            settle(pending.next().await, &bar)?;
        }
    }
    while let Some(r) = pending.next().await {
        settle(Some(r), &bar)?;
    }
    producer
        .flush(Duration::from_secs(30))
        .context("flushing the producer")?;
    bar.finish_and_clear();
    eprintln!(
        "produced {} messages to {topic} in {:.2} s",
        spec.events,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

type Delivery = Result<
    rdkafka::producer::future_producer::OwnedDeliveryResult,
    futures::channel::oneshot::Canceled,
>;

fn settle(result: Option<Delivery>, bar: &ProgressBar) -> anyhow::Result<()> {
    match result {
        None => Ok(()),
        Some(Ok(Ok(_))) => {
            bar.inc(1);
            Ok(())
        }
        Some(Ok(Err((e, _)))) => Err(anyhow!("delivery failed: {e}")),
        Some(Err(_)) => Err(anyhow!("the producer was dropped before delivery")),
    }
}
