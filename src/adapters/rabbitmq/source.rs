//! RabbitMQ source (lapin). Users are spread over `rabbitmq.queues` durable queues by a
//! consistent-hash exchange (routing key = userId), and each queue has
//! `x-single-active-consumer`, so one consumer at a time gets a queue's messages, in order.
//!
//! A queue counts as assigned to this instance from its first delivery: that is the only sign
//! RabbitMQ 3.10 gives that single-active-consumer chose us (a standby instance subscribes
//! too and simply receives nothing until the active one goes away). One channel per queue, so
//! delivery tags are contiguous per queue and an ack with `multiple = true` of the durable
//! watermark acknowledges exactly what is durable. Nothing is ever requeued by Herald (a
//! requeue breaks order): invalid messages are published to `<exchange>.dlq` with a publisher
//! confirm, then acked with the rest.
//!
//! When a channel or the connection closes, the broker requeues what was not acked; the
//! queue's partition actor is revoked (it finishes what it has in flight but cannot ack) and
//! the redelivered messages are absorbed by the per-user dedup. A queue's next session
//! starts only after its previous partition actor stopped, so two incarnations never feed the
//! same users at once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use crate::adapters::channel_reader::ChannelReader;
use crate::ports::{
    AssignmentEvent, BoxFut, DeadLetter, PartitionReader, Record, Source, SourceError,
};

/// The exchange type the consistent-hash plugin provides.
const CONSISTENT_HASH: &str = "x-consistent-hash";
/// How often each queue's ready count is read for `herald_consumer_lag`.
const LAG_REFRESH: Duration = Duration::from_secs(2);
/// Reconnect backoff bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Persistent delivery mode: survives a broker restart.
const PERSISTENT: u8 = 2;

/// Settings of the RabbitMQ source (`rabbitmq.*`).
#[derive(Debug, Clone)]
pub struct RabbitSettings {
    pub url: String,
    pub exchange: String,
    pub queues: u32,
    /// Unacked deliveries the broker may hand each queue's consumer.
    pub prefetch: u16,
}

impl RabbitSettings {
    pub fn queue_name(&self, queue: u32) -> String {
        format!("{}.{queue}", self.exchange)
    }

    pub fn dlq_name(&self) -> String {
        format!("{}.dlq", self.exchange)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RabbitError {
    #[error("RabbitMQ at {url} is unreachable: {detail}")]
    Unreachable { url: String, detail: String },
    #[error(
        "RabbitMQ has no x-consistent-hash exchange type: enable the plugin with \
         `rabbitmq-plugins enable rabbitmq_consistent_hash_exchange`"
    )]
    PluginMissing,
    #[error("declaring RabbitMQ {what} failed: {detail}")]
    Topology { what: String, detail: String },
    #[error("publishing to RabbitMQ failed: {0}")]
    Publish(String),
}

/// Names what went wrong with a declaration (the broker's words for a missing plugin are
/// "unknown exchange type").
pub fn declare_error(what: &str, detail: &str) -> RabbitError {
    if detail.contains("unknown exchange type") || detail.contains("invalid exchange type") {
        RabbitError::PluginMissing
    } else {
        RabbitError::Topology {
            what: what.to_string(),
            detail: detail.to_string(),
        }
    }
}

pub async fn connect(url: &str, name: &str) -> Result<Connection, RabbitError> {
    let props = ConnectionProperties::default().with_connection_name(name.to_string().into());
    Connection::connect(url, props)
        .await
        .map_err(|e| RabbitError::Unreachable {
            url: crate::config::mask_url_password(url),
            detail: e.to_string(),
        })
}

/// Declares the exchange, the queues (durable, single active consumer, bound with weight
/// "1") and the dead-letter queue. Idempotent.
pub async fn declare_topology(
    channel: &Channel,
    settings: &RabbitSettings,
) -> Result<(), RabbitError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .exchange_declare(
            settings.exchange.as_str().into(),
            lapin::ExchangeKind::Custom(CONSISTENT_HASH.into()),
            durable,
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error(&format!("exchange {}", settings.exchange), &e.to_string()))?;
    let mut args = FieldTable::default();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    for q in 0..settings.queues {
        let name = settings.queue_name(q);
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::durable(),
                args.clone(),
            )
            .await
            .map_err(|e| declare_error(&format!("queue {name}"), &e.to_string()))?;
        channel
            .queue_bind(
                name.as_str().into(),
                settings.exchange.as_str().into(),
                "1".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| declare_error(&format!("binding of {name}"), &e.to_string()))?;
    }
    let dlq = settings.dlq_name();
    channel
        .queue_declare(
            dlq.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await
        .map_err(|e| declare_error(&format!("queue {dlq}"), &e.to_string()))?;
    Ok(())
}

/// A channel in publisher-confirm mode.
pub async fn confirming_channel(conn: &Connection) -> Result<Channel, RabbitError> {
    let channel = conn
        .create_channel()
        .await
        .map_err(|e| RabbitError::Publish(e.to_string()))?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|e| RabbitError::Publish(e.to_string()))?;
    Ok(channel)
}

/// Publishes a persistent message; the returned future resolves once the broker confirmed it.
pub async fn publish(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    headers: Option<FieldTable>,
) -> Result<BoxFut<Result<(), RabbitError>>, RabbitError> {
    let mut props = BasicProperties::default().with_delivery_mode(PERSISTENT);
    if let Some(h) = headers {
        props = props.with_headers(h);
    }
    let confirm = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            payload,
            props,
        )
        .await
        .map_err(|e| RabbitError::Publish(e.to_string()))?;
    Ok(async move {
        match confirm.await {
            Ok(Confirmation::Ack(_)) => Ok(()),
            Ok(Confirmation::Nack(_)) => Err(RabbitError::Publish("the broker refused it".into())),
            Ok(Confirmation::NotRequested) => Err(RabbitError::Publish(
                "the channel is not in confirm mode".into(),
            )),
            Err(e) => Err(RabbitError::Publish(e.to_string())),
        }
    }
    .boxed())
}

/// The current connection and the channels shared by all queues.
struct Link {
    conn: Arc<Connection>,
    /// Publisher confirms on: dead letters.
    publisher: Channel,
}

/// One queue's current consumer session. A delivery's offset is `base + delivery_tag`, where
/// `base` counts the deliveries of the queue's earlier sessions in this process: offsets keep
/// growing across sessions (what `herald_commit_offset` shows), and a late commit of an
/// earlier session (at most `base`) can never ack the new channel's tags.
#[derive(Default)]
struct Slot {
    base: u64,
    channel: Option<Channel>,
    /// Taken by the partition actor's reader.
    rx: Option<mpsc::Receiver<Record>>,
    last_tag: u64,
    acked_tag: u64,
}

pub struct RabbitSource {
    settings: RabbitSettings,
    events: mpsc::UnboundedSender<AssignmentEvent>,
    assignments: Mutex<Option<mpsc::UnboundedReceiver<AssignmentEvent>>>,
    slots: Vec<Mutex<Slot>>,
    /// One session per queue at a time: held from subscribing until the revoke finished.
    turns: Vec<tokio::sync::Mutex<()>>,
    link: Mutex<Option<Link>>,
    /// Per queue: deliveries of its finished sessions (the next session's `base`).
    bases: Vec<AtomicU64>,
    /// Messages ready in each queue (not yet delivered), for lag.
    ready: Vec<AtomicU64>,
    stopping: AtomicBool,
    consumer_tag: String,
}

impl RabbitSource {
    /// Declares the topology on `conn` (a missing plugin or a conflicting queue is an error
    /// here) and starts consuming every queue.
    pub async fn start(
        settings: RabbitSettings,
        conn: Connection,
    ) -> Result<Arc<RabbitSource>, RabbitError> {
        let conn = Arc::new(conn);
        let admin = conn
            .create_channel()
            .await
            .map_err(|e| declare_error("a channel", &e.to_string()))?;
        declare_topology(&admin, &settings).await?;
        let publisher = confirming_channel(&conn).await?;
        let (events, assignments) = mpsc::unbounded_channel();
        let n = settings.queues as usize;
        let source = Arc::new(RabbitSource {
            consumer_tag: format!(
                "herald-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or_default()
            ),
            settings,
            events,
            assignments: Mutex::new(Some(assignments)),
            slots: (0..n).map(|_| Mutex::new(Slot::default())).collect(),
            turns: (0..n).map(|_| tokio::sync::Mutex::new(())).collect(),
            link: Mutex::new(Some(Link {
                conn: conn.clone(),
                publisher,
            })),
            bases: (0..n).map(|_| AtomicU64::new(0)).collect(),
            ready: (0..n).map(|_| AtomicU64::new(0)).collect(),
            stopping: AtomicBool::new(false),
        });
        tokio::spawn(source.clone().supervise(conn));
        Ok(source)
    }

    /// Keeps one consumer per queue on the current connection; reconnects with backoff when
    /// the connection goes away.
    async fn supervise(self: Arc<Self>, mut conn: Arc<Connection>) {
        loop {
            for q in 0..self.settings.queues {
                tokio::spawn(self.clone().consume(q, conn.clone()));
            }
            self.watch(&conn).await;
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            tracing::warn!("RabbitMQ connection lost; reconnecting");
            self.link.lock().take();
            conn = match self.reconnect().await {
                Some(c) => c,
                None => return,
            };
            tracing::info!("RabbitMQ connection re-established");
        }
    }

    /// Returns when the connection is no longer usable; meanwhile refreshes the lag counts.
    async fn watch(&self, conn: &Connection) {
        let admin = conn.create_channel().await.ok();
        let mut tick = tokio::time::interval(LAG_REFRESH);
        loop {
            tick.tick().await;
            if !conn.status().connected() || self.stopping.load(Ordering::Acquire) {
                return;
            }
            if let Some(admin) = admin.as_ref().filter(|c| c.status().connected()) {
                for q in 0..self.settings.queues {
                    let name = self.settings.queue_name(q);
                    let passive = QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    };
                    if let Ok(queue) = admin
                        .queue_declare(name.as_str().into(), passive, FieldTable::default())
                        .await
                    {
                        self.ready[q as usize]
                            .store(queue.message_count() as u64, Ordering::Relaxed);
                    }
                }
            }
        }
    }

    async fn reconnect(&self) -> Option<Arc<Connection>> {
        let mut delay = BACKOFF_MIN;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return None;
            }
            match self.relink().await {
                Ok(conn) => return Some(conn),
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "RabbitMQ reconnect failed");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    async fn relink(&self) -> Result<Arc<Connection>, RabbitError> {
        let conn = Arc::new(connect(&self.settings.url, "herald").await?);
        let admin = conn
            .create_channel()
            .await
            .map_err(|e| declare_error("a channel", &e.to_string()))?;
        declare_topology(&admin, &self.settings).await?;
        let _ = admin.close(200, "declared".into()).await;
        let publisher = confirming_channel(&conn).await?;
        *self.link.lock() = Some(Link {
            conn: conn.clone(),
            publisher,
        });
        Ok(conn)
    }

    /// Consumer sessions of one queue on one connection, one after the other (a session ends
    /// when its channel closes; a failed partition actor closes it to get its messages back).
    async fn consume(self: Arc<Self>, q: u32, conn: Arc<Connection>) {
        while conn.status().connected() && !self.stopping.load(Ordering::Acquire) {
            let turn = self.turns[q as usize].lock().await;
            if !conn.status().connected() || self.stopping.load(Ordering::Acquire) {
                return;
            }
            if let Err(e) = self.session(q, &conn).await {
                tracing::warn!(queue = q, error = %e, "RabbitMQ consumer session ended");
                if conn.status().connected() {
                    tokio::time::sleep(BACKOFF_MIN).await;
                }
            }
            drop(turn);
        }
    }

    async fn session(&self, q: u32, conn: &Connection) -> Result<(), lapin::Error> {
        let name = self.settings.queue_name(q);
        let channel = conn.create_channel().await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = channel
            .basic_consume(
                name.as_str().into(),
                format!("{}-{q}", self.consumer_tag).into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let base = self.bases[q as usize].load(Ordering::Acquire);
        let (tx, rx) = mpsc::channel(self.settings.prefetch as usize + 1);
        let mut rx = Some(rx);
        let mut ended = Ok(());
        while let Some(delivery) = consumer.next().await {
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => {
                    ended = Err(e);
                    break;
                }
            };
            let tag = delivery.delivery_tag;
            if let Some(rx) = rx.take() {
                // Single-active-consumer picked this instance: the queue is ours from now on.
                *self.slots[q as usize].lock() = Slot {
                    base,
                    channel: Some(channel.clone()),
                    rx: Some(rx),
                    last_tag: 0,
                    acked_tag: 0,
                };
                tracing::info!(queue = %name, redelivered = delivery.redelivered, "active consumer of queue");
                let _ = self.events.send(AssignmentEvent::Assigned(vec![q]));
            }
            self.slots[q as usize].lock().last_tag = tag;
            let record = Record {
                partition: q,
                offset: base + tag,
                key: Some(Bytes::copy_from_slice(
                    delivery.routing_key.as_str().as_bytes(),
                )),
                payload: Bytes::from(delivery.data),
                timestamp_ms: None,
            };
            if tx.send(record).await.is_err() {
                // The partition actor is gone (it failed): close the channel so the broker
                // hands the unacked messages out again, in order.
                break;
            }
        }
        drop(tx);
        if rx.is_none() {
            let (done, wait) = oneshot::channel();
            let _ = self.events.send(AssignmentEvent::Revoked {
                partitions: vec![q],
                done,
            });
            let _ = wait.await;
        }
        {
            let mut slot = self.slots[q as usize].lock();
            self.bases[q as usize].store(base + slot.last_tag, Ordering::Release);
            *slot = Slot::default();
        }
        if channel.status().connected() {
            let _ = channel.close(200, "session over".into()).await;
        }
        ended
    }

    /// Readiness: is the connection up?
    pub fn check_broker(&self) -> Result<(), String> {
        match self.link.lock().as_ref() {
            Some(link) if link.conn.status().connected() => Ok(()),
            _ => Err("RabbitMQ connection is down (reconnecting)".into()),
        }
    }

    /// Stops consuming and closes the connection (after the partitions drained): what was
    /// not acked goes back to the queues.
    pub async fn close(&self) {
        self.stopping.store(true, Ordering::Release);
        let link = self.link.lock().take();
        if let Some(link) = link {
            let _ = link.conn.close(200, "herald stopping".into()).await;
        }
    }
}

impl Source for RabbitSource {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    fn take_assignments(&self) -> Option<mpsc::UnboundedReceiver<AssignmentEvent>> {
        self.assignments.lock().take()
    }

    fn reader(&self, partition: u32) -> Result<Arc<dyn PartitionReader>, SourceError> {
        let slot_lock = self
            .slots
            .get(partition as usize)
            .ok_or(SourceError::NotAssigned(partition))?;
        let mut slot = slot_lock.lock();
        if let Some(rx) = slot.rx.take() {
            return Ok(Arc::new(ChannelReader::new(slot.base + 1, rx)));
        }
        // A restart of a queue we consume: its unacked messages are with the old incarnation.
        // Closing the channel hands them back (in order); the queue is assigned again with
        // the next session.
        if let Some(channel) = slot.channel.take() {
            tokio::spawn(async move {
                let _ = channel.close(200, "partition restart".into()).await;
            });
        }
        Err(SourceError::NotAssigned(partition))
    }

    fn commit(&self, partition: u32, next_offset: u64) -> BoxFut<Result<(), SourceError>> {
        let channel = {
            let Some(slot_lock) = self.slots.get(partition as usize) else {
                return futures::future::ready(Err(SourceError::NotAssigned(partition))).boxed();
            };
            let mut slot = slot_lock.lock();
            let last = next_offset.saturating_sub(1);
            match &slot.channel {
                Some(c) if last > slot.base && c.status().connected() => {
                    let tag = last - slot.base;
                    if tag <= slot.acked_tag {
                        return futures::future::ready(Ok(())).boxed();
                    }
                    let c = c.clone();
                    slot.acked_tag = tag;
                    (c, tag)
                }
                _ => return futures::future::ready(Err(SourceError::Lost(partition))).boxed(),
            }
        };
        let (channel, tag) = channel;
        async move {
            channel
                .basic_ack(tag, BasicAckOptions { multiple: true })
                .await
                .map_err(|_| SourceError::Lost(partition))
        }
        .boxed()
    }

    fn dead_letter(&self, letters: Vec<DeadLetter>) -> BoxFut<Result<(), SourceError>> {
        let publisher = self.link.lock().as_ref().map(|l| l.publisher.clone());
        let dlq = self.settings.dlq_name();
        let settings = self.settings.clone();
        async move {
            let publisher = publisher
                .ok_or_else(|| SourceError::Unavailable("RabbitMQ connection is down".into()))?;
            let mut confirms = Vec::with_capacity(letters.len());
            for l in &letters {
                let mut headers = FieldTable::default();
                headers.insert(
                    "herald-error".into(),
                    AMQPValue::LongString(LongString::from(l.error.as_bytes())),
                );
                headers.insert(
                    "herald-source-queue".into(),
                    AMQPValue::LongString(LongString::from(
                        settings.queue_name(l.record.partition).as_bytes(),
                    )),
                );
                let confirm = publish(&publisher, "", &dlq, &l.record.payload, Some(headers))
                    .await
                    .map_err(|e| SourceError::Unavailable(e.to_string()))?;
                confirms.push(confirm);
            }
            for c in futures::future::join_all(confirms).await {
                c.map_err(|e| SourceError::Unavailable(e.to_string()))?;
            }
            Ok(())
        }
        .boxed()
    }

    /// Redeliveries are recognised by messageId (the dedup window), not by position.
    fn durable_positions(&self) -> bool {
        false
    }

    fn high_watermark(&self, partition: u32) -> Option<u64> {
        let slot = self.slots.get(partition as usize)?.lock();
        slot.channel.as_ref()?;
        let ready = self.ready[partition as usize].load(Ordering::Relaxed);
        Some(slot.base + slot.last_tag + 1 + ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_plugin_is_named() {
        let e = declare_error(
            "exchange herald.events",
            "COMMAND_INVALID - unknown exchange type 'x-consistent-hash'",
        );
        assert!(matches!(e, RabbitError::PluginMissing));
        assert!(e.to_string().contains("rabbitmq-plugins enable"));
        let other = declare_error("queue q", "PRECONDITION_FAILED - inequivalent arg");
        assert!(other.to_string().contains("queue q"));
    }
}
