//! `cargo bench --bench messaging` (backends running: `scripts/backends.sh up`; needs `wrk`,
//! Debian's package, and `cargo build --release`):
//!
//! 1. **Signed callbacks per second.** N messages are stored as `sent`; the release
//!    `herald run` takes their `delivered` callbacks, each signed, driven by `wrk` (a Lua script
//!    cycling through pre-signed requests, a distinct message per request). Reports requests/s,
//!    latency percentiles and non-2xx answers, then checks every 2xx in MongoDB.
//! 2. **Dispatch throughput.** N `signed_up` triggers through Kafka; `herald run` sends them to
//!    `herald provider-sim` over HTTP; timed from the first `sent` to the last.
//!
//! Size: HERALD_BENCH_CALLBACKS (default 60,000), HERALD_BENCH_SENDS (default 10,000),
//! HERALD_BENCH_SECONDS (wrk duration, default 10), HERALD_BENCH_CONNECTIONS (default 64). Results: `target/bench/messaging.json`.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::adapters::kafka_source::ensure_topics;
use herald::adapters::mongo_docs::MongoDocumentStore;
use herald::domain::campaign::Channel;
use herald::domain::message::{HistoryEntry, MessageRecord, MessageStatus};
use herald::domain::signature::sign;
use herald::ports::DocumentStore;
use mongodb::bson::doc;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

const BROKERS: &str = "127.0.0.1:9092";
const MONGO: &str = "mongodb://127.0.0.1:27017";
const SECRET: &str = "bench-secret";

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

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_http(port: u16, path: &str) {
    let started = Instant::now();
    loop {
        let ok = rt().block_on(async {
            reqwest::get(format!("http://127.0.0.1:{port}{path}"))
                .await
                .is_ok_and(|r| r.status().is_success())
        });
        if ok {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{path} on {port} never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn herald_bin() -> String {
    env!("CARGO_MANIFEST_DIR").to_string() + "/target/release/herald"
}

/// `herald run` with one SMS provider at `sim_port`, its webhooks on `http`.
fn spawn_herald(base: &str, http: u16, sim_port: u16) -> Kill {
    let config = std::env::temp_dir().join(format!("{base}.toml"));
    std::fs::write(
        &config,
        format!(
            r#"
[[campaigns]]
id = "welcome"
on_event = "signed_up"
channel = "sms"
template = "Hi {{{{traits.first_name}}}}, welcome aboard!"

[[providers]]
name = "sim-sms"
channel = "sms"
url = "http://127.0.0.1:{sim_port}/v1/messages"
rate_per_sec = 100000
max_concurrency = 256
webhook_secret_env = "BENCH_SECRET"
"#
        ),
    )
    .unwrap();
    let child = Command::new(herald_bin())
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env("HERALD__KAFKA__TOPIC", base)
        .env("HERALD__KAFKA__GROUP_ID", base)
        .env("HERALD__KAFKA__PARTITIONS", "4")
        .env("HERALD__MONGO__DATABASE", base)
        .env("HERALD__REDIS__PREFIX", format!("{base}:"))
        .env("HERALD__HTTP__LISTEN", format!("127.0.0.1:{http}"))
        .env("HERALD__LOG__FORMAT", "json")
        .env("RUST_LOG", "warn")
        .env("BENCH_SECRET", SECRET)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run `cargo build --release` first");
    wait_http(http, "/readyz");
    Kill(child)
}

fn spawn_sim(port: u16) -> Kill {
    let child = Command::new(herald_bin())
        .args(["provider-sim", "--listen", &format!("127.0.0.1:{port}")])
        .env("HERALD_SIM_WEBHOOK_SECRET", SECRET)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run `cargo build --release` first");
    wait_http(port, "/healthz");
    Kill(child)
}

fn lua_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// wrk script: each thread walks its own stride of the pre-signed requests.
fn write_wrk_script(base: &str, n: usize) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("{base}.lua"));
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let ts = (now_ms() / 1000).to_string();
    // Formatted in `init`, once wrk has set the Host header (a request formatted at load
    // time has none, and HTTP/1.1 servers refuse it).
    writeln!(f, "local raw = {{").unwrap();
    for i in 0..n {
        let body =
            format!(r#"{{"id":"bench:{i}","provider_message_id":"p-{i}","status":"delivered"}}"#);
        let sig = sign(SECRET.as_bytes(), &ts, body.as_bytes());
        writeln!(
            f,
            "  {{{}, {}, {}}},",
            lua_quote(&ts),
            lua_quote(&sig),
            lua_quote(&body)
        )
        .unwrap();
    }
    writeln!(f, "}}").unwrap();
    writeln!(
        f,
        r#"
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
function init(args)
  i = tid
  reqs = {{}}
  for k, r in ipairs(raw) do
    reqs[k] = wrk.format("POST", "/webhooks/sim-sms", {{["Content-Type"]="application/json", ["X-Herald-Timestamp"]=r[1], ["X-Herald-Signature"]=r[2]}}, r[3])
  end
end
function request()
  local r = reqs[(i % #reqs) + 1]
  i = i + 2
  return r
end
"#
    )
    .unwrap();
    f.flush().unwrap();
    path
}

fn parse_wrk(out: &str) -> (f64, String, String, u64, u64) {
    let find = |prefix: &str| {
        out.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
            .unwrap_or_else(|| "?".into())
    };
    let rps = find("Requests/sec:").parse().unwrap_or(0.0);
    let total = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let non2xx = out
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (rps, find("50%"), find("99%"), total, non2xx)
}

fn main() {
    let callbacks = env_u64("HERALD_BENCH_CALLBACKS", 60_000) as usize;
    let sends = env_u64("HERALD_BENCH_SENDS", 10_000) as usize;
    let seconds = env_u64("HERALD_BENCH_SECONDS", 10);
    let connections = env_u64("HERALD_BENCH_CONNECTIONS", 64);
    let base = format!("bench_msg_{}_{}", std::process::id(), now_ms() % 1_000_000);
    let (http, sim_port) = (free_port(), free_port());

    // 1. Callbacks: messages stored as `sent`, then their signed `delivered` callbacks.
    let runtime = rt();
    let docs = runtime.block_on(async {
        let docs = MongoDocumentStore::connect(MONGO, &base).await.unwrap();
        docs.ensure_indexes().await.unwrap();
        let now = now_ms();
        let records: Vec<MessageRecord> = (0..callbacks)
            .map(|i| MessageRecord {
                id: format!("bench:{i}"),
                user_id: format!("u-{i}"),
                campaign: "bench".into(),
                channel: Channel::Sms,
                to: Some(format!("+1555{i:07}")),
                body: "hello".into(),
                subject: None,
                provider: Some("sim-sms".into()),
                status: MessageStatus::Sent,
                attempts: 1,
                provider_message_id: Some(format!("p-{i}")),
                error: None,
                created_at: now,
                updated_at: now,
                history: vec![HistoryEntry {
                    status: MessageStatus::Sent,
                    at: now,
                    provider: Some("sim-sms".into()),
                    detail: Some(format!("p-{i}")),
                }],
            })
            .collect();
        for chunk in records.chunks(5000) {
            docs.insert_messages(chunk.to_vec(), 1).await.unwrap();
        }
        docs
    });
    ensure_rt_topics(&base);
    let _sim = spawn_sim(sim_port);
    let herald = spawn_herald(&base, http, sim_port);
    let script = write_wrk_script(&base, callbacks);
    let out = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{http}"))
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    println!("{text}");
    let (rps, p50, p99, total, non2xx) = parse_wrk(&text);
    let delivered = runtime.block_on(async {
        docs.database()
            .collection::<mongodb::bson::Document>("messages")
            .count_documents(doc! {"status": "delivered"})
            .await
            .unwrap()
    });
    let ok = total.saturating_sub(non2xx);
    println!(
        "callbacks: {rps:.0}/s, p50 {p50}, p99 {p99}, {total} requests, {non2xx} non-2xx, {delivered} delivered in MongoDB"
    );
    assert!(
        delivered >= ok.min(callbacks as u64),
        "every 2xx is reflected in MongoDB ({delivered} < {ok})"
    );
    drop(herald);

    // 2. Dispatch: `signed_up` triggers through Kafka to provider-sim over HTTP.
    let base2 = format!("{base}_d");
    ensure_rt_topics(&base2);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in 0..sends {
        let user = format!("d-{i}");
        for payload in [
            format!(
                r#"{{"messageId":"i-{i}","type":"identify","userId":"{user}","timestamp":"2026-11-23T10:00:00Z","traits":{{"phone":"+1666{i:07}","first_name":"D"}}}}"#
            ),
            format!(
                r#"{{"messageId":"s-{i}","type":"track","userId":"{user}","timestamp":"2026-11-23T10:00:01Z","event":"signed_up"}}"#
            ),
        ] {
            let mut record = BaseRecord::<str, str>::to(&base2)
                .key(&user)
                .payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(5));
                    }
                }
            }
        }
    }
    producer.flush(Duration::from_secs(60)).unwrap();
    let http2 = free_port();
    let started = Instant::now();
    let _herald = spawn_herald(&base2, http2, sim_port);
    let mut first_sent: Option<Instant> = None;
    let sent_total = |port: u16| -> u64 {
        rt().block_on(async {
            let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.lines()
                .filter(|l| {
                    l.starts_with("herald_dispatch_total") && l.contains("outcome=\"sent\"")
                })
                .filter_map(|l| l.split_whitespace().last()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        })
    };
    loop {
        let n = sent_total(http2);
        if n > 0 && first_sent.is_none() {
            first_sent = Some(Instant::now());
        }
        if n >= sends as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "dispatch stalled at {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let window = first_sent.unwrap().elapsed().as_secs_f64().max(0.1);
    let dispatch_rate = sends as f64 / window;
    println!(
        "dispatch: {sends} sends to provider-sim over HTTP in {window:.2} s = {dispatch_rate:.0}/s"
    );
    std::fs::create_dir_all("target/bench").unwrap();
    std::fs::write(
        "target/bench/messaging.json",
        format!(
            "{{\"callbacks_per_sec\":{rps:.0},\"callback_p50\":\"{p50}\",\"callback_p99\":\"{p99}\",\"requests\":{total},\"non_2xx\":{non2xx},\"delivered\":{delivered},\"dispatch_per_sec\":{dispatch_rate:.0}}}\n"
        ),
    )
    .unwrap();
}

fn ensure_rt_topics(base: &str) {
    rt().block_on(ensure_topics(
        BROKERS,
        &[],
        &[(base, 4), (&format!("{base}.dlq"), 1)],
        Duration::from_secs(10),
    ))
    .unwrap();
}
