//! `cargo bench --bench changelog` (backends running: `scripts/backends.sh up`; uses the
//! release `herald`): in one run,
//! 1. the pipeline's rate (first commit to last, the same pre-produced workload) with the
//!    users' changelog off and on;
//! 2. with the changelog on and events arriving at a steady rate, the latency from producing
//!    a `track` event to the changelog record that first holds it (a record's `event_count`
//!    says how many of its user's tracks it holds), read with `read_committed`.
//!
//! Size: HERALD_BENCH_EVENTS (default 100,000), HERALD_BENCH_USERS (default 10,000),
//! HERALD_BENCH_RATE (events/s of part 2, default 5,000).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::adapters::kafka::source::ensure_topics;
use herald::workload::{GeneratedMessage, MessageKind, Workload, WorkloadSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

const BROKERS: &str = "127.0.0.1:9092";
const PARTITIONS: i32 = 8;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

fn send(producer: &BaseProducer, topic: &str, m: &GeneratedMessage) {
    let mut r = BaseRecord::<[u8], [u8]>::to(topic)
        .key(m.key.as_bytes())
        .payload(&m.payload[..]);
    loop {
        match producer.send(r) {
            Ok(()) => break,
            Err((_, back)) => {
                r = back;
                producer.poll(Duration::from_millis(5));
            }
        }
    }
    producer.poll(Duration::ZERO);
}

fn spawn(topic: &str, changelog: Option<&str>) -> Child {
    let dir = format!("{}/target/bench", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = Command::new(format!(
        "{}/target/release/herald",
        env!("CARGO_MANIFEST_DIR")
    ));
    c.arg("run")
        .env("HERALD__KAFKA__TOPIC", topic)
        .env("HERALD__KAFKA__GROUP_ID", topic)
        .env("HERALD__KAFKA__PARTITIONS", PARTITIONS.to_string())
        .env("HERALD__MONGO__DATABASE", topic)
        .env("HERALD__REDIS__PREFIX", format!("{topic}:"))
        .env("HERALD__PIPELINE__COMMIT_INTERVAL_MS", "100")
        .env("HERALD__HTTP__LISTEN", "127.0.0.1:0")
        .env("HERALD__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(format!("{dir}/{topic}.log")).unwrap());
    if let Some(t) = changelog {
        c.env("HERALD__CHANGELOG__TOPIC", t);
    }
    c.spawn().expect("run `cargo build --release` first")
}

fn committed(client: &BaseConsumer, topic: &str) -> i64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    client
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            _ => 0,
        })
        .sum()
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

/// Events/s from Herald's first commit to its last, over a pre-produced topic.
fn rate(base: &str, msgs: &[GeneratedMessage], changelog: bool) -> f64 {
    let topic = format!("{base}_{}", if changelog { "on" } else { "off" });
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ensure_topics(
        BROKERS,
        &[],
        &[(&topic, PARTITIONS), (&format!("{topic}.dlq"), 1)],
        Duration::from_secs(10),
    ))
    .unwrap();
    let p = producer();
    for m in msgs {
        send(&p, &topic, m);
    }
    p.flush(Duration::from_secs(120)).unwrap();
    let changelog_topic = format!("{topic}.changelog");
    let child = spawn(&topic, changelog.then_some(changelog_topic.as_str()));
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", &topic)
        .create()
        .unwrap();
    let total = msgs.len() as i64;
    let started = Instant::now();
    let (mut first, mut first_at) = (0, None);
    let done_at = loop {
        let c = committed(&client, &topic);
        if c > 0 && first_at.is_none() {
            first = c;
            first_at = Some(Instant::now());
        }
        if c >= total {
            break Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "stalled at {c}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    stop(child);
    (total - first) as f64 / done_at.duration_since(first_at.unwrap()).as_secs_f64()
}

/// Herald's own record → durable write latency (p50, p99 ms), from its shutdown log line.
fn logged_latency(topic: &str) -> (u64, u64) {
    let log = std::fs::read_to_string(format!(
        "{}/target/bench/{topic}.log",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap_or_default();
    let Some(line) = log.lines().find(|l| l.contains("latency_p50_ms")) else {
        return (0, 0);
    };
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    (
        v["fields"]["latency_p50_ms"].as_u64().unwrap_or(0),
        v["fields"]["latency_p99_ms"].as_u64().unwrap_or(0),
    )
}

/// Herald with the changelog off, events produced at `per_sec`: its durable latency.
fn durable_latency_off(base: &str, msgs: &[GeneratedMessage], per_sec: f64) -> (u64, u64) {
    let topic = format!("{base}_latoff");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ensure_topics(
        BROKERS,
        &[],
        &[(&topic, PARTITIONS), (&format!("{topic}.dlq"), 1)],
        Duration::from_secs(10),
    ))
    .unwrap();
    let child = spawn(&topic, None);
    std::thread::sleep(Duration::from_secs(3));
    let p = producer();
    let started = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / per_sec);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        send(&p, &topic, m);
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", &topic)
        .create()
        .unwrap();
    while committed(&client, &topic) < msgs.len() as i64 {
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(child);
    logged_latency(&topic)
}

/// Milliseconds from producing each track event to the changelog record first holding it:
/// (p50, p99, samples, Herald's own durable p50, p99).
fn latency(base: &str, msgs: &[GeneratedMessage], per_sec: f64) -> (u64, u64, usize, (u64, u64)) {
    let topic = format!("{base}_lat");
    let changelog = format!("{topic}.changelog");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(ensure_topics(
        BROKERS,
        &[],
        &[(&topic, PARTITIONS), (&format!("{topic}.dlq"), 1)],
        Duration::from_secs(10),
    ))
    .unwrap();
    let child = spawn(&topic, Some(&changelog));
    // Herald creates the changelog topic at start.
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", format!("{topic}_reader"))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .create()
        .unwrap();
    let started = Instant::now();
    while reader
        .fetch_metadata(Some(&changelog), Duration::from_secs(5))
        .map(|m| m.topics().first().map_or(0, |t| t.partitions().len()))
        .unwrap_or(0)
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no changelog topic"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&changelog, p, Offset::Beginning)
            .unwrap();
    }
    reader.assign(&tpl).unwrap();
    // Each user's track events in order, with when they were produced.
    let produced: Arc<Mutex<HashMap<String, Vec<Instant>>>> = Arc::default();
    let tracks = msgs
        .iter()
        .filter(|m| m.kind == MessageKind::Valid && is_track(&m.payload))
        .count();
    let reading = {
        let produced = produced.clone();
        std::thread::spawn(move || {
            let mut held: HashMap<String, i64> = HashMap::new();
            let mut latencies = Vec::with_capacity(tracks);
            let started = Instant::now();
            while latencies.len() < tracks && started.elapsed() < Duration::from_secs(300) {
                let Some(Ok(m)) = reader.poll(Duration::from_millis(50)) else {
                    continue;
                };
                let at = Instant::now();
                let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
                let v: serde_json::Value =
                    serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
                let count = v["event_count"].as_i64().unwrap_or(0);
                let before = held.insert(key.clone(), count).unwrap_or(0);
                let produced = produced.lock().unwrap();
                if let Some(times) = produced.get(&key) {
                    for t in times.iter().take(count as usize).skip(before as usize) {
                        latencies.push(at.duration_since(*t).as_millis() as u64);
                    }
                }
            }
            latencies
        })
    };
    let p = producer();
    let started = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / per_sec);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        if m.kind == MessageKind::Valid && is_track(&m.payload) {
            produced
                .lock()
                .unwrap()
                .entry(m.key.clone())
                .or_default()
                .push(Instant::now());
        }
        send(&p, &topic, m);
    }
    p.flush(Duration::from_secs(60)).unwrap();
    let mut latencies = reading.join().unwrap();
    stop(child);
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.5), at(0.99), latencies.len(), logged_latency(&topic))
}

fn is_track(payload: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(payload)
        .map(|v| v["type"] == "track")
        .unwrap_or(false)
}

fn main() {
    let events = env_u64("HERALD_BENCH_EVENTS", 100_000);
    let users = env_u64("HERALD_BENCH_USERS", 10_000);
    let per_sec = env_u64("HERALD_BENCH_RATE", 5_000) as f64;
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    let base = format!("bench_cl_{}_{nanos}", std::process::id());
    // Only valid, distinct events: a duplicate or an invalid one makes no changelog record.
    let msgs: Vec<GeneratedMessage> = Workload::new(WorkloadSpec::new(events, users, 42))
        .filter(|m| m.kind == MessageKind::Valid)
        .collect();
    let off = rate(&base, &msgs, false);
    let on = rate(&base, &msgs, true);
    println!(
        "pipeline, {} events, {users} users: changelog off {off:>9.0} events/s, on {on:>9.0} events/s ({:+.1}%)",
        msgs.len(),
        (on / off - 1.0) * 100.0
    );
    let lat_msgs: Vec<GeneratedMessage> = msgs
        .iter()
        .take((per_sec * 20.0) as usize)
        .cloned()
        .collect();
    let (p50, p99, n, (on50, on99)) = latency(&base, &lat_msgs, per_sec);
    println!(
        "event → changelog record at {per_sec:.0} events/s: p50 {p50} ms, p99 {p99} ms ({n} track events)"
    );
    let (off50, off99) = durable_latency_off(&base, &lat_msgs, per_sec);
    println!(
        "record → durable write (Herald's own figure) at {per_sec:.0} events/s: changelog on p50 {on50} ms, p99 {on99} ms; off p50 {off50} ms, p99 {off99} ms"
    );
}
