//! The HTTP ingest's RabbitMQ side: persistent messages to the consistent-hash exchange on a
//! channel in publisher-confirm mode, answered once the broker confirmed each. A broken
//! connection is dropped and made again on the next request (that request is answered 503).

use std::sync::Arc;

use futures::FutureExt;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection};
use tokio::sync::Mutex;

use crate::ports::{BoxFut, EventPublisher, Publication, PublishError, RefusedPublication};

use super::source::{confirming_channel, connect, publish, RabbitSettings};

#[derive(Clone)]
pub struct RabbitPublisher {
    settings: RabbitSettings,
    link: Arc<Mutex<Option<(Connection, Channel)>>>,
}

fn unavailable(e: impl std::fmt::Display) -> PublishError {
    PublishError::Unavailable(e.to_string())
}

impl RabbitPublisher {
    /// The exchange and queues are declared by the source, which starts first.
    pub fn new(settings: RabbitSettings) -> Self {
        RabbitPublisher {
            settings,
            link: Arc::default(),
        }
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut link = self.link.lock().await;
        if let Some((conn, channel)) = link.as_ref() {
            if conn.status().connected() && channel.status().connected() {
                return Ok(channel.clone());
            }
        }
        *link = None;
        let conn = connect(&self.settings.url, "herald-ingest")
            .await
            .map_err(unavailable)?;
        let channel = confirming_channel(&conn).await.map_err(unavailable)?;
        *link = Some((conn, channel.clone()));
        Ok(channel)
    }

    /// Whether the broker takes connections (for `/readyz`).
    pub async fn check_broker(&self) -> Result<(), String> {
        self.channel()
            .await
            .map(|_| ())
            .map_err(|e| format!("the ingest's RabbitMQ publisher: {e}"))
    }
}

impl EventPublisher for RabbitPublisher {
    fn publish(
        &self,
        messages: Vec<Publication>,
        refused: Vec<RefusedPublication>,
    ) -> BoxFut<Result<(), PublishError>> {
        let this = self.clone();
        async move {
            let channel = this.channel().await?;
            let exchange = this.settings.exchange.as_str();
            let dlq = this.settings.dlq_name();
            let mut confirms = Vec::with_capacity(messages.len() + refused.len());
            for m in &messages {
                confirms.push(
                    publish(&channel, exchange, &m.key, &m.payload, None)
                        .await
                        .map_err(unavailable)?,
                );
            }
            for r in &refused {
                let mut headers = FieldTable::default();
                headers.insert(
                    "herald-error".into(),
                    AMQPValue::LongString(LongString::from(r.error.as_bytes())),
                );
                headers.insert(
                    "herald-source".into(),
                    AMQPValue::LongString(LongString::from(b"ingest".as_slice())),
                );
                confirms.push(
                    publish(&channel, "", &dlq, &r.payload, Some(headers))
                        .await
                        .map_err(unavailable)?,
                );
            }
            for confirm in futures::future::join_all(confirms).await {
                confirm.map_err(unavailable)?;
            }
            Ok(())
        }
        .boxed()
    }
}
