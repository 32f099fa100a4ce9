//! The messages topic: each durable change of a message, keyed by the message id, enqueued
//! on an idempotent producer in the order this instance made the changes (so in order per
//! message, one partition per key). The producer retries while the broker is away; its
//! queue is bounded (G7), and what does not fit is dropped, logged and counted
//! (`herald_feed_dropped_total{feed="messages"}`) rather than slowing sends and callbacks.

use std::sync::Arc;

use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::domain::feed::message_event_json;
use crate::domain::message::MessageRecord;
use crate::ports::{FeedError, MessageObserver};
use crate::telemetry::Metrics;

use super::source::client_config;

pub struct KafkaMessageFeed {
    producer: FutureProducer,
    topic: String,
    metrics: Arc<Metrics>,
}

impl KafkaMessageFeed {
    pub fn new(
        brokers: &str,
        options: &[(String, String)],
        topic: &str,
        metrics: Arc<Metrics>,
    ) -> Result<Self, FeedError> {
        let producer: FutureProducer = client_config(brokers, options)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            // Retried until the broker is back: the bound is the queue below.
            .set("message.timeout.ms", "0")
            .set("queue.buffering.max.messages", "200000")
            .set("queue.buffering.max.kbytes", "131072")
            .create()
            .map_err(|e| FeedError(format!("cannot create the messages producer: {e}")))?;
        Ok(KafkaMessageFeed {
            producer,
            topic: topic.to_string(),
            metrics,
        })
    }
}

impl MessageObserver for KafkaMessageFeed {
    fn changed(&self, record: &MessageRecord) {
        let value = serde_json::to_vec(&message_event_json(record)).unwrap_or_default();
        let sent = self.producer.send_result(
            FutureRecord::to(&self.topic)
                .key(record.id.as_bytes())
                .payload(&value),
        );
        match sent {
            Ok(delivery) => {
                let metrics = self.metrics.clone();
                let id = record.id.clone();
                tokio::spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => metrics.feed_records("messages", 1),
                        Ok(Err((e, _))) => {
                            tracing::error!(message = %id, error = %e, "a message transition was not published");
                            metrics.feed_dropped("messages");
                        }
                        Err(_) => metrics.feed_dropped("messages"),
                    }
                });
            }
            Err((e, _)) => {
                tracing::error!(message = %record.id, error = %e, "the messages topic's queue is full; a transition was not published");
                self.metrics.feed_dropped("messages");
            }
        }
    }
}
