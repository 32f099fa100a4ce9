//! `cargo bench --bench backends` (backends running: `scripts/backends.sh up`): in one run on the
//! same workload, Herald end to end (Kafka → Redis → MongoDB, the release `herald run`) against
//! (1) each backend's own rate for the same work — consume-only from Kafka, the same Redis
//! cache writes, the same MongoDB fenced bulk replacements (profile and bookkeeping), and the
//! same replacements without the bookkeeping (documents as the previous release wrote them:
//! what keeping the positions and the dedup window in MongoDB costs) — and (2) a naive
//! pipeline (per event: read state, write MongoDB, write Redis, commit). Prints the rates and writes
//! `target/bench/backends.json`.
//!
//! Size: HERALD_BENCH_EVENTS (default 100,000), HERALD_BENCH_USERS (default 10,000). The
//! MongoDB measured: HERALD_BENCH_MONGO (default the rig's, mongodb://127.0.0.1:27017).

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::adapters::kafka::source::ensure_topics;
use herald::adapters::mongo::docs::MongoDocumentStore;
use herald::adapters::mongo::users;
use herald::adapters::redis::connection::RedisTarget;
use herald::adapters::redis::state::RedisStateCache;
use herald::domain::event::decode;
use herald::domain::user::{DedupLimits, Position, UserState};
use herald::ports::{DocumentStore, StateCache, UserSnapshot};
use herald::workload::{Workload, WorkloadSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BROKERS: &str = "127.0.0.1:9092";
/// The MongoDB measured: `HERALD_BENCH_MONGO`, else the rig's test server.
fn mongo_url() -> String {
    std::env::var("HERALD_BENCH_MONGO").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}
const REDIS: &str = "redis://127.0.0.1:6379/0";
const PARTITIONS: i32 = 4;
/// The batcher's default flush size: the unit of coalescing for "the same writes".
const BATCH: usize = 5000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What a flush writes of a user whose state is now at `s.version`.
fn snapshot(user: &str, s: &UserState) -> Arc<UserSnapshot> {
    Arc::new(UserSnapshot::of_state(Arc::from(user), s))
}

async fn cache(prefix: &str) -> RedisStateCache {
    let target = RedisTarget::Single {
        url: REDIS.into(),
        retry_db: 1,
    };
    RedisStateCache::connect(&target, prefix, 3_600_000)
        .await
        .unwrap()
}

fn main() {
    herald::huge_pages::disable().expect("transparent huge pages off");
    let events = env_u64("HERALD_BENCH_EVENTS", 100_000);
    let users = env_u64("HERALD_BENCH_USERS", 10_000);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    let base = format!("bench_{}_{nanos}", std::process::id());
    let msgs: Vec<_> = Workload::new(WorkloadSpec::new(events, users, 42)).collect();
    let rt = rt();

    // Produce once, timed: the broker's own produce rate (librdkafka defaults, acks=all).
    rt.block_on(ensure_topics(
        BROKERS,
        &[],
        &[(&base, PARTITIONS), (&format!("{base}.dlq"), 1)],
        Duration::from_secs(10),
    ))
    .unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("acks", "all")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap();
    let produce_started = Instant::now();
    for m in &msgs {
        send(&producer, &base, m);
    }
    producer.flush(Duration::from_secs(120)).unwrap();
    let produce_rate = msgs.len() as f64 / produce_started.elapsed().as_secs_f64();
    println!("kafka produce (acks=all): {produce_rate:>10.0} msg/s");

    // (1a) Kafka consume-only.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", format!("{base}_consume_only"))
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(&base, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let started = Instant::now();
    let mut n = 0usize;
    while n < msgs.len() {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            n += 1;
        }
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "consume-only stalled at {n}"
        );
    }
    let kafka_rate = n as f64 / started.elapsed().as_secs_f64();

    // The writes Herald makes: per flush of BATCH events, one state per distinct user.
    let limits = DedupLimits::default();
    let mut states: HashMap<String, UserState> = HashMap::new();
    let mut flushes: Vec<Vec<Arc<UserSnapshot>>> = Vec::new();
    let mut touched: HashMap<String, ()> = HashMap::new();
    let mut count = 0;
    for (i, m) in msgs.iter().enumerate() {
        if let Ok(e) = decode(&m.payload, 1 << 20) {
            let s = states.entry(String::from(&e.user_id)).or_default();
            s.apply(
                Some(Position {
                    partition: 0,
                    offset: i as u64,
                }),
                &e,
                0,
                limits,
            );
            touched.insert(String::from(&e.user_id), ());
            count += 1;
        }
        if count >= BATCH || i + 1 == msgs.len() {
            flushes.push(
                touched
                    .drain()
                    .map(|(u, _)| {
                        let s = states.get_mut(&u).unwrap();
                        s.version += 1;
                        snapshot(&u, s)
                    })
                    .collect(),
            );
            count = 0;
        }
    }
    let writes: usize = flushes.iter().map(Vec::len).sum();

    // (1b) Redis pipelines of the same writes, (1c) MongoDB bulk upserts of the same documents.
    let (redis_secs, mongo_secs) = rt.block_on(async {
        let redis = cache(&format!("{base}_alone:")).await;
        let started = Instant::now();
        for f in &flushes {
            redis.save(f.clone()).await.unwrap();
        }
        let redis_secs = started.elapsed().as_secs_f64();
        let mongo = MongoDocumentStore::connect(&mongo_url(), &format!("{base}_alone"), "majority")
            .await
            .unwrap();
        let started = Instant::now();
        for f in &flushes {
            let written = mongo.upsert_users(f.clone(), 1, 0).await.unwrap();
            assert!(written.stale.is_empty() && written.refused.is_empty());
        }
        (redis_secs, started.elapsed().as_secs_f64())
    });
    let redis_rate = events as f64 / redis_secs;
    let mongo_rate = events as f64 / mongo_secs;

    // (1d) The same replacements without the bookkeeping, and the documents' sizes.
    let (plain_secs, sizes) = rt.block_on(async {
        let mongo = MongoDocumentStore::connect(&mongo_url(), &format!("{base}_plain"), "majority")
            .await
            .unwrap();
        let started = Instant::now();
        for f in &flushes {
            let statements: Vec<mongodb::bson::Document> = f
                .iter()
                .map(|u| {
                    let mut d = mongodb::bson::doc! {"_id": &*u.user_id};
                    d.extend(users::profile_document(&u.profile, 0));
                    d.insert("version", u.version as i64);
                    d.insert("schema_version", 2);
                    mongodb::bson::doc! {
                        "q": {"_id": &*u.user_id, "version": {"$lte": u.version as i64}},
                        "u": d,
                        "upsert": true,
                    }
                })
                .collect();
            for chunk in statements.chunks(1000) {
                mongo
                    .database()
                    .run_command(mongodb::bson::doc! {
                        "update": "users", "updates": chunk.to_vec(), "ordered": false,
                        "writeConcern": {"w": "majority"},
                    })
                    .await
                    .unwrap();
            }
        }
        let plain_secs = started.elapsed().as_secs_f64();
        // The last flush's documents, with and without `_herald`, as BSON.
        let last = flushes.last().unwrap();
        let bytes = |d: mongodb::bson::Document| {
            let mut buf = Vec::new();
            d.to_writer(&mut buf).unwrap();
            buf.len()
        };
        let with: usize = last
            .iter()
            .map(|u| bytes(users::user_document(u, 1, 0)))
            .sum();
        let without: usize = last
            .iter()
            .map(|u| {
                let mut d = mongodb::bson::doc! {"_id": &*u.user_id};
                d.extend(users::profile_document(&u.profile, 0));
                d.insert("version", u.version as i64);
                d.insert("schema_version", 2);
                bytes(d)
            })
            .sum();
        (plain_secs, (with / last.len(), without / last.len()))
    });
    let plain_rate = events as f64 / plain_secs;

    // (2) Herald end to end: the release binary, timed from its first commit to its last.
    let herald = env!("CARGO_MANIFEST_DIR").to_string() + "/target/release/herald";
    let log = std::fs::File::create(format!(
        "{}/target/bench/{base}.log",
        env!("CARGO_MANIFEST_DIR")
    ))
    .or_else(|_| {
        std::fs::create_dir_all(format!("{}/target/bench", env!("CARGO_MANIFEST_DIR")))?;
        std::fs::File::create(format!(
            "{}/target/bench/{base}.log",
            env!("CARGO_MANIFEST_DIR")
        ))
    })
    .unwrap();
    let mut child = Command::new(&herald)
        .arg("run")
        .env("HERALD__KAFKA__TOPIC", &base)
        .env("HERALD__KAFKA__GROUP_ID", &base)
        .env("HERALD__KAFKA__PARTITIONS", PARTITIONS.to_string())
        .env("HERALD__MONGO__URL", mongo_url())
        .env("HERALD__MONGO__DATABASE", &base)
        .env("HERALD__REDIS__PREFIX", format!("{base}:"))
        .env("HERALD__PIPELINE__COMMIT_INTERVAL_MS", "100")
        .env("HERALD__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("run `cargo build --release` first");
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", &base)
        .create()
        .unwrap();
    let committed = |c: &BaseConsumer| -> i64 {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&base, p);
        }
        c.committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
            .elements()
            .iter()
            .map(|e| match e.offset() {
                Offset::Offset(o) => o,
                _ => 0,
            })
            .sum()
    };
    let started = Instant::now();
    let (mut first, mut first_at) = (0, None);
    let total = msgs.len() as i64;
    let done_at = loop {
        let c = committed(&client);
        if c > 0 && first_at.is_none() {
            first = c;
            first_at = Some(Instant::now());
        }
        if c >= total {
            break Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "herald stalled at {c}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let herald_rate =
        (total - first) as f64 / done_at.duration_since(first_at.unwrap()).as_secs_f64();

    // (3) Naive: per event read state, write MongoDB, write Redis, commit. A sample suffices.
    let sample = 1_000.min(msgs.len());
    let naive_secs = rt.block_on(async {
        let redis = cache(&format!("{base}_naive:")).await;
        let mongo = MongoDocumentStore::connect(&mongo_url(), &format!("{base}_naive"), "majority")
            .await
            .unwrap();
        let started = Instant::now();
        for (i, m) in msgs.iter().take(sample).enumerate() {
            let Ok(e) = decode(&m.payload, 1 << 20) else {
                continue;
            };
            let mut s = redis
                .load(vec![Arc::from(e.user_id.as_str())])
                .await
                .unwrap()
                .remove(0)
                .unwrap_or_default();
            s.apply(
                Some(Position {
                    partition: 0,
                    offset: i as u64,
                }),
                &e,
                0,
                limits,
            );
            s.version += 1;
            let s = snapshot(&e.user_id, &s);
            mongo.upsert_users(vec![s.clone()], 1, 0).await.unwrap();
            redis.save(vec![s]).await.unwrap();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&base, 0, Offset::Offset(i as i64 + 1))
                .unwrap();
            consumer.commit(&tpl, CommitMode::Sync).unwrap();
        }
        started.elapsed().as_secs_f64()
    });
    let naive_rate = sample as f64 / naive_secs;

    // (4) Latency at half Herald's rate: a fresh topic, Herald already running on it, events
    // produced at that pace; Herald logs p50/p99 (Kafka record time → durable write) on exit.
    let lat_rate = std::env::var("HERALD_BENCH_LATENCY_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(herald_rate / 2.0);
    let (p50, p99, produced_rate) = latency_at(
        &rt,
        &format!("{base}_lat"),
        &msgs[..msgs.len() / 2],
        lat_rate,
        &herald,
    );

    let slowest = kafka_rate.min(redis_rate).min(mongo_rate);
    println!("workload: {events} events, {users} users, {writes} coalesced user writes");
    println!("kafka produce        {produce_rate:>10.0} events/s  (acks=all, librdkafka defaults)");
    println!("kafka consume-only   {kafka_rate:>10.0} events/s");
    println!("redis same writes    {redis_rate:>10.0} events/s");
    println!(
        "mongodb same upserts {mongo_rate:>10.0} events/s  (documents with _herald, {} B each)",
        sizes.0
    );
    println!("  without bookkeeping {plain_rate:>10.0} events/s  (the previous release's documents, {} B each)", sizes.1);
    println!(
        "herald end to end    {herald_rate:>10.0} events/s  ({:.0} % of the slowest backend)",
        100.0 * herald_rate / slowest
    );
    println!(
        "naive per-event      {naive_rate:>10.0} events/s  (herald is {:.0}x faster)",
        herald_rate / naive_rate
    );
    println!(
        "latency at {lat_rate:.0} events/s asked, {produced_rate:.0} produced: p50 {p50} ms, p99 {p99} ms (Kafka record time to durable write)"
    );
    let json = format!(
        "{{\"events\":{events},\"users\":{users},\"kafka_produce\":{produce_rate:.0},\"kafka\":{kafka_rate:.0},\"redis\":{redis_rate:.0},\"mongo\":{mongo_rate:.0},\"mongo_without_bookkeeping\":{plain_rate:.0},\"users_doc_bytes\":{},\"users_doc_bytes_without_bookkeeping\":{},\"herald\":{herald_rate:.0},\"naive\":{naive_rate:.0},\"latency_p50_ms\":{p50},\"latency_p99_ms\":{p99}}}\n",
        sizes.0, sizes.1
    );
    let _ = std::fs::write(
        format!("{}/target/bench/backends.json", env!("CARGO_MANIFEST_DIR")),
        json,
    );
}

fn latency_at(
    rt: &tokio::runtime::Runtime,
    topic: &str,
    msgs: &[herald::workload::GeneratedMessage],
    rate: f64,
    herald: &str,
) -> (u64, u64, f64) {
    rt.block_on(ensure_topics(
        BROKERS,
        &[],
        &[(topic, PARTITIONS), (&format!("{topic}.dlq"), 1)],
        Duration::from_secs(10),
    ))
    .unwrap();
    let log_path = format!("{}/target/bench/{topic}.log", env!("CARGO_MANIFEST_DIR"));
    let mut child = Command::new(herald)
        .arg("run")
        .env("HERALD__KAFKA__TOPIC", topic)
        .env("HERALD__KAFKA__GROUP_ID", topic)
        .env("HERALD__MONGO__URL", mongo_url())
        .env("HERALD__MONGO__DATABASE", topic)
        .env("HERALD__REDIS__PREFIX", format!("{topic}:"))
        .env("HERALD__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    // Wait until Herald owns the partitions before producing.
    let started = Instant::now();
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("partitions assigned")
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "herald did not join"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        // librdkafka's default batching, as an application producer would send.
        .create()
        .unwrap();
    let started = Instant::now();
    for (i, m) in msgs.iter().enumerate() {
        let due = Duration::from_secs_f64(i as f64 / rate.max(1.0));
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
        send(&producer, topic, m);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let produced_rate = msgs.len() as f64 / started.elapsed().as_secs_f64();
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("group.id", topic)
        .create()
        .unwrap();
    let total = msgs.len() as i64;
    loop {
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(topic, p);
        }
        let c: i64 = client
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap()
            .elements()
            .iter()
            .map(|e| {
                if let Offset::Offset(o) = e.offset() {
                    o
                } else {
                    0
                }
            })
            .sum();
        if c >= total {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("latency_p50_ms"))
        .expect("herald logged its latency");
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    (
        v["fields"]["latency_p50_ms"].as_u64().unwrap_or(0),
        v["fields"]["latency_p99_ms"].as_u64().unwrap_or(0),
        produced_rate,
    )
}

/// Enqueues one record keyed by user, waiting while the producer's local queue is full.
fn send(producer: &BaseProducer, topic: &str, m: &herald::workload::GeneratedMessage) {
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
