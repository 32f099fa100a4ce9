//! The messages topic: each durable change of a message, keyed by the message id, sent on an
//! idempotent producer in the order given (so in order per message, one partition per key),
//! answered once the broker acknowledged them all. What is not acknowledged — the broker away
//! longer than `message.timeout.ms`, the producer's bounded queue full (G7) — fails the
//! publication, and the document store's feed sweep publishes it again later.

use std::sync::Arc;

use futures::FutureExt;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::domain::feed::message_change_json;
use crate::ports::{BoxFut, FeedError, FeedSink, MessageChange};
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
            // Not acknowledged within a minute: the publication fails and is done again.
            .set("message.timeout.ms", "60000")
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

impl FeedSink for KafkaMessageFeed {
    fn publish(&self, changes: Arc<Vec<MessageChange>>) -> BoxFut<Result<(), FeedError>> {
        let producer = self.producer.clone();
        let topic = self.topic.clone();
        let metrics = self.metrics.clone();
        async move {
            let mut deliveries = Vec::with_capacity(changes.len());
            for change in changes.iter() {
                let value = serde_json::to_vec(&message_change_json(&change.record, change.seq))
                    .unwrap_or_default();
                let record = FutureRecord::to(&topic)
                    .key(change.record.id.as_bytes())
                    .payload(&value);
                match producer.send_result(record) {
                    Ok(d) => deliveries.push(d),
                    Err((e, _)) => {
                        metrics.feed_dropped("messages");
                        return Err(FeedError(format!("messages topic: cannot enqueue: {e}")));
                    }
                }
            }
            let n = deliveries.len() as u64;
            for delivery in futures::future::join_all(deliveries).await {
                match delivery {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => {
                        metrics.feed_dropped("messages");
                        return Err(FeedError(format!("messages topic: not acknowledged: {e}")));
                    }
                    Err(_) => return Err(FeedError("messages topic: a record was dropped".into())),
                }
            }
            metrics.feed_records("messages", n);
            Ok(())
        }
        .boxed()
    }
}
