//! `cargo bench --bench ingest` (backends running: `scripts/backends.sh up`; a release build:
//! `cargo build --release`): the Segment-compatible HTTP ingest into Kafka, beside Kafka's own
//! produce rate for the same messages on the same machine.
//!
//! 1. Kafka's own rate: the workload's valid messages produced straight to a topic with the
//!    settings the ingest uses (idempotent producer, `acks=all`, `linger.ms` 2), keyed by user.
//! 2. The ingest's rate: the release `herald run` with `ingest.listen`, driven by an in-process
//!    client posting `/v1/batch` requests of 100 messages (Basic auth) with a fixed number in
//!    flight; events/s = messages answered 200 per second.
//! 3. Latency at half that rate: requests started on a fixed schedule (open loop, measured from
//!    the time each was due, so a slow answer delays nothing it should not), p50 / p99.
//! 4. Durable check: the topic's end offsets hold at least every message answered 200.
//!
//! Steps 2–4 run for two deployments, each on its own topic: `herald run` with its engine (its
//! pipeline applies what the ingest publishes, with Redis and MongoDB, on the same 2 cores),
//! then `herald run` with `ingest.only` (the ingest tier alone; nothing consumes). Results in
//! `target/bench/ingest.json`, the `herald run` logs in `target/bench/logs/`.
//!
//! Size: HERALD_BENCH_EVENTS (default 200,000), HERALD_BENCH_USERS (default 20,000),
//! HERALD_BENCH_IN_FLIGHT (default 16), HERALD_BENCH_SECS (default 10).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::adapters::kafka::source::ensure_topics;
use herald::workload::{MessageKind, Workload, WorkloadSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const BROKERS: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 4;
const BATCH: usize = 100;
const KEY: &str = "bench-write-key";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The valid messages of the workload: (user key, JSON object).
fn messages(events: u64, users: u64) -> Vec<(String, Vec<u8>)> {
    Workload::new(WorkloadSpec::new(events, users, 42))
        .filter(|m| m.kind == MessageKind::Valid)
        .map(|m| (m.key, m.payload.to_vec()))
        .collect()
}

/// Kafka's own rate for the same records: one producer, the ingest's settings.
fn kafka_rate(topic: &str, msgs: &[(String, Vec<u8>)]) -> f64 {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .set("queue.buffering.max.kbytes", "65536")
        .create()
        .unwrap();
    let started = Instant::now();
    for (key, payload) in msgs {
        let mut record = BaseRecord::to(topic).key(key.as_str()).payload(payload);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, r)) => {
                    record = r;
                    producer.poll(Duration::from_millis(1));
                }
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    msgs.len() as f64 / started.elapsed().as_secs_f64()
}

fn end_offsets(topic: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", "bench-ingest-offsets")
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

fn spawn_herald(base: &str, http: u16, ingest: u16, only: bool) -> Kill {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/logs");
    std::fs::create_dir_all(&dir).unwrap();
    let log = std::fs::File::create(dir.join(format!("{base}.log"))).unwrap();
    let child = Command::new(env!("CARGO_MANIFEST_DIR").to_string() + "/target/release/herald")
        .arg("run")
        .env("HERALD__KAFKA__TOPIC", base)
        .env("HERALD__KAFKA__GROUP_ID", base)
        .env("HERALD__KAFKA__PARTITIONS", PARTITIONS.to_string())
        .env("HERALD__MONGO__DATABASE", base)
        .env("HERALD__REDIS__PREFIX", format!("{base}:"))
        .env("HERALD__HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("HERALD__INGEST__LISTEN", format!("127.0.0.1:{ingest}"))
        .env("HERALD__INGEST__ONLY", only.to_string())
        .env("HERALD_INGEST_WRITE_KEYS", KEY)
        .env("HERALD__LOG__FORMAT", "json")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("run `cargo build --release` first");
    let herald = Kill(child);
    let started = Instant::now();
    loop {
        let ready = rt().block_on(async {
            reqwest::get(format!("http://127.0.0.1:{http}/readyz"))
                .await
                .is_ok_and(|r| r.status().is_success())
        });
        if ready {
            return herald;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "herald never became ready"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `/v1/batch` body and how many messages it holds (counted once here, so the client's
/// timed loop does no JSON work of its own on the cores it shares with Herald).
#[derive(Clone)]
struct Body {
    bytes: bytes::Bytes,
    messages: u64,
}

/// `/v1/batch` bodies of 100 messages each.
fn bodies(msgs: &[(String, Vec<u8>)]) -> Vec<Body> {
    msgs.chunks(BATCH)
        .map(|chunk| {
            let mut body = b"{\"batch\":[".to_vec();
            for (i, (_, m)) in chunk.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(m);
            }
            body.extend_from_slice(b"]}");
            Body {
                bytes: bytes::Bytes::from(body),
                messages: chunk.len() as u64,
            }
        })
        .collect()
}

/// One request: (answered 200, latency).
async fn post(client: &reqwest::Client, url: &str, body: bytes::Bytes) -> (bool, Duration) {
    let started = Instant::now();
    let ok = client
        .post(url)
        .basic_auth(KEY, Some(""))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .is_ok_and(|r| r.status() == 200);
    (ok, started.elapsed())
}

/// Closed loop: `in_flight` requests at a time over `bodies`, once each (or until `secs`).
/// Returns (messages answered 200, requests refused, events/s).
fn max_rate(url: &str, bodies: &[Body], in_flight: usize, secs: u64) -> (u64, u64, f64) {
    use futures::StreamExt;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs);
    let (ok, refused) = rt().block_on(async {
        let mut ok = 0u64;
        let mut refused = 0u64;
        let mut answers = futures::stream::iter(bodies.iter().cloned())
            .take_while(|_| futures::future::ready(Instant::now() < deadline))
            .map(|b| {
                let client = client.clone();
                async move { (post(&client, url, b.bytes).await, b.messages) }
            })
            .buffer_unordered(in_flight);
        while let Some(((accepted, _), n)) = answers.next().await {
            if accepted {
                ok += n;
            } else {
                refused += 1;
            }
        }
        (ok, refused)
    });
    (ok, refused, ok as f64 / started.elapsed().as_secs_f64())
}

/// Open loop at `rate` events/s for `secs`: (messages answered 200, refused, p50 ms, p99 ms).
fn latency_at(url: &str, bodies: &[Body], rate: f64, secs: u64) -> (u64, u64, f64, f64) {
    let client = reqwest::Client::new();
    let interval = Duration::from_secs_f64(BATCH as f64 / rate);
    let count = ((secs as f64 * rate) / BATCH as f64).ceil() as usize;
    let url = Arc::<str>::from(url);
    let results = rt().block_on(async {
        let start = tokio::time::Instant::now();
        let mut tasks = Vec::with_capacity(count);
        for (i, body) in bodies.iter().cycle().take(count).cloned().enumerate() {
            let due = start + interval * i as u32;
            tokio::time::sleep_until(due).await;
            let (client, url) = (client.clone(), url.clone());
            tasks.push(tokio::spawn(async move {
                let (ok, _) = post(&client, &url, body.bytes).await;
                (ok, body.messages, due.elapsed())
            }));
        }
        let mut out = Vec::with_capacity(count);
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let ok: u64 = results.iter().filter(|r| r.0).map(|r| r.1).sum();
    let refused = results.iter().filter(|r| !r.0).count() as u64;
    let mut lat: Vec<f64> = results.iter().map(|r| r.2.as_secs_f64() * 1000.0).collect();
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    (ok, refused, pct(0.50), pct(0.99))
}

/// `herald_ingest_request_seconds`'s cumulative buckets from Herald's `/metrics`: (upper
/// bound in ms, requests at most that long).
fn server_buckets(http: u16) -> Vec<(f64, f64)> {
    let text = rt()
        .block_on(async {
            reqwest::get(format!("http://127.0.0.1:{http}/metrics"))
                .await?
                .text()
                .await
        })
        .expect("Herald's /metrics");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("herald_ingest_request_seconds_bucket{le=\"")?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse::<f64>().ok()? * 1000.0
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

fn delta(after: &[(f64, f64)], before: &[(f64, f64)]) -> Vec<(f64, f64)> {
    after
        .iter()
        .map(|(le, n)| {
            let was = before.iter().find(|b| b.0 == *le).map_or(0.0, |b| b.1);
            (*le, n - was)
        })
        .collect()
}

/// The smallest bucket bound within which a share `q` of the requests were answered.
fn upper_bound(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, n)| *n >= q * total)
        .map_or(f64::NAN, |b| b.0)
}

fn main() {
    let events = env_u64("HERALD_BENCH_EVENTS", 200_000);
    let users = env_u64("HERALD_BENCH_USERS", 20_000);
    let in_flight = env_u64("HERALD_BENCH_IN_FLIGHT", 16) as usize;
    let secs = env_u64("HERALD_BENCH_SECS", 10);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let base = format!("bench_ingest_{stamp}");
    let raw = format!("{base}_kafka");
    let deployments = [
        ("with its engine", false, format!("{base}_engine")),
        ("ingest only", true, format!("{base}_only")),
    ];
    let mut topics = vec![(raw.as_str(), PARTITIONS)];
    topics.extend(deployments.iter().map(|d| (d.2.as_str(), PARTITIONS)));
    rt().block_on(ensure_topics(
        BROKERS,
        &[],
        &topics,
        Duration::from_secs(30),
    ))
    .unwrap();
    let msgs = messages(events, users);
    let bodies = bodies(&msgs);
    println!(
        "{} messages in {} requests of {BATCH} ({} bytes on average)",
        msgs.len(),
        bodies.len(),
        bodies.iter().map(|b| b.bytes.len()).sum::<usize>() / bodies.len().max(1)
    );

    let kafka = kafka_rate(&raw, &msgs);
    println!("Kafka's own produce rate (idempotent, acks=all): {kafka:.0} events/s");

    let mut passes = Vec::new();
    for (deployment, only, topic) in &deployments {
        passes.push(measure(deployment, topic, *only, &bodies, in_flight, secs));
    }
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("ingest.json"),
        serde_json::to_vec_pretty(&serde_json::json!({
            "messages": msgs.len(),
            "batch": BATCH,
            "in_flight": in_flight,
            "kafka_produce_per_sec": kafka,
            "passes": passes,
        }))
        .unwrap(),
    )
    .unwrap();
}

/// One deployment's passes: the rate with `in_flight` requests, the latency at half of it,
/// the durable check.
fn measure(
    deployment: &str,
    topic: &str,
    only: bool,
    bodies: &[Body],
    in_flight: usize,
    secs: u64,
) -> serde_json::Value {
    let (http, ingest) = (free_port(), free_port());
    let herald = spawn_herald(topic, http, ingest, only);
    let url = format!("http://127.0.0.1:{ingest}/v1/batch");
    // Warm-up: connections, the producer's metadata.
    let _ = max_rate(&url, &bodies[..bodies.len().min(20)], 4, 10);
    let warm = end_offsets(topic);
    let (ok, refused, rate) = max_rate(&url, bodies, in_flight, secs);
    println!(
        "ingest {deployment}, {in_flight} requests in flight: {rate:.0} events/s ({ok} answered 200, {refused} requests refused)"
    );
    let half = rate / 2.0;
    let before = server_buckets(http);
    let (half_ok, half_refused, p50, p99) = latency_at(&url, bodies, half, secs);
    let during = delta(&server_buckets(http), &before);
    let (server_p50, server_p99) = (upper_bound(&during, 0.5), upper_bound(&during, 0.99));
    println!(
        "ingest {deployment} at {half:.0} events/s: p50 {p50:.1} ms, p99 {p99:.1} ms ({half_ok} answered 200, {half_refused} refused); in Herald (herald_ingest_request_seconds): p50 <= {server_p50} ms, p99 <= {server_p99} ms"
    );
    let in_kafka = end_offsets(topic) - warm;
    let answered = (ok + half_ok) as i64;
    println!("durable: {in_kafka} records in the topic for {answered} messages answered 200");
    assert!(
        in_kafka >= answered,
        "messages answered 200 are missing from Kafka"
    );
    drop(herald);
    serde_json::json!({
        "deployment": deployment,
        "ingest_per_sec": rate,
        "ingest_refused_requests": refused,
        "half_rate_per_sec": half,
        "half_rate_p50_ms": p50,
        "half_rate_p99_ms": p99,
        "half_rate_server_p50_ms_at_most": server_p50,
        "half_rate_server_p99_ms_at_most": server_p99,
        "half_rate_refused_requests": half_refused,
        "records_in_kafka": in_kafka,
        "answered_200": answered,
    })
}
