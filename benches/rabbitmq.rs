//! `cargo bench --bench rabbitmq` (backends running: `scripts/backends.sh up`; a release build
//! of `herald`): in one run, the same workload published twice with confirms — once for
//! RabbitMQ's own consume rate (4 queues, the prefetch Herald uses, acks with `multiple`
//! every 1000), once for Herald end to end (RabbitMQ → Redis → MongoDB, acked only when
//! durable). Prints both rates and writes `target/bench/rabbitmq.json`.
//!
//! Size: HERALD_BENCH_EVENTS (default 100,000), HERALD_BENCH_USERS (default 10,000).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use herald::adapters::rabbitmq;
use herald::adapters::rabbitmq::source::RabbitSettings;
use herald::workload::{Workload, WorkloadSpec};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const QUEUES: u32 = 4;
/// What `herald run` asks for with the default batch size (2 × 5000).
const PREFETCH: u16 = 10_000;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn settings(exchange: &str) -> RabbitSettings {
    RabbitSettings {
        url: AMQP.into(),
        exchange: exchange.into(),
        queues: QUEUES,
        prefetch: PREFETCH,
    }
}

async fn publish_all(exchange: &str, msgs: &[herald::workload::GeneratedMessage]) -> f64 {
    let conn = rabbitmq::source::connect(AMQP, "bench-publish")
        .await
        .unwrap();
    let channel = rabbitmq::source::confirming_channel(&conn).await.unwrap();
    rabbitmq::source::declare_topology(&channel, &settings(exchange))
        .await
        .unwrap();
    let started = Instant::now();
    let mut pending = futures::stream::FuturesOrdered::new();
    for m in msgs {
        pending.push_back(
            rabbitmq::source::publish(&channel, exchange, &m.key, &m.payload, None)
                .await
                .unwrap(),
        );
        while pending.len() >= 5_000 {
            pending.next().await.unwrap().unwrap();
        }
    }
    while let Some(r) = pending.next().await {
        r.unwrap();
    }
    msgs.len() as f64 / started.elapsed().as_secs_f64()
}

/// Consume-only: every queue drained by its own consumer, acked (`multiple`) every 1000.
async fn consume_all(exchange: &str, total: usize) -> f64 {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let conn = rabbitmq::source::connect(AMQP, "bench-consume")
        .await
        .unwrap();
    let s = settings(exchange);
    let count = Arc::new(AtomicUsize::new(0));
    let all_in = Arc::new(tokio::sync::Notify::new());
    let started = Instant::now();
    for q in 0..QUEUES {
        let channel = conn.create_channel().await.unwrap();
        channel
            .basic_qos(PREFETCH, BasicQosOptions::default())
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                s.queue_name(q).as_str().into(),
                format!("bench-{q}").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let (count, all_in) = (count.clone(), all_in.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while let Some(Ok(d)) = consumer.next().await {
                n += 1;
                let seen = count.fetch_add(1, Ordering::AcqRel) + 1;
                if n % 1000 == 0 || seen == total {
                    let _ = channel
                        .basic_ack(d.delivery_tag, BasicAckOptions { multiple: true })
                        .await;
                }
                if seen == total {
                    all_in.notify_one();
                }
            }
        });
    }
    all_in.notified().await;
    let rate = total as f64 / started.elapsed().as_secs_f64();
    let _ = conn.close(200, "bench over".into()).await;
    rate
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
    let base = format!("bench_rmq_{}_{nanos}", std::process::id());
    let msgs: Vec<_> = Workload::new(WorkloadSpec::new(events, users, 42)).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let raw = format!("{base}_raw");
    let publish_rate = rt.block_on(publish_all(&raw, &msgs));
    rt.block_on(publish_all(&base, &msgs));

    // (1) RabbitMQ's own consume rate for the same messages.
    let consume_rate = rt.block_on(consume_all(&raw, msgs.len()));

    // (2) Herald end to end: the release binary, acked only when durable.
    let herald = env!("CARGO_MANIFEST_DIR").to_string() + "/target/release/herald";
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = std::fs::File::create(format!(
        "{}/target/bench/{base}.log",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut child = Command::new(&herald)
        .arg("run")
        .env("HERALD__SOURCE__KIND", "rabbitmq")
        .env("HERALD__RABBITMQ__EXCHANGE", &base)
        .env("HERALD__RABBITMQ__QUEUES", QUEUES.to_string())
        .env("HERALD__MONGO__DATABASE", &base)
        .env("HERALD__REDIS__PREFIX", format!("{base}:"))
        .env("HERALD__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("HERALD__PIPELINE__COMMIT_INTERVAL_MS", "100")
        .env("HERALD__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("run `cargo build --release` first");
    // Acked = the committed positions on /metrics (one past the last acked delivery each).
    let acked = || -> i64 {
        let body = rt.block_on(async {
            match reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        });
        body.lines()
            .filter(|l| l.starts_with("herald_commit_offset{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
            .map(|v| v - 1)
            .sum()
    };
    let total = msgs.len() as i64;
    let started = Instant::now();
    let (mut first, mut first_at) = (0, None);
    let done_at = loop {
        let a = acked();
        if a > 0 && first_at.is_none() {
            first = a;
            first_at = Some(Instant::now());
        }
        if a >= total {
            break Instant::now();
        }
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "herald stalled at {a}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let herald_rate =
        (total - first) as f64 / done_at.duration_since(first_at.unwrap()).as_secs_f64();

    // Leave the shared broker clean.
    rt.block_on(async {
        let conn = rabbitmq::source::connect(AMQP, "bench-cleanup")
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        for ex in [&raw, &base] {
            let s = settings(ex);
            for q in 0..QUEUES {
                let _ = ch
                    .queue_delete(s.queue_name(q).as_str().into(), Default::default())
                    .await;
            }
            let _ = ch
                .queue_delete(s.dlq_name().as_str().into(), Default::default())
                .await;
            let _ = ch
                .exchange_delete(ex.as_str().into(), Default::default())
                .await;
        }
    });

    println!("workload: {events} events, {users} users, {QUEUES} queues, prefetch {PREFETCH}");
    println!("rabbitmq publish (confirms) {publish_rate:>10.0} msg/s");
    println!("rabbitmq consume-only       {consume_rate:>10.0} msg/s");
    println!(
        "herald end to end           {herald_rate:>10.0} events/s  ({:.0} % of consume-only)",
        100.0 * herald_rate / consume_rate
    );
    let _ = std::fs::write(
        format!("{}/target/bench/rabbitmq.json", env!("CARGO_MANIFEST_DIR")),
        format!(
            "{{\"events\":{events},\"users\":{users},\"publish\":{publish_rate:.0},\"consume\":{consume_rate:.0},\"herald\":{herald_rate:.0}}}\n"
        ),
    );
}
