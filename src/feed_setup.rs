//! Builds the downstream feeds the configuration turns on: the `[changelog]` topics (created
//! when missing; Kafka whichever broker the events come from), one changelog writer per user
//! shard, the messages topic's producer, and the `[[feedback]]` webhooks.

use std::sync::Arc;
use std::time::Duration;

use crate::actors::feedback;
use crate::adapters::kafka::changelog::{ensure_feed_topics, ChangelogSettings, KafkaChangelog};
use crate::adapters::kafka::message_feed::KafkaMessageFeed;
use crate::adapters::mongo::feedback::MongoFeedback;
use crate::config::Config;
use crate::domain::feedback::FeedbackHook;
use crate::domain::message::MessageStatus;
use crate::ports::{BoxFut, ChangelogWriter, Clock, FeedError, FeedSink, MessageChange};
use crate::service::within;
use crate::telemetry::Metrics;

/// The feeds of a running service (each empty or `None` when off).
pub struct Feeds {
    pub changelog: Vec<Arc<dyn ChangelogWriter>>,
    /// Where the messages' changes go (the messages topic, feedback webhooks), if anywhere.
    pub messages: Option<Arc<dyn FeedSink>>,
}

/// Publishes to each of several sinks; the changes are published once all took them.
struct Sinks(Vec<Arc<dyn FeedSink>>);

impl FeedSink for Sinks {
    fn publish(&self, changes: Arc<Vec<MessageChange>>) -> BoxFut<Result<(), FeedError>> {
        let sinks = self.0.clone();
        Box::pin(async move {
            for sink in sinks {
                sink.publish(changes.clone()).await?;
            }
            Ok(())
        })
    }
}

pub async fn start(
    config: &Config,
    startup: Duration,
    metrics: Arc<Metrics>,
    db: &mongodb::Database,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Feeds> {
    let mut sinks: Vec<Arc<dyn FeedSink>> = Vec::new();
    if !config.feedback.is_empty() {
        let hooks = config
            .feedback
            .iter()
            .map(|f| {
                let secret = std::env::var(&f.secret_env).map_err(|_| {
                    anyhow::anyhow!(
                        "feedback {}: secret_env names ${}, which is not set",
                        f.url,
                        f.secret_env
                    )
                })?;
                Ok(FeedbackHook {
                    url: f.url.clone(),
                    secret: secret.into_bytes(),
                    // Checked by `Config::load`.
                    statuses: f
                        .statuses
                        .iter()
                        .filter_map(|s| MessageStatus::parse(s))
                        .collect(),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let timeout = config
            .feedback
            .iter()
            .map(|f| f.timeout_ms)
            .max()
            .unwrap_or(5_000);
        let store = within("MongoDB (the feedback schedule)", startup, || {
            MongoFeedback::new(db.clone())
        })
        .await?;
        let policy = crate::domain::retry::RetryPolicy {
            base_ms: config.retry.base_ms,
            max_delay_ms: config.retry.max_delay_ms,
            max_attempts: u32::MAX,
        };
        sinks.push(feedback::start(
            hooks,
            Duration::from_millis(timeout),
            policy,
            Arc::new(store),
            clock,
            metrics.clone(),
        ));
    }
    let users = config.changelog.users_topic();
    let messages = config.changelog.messages_topic();
    if users.is_none() && messages.is_none() {
        return Ok(Feeds {
            changelog: Vec::new(),
            messages: combine(sinks),
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
    if let Some(topic) = messages {
        sinks.push(Arc::new(KafkaMessageFeed::new(
            &kafka.brokers,
            &options,
            topic,
            metrics,
        )?));
    }
    Ok(Feeds {
        changelog,
        messages: combine(sinks),
    })
}

fn combine(mut sinks: Vec<Arc<dyn FeedSink>>) -> Option<Arc<dyn FeedSink>> {
    match sinks.len() {
        0 => None,
        1 => sinks.pop(),
        _ => Some(Arc::new(Sinks(sinks))),
    }
}
