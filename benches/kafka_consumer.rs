//! `cargo bench --bench kafka_consumer` (Kafka running: `scripts/backends.sh up`): how the
//! librdkafka consumer settings Herald chooses (and `kafka.options` can override) change the
//! consume rate and the latency on the real broker, to pick Herald's defaults by measurement.
//!
//! One topic of 4 partitions gets HERALD_BENCH_EVENTS (default 1,000,000) workload records,
//! produced as an application would (librdkafka defaults, acks=all). Then, per settings set:
//! (a) throughput: a consumer assigned to all partitions reads everything, as Herald's poll
//! thread does (poll, copy key and payload); (b) latency: records produced at
//! HERALD_BENCH_LATENCY_RATE (default 2,000/s) for 5 s, p50/p99 of receive time − record
//! time. Prints a table and writes `target/bench/kafka_consumer.json`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::adapters::kafka::source::ensure_topics;
use herald::workload::{Workload, WorkloadSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const BROKERS: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 4;

/// The candidate settings: name and librdkafka properties on top of librdkafka's defaults.
const SETS: &[(&str, &[(&str, &str)])] = &[
    ("librdkafka defaults", &[]),
    (
        "herald: fetch.wait.max.ms=50",
        &[("fetch.wait.max.ms", "50")],
    ),
    ("fetch.wait.max.ms=10", &[("fetch.wait.max.ms", "10")]),
    (
        "wait 50 + queued.max.messages.kbytes=16384",
        &[
            ("fetch.wait.max.ms", "50"),
            ("queued.max.messages.kbytes", "16384"),
        ],
    ),
    (
        "wait 50 + queued.max.messages.kbytes=4096",
        &[
            ("fetch.wait.max.ms", "50"),
            ("queued.max.messages.kbytes", "4096"),
        ],
    ),
    (
        "wait 50 + fetch.min.bytes=65536",
        &[("fetch.wait.max.ms", "50"), ("fetch.min.bytes", "65536")],
    ),
    (
        "wait 50 + max.partition.fetch.bytes=4 MiB",
        &[
            ("fetch.wait.max.ms", "50"),
            ("max.partition.fetch.bytes", "4194304"),
        ],
    ),
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("acks", "all")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

fn send(producer: &BaseProducer, topic: &str, key: &str, payload: &[u8]) {
    let mut record = BaseRecord::<str, [u8]>::to(topic).key(key).payload(payload);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, r)) => {
                record = r;
                producer.poll(Duration::from_millis(5));
            }
        }
    }
}

fn consumer(set: &[(&str, &str)], group: &str) -> BaseConsumer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", BROKERS)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    for (k, v) in set {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

fn assign_all(c: &BaseConsumer, topic: &str, from: Offset) {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(topic, p, from).unwrap();
    }
    c.assign(&tpl).unwrap();
}

fn main() {
    let events = env_u64("HERALD_BENCH_EVENTS", 1_000_000);
    let lat_rate = env_u64("HERALD_BENCH_LATENCY_RATE", 2_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let topic = format!("bench_consumer_{}_{nanos}", std::process::id());
    rt.block_on(ensure_topics(
        BROKERS,
        &[],
        &[(&topic, PARTITIONS)],
        Duration::from_secs(10),
    ))
    .unwrap();
    let p = producer();
    let started = Instant::now();
    for m in Workload::new(WorkloadSpec::new(events, events / 10, 42)) {
        send(&p, &topic, &m.key, &m.payload);
    }
    p.flush(Duration::from_secs(120)).unwrap();
    let produce_rate = events as f64 / started.elapsed().as_secs_f64();
    println!("produced {events} records to {topic}: {produce_rate:.0} msg/s (acks=all)");

    let mut rows = Vec::new();
    for (i, (name, set)) in SETS.iter().enumerate() {
        // (a) Throughput from the beginning of the topic.
        let c = consumer(set, &format!("{topic}_t{i}"));
        assign_all(&c, &topic, Offset::Beginning);
        let started = Instant::now();
        let mut n = 0u64;
        let mut bytes = 0usize;
        while n < events {
            if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
                // What Herald's poll thread does with each record: copy key and payload out.
                let key = m.key().map(<[u8]>::to_vec);
                let payload = m.payload().map(<[u8]>::to_vec);
                bytes += key.map_or(0, |k| k.len()) + payload.map_or(0, |p| p.len());
                n += 1;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "stalled at {n}"
            );
        }
        let secs = started.elapsed().as_secs_f64();
        let rate = n as f64 / secs;
        let mb_per_s = bytes as f64 / 1e6 / secs;
        drop(c);

        // (b) Latency at a steady, moderate rate: a live tail, as Herald sees it once caught up.
        let c = consumer(set, &format!("{topic}_l{i}"));
        assign_all(&c, &topic, Offset::End);
        let warm = Instant::now();
        while warm.elapsed() < Duration::from_millis(1500) {
            c.poll(Duration::from_millis(50));
        }
        let mut hist = hdrhistogram::Histogram::<u64>::new(3).unwrap();
        let total = lat_rate * 5;
        let start = Instant::now();
        let mut sent = 0u64;
        let mut got = 0u64;
        let payload = br#"{"messageId":"lat","type":"track","userId":"u","timestamp":"2026-01-01T00:00:00Z","event":"x"}"#;
        while got < total && start.elapsed() < Duration::from_secs(30) {
            let due = (start.elapsed().as_secs_f64() * lat_rate as f64) as u64;
            while sent < due.min(total) {
                send(&p, &topic, &format!("u{sent}"), payload);
                sent += 1;
            }
            p.poll(Duration::ZERO);
            if let Some(Ok(m)) = c.poll(Duration::from_millis(1)) {
                if let Some(ts) = m.timestamp().to_millis() {
                    hist.record((now_ms() - ts).max(0) as u64).unwrap();
                }
                got += 1;
            }
        }
        let (p50, p99) = (hist.value_at_quantile(0.5), hist.value_at_quantile(0.99));
        println!(
            "{name:<45} {rate:>10.0} records/s ({mb_per_s:>5.1} MB/s)   latency p50 {p50:>4} ms  p99 {p99:>4} ms"
        );
        rows.push(format!(
            "{{\"settings\":\"{name}\",\"records_per_s\":{rate:.0},\"p50_ms\":{p50},\"p99_ms\":{p99}}}"
        ));
    }
    let dir = format!("{}/target/bench", env!("CARGO_MANIFEST_DIR"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        format!("{dir}/kafka_consumer.json"),
        format!(
            "{{\"events\":{events},\"produce_per_s\":{produce_rate:.0},\"sets\":[{}]}}\n",
            rows.join(",")
        ),
    );
}
