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
use crate::domain::message::{MessageRecord, MessageStatus};
use crate::ports::{ChangelogWriter, Clock, MessageObserver};
use crate::service::within;
use crate::telemetry::Metrics;

/// The feeds of a running service (each empty or `None` when off).
pub struct Feeds {
    pub changelog: Vec<Arc<dyn ChangelogWriter>>,
    pub messages: Option<Arc<dyn MessageObserver>>,
}

/// Tells each of several observers.
struct Observers(Vec<Arc<dyn MessageObserver>>);

impl MessageObserver for Observers {
    fn changed(&self, record: &MessageRecord) {
        for o in &self.0 {
            o.changed(record);
        }
    }
}

pub async fn start(
    config: &Config,
    startup: Duration,
    metrics: Arc<Metrics>,
    db: &mongodb::Database,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<Feeds> {
    let mut observers: Vec<Arc<dyn MessageObserver>> = Vec::new();
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
        observers.push(feedback::start(
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
            messages: observe(observers),
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
        observers.push(Arc::new(KafkaMessageFeed::new(
            &kafka.brokers,
            &options,
            topic,
            metrics,
        )?));
    }
    Ok(Feeds {
        changelog,
        messages: observe(observers),
    })
}

fn observe(mut observers: Vec<Arc<dyn MessageObserver>>) -> Option<Arc<dyn MessageObserver>> {
    match observers.len() {
        0 => None,
        1 => observers.pop(),
        _ => Some(Arc::new(Observers(observers))),
    }
}
