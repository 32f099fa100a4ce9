//! `scripts/backends.sh up && cargo build --release && cargo bench --bench capacity`: the
//! figures of docs/CAPACITY.md. For 1, 2 and 3 release `herald run` instances in one consumer
//! group, each run on a fresh topic (8 partitions) holding the same workload —
//! `HERALD_BENCH_EVENTS` (default 200,000) events over `HERALD_BENCH_USERS` (20,000) users —
//! it measures events/s from the first commit to the last, and the CPU seconds each part spent
//! per event: the Herald processes, the Kafka broker, Redis and the MongoDB-protocol server,
//! read from `/proc/<pid>/stat` before the instances start and once everything is committed.
//! On a 2-core machine the instances and the servers share the same cores: the per-event
//! costs are the numbers to scale with, the rates show the contention.
//!
//! `HERALD_BENCH_VISITORS` (default 0) adds that share of anonymous visitors' messages and
//! their aliases (each visitor merged into a user once); `HERALD_BENCH_INSTANCES` (default
//! `1,2,3`) picks the instance counts.
//!
//! Writes `target/bench/capacity.json`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::adapters::kafka::source::ensure_topics;
use herald::workload::{Workload, WorkloadSpec};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
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

/// CPU seconds a process has used so far (user + system, all threads), if it exists.
fn cpu_seconds(pid: u32, ticks: f64) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks)
}

/// The first process whose command line contains every one of `parts`.
fn pid_of(parts: &[&str]) -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    let line = String::from_utf8_lossy(&c).replace('\0', " ");
                    parts.iter().all(|p| line.contains(p))
                })
                .unwrap_or(false)
        })
}

fn pid_file(name: &str) -> Option<u32> {
    let home = std::env::var("HOME").ok()?;
    let cache = std::env::var("HERALD_CACHE").unwrap_or(format!("{home}/.cache/herald"));
    let dir = std::env::var("HERALD_BACKENDS_DIR").unwrap_or(format!("{cache}/backends"));
    std::fs::read_to_string(format!("{dir}/{name}/pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn committed(client: &BaseConsumer, topic: &str) -> i64 {
    let mut tpl = TopicPartitionList::new();
    for p in 0..PARTITIONS {
        tpl.add_partition(topic, p);
    }
    client
        .committed_offsets(tpl, Duration::from_secs(10))
        .map(|t| {
            t.elements()
                .iter()
                .map(|e| match e.offset() {
                    Offset::Offset(o) => o,
                    _ => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}

struct Run {
    instances: usize,
    rate: f64,
    herald: f64,
    kafka: f64,
    redis: f64,
    mongo: f64,
}

fn main() {
    let events = env_u64("HERALD_BENCH_EVENTS", 200_000);
    let users = env_u64("HERALD_BENCH_USERS", 20_000);
    let ticks: f64 = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0);
    let herald = env!("CARGO_MANIFEST_DIR").to_string() + "/target/release/herald";
    let logs = format!("{}/target/bench", env!("CARGO_MANIFEST_DIR"));
    std::fs::create_dir_all(&logs).unwrap();
    let servers = [
        ("kafka", pid_file("kafka")),
        ("redis", pid_of(&["redis-server", ":6379"])),
        ("mongo", pid_file("nx")),
    ];
    for (name, pid) in &servers {
        assert!(
            pid.is_some(),
            "{name} is not running: scripts/backends.sh up"
        );
    }
    let visitors: f64 = std::env::var("HERALD_BENCH_VISITORS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let instances: Vec<usize> = std::env::var("HERALD_BENCH_INSTANCES")
        .unwrap_or_else(|_| "1,2,3".into())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let spec = WorkloadSpec::new(events, users, 42).with_visitors(visitors);
    let msgs: Vec<_> = Workload::new(spec).collect();
    let aliases = msgs
        .iter()
        .filter(|m| {
            let alias = br#""type":"alias""#;
            m.payload.windows(alias.len()).any(|w| w == alias)
        })
        .count();
    println!("workload: {events} events, {users} users, {aliases} aliases (visitors {visitors})");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
        % 1_000_000_000;
    let mut runs = Vec::new();
    for n in instances {
        let base = format!("cap_{n}_{}_{nanos}", std::process::id());
        rt.block_on(ensure_topics(
            BROKERS,
            &[],
            &[(&base, PARTITIONS), (&format!("{base}.dlq"), 1)],
            Duration::from_secs(10),
        ))
        .unwrap();
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("enable.idempotence", "true")
            .set("queue.buffering.max.messages", "1000000")
            .create()
            .unwrap();
        for m in &msgs {
            loop {
                match producer.send(BaseRecord::to(&base).key(&m.key).payload(&m.payload[..])) {
                    Ok(()) => break,
                    Err(_) => {
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
        producer.flush(Duration::from_secs(120)).unwrap();
        let before: Vec<f64> = servers
            .iter()
            .map(|(_, pid)| cpu_seconds(pid.unwrap(), ticks).unwrap_or(0.0))
            .collect();
        let children: Vec<Child> = (0..n)
            .map(|i| {
                Command::new(&herald)
                    .arg("run")
                    .env("HERALD__KAFKA__TOPIC", &base)
                    .env("HERALD__KAFKA__GROUP_ID", &base)
                    .env("HERALD__KAFKA__PARTITIONS", PARTITIONS.to_string())
                    .env("HERALD__MONGO__DATABASE", &base)
                    .env("HERALD__REDIS__PREFIX", format!("{base}:"))
                    .env("HERALD__HTTP__LISTEN", "127.0.0.1:0")
                    .env("HERALD__LOG__FORMAT", "json")
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(format!("{logs}/{base}-{i}.log")).unwrap())
                    .spawn()
                    .expect("run `cargo build --release` first")
            })
            .collect();
        let client: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("group.id", &base)
            .create()
            .unwrap();
        let started = Instant::now();
        let total = msgs.len() as i64;
        let (mut first, mut first_at) = (0, None);
        let done_at = loop {
            let c = committed(&client, &base);
            if c > 0 && first_at.is_none() {
                first = c;
                first_at = Some(Instant::now());
            }
            if c >= total {
                break Instant::now();
            }
            assert!(
                started.elapsed() < Duration::from_secs(900),
                "stalled at {c} with {n} instances"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let herald_cpu: f64 = children
            .iter()
            .map(|c| cpu_seconds(c.id(), ticks).unwrap_or(0.0))
            .sum();
        let after: Vec<f64> = servers
            .iter()
            .map(|(_, pid)| cpu_seconds(pid.unwrap(), ticks).unwrap_or(0.0))
            .collect();
        for mut c in children {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
        let per_event = |cpu: f64| cpu / events as f64 * 1e6;
        let run = Run {
            instances: n,
            rate: (total - first) as f64 / done_at.duration_since(first_at.unwrap()).as_secs_f64(),
            herald: per_event(herald_cpu),
            kafka: per_event(after[0] - before[0]),
            redis: per_event(after[1] - before[1]),
            mongo: per_event(after[2] - before[2]),
        };
        println!(
            "{n} instance(s): {:>8.0} events/s; CPU µs per event: herald {:.1} (all instances), kafka {:.1}, redis {:.1}, mongodb {:.1}",
            run.rate, run.herald, run.kafka, run.redis, run.mongo
        );
        runs.push(run);
    }
    let json: Vec<String> = runs
        .iter()
        .map(|r| {
            format!(
                "{{\"instances\":{},\"events_per_s\":{:.0},\"cpu_us_per_event\":{{\"herald\":{:.2},\"kafka\":{:.2},\"redis\":{:.2},\"mongodb\":{:.2}}}}}",
                r.instances, r.rate, r.herald, r.kafka, r.redis, r.mongo
            )
        })
        .collect();
    let _ = std::fs::write(
        format!("{logs}/capacity.json"),
        format!(
            "{{\"events\":{events},\"users\":{users},\"partitions\":{PARTITIONS},\"runs\":[{}]}}\n",
            json.join(",")
        ),
    );
}
