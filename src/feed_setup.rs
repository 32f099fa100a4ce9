//! Builds the downstream feeds `[changelog]` turns on: the topics (created when missing),
//! one changelog writer per user shard, the messages topic's producer. Both go to Kafka
//! whichever broker the events come from.

use std::sync::Arc;
use std::time::Duration;

use crate::adapters::kafka::changelog::{ensure_feed_topics, ChangelogSettings, KafkaChangelog};
use crate::adapters::kafka::message_feed::KafkaMessageFeed;
use crate::config::Config;
use crate::ports::{ChangelogWriter, MessageObserver};
use crate::service::within;
use crate::telemetry::Metrics;

/// The feeds of a running service (each empty or `None` when off).
pub struct Feeds {
    pub changelog: Vec<Arc<dyn ChangelogWriter>>,
    pub messages: Option<Arc<dyn MessageObserver>>,
}

pub async fn start(
    config: &Config,
    startup: Duration,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Feeds> {
    let users = config.changelog.users_topic();
    let messages = config.changelog.messages_topic();
    if users.is_none() && messages.is_none() {
        return Ok(Feeds {
            changelog: Vec::new(),
            messages: None,
        });
    }
    let kafka = &config.kafka;
    let options = kafka.option_strings();
    within(
        &format!("Kafka at {} (the changelog's topics)", kafka.brokers),
        startup,
        || {
            ensure_feed_topics(
                &kafka.brokers,
                &options,
                users,
                messages,
                kafka.partitions,
                config.changelog.min_compaction_lag_ms,
                startup,
            )
        },
    )
    .await?;
    let changelog: Vec<Arc<dyn ChangelogWriter>> = match users {
        Some(topic) => {
            let settings = ChangelogSettings {
                brokers: kafka.brokers.clone(),
                options: options.clone(),
                topic: topic.to_string(),
                transaction_timeout: Duration::from_millis(config.changelog.transaction_timeout_ms),
            };
            // Fresh per process: an earlier process's transactions are not this one's.
            let process = format!("{}-{:08x}", std::process::id(), rand::random::<u32>());
            let writers: Vec<KafkaChangelog> = (0..config.batch_shards())
                .map(|shard| KafkaChangelog::new(settings.clone(), &process, shard))
                .collect();
            for writer in &writers {
                let writer = writer.clone();
                tokio::task::spawn_blocking(move || writer.prepare())
                    .await
                    .map_err(|e| anyhow::anyhow!("changelog: {e}"))?
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            writers
                .into_iter()
                .map(|w| Arc::new(w) as Arc<dyn ChangelogWriter>)
                .collect()
        }
        None => Vec::new(),
    };
    let messages = match messages {
        Some(topic) => Some(Arc::new(KafkaMessageFeed::new(
            &kafka.brokers,
            &options,
            topic,
            metrics,
        )?) as Arc<dyn MessageObserver>),
        None => None,
    };
    Ok(Feeds {
        changelog,
        messages,
    })
}
