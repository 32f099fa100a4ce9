//! The HTTP ingest's Kafka side: the idempotent producer with `acks=all`, so a message the
//! ingest answered 200 for is on every in-sync replica, once, in order per user key. Its
//! local queue is bounded (`queue.buffering.max.kbytes`): a broker that stops acknowledging
//! fills it, and further requests are answered 503 instead of buffered.

use std::time::Duration;

use futures::FutureExt;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

use crate::ports::{BoxFut, EventPublisher, Publication, PublishError, RefusedPublication};

use super::source::client_config;

#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    topic: String,
}

impl KafkaPublisher {
    /// `timeout` is `ingest.timeout_ms`: a message not acknowledged by then fails.
    pub fn new(
        brokers: &str,
        options: &[(String, String)],
        topic: &str,
        timeout: Duration,
    ) -> Result<Self, PublishError> {
        let producer: FutureProducer = client_config(brokers, options)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("linger.ms", "2")
            .set("queue.buffering.max.kbytes", "65536")
            .set(
                "message.timeout.ms",
                timeout.as_millis().max(10).to_string(),
            )
            .create()
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
        Ok(KafkaPublisher {
            producer,
            topic: topic.to_string(),
        })
    }

    /// Whether the broker answers (for `/readyz`). Blocking: call off the runtime.
    pub fn check_broker(&self) -> Result<(), String> {
        self.producer
            .client()
            .fetch_metadata(Some(&self.topic), Duration::from_secs(2))
            .map(|_| ())
            .map_err(|e| format!("the ingest's Kafka producer: {e}"))
    }
}

impl EventPublisher for KafkaPublisher {
    fn publish(
        &self,
        messages: Vec<Publication>,
        refused: Vec<RefusedPublication>,
    ) -> BoxFut<Result<(), PublishError>> {
        let this = self.clone();
        async move {
            let dlq = format!("{}.dlq", this.topic);
            let mut deliveries = Vec::with_capacity(messages.len() + refused.len());
            let queued = |r: Result<_, _>| {
                r.map_err(|(e, _)| PublishError::Unavailable(format!("cannot enqueue: {e}")))
            };
            for m in &messages {
                let record = FutureRecord::to(&this.topic)
                    .key(m.key.as_bytes())
                    .payload(&m.payload[..]);
                deliveries.push(queued(this.producer.send_result(record))?);
            }
            for r in &refused {
                let headers = OwnedHeaders::new()
                    .insert(Header {
                        key: "herald-error",
                        value: Some(r.error.as_bytes()),
                    })
                    .insert(Header {
                        key: "herald-source",
                        value: Some(b"ingest".as_slice()),
                    });
                let record = FutureRecord::to(&dlq)
                    .key(r.key.as_bytes())
                    .payload(&r.payload[..])
                    .headers(headers);
                deliveries.push(queued(this.producer.send_result(record))?);
            }
            for delivery in futures::future::join_all(deliveries).await {
                match delivery {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) => return Err(PublishError::Unavailable(e.to_string())),
                    Err(_) => {
                        return Err(PublishError::Unavailable(
                            "the producer dropped the message".into(),
                        ))
                    }
                }
            }
            Ok(())
        }
        .boxed()
    }
}
