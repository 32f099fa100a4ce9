//! Kafka source (rdkafka). One dedicated thread polls the consumer: that keeps rebalance
//! callbacks served (rust-rdkafka #738) and hands each record to its partition's bounded
//! channel, read by that partition's actor. A revoke blocks inside the callback until the
//! revoked partitions drained and committed, so their next owner starts exactly after what is
//! durable. Commits are synchronous and explicit (no auto-commit, no auto offset store).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use parking_lot::Mutex;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, oneshot};

use super::channel_reader::ChannelReader;
use crate::ports::{
    AssignmentEvent, BoxFut, DeadLetter, PartitionReader, Record, Source, SourceError,
};

/// Records buffered per partition between the poll thread and the partition actor.
const CHANNEL_CAPACITY: usize = 20_000;

/// Settings of the Kafka source (`kafka.*`).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub group_instance_id: Option<String>,
    /// Partitions of the topic when Herald has to create it.
    pub partitions: i32,
}

type Senders = Arc<Mutex<HashMap<u32, mpsc::Sender<Record>>>>;
type Receivers = Arc<Mutex<HashMap<u32, mpsc::Receiver<Record>>>>;

pub struct RebalanceContext {
    topic: String,
    /// Set when the source closes: a revoke then has nobody to drain for it.
    closing: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<AssignmentEvent>,
    senders: Senders,
    receivers: Receivers,
}

impl RebalanceContext {
    fn partitions(&self, tpl: &TopicPartitionList) -> Vec<u32> {
        tpl.elements_for_topic(&self.topic)
            .iter()
            .map(|e| e.partition() as u32)
            .collect()
    }
}

impl ClientContext for RebalanceContext {}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = self.partitions(tpl);
            {
                let mut senders = self.senders.lock();
                for p in &partitions {
                    senders.remove(p);
                }
            }
            if partitions.is_empty() || self.closing.load(Ordering::Acquire) {
                return;
            }
            let (done, wait) = oneshot::channel();
            if self
                .events
                .send(AssignmentEvent::Revoked {
                    partitions: partitions.clone(),
                    done,
                })
                .is_ok()
            {
                // Blocks the poll thread (and so the rebalance) until the partitions drained
                // and committed: their next owner starts after what is durable.
                let _ = wait.blocking_recv();
            }
            tracing::info!(?partitions, "kafka partitions revoked");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.partitions(tpl);
                {
                    let mut senders = self.senders.lock();
                    let mut receivers = self.receivers.lock();
                    for p in &partitions {
                        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
                        senders.insert(*p, tx);
                        receivers.insert(*p, rx);
                    }
                }
                tracing::info!(?partitions, "kafka partitions assigned");
                let _ = self.events.send(AssignmentEvent::Assigned(partitions));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }
}

type HeraldConsumer = BaseConsumer<RebalanceContext>;

pub struct KafkaSource {
    settings: KafkaSettings,
    consumer: Arc<HeraldConsumer>,
    producer: FutureProducer,
    assignments: Mutex<Option<mpsc::UnboundedReceiver<AssignmentEvent>>>,
    senders: Senders,
    receivers: Receivers,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<JoinHandle<()>>>,
    high_watermarks: Arc<Mutex<HashMap<u32, u64>>>,
}

fn unavailable(e: KafkaError) -> SourceError {
    SourceError::Unavailable(e.to_string())
}

pub fn client_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    c
}

/// Creates the topics if they do not exist (Tansu auto-creates with 4 partitions otherwise).
pub async fn ensure_topics(
    brokers: &str,
    topics: &[(&str, i32)],
    timeout: Duration,
) -> Result<(), SourceError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(brokers).create().map_err(unavailable)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(1))
                .set("retention.ms", "-1")
                .set("cleanup.policy", "delete")
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(timeout));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(unavailable)?;
    for r in results {
        if let Err((name, code)) = r {
            if code != RDKafkaErrorCode::TopicAlreadyExists {
                return Err(SourceError::Unavailable(format!(
                    "cannot create topic {name}: {code}"
                )));
            }
        }
    }
    Ok(())
}

impl KafkaSource {
    /// Connects, checks the broker answers within `timeout`, creates the topics if missing,
    /// subscribes, and starts the poll thread.
    pub async fn start(
        settings: KafkaSettings,
        timeout: Duration,
    ) -> Result<Arc<KafkaSource>, SourceError> {
        let dlq = format!("{}.dlq", settings.topic);
        ensure_topics(
            &settings.brokers,
            &[(&settings.topic, settings.partitions), (&dlq, 1)],
            timeout,
        )
        .await?;
        let (events, assignments) = mpsc::unbounded_channel();
        let senders: Senders = Arc::default();
        let receivers: Receivers = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let context = RebalanceContext {
            topic: settings.topic.clone(),
            closing: stop.clone(),
            events,
            senders: senders.clone(),
            receivers: receivers.clone(),
        };
        let mut config = client_config(&settings.brokers);
        config
            .set("group.id", &settings.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Eager assignment: Tansu's cooperative-sticky took 8–11 s and left revoked
            // partitions unconsumed meanwhile (BACKENDS.md).
            .set("partition.assignment.strategy", "roundrobin")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            .set("max.poll.interval.ms", "300000")
            // The broker may hold a fetch this long when little data is waiting (the default
            // 500 ms was most of the end-to-end latency at moderate rates).
            .set("fetch.wait.max.ms", "50");
        if let Some(id) = &settings.group_instance_id {
            config.set("group.instance.id", id);
        }
        let consumer: HeraldConsumer = config.create_with_context(context).map_err(unavailable)?;
        let consumer = Arc::new(consumer);
        let probe = consumer.clone();
        let topic = settings.topic.clone();
        let metadata =
            tokio::task::spawn_blocking(move || probe.fetch_metadata(Some(&topic), timeout))
                .await
                .map_err(|e| SourceError::Unavailable(e.to_string()))?
                .map_err(|e| {
                    SourceError::Unavailable(format!(
                        "kafka at {} did not answer: {e}",
                        settings.brokers
                    ))
                })?;
        if metadata.topics().iter().all(|t| t.partitions().is_empty()) {
            return Err(SourceError::Unavailable(format!(
                "topic {} has no partitions",
                settings.topic
            )));
        }
        consumer
            .subscribe(&[&settings.topic])
            .map_err(unavailable)?;
        let producer: FutureProducer = client_config(&settings.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "false")
            .create()
            .map_err(unavailable)?;
        let source = Arc::new(KafkaSource {
            settings,
            consumer,
            producer,
            assignments: Mutex::new(Some(assignments)),
            senders,
            receivers,
            stop,
            poller: Mutex::new(None),
            high_watermarks: Arc::default(),
        });
        source.spawn_poller();
        Ok(source)
    }

    fn spawn_poller(&self) {
        let consumer = self.consumer.clone();
        let senders = self.senders.clone();
        let stop = self.stop.clone();
        let topic = self.settings.topic.clone();
        let handle = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    match consumer.poll(Duration::from_millis(100)) {
                        None => {}
                        Some(Err(e)) => tracing::warn!(error = %e, "kafka poll error"),
                        Some(Ok(m)) => {
                            if m.topic() != topic {
                                continue;
                            }
                            let partition = m.partition() as u32;
                            let record = Record {
                                partition,
                                offset: m.offset() as u64,
                                key: m.key().map(Bytes::copy_from_slice),
                                payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                                timestamp_ms: m.timestamp().to_millis(),
                            };
                            let sender = senders.lock().get(&partition).cloned();
                            // A record of a partition no longer ours is dropped: it is not
                            // committed, so its next owner reads it. A full channel blocks the
                            // poller: only a stalled pipeline fills one, and then all partitions
                            // wait on the same stores anyway. (Pausing the partition instead lost
                            // records on resume against Tansu: gaps in the offsets, measured.)
                            if let Some(s) = sender {
                                let _ = s.blocking_send(record);
                            }
                        }
                    }
                }
            })
            .expect("spawning the kafka poll thread");
        *self.poller.lock() = Some(handle);
        // Lag has its own thread: asking the broker for watermarks must never delay polling
        // (rebalance callbacks are served from the poll loop).
        let consumer = self.consumer.clone();
        let stop = self.stop.clone();
        let topic = self.settings.topic.clone();
        let high_watermarks = self.high_watermarks.clone();
        std::thread::Builder::new()
            .name("kafka-lag".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    refresh_high_watermarks(&consumer, &topic, &high_watermarks);
                    let next = Instant::now() + WATERMARK_REFRESH;
                    while !stop.load(Ordering::Acquire) && Instant::now() < next {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            })
            .expect("spawning the kafka lag thread");
    }

    /// Asks the broker for the topic's metadata (readiness; blocking, call off the runtime).
    pub fn check_broker(&self) -> Result<(), String> {
        self.consumer
            .fetch_metadata(Some(&self.settings.topic), Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Stops polling and closes the consumer (after the partitions drained).
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        self.senders.lock().clear();
        if let Some(h) = self.poller.lock().take() {
            let _ = h.join();
        }
        self.consumer.unsubscribe();
    }
}

/// How often the high watermarks for `herald_consumer_lag` are read from the broker.
const WATERMARK_REFRESH: Duration = Duration::from_secs(2);

/// Reads the high watermark of each assigned partition from the broker.
fn refresh_high_watermarks(
    consumer: &BaseConsumer<RebalanceContext>,
    topic: &str,
    into: &Mutex<HashMap<u32, u64>>,
) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    for element in assignment.elements_for_topic(topic) {
        let asked = consumer.fetch_watermarks(topic, element.partition(), Duration::from_secs(2));
        if let Ok((_, high)) = asked {
            if high >= 0 {
                into.lock().insert(element.partition() as u32, high as u64);
            }
        }
    }
}

impl Source for KafkaSource {
    fn kind(&self) -> &'static str {
        "kafka"
    }

    fn take_assignments(&self) -> Option<mpsc::UnboundedReceiver<AssignmentEvent>> {
        self.assignments.lock().take()
    }

    fn reader(&self, partition: u32) -> Result<Arc<dyn PartitionReader>, SourceError> {
        if let Some(rx) = self.receivers.lock().remove(&partition) {
            return Ok(Arc::new(ChannelReader::new(0, rx)));
        }
        // A restart of a partition we still own: rewind to its committed position and give
        // the new incarnation a fresh channel. Records polled before the seek go to the old,
        // dropped channel; librdkafka discards fetched records older than the seek.
        if !self.senders.lock().contains_key(&partition) {
            return Err(SourceError::NotAssigned(partition));
        }
        self.senders.lock().remove(&partition);
        let topic = &self.settings.topic;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition as i32);
        let committed = self
            .consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(unavailable)?;
        let offset = committed
            .find_partition(topic, partition as i32)
            .map(|e| e.offset())
            .unwrap_or(Offset::Beginning);
        let offset = match offset {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        self.consumer
            .seek(topic, partition as i32, offset, Duration::from_secs(10))
            .map_err(unavailable)?;
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        self.senders.lock().insert(partition, tx);
        Ok(Arc::new(ChannelReader::new(0, rx)))
    }

    fn commit(&self, partition: u32, next_offset: u64) -> BoxFut<Result<(), SourceError>> {
        let consumer = self.consumer.clone();
        let topic = self.settings.topic.clone();
        async move {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition as i32, Offset::Offset(next_offset as i64))
                .map_err(unavailable)?;
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                .await
                .map_err(|e| SourceError::CommitRejected(e.to_string()))?
                .map_err(|e| SourceError::CommitRejected(e.to_string()))
        }
        .boxed()
    }

    fn dead_letter(&self, letters: Vec<DeadLetter>) -> BoxFut<Result<(), SourceError>> {
        let producer = self.producer.clone();
        let source_topic = self.settings.topic.clone();
        let dlq = format!("{}.dlq", self.settings.topic);
        async move {
            let sends: Vec<_> = letters
                .iter()
                .map(|l| {
                    let headers = OwnedHeaders::new()
                        .insert(Header {
                            key: "herald-error",
                            value: Some(l.error.as_bytes()),
                        })
                        .insert(Header {
                            key: "herald-source-topic",
                            value: Some(source_topic.as_bytes()),
                        })
                        .insert(Header {
                            key: "herald-source-partition",
                            value: Some(l.record.partition.to_string().as_bytes()),
                        })
                        .insert(Header {
                            key: "herald-source-offset",
                            value: Some(l.record.offset.to_string().as_bytes()),
                        });
                    let mut record = FutureRecord::<[u8], [u8]>::to(&dlq)
                        .payload(&l.record.payload[..])
                        .headers(headers);
                    if let Some(k) = &l.record.key {
                        record = record.key(&k[..]);
                    }
                    producer.send(record, Duration::from_secs(30))
                })
                .collect();
            for r in futures::future::join_all(sends).await {
                r.map_err(|(e, _)| unavailable(e))?;
            }
            Ok(())
        }
        .boxed()
    }

    fn high_watermark(&self, partition: u32) -> Option<u64> {
        self.high_watermarks.lock().get(&partition).copied()
    }
}
