//! The users' changelog on Kafka: one transactional producer per user shard (librdkafka runs
//! one transaction at a time per producer, and a shard writes one flush at a time). Records
//! are staged in a transaction before the flush's fenced MongoDB write and committed after
//! it, so `read_committed` readers see exactly the states MongoDB accepted, in the order it
//! accepted them. The transactional ids are fresh per process: fencing between owners is
//! MongoDB's; a killed instance's open transaction is aborted by the broker after
//! `changelog.transaction_timeout_ms`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::ports::{BoxFut, ChangelogWriter, FeedError, FeedRecord};

use super::source::client_config;

/// What every changelog producer of this process is created from.
#[derive(Clone)]
pub struct ChangelogSettings {
    pub brokers: String,
    pub options: Vec<(String, String)>,
    pub topic: String,
    pub transaction_timeout: Duration,
}

/// One shard's writer.
#[derive(Clone)]
pub struct KafkaChangelog {
    inner: Arc<Inner>,
}

struct Inner {
    settings: ChangelogSettings,
    /// `<process-unique base>-<shard>`; a generation is appended per producer created.
    id_base: String,
    generation: AtomicU64,
    /// `None` after a fatal error: the next stage creates a fresh producer.
    producer: Mutex<Option<FutureProducer>>,
    /// A transaction is open (staged, neither committed nor aborted).
    open: AtomicBool,
}

fn failed(what: &str, e: impl std::fmt::Display) -> FeedError {
    FeedError(format!("{what}: {e}"))
}

impl KafkaChangelog {
    /// A writer for `shard`; its producer is created by the first stage.
    pub fn new(settings: ChangelogSettings, process: &str, shard: usize) -> Self {
        KafkaChangelog {
            inner: Arc::new(Inner {
                settings,
                id_base: format!("herald-changelog-{process}-{shard}"),
                generation: AtomicU64::new(0),
                producer: Mutex::new(None),
                open: AtomicBool::new(false),
            }),
        }
    }
}

impl KafkaChangelog {
    /// Creates the producer and initialises its transactions now (blocking: call off the
    /// runtime), so a broker that refuses them stops the start with a clear error.
    pub fn prepare(&self) -> Result<(), FeedError> {
        let mut slot = self
            .inner
            .producer
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(self.inner.create()?);
        }
        Ok(())
    }
}

impl Inner {
    fn timeout(&self) -> Duration {
        self.settings.transaction_timeout
    }

    fn create(&self) -> Result<FutureProducer, FeedError> {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let ms = self.timeout().as_millis().max(1000).to_string();
        let producer: FutureProducer =
            client_config(&self.settings.brokers, &self.settings.options)
                .set("transactional.id", format!("{}-{generation}", self.id_base))
                .set("enable.idempotence", "true")
                .set("acks", "all")
                .set("linger.ms", "1")
                .set("transaction.timeout.ms", &ms)
                .set("message.timeout.ms", &ms)
                // librdkafka requires it within the transaction timeout.
                .set("socket.timeout.ms", &ms)
                .create()
                .map_err(|e| failed("cannot create the producer", e))?;
        producer
            .init_transactions(self.timeout())
            .map_err(|e| failed("cannot initialise transactions", e))?;
        Ok(producer)
    }

    /// Blocking: a producer with a fresh transaction begun (a transaction left open by a
    /// failed stage is aborted first; a producer that cannot is replaced).
    fn begin(&self) -> Result<FutureProducer, FeedError> {
        let mut slot = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.swap(false, Ordering::AcqRel) {
            if let Some(p) = slot.as_ref() {
                if p.abort_transaction(self.timeout()).is_err() {
                    *slot = None;
                }
            }
        }
        let producer = match slot.as_ref() {
            Some(p) => p.clone(),
            None => {
                let p = self.create()?;
                *slot = Some(p.clone());
                p
            }
        };
        if let Err(e) = producer.begin_transaction() {
            *slot = None;
            return Err(failed("cannot begin a transaction", e));
        }
        self.open.store(true, Ordering::Release);
        Ok(producer)
    }

    /// Blocking: ends the open transaction; a producer that cannot end it is replaced.
    fn end(&self, commit: bool) -> Result<(), FeedError> {
        let mut slot = self.producer.lock().unwrap_or_else(|e| e.into_inner());
        if !self.open.swap(false, Ordering::AcqRel) {
            return if commit {
                Err(FeedError("no transaction is open".into()))
            } else {
                Ok(())
            };
        }
        let Some(p) = slot.as_ref() else {
            return Err(FeedError("the producer is gone".into()));
        };
        let result = if commit {
            p.commit_transaction(self.timeout())
                .map_err(|e| failed("cannot commit", e))
        } else {
            p.abort_transaction(self.timeout())
                .map_err(|e| failed("cannot abort", e))
        };
        if result.is_err() && (!commit || p.abort_transaction(self.timeout()).is_err()) {
            *slot = None;
        }
        result
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FeedError> + Send + 'static,
) -> Result<T, FeedError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(failed("the producer's call panicked", e)))
}

impl ChangelogWriter for KafkaChangelog {
    fn stage(&self, records: Vec<FeedRecord>) -> BoxFut<Result<(), FeedError>> {
        let inner = self.inner.clone();
        async move {
            let producer = {
                let inner = inner.clone();
                blocking(move || inner.begin()).await?
            };
            let mut deliveries = Vec::with_capacity(records.len());
            for r in &records {
                let record = FutureRecord::to(&inner.settings.topic)
                    .key(r.key.as_bytes())
                    .payload(&r.value[..]);
                match producer.send_result(record) {
                    Ok(d) => deliveries.push(d),
                    Err((e, _)) => return Err(failed("cannot enqueue", e)),
                }
            }
            for delivery in futures::future::join_all(deliveries).await {
                match delivery {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(failed("not acknowledged", e)),
                    Err(_) => return Err(FeedError("the producer dropped a record".into())),
                }
            }
            Ok(())
        }
        .boxed()
    }

    fn commit(&self) -> BoxFut<Result<(), FeedError>> {
        let inner = self.inner.clone();
        blocking(move || inner.end(true)).boxed()
    }

    fn abort(&self) -> BoxFut<()> {
        let inner = self.inner.clone();
        async move {
            if let Err(e) = blocking(move || inner.end(false)).await {
                tracing::debug!(error = %e, "changelog transaction not aborted; the broker times it out");
            }
        }
        .boxed()
    }
}

/// Creates the feeds' topics if missing: the users' changelog compacted (a reader from the
/// start sees at least every key's last state), the messages' topic with the broker's
/// retention (every transition).
pub async fn ensure_feed_topics(
    brokers: &str,
    options: &[(String, String)],
    changelog: Option<&str>,
    messages: Option<&str>,
    partitions: i32,
    min_compaction_lag_ms: u64,
    timeout: Duration,
) -> Result<(), FeedError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, options)
        .create()
        .map_err(|e| failed("cannot create the admin client", e))?;
    let lag = min_compaction_lag_ms.to_string();
    let mut new = Vec::new();
    if let Some(name) = changelog {
        new.push(
            NewTopic::new(name, partitions, TopicReplication::Fixed(-1))
                .set("cleanup.policy", "compact")
                .set("min.compaction.lag.ms", &lag),
        );
    }
    if let Some(name) = messages {
        new.push(
            NewTopic::new(name, partitions, TopicReplication::Fixed(-1))
                .set("cleanup.policy", "delete"),
        );
    }
    if new.is_empty() {
        return Ok(());
    }
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|e| failed("cannot create the topics", e))?;
    for r in results {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(FeedError(format!("cannot create topic {name}: {code}")));
            }
        }
    }
    Ok(())
}
