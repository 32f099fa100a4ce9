//! Kafka source (rdkafka). One dedicated thread polls the consumer: that keeps rebalance
//! callbacks served (rust-rdkafka #738) and hands each record to its partition's bounded
//! channel, read by that partition's actor; a partition whose channel is full is paused, never
//! waited for (`poller`). A revoke blocks inside the callback until the revoked
//! partitions drained and committed, so their next owner starts exactly after what is durable.
//! Commits are synchronous and explicit (no auto-commit, no auto offset store).

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

use super::poller::{set_flow, Feeds, FlowChange, Reseek};
use crate::adapters::channel_reader::ChannelReader;
use crate::ports::{
    AssignmentEvent, BoxFut, DeadLetter, PartitionReader, Record, Source, SourceError,
};

/// Settings of the Kafka source (`kafka.*`).
#[derive(Debug, Clone)]
pub struct KafkaSettings {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    pub group_instance_id: Option<String>,
    /// Partitions of the topic when Herald has to create it.
    pub partitions: i32,
    /// `kafka.options`: librdkafka properties for every client Herald creates.
    pub options: Vec<(String, String)>,
    /// Records buffered per partition between the poll thread and its actor.
    pub channel_capacity: usize,
}

/// How long a partition restart waits for the poll thread to seek.
const RESEEK_TIMEOUT: Duration = Duration::from_secs(30);

type Receivers = Arc<Mutex<HashMap<u32, mpsc::Receiver<Record>>>>;

pub struct RebalanceContext {
    topic: String,
    /// Set when the source closes: a revoke then has nobody to drain for it.
    closing: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<AssignmentEvent>,
    feeds: Feeds,
    receivers: Receivers,
    /// Set on a consumer replaced after a fatal error: closing it must not touch the feeds
    /// and assignments its successor now owns.
    retired: AtomicBool,
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
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        if let Rebalance::Revoke(tpl) = rebalance {
            let partitions = self.partitions(tpl);
            for p in &partitions {
                let _ = self.feeds.close(*p);
            }
            if partitions.is_empty() || self.closing.load(Ordering::Acquire) {
                return;
            }
            if consumer.assignment_lost() {
                // Evicted from the group (session or poll interval exceeded): the partitions
                // may have a new owner already, so there is nothing to drain into a commit.
                // librdkafka rejoins on the next poll (G9).
                tracing::warn!(?partitions, "kafka assignment lost; rejoining the group");
                let _ = self.events.send(AssignmentEvent::Lost(partitions));
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

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if self.retired.load(Ordering::Acquire) {
            return;
        }
        match rebalance {
            Rebalance::Assign(tpl) => {
                let partitions = self.partitions(tpl);
                {
                    let mut receivers = self.receivers.lock();
                    for p in &partitions {
                        receivers.insert(*p, self.feeds.open(*p));
                    }
                }
                // A partition paused in an earlier assignment must not stay paused.
                set_flow(consumer, &self.topic, &partitions, false);
                tracing::info!(?partitions, "kafka partitions assigned");
                let _ = self.events.send(AssignmentEvent::Assigned(partitions));
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => tracing::warn!(error = %e, "kafka rebalance error"),
        }
    }
}

type HeraldConsumer = BaseConsumer<RebalanceContext>;

/// The consumer in use. A consumer that hit a fatal error (librdkafka: after one it neither
/// consumes nor rejoins — e.g. a static member fenced by its own earlier incarnation after a
/// broker restart) is replaced by a new one from the same settings (see `replace_if_fatal`).
type ConsumerSlot = Arc<parking_lot::RwLock<Arc<HeraldConsumer>>>;

/// What a new consumer is made from.
#[derive(Clone)]
struct ConsumerParts {
    settings: KafkaSettings,
    closing: Arc<AtomicBool>,
    events: mpsc::UnboundedSender<AssignmentEvent>,
    feeds: Feeds,
    receivers: Receivers,
}

impl ConsumerParts {
    /// A consumer with its rebalance context (not subscribed yet).
    fn consumer(&self) -> Result<HeraldConsumer, KafkaError> {
        let context = RebalanceContext {
            topic: self.settings.topic.clone(),
            closing: self.closing.clone(),
            events: self.events.clone(),
            feeds: self.feeds.clone(),
            receivers: self.receivers.clone(),
            retired: AtomicBool::new(false),
        };
        consumer_config(&self.settings).create_with_context(context)
    }

    /// A consumer subscribed to the topic.
    fn subscribed(&self) -> Result<HeraldConsumer, KafkaError> {
        let consumer = self.consumer()?;
        consumer.subscribe(&[&self.settings.topic])?;
        Ok(consumer)
    }
}

pub struct KafkaSource {
    settings: KafkaSettings,
    consumer: ConsumerSlot,
    parts: ConsumerParts,
    producer: FutureProducer,
    assignments: Mutex<Option<mpsc::UnboundedReceiver<AssignmentEvent>>>,
    feeds: Feeds,
    receivers: Receivers,
    stop: Arc<AtomicBool>,
    poller: Mutex<Option<JoinHandle<()>>>,
    high_watermarks: Arc<Mutex<HashMap<u32, u64>>>,
}

fn unavailable(e: KafkaError) -> SourceError {
    SourceError::Unavailable(e.to_string())
}

/// The base of every Kafka client Herald creates: the brokers, then `kafka.options`.
pub fn client_config(brokers: &str, options: &[(String, String)]) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    for (k, v) in options {
        c.set(k, v);
    }
    c
}

/// Creates the topics if they do not exist (a broker's auto-creation would pick its own
/// partition count).
pub async fn ensure_topics(
    brokers: &str,
    options: &[(String, String)],
    topics: &[(&str, i32)],
    timeout: Duration,
) -> Result<(), SourceError> {
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, options)
        .create()
        .map_err(unavailable)?;
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
            &settings.options,
            &[(&settings.topic, settings.partitions), (&dlq, 1)],
            timeout,
        )
        .await?;
        let (events, assignments) = mpsc::unbounded_channel();
        let parts = ConsumerParts {
            settings: settings.clone(),
            closing: Arc::new(AtomicBool::new(false)),
            events,
            feeds: Feeds::new(settings.channel_capacity),
            receivers: Arc::default(),
        };
        let consumer = Arc::new(parts.consumer().map_err(unavailable)?);
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
        let producer: FutureProducer = client_config(&settings.brokers, &settings.options)
            .set("acks", "all")
            .create()
            .map_err(unavailable)?;
        let source = Arc::new(KafkaSource {
            settings,
            consumer: Arc::new(parking_lot::RwLock::new(consumer)),
            feeds: parts.feeds.clone(),
            receivers: parts.receivers.clone(),
            stop: parts.closing.clone(),
            parts,
            producer,
            assignments: Mutex::new(Some(assignments)),
            poller: Mutex::new(None),
            high_watermarks: Arc::default(),
        });
        source.spawn_poller();
        Ok(source)
    }

    /// The consumer in use now.
    fn current(&self) -> Arc<HeraldConsumer> {
        self.consumer.read().clone()
    }

    fn spawn_poller(&self) {
        let slot = self.consumer.clone();
        let parts = self.parts.clone();
        let handle = std::thread::Builder::new()
            .name("kafka-poll".into())
            .spawn(move || poll_loop(&slot, &parts))
            .expect("spawning the kafka poll thread");
        *self.poller.lock() = Some(handle);
        // Lag has its own thread: asking the broker for watermarks must never delay polling
        // (rebalance callbacks are served from the poll loop).
        let slot = self.consumer.clone();
        let stop = self.stop.clone();
        let topic = self.settings.topic.clone();
        let high_watermarks = self.high_watermarks.clone();
        std::thread::Builder::new()
            .name("kafka-lag".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    let consumer = slot.read().clone();
                    refresh_high_watermarks(&consumer, &topic, &high_watermarks);
                    drop(consumer);
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
        self.current()
            .fetch_metadata(Some(&self.settings.topic), Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Fault injection (tests and the fault-injection runner): raises the fatal error a static
    /// member gets when it is fenced (`FENCED_INSTANCE_ID`), through librdkafka's own test
    /// hook, so the consumer's replacement can be exercised at will.
    #[doc(hidden)]
    pub fn inject_fatal_error(&self, reason: &str) {
        use rdkafka::bindings::{rd_kafka_resp_err_t, rd_kafka_test_fatal_error};
        let consumer = self.current();
        let reason = std::ffi::CString::new(reason.replace('\0', " ")).unwrap_or_default();
        // SAFETY: the client pointer is live for as long as `consumer` (held here), and
        // librdkafka copies the reason before returning.
        unsafe {
            rd_kafka_test_fatal_error(
                consumer.client().native_ptr(),
                rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_FENCED_INSTANCE_ID,
                reason.as_ptr(),
            );
        }
    }

    /// Stops polling and closes the consumer (after the partitions drained).
    pub fn close(&self) {
        self.stop.store(true, Ordering::Release);
        self.feeds.close_all();
        if let Some(h) = self.poller.lock().take() {
            let _ = h.join();
        }
        self.current().unsubscribe();
    }
}

/// The consumer's settings: Herald's defaults, then `kafka.options`, then what the guarantees
/// need (which `kafka.options` may not name; the config loader refuses them).
fn consumer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3")
        .set("auto.offset.reset", "earliest")
        // Eager assignment: a revoke hands every partition back at once, which keeps the
        // drain-then-commit protocol of the revoke callback simple; static membership
        // (group.instance.id) avoids rebalances on restarts altogether.
        .set("partition.assignment.strategy", "roundrobin")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000");
    for (k, v) in tuned_fetch_defaults() {
        config.set(k, v);
    }
    for (k, v) in &settings.options {
        config.set(k, v);
    }
    config
        .set("group.id", &settings.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    if let Some(id) = &settings.group_instance_id {
        config.set("group.instance.id", id);
    }
    config
}

/// Fetch settings chosen by measurement on Apache Kafka 4.4 (`cargo bench --bench
/// kafka_consumer`, BENCHMARKS.md "Consumer settings"); each can be overridden through
/// `kafka.options`.
fn tuned_fetch_defaults() -> [(&'static str, &'static str); 2] {
    [
        // The broker holds a fetch at most this long when little data is waiting: the default
        // 500 ms was most of the end-to-end latency at moderate rates.
        ("fetch.wait.max.ms", "50"),
        // At most 16 MiB prefetched in the consumer (default 64 MiB): 1.3–1.9× the consume
        // rate of the default here (397–452k vs 237–300k records/s), a quarter of the bytes
        // held; 4 MiB starved the fetcher (65–107k records/s).
        ("queued.max.messages.kbytes", "16384"),
    ]
}

/// The poll loop of the `kafka-poll` thread: polls, hands records to their partitions, pauses
/// the ones whose channel is full and resumes them as they drain. It never blocks on a
/// partition; only a revoke callback (served inside `poll`) waits, for the drain.
fn poll_loop(slot: &ConsumerSlot, parts: &ConsumerParts) {
    let (feeds, stop, topic) = (&parts.feeds, &parts.closing, parts.settings.topic.as_str());
    while !stop.load(Ordering::Acquire) {
        let consumer = slot.read().clone();
        for reseek in feeds.take_reseeks() {
            restart_feed(&consumer, feeds, topic, reseek);
        }
        let resume = feeds.drain_pending();
        set_flow(&*consumer, topic, &resume, false);
        let wait = if feeds.any_paused() {
            Duration::from_millis(10)
        } else {
            Duration::from_millis(100)
        };
        match consumer.poll(wait) {
            // A fatal error is not always surfaced by `poll` (librdkafka may only raise it to
            // the error callback); the flag is cheap to read.
            None => replace_if_fatal(slot, parts, consumer),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "kafka poll error");
                replace_if_fatal(slot, parts, consumer);
            }
            Some(Ok(m)) => {
                if m.topic() != topic {
                    continue;
                }
                let record = Record {
                    partition: m.partition() as u32,
                    offset: m.offset() as u64,
                    key: m.key().map(Bytes::copy_from_slice),
                    payload: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                    timestamp_ms: m.timestamp().to_millis(),
                };
                if let FlowChange::Pause(p) = feeds.push(record) {
                    set_flow(&*consumer, topic, &[p], true);
                }
            }
        }
    }
}

/// After a fatal error librdkafka's consumer neither consumes nor rejoins, so Herald would
/// wait for ever (G9). Its partitions are given up as lost (not committed: their next owner,
/// perhaps this process, starts at the last commit, and fencing keeps late writes out) and a
/// new consumer from the same settings joins the group in its place.
fn replace_if_fatal(slot: &ConsumerSlot, parts: &ConsumerParts, consumer: Arc<HeraldConsumer>) {
    let Some((code, reason)) = consumer.client().fatal_error() else {
        return;
    };
    tracing::error!(
        error = %code,
        reason,
        "the kafka consumer hit a fatal error; replacing it with a new one"
    );
    consumer.context().retired.store(true, Ordering::Release);
    let topic = &parts.settings.topic;
    let mut partitions: Vec<u32> = consumer
        .assignment()
        .map(|tpl| {
            tpl.elements_for_topic(topic)
                .iter()
                .map(|e| e.partition() as u32)
                .collect()
        })
        .unwrap_or_default();
    partitions.retain(|p| parts.feeds.close(*p).is_some());
    parts.receivers.lock().clear();
    if !partitions.is_empty() {
        let _ = parts.events.send(AssignmentEvent::Lost(partitions));
    }
    let mut delay = Duration::from_millis(200);
    loop {
        if parts.closing.load(Ordering::Acquire) {
            return;
        }
        match parts.subscribed() {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *slot.write(), Arc::new(fresh));
                drop(consumer);
                // Closing the old consumer may wait on the broker; not on this thread.
                std::thread::spawn(move || drop(old));
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot create a new kafka consumer yet; retrying");
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Carries out a partition restart on the poll thread (see `Reseek`). A failed seek leaves an
/// open feed nobody reads (its records are dropped, not committed), so the partition still
/// counts as assigned and the restart can be retried.
fn restart_feed(consumer: &HeraldConsumer, feeds: &Feeds, topic: &str, reseek: Reseek) {
    let Reseek {
        partition,
        offset,
        reply,
    } = reseek;
    let Some(was_paused) = feeds.close(partition) else {
        let _ = reply.send(Err(format!("partition {partition} is no longer assigned")));
        return;
    };
    let to = offset.map_or(Offset::Beginning, Offset::Offset);
    let sought = consumer.seek(topic, partition as i32, to, Duration::from_secs(10));
    let rx = feeds.open(partition);
    if was_paused {
        set_flow(consumer, topic, &[partition], false);
    }
    let _ = reply.send(match sought {
        Ok(()) => Ok(rx),
        Err(e) => Err(format!("seek of partition {partition} failed: {e}")),
    });
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
        // the new incarnation a fresh channel, both on the poll thread (see `Reseek`).
        if !self.feeds.is_open(partition) {
            return Err(SourceError::NotAssigned(partition));
        }
        let topic = &self.settings.topic;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, partition as i32);
        let committed = self
            .current()
            .committed_offsets(tpl, Duration::from_secs(10))
            .map_err(unavailable)?;
        let offset = match committed
            .find_partition(topic, partition as i32)
            .map(|e| e.offset())
        {
            Some(Offset::Offset(o)) => Some(o),
            _ => None,
        };
        let (reply, replied) = std::sync::mpsc::channel();
        self.feeds.request_reseek(Reseek {
            partition,
            offset,
            reply,
        });
        // The poll thread may be inside a revoke callback, waiting for drains; the restart
        // is then retried (a late reseek of a revoked partition finds no feed and is void).
        match replied.recv_timeout(RESEEK_TIMEOUT) {
            Ok(Ok(rx)) => Ok(Arc::new(ChannelReader::new(0, rx))),
            Ok(Err(e)) if !self.feeds.is_open(partition) => {
                tracing::debug!(partition, error = %e, "restart of a revoked partition");
                Err(SourceError::NotAssigned(partition))
            }
            Ok(Err(e)) => Err(SourceError::Unavailable(e)),
            Err(_) => Err(SourceError::Unavailable(format!(
                "the poll thread did not restart partition {partition} within {RESEEK_TIMEOUT:?}"
            ))),
        }
    }

    fn commit(&self, partition: u32, next_offset: u64) -> BoxFut<Result<(), SourceError>> {
        let consumer = self.current();
        let topic = self.settings.topic.clone();
        async move {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, partition as i32, Offset::Offset(next_offset as i64))
                .map_err(unavailable)?;
            tokio::task::spawn_blocking(move || consumer.commit(&tpl, CommitMode::Sync))
                .await
                .map_err(|e| SourceError::CommitRejected(e.to_string()))?
                .map_err(|e| match e.rdkafka_error_code() {
                    // This member's generation is over: the partition belongs to the group's
                    // next assignment, and no commit of this one will ever be accepted.
                    Some(
                        RDKafkaErrorCode::UnknownMemberId
                        | RDKafkaErrorCode::IllegalGeneration
                        | RDKafkaErrorCode::FencedInstanceId,
                    ) => SourceError::Lost(partition),
                    _ => SourceError::CommitRejected(e.to_string()),
                })
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

    fn is_paused(&self, partition: u32) -> bool {
        self.feeds.is_paused(partition)
    }
}
