//! RabbitMQ side of the integration tests: publishing with confirms, what is left in the
//! test's queues (ready over AMQP, unacked from `rabbitmqctl`), the dead-letter queue, and
//! clean-up of the test's exchange and queues on the shared broker.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use herald::adapters::rabbitmq;
use herald::adapters::rabbitmq::source::RabbitSettings;
use lapin::options::{
    BasicGetOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};

use super::Names;

pub const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn settings(names: &Names) -> RabbitSettings {
    RabbitSettings {
        url: AMQP.to_string(),
        exchange: names.base.clone(),
        queues: names.partitions as u32,
        prefetch: 1000,
    }
}

/// An AMQP connection with its own runtime (lapin's futures need one that outlives a call).
pub struct Amqp {
    rt: tokio::runtime::Runtime,
    conn: Connection,
    channel: Channel,
    settings: RabbitSettings,
}

impl Amqp {
    pub fn connect(names: &Names) -> Amqp {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let settings = settings(names);
        let (conn, channel) = rt.block_on(async {
            let conn = rabbitmq::source::connect(AMQP, "herald-test")
                .await
                .unwrap();
            let channel = rabbitmq::source::confirming_channel(&conn).await.unwrap();
            rabbitmq::source::declare_topology(&channel, &settings)
                .await
                .unwrap();
            (conn, channel)
        });
        Amqp {
            rt,
            conn,
            channel,
            settings,
        }
    }

    /// Publishes `(routing key, payload)` in order through the test's exchange, persistent,
    /// and returns once the broker confirmed every one.
    pub fn publish<K: AsRef<str>, P: AsRef<[u8]>>(
        &self,
        records: impl IntoIterator<Item = (K, P)>,
    ) {
        self.rt.block_on(async {
            let mut pending = futures::stream::FuturesOrdered::new();
            for (key, payload) in records {
                let confirm = rabbitmq::source::publish(
                    &self.channel,
                    &self.settings.exchange,
                    key.as_ref(),
                    payload.as_ref(),
                    None,
                )
                .await
                .unwrap();
                pending.push_back(confirm);
                while pending.len() >= 2_000 {
                    pending.next().await.unwrap().unwrap();
                }
            }
            while let Some(r) = pending.next().await {
                r.unwrap();
            }
        });
    }

    /// Per queue: (messages ready, consumers), from a passive declare.
    pub fn ready(&self) -> Vec<(u64, u64)> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            for q in 0..self.settings.queues {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                let queue = self
                    .channel
                    .queue_declare(
                        self.settings.queue_name(q).as_str().into(),
                        passive,
                        FieldTable::default(),
                    )
                    .await
                    .unwrap();
                out.push((queue.message_count() as u64, queue.consumer_count() as u64));
            }
            out
        })
    }

    /// Messages ready in all the test's queues.
    pub fn ready_total(&self) -> u64 {
        self.ready().iter().map(|(r, _)| r).sum()
    }

    /// Waits until no consumer is attached to the test's queues (the broker noticed a killed
    /// instance and requeued what it had not acked).
    pub fn wait_no_consumers(&self, limit: Duration) {
        let started = Instant::now();
        while self.ready().iter().any(|(_, c)| *c > 0) {
            assert!(started.elapsed() < limit, "consumers still attached");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until every message of the test's queues was delivered and acknowledged.
    pub fn wait_drained(&self, limit: Duration) {
        let started = Instant::now();
        loop {
            // The cheap AMQP check first; rabbitmqctl (unacked counts) costs a VM start.
            if self.ready_total() == 0 {
                let unacked: u64 = queue_stats(&self.settings.exchange)
                    .values()
                    .map(|s| s.unacked)
                    .sum();
                if unacked == 0 && self.ready_total() == 0 {
                    return;
                }
            }
            assert!(
                started.elapsed() < limit,
                "queues not drained after {limit:?}: {:?}",
                queue_stats(&self.settings.exchange)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Takes every message left in one queue, in order (nothing may be consuming it).
    pub fn take_all(&self, queue: &str) -> Vec<(Vec<u8>, Option<String>)> {
        self.rt.block_on(async {
            let mut out = Vec::new();
            while let Some(m) = self
                .channel
                .basic_get(queue.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
            {
                let error = m
                    .delivery
                    .properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get("herald-error").cloned())
                    .and_then(|v| match v {
                        AMQPValue::LongString(s) => {
                            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                        }
                        _ => None,
                    });
                out.push((m.delivery.data, error));
            }
            out
        })
    }

    /// Takes what is left in each of the test's queues, queue by queue, in order.
    pub fn take_remaining(&self) -> Vec<Vec<Vec<u8>>> {
        (0..self.settings.queues)
            .map(|q| {
                self.take_all(&self.settings.queue_name(q))
                    .into_iter()
                    .map(|(p, _)| p)
                    .collect()
            })
            .collect()
    }

    /// Every message of `<exchange>.dlq`: (payload, herald-error header).
    pub fn dead_letters(&self) -> Vec<(Vec<u8>, String)> {
        self.take_all(&self.settings.dlq_name())
            .into_iter()
            .map(|(p, e)| (p, e.unwrap_or_default()))
            .collect()
    }

    /// Deletes the test's exchange and queues from the shared broker.
    pub fn delete_topology(&self) {
        self.rt.block_on(async {
            for q in 0..self.settings.queues {
                let _ = self
                    .channel
                    .queue_delete(
                        self.settings.queue_name(q).as_str().into(),
                        QueueDeleteOptions::default(),
                    )
                    .await;
            }
            let _ = self
                .channel
                .queue_delete(
                    self.settings.dlq_name().as_str().into(),
                    QueueDeleteOptions::default(),
                )
                .await;
            let _ = self
                .channel
                .exchange_delete(
                    self.settings.exchange.as_str().into(),
                    ExchangeDeleteOptions::default(),
                )
                .await;
        });
    }
}

impl Drop for Amqp {
    fn drop(&mut self) {
        let _ = self.rt.block_on(self.conn.close(200, "test over".into()));
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub ready: u64,
    pub unacked: u64,
    pub consumers: u64,
}

/// Per queue whose name starts with `prefix`: ready, unacked, consumers (`rabbitmqctl`).
pub fn queue_stats(prefix: &str) -> BTreeMap<String, QueueStats> {
    let out = rabbitmqctl(&[
        "list_queues",
        "-q",
        "--no-table-headers",
        "name",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    ]);
    out.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() != 4 || !f[0].starts_with(prefix) {
                return None;
            }
            Some((
                f[0].to_string(),
                QueueStats {
                    ready: f[1].parse().ok()?,
                    unacked: f[2].parse().ok()?,
                    consumers: f[3].parse().ok()?,
                },
            ))
        })
        .collect()
}

pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
