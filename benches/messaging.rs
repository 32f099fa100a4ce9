//! `cargo bench --bench messaging` (backends running: `scripts/backends.sh up`; needs `wrk`,
//! Debian's package, and `cargo build --release`):
//!
//! 1. **The document store's own rate.** N messages stored as `sent`; their `delivered`
//!    transitions through the MongoDB adapter directly (256 in flight, group-committed as in
//!    `herald run`), no HTTP: the ceiling the callback endpoints work under.
//! 2. **Signed callbacks per second**, in Twilio's format (form body, `X-Twilio-Signature`)
//!    and in Herald's webhook format (JSON, `X-Herald-Signature`). N messages stored as
//!    `sent`; the release `herald run` takes their `delivered` callbacks, each signed, driven
//!    by `wrk` (a Lua script cycling through pre-signed requests, a distinct message per
//!    request). Reports requests/s, latency percentiles and non-2xx answers, then checks
//!    that MongoDB holds at least as many `delivered` messages as wrk counted 2xx answers.
//!    The Twilio pass runs twice: answered once applied, and with `http.callback_journal`
//!    (answered once in the Redis journal; the run then waits until MongoDB holds every
//!    answered callback and reports that applied rate too).
//! 3. **Sends per second to each kind's simulator** (`herald provider-sim --kind webhook |
//!    twilio | sendgrid`): N `signed_up` triggers through Kafka, sent over HTTP; timed from
//!    the first `sent` to the last.
//!
//! Size: HERALD_BENCH_CALLBACKS (default 60,000), HERALD_BENCH_SENDS (default 10,000),
//! HERALD_BENCH_SECONDS (wrk duration, default 10), HERALD_BENCH_CONNECTIONS (default 256).
//! Results: `target/bench/messaging.json`.

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::adapters::kafka::source::ensure_topics;
use herald::adapters::mongo::docs::MongoDocumentStore;
use herald::domain::campaign::Channel;
use herald::domain::message::{
    HistoryEntry, MessageRecord, MessageStatus, StatusChange, StatusEvent,
};
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

/// One runtime for the whole run: the MongoDB client lives on the runtime that made it.
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

const TWILIO_SID: &str = "ACbench0000000000000000000000000000";
const TWILIO_TOKEN: &str = "bench-twilio-auth-token";
const SENDGRID_KEY: &str = "SG.bench-key";

/// The provider kinds benchmarked; each has a `provider-sim` kind.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Webhook,
    Twilio,
    Sendgrid,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Webhook => "webhook",
            Kind::Twilio => "twilio",
            Kind::Sendgrid => "sendgrid",
        }
    }

    fn channel(self) -> &'static str {
        match self {
            Kind::Sendgrid => "email",
            _ => "sms",
        }
    }
}

/// `herald run` with one provider of `kind` (named `<kind>-sim`) at `sim_port`, its webhooks
/// on `http`.
fn spawn_herald(base: &str, http: u16, sim_port: u16, kind: Kind, journal: bool) -> Kill {
    let config = std::env::temp_dir().join(format!("{base}.toml"));
    let provider = match kind {
        Kind::Webhook => format!(
            "url = \"http://127.0.0.1:{sim_port}/v1/messages\"\nwebhook_secret_env = \"BENCH_SECRET\""
        ),
        Kind::Twilio => format!(
            "kind = \"twilio\"\nbase_url = \"http://127.0.0.1:{sim_port}\"\naccount_sid_env = \"BENCH_TWILIO_SID\"\nauth_token_env = \"BENCH_TWILIO_TOKEN\"\nfrom = \"+15550000000\""
        ),
        Kind::Sendgrid => format!(
            "kind = \"sendgrid\"\nbase_url = \"http://127.0.0.1:{sim_port}/v3\"\napi_key_env = \"BENCH_SG_KEY\"\nwebhook_public_key_env = \"BENCH_SG_PUBLIC_KEY\"\nfrom = \"noreply@herald.test\""
        ),
    };
    let channel = kind.channel();
    let name = kind.name();
    std::fs::write(
        &config,
        format!(
            r#"
[[campaigns]]
id = "welcome"
on_event = "signed_up"
channel = "{channel}"
template = "Hi {{{{traits.first_name}}}}, welcome aboard!"
subject = "Welcome"

[[providers]]
name = "{name}-sim"
channel = "{channel}"
rate_per_sec = 100000
max_concurrency = 256
{provider}
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
        .env(
            "HERALD__HTTP__PUBLIC_URL",
            format!("http://127.0.0.1:{http}"),
        )
        .env("HERALD__HTTP__CALLBACK_JOURNAL", journal.to_string())
        .env("HERALD__LOG__FORMAT", "json")
        .env("RUST_LOG", "warn")
        .env("BENCH_SECRET", SECRET)
        .env("BENCH_TWILIO_SID", TWILIO_SID)
        .env("BENCH_TWILIO_TOKEN", TWILIO_TOKEN)
        .env("BENCH_SG_KEY", SENDGRID_KEY)
        .env(
            "BENCH_SG_PUBLIC_KEY",
            herald::provider_sim::sendgrid_public_key(SECRET.as_bytes()),
        )
        .stdout(Stdio::null())
        .stderr(bench_log(base))
        .spawn()
        .expect("run `cargo build --release` first");
    wait_http(http, "/readyz");
    Kill(child)
}

/// Where a spawned process's log goes: `target/bench/logs/<base>.log` (warnings and errors).
fn bench_log(base: &str) -> Stdio {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench/logs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::File::create(dir.join(format!("{base}.log")))
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::null())
}

/// `herald provider-sim --kind <kind>`; SendGrid's events go to `events_url`.
fn spawn_sim(port: u16, kind: Kind, events_url: &str) -> Kill {
    let mut args = vec![
        "provider-sim".to_string(),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--kind".into(),
        kind.name().into(),
    ];
    let secret = match kind {
        Kind::Twilio => TWILIO_TOKEN,
        _ => SECRET,
    };
    if kind == Kind::Sendgrid {
        args.extend([
            "--token".into(),
            SENDGRID_KEY.into(),
            "--event-webhook-url".into(),
            events_url.into(),
        ]);
    }
    let child = Command::new(herald_bin())
        .args(&args)
        .env("HERALD_SIM_WEBHOOK_SECRET", secret)
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

/// One pre-signed callback: its headers (name, value) and body.
struct Signed {
    /// Path and query.
    target: String,
    headers: Vec<(&'static str, String)>,
    body: String,
}

fn provider_message_id(kind: Kind, i: usize) -> String {
    match kind {
        Kind::Twilio => format!("SM{i:032x}"),
        _ => format!("p-{i}"),
    }
}

/// The `delivered` callback for message `bench:<i>`, in `kind`'s format, signed, posted to
/// `path` at `public` (Twilio's to the StatusCallback URL Herald gave: it names the message).
fn signed_callback(kind: Kind, i: usize, public: &str, path: &str, ts: &str) -> Signed {
    match kind {
        Kind::Twilio => {
            let target = format!("{path}?herald_message_id=bench%3A{i}");
            let params = vec![
                ("AccountSid".to_string(), TWILIO_SID.to_string()),
                ("MessageSid".to_string(), provider_message_id(kind, i)),
                ("MessageStatus".to_string(), "delivered".to_string()),
            ];
            let signature = herald::domain::twilio::sign(
                TWILIO_TOKEN.as_bytes(),
                &format!("{public}{target}"),
                &params,
            );
            let body = params
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join("&");
            Signed {
                target,
                headers: vec![
                    ("Content-Type", "application/x-www-form-urlencoded".into()),
                    ("X-Twilio-Signature", signature),
                ],
                body,
            }
        }
        _ => {
            let body = format!(
                r#"{{"id":"bench:{i}","provider_message_id":"p-{i}","status":"delivered"}}"#
            );
            Signed {
                target: path.to_string(),
                headers: vec![
                    ("Content-Type", "application/json".into()),
                    ("X-Herald-Timestamp", ts.to_string()),
                    (
                        "X-Herald-Signature",
                        sign(SECRET.as_bytes(), ts, body.as_bytes()),
                    ),
                ],
                body,
            }
        }
    }
}

/// wrk script: each thread walks its own stride of the pre-signed requests. The requests are
/// in a data file read at `init` (one per line, `\x1f`-separated: the target, each header as
/// `name\tvalue`, then the body): a script holding 60,000 literals exceeds LuaJIT's 65,536 constants.
fn write_wrk_script(base: &str, requests: &[Signed]) -> std::path::PathBuf {
    let data = std::env::temp_dir().join(format!("{base}.requests"));
    let mut d = std::io::BufWriter::new(std::fs::File::create(&data).unwrap());
    for r in requests {
        let mut fields = vec![r.target.clone()];
        fields.extend(r.headers.iter().map(|(k, v)| format!("{k}\t{v}")));
        fields.push(r.body.clone());
        writeln!(d, "{}", fields.join("\x1f")).unwrap();
    }
    d.flush().unwrap();
    let file = std::env::temp_dir().join(format!("{base}.lua"));
    std::fs::write(
        &file,
        format!(
            r#"
local threads = 0
function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end
-- Formatted in `init`, once wrk has set the Host header (a request formatted at load time
-- has none, and HTTP/1.1 servers refuse it).
function init(args)
  i = tid
  reqs = {{}}
  for line in io.lines({data}) do
    local fields = {{}}
    for field in string.gmatch(line, "[^\31]+") do
      table.insert(fields, field)
    end
    local headers = {{}}
    for k = 2, #fields - 1 do
      local name, value = string.match(fields[k], "^([^\t]+)\t(.*)$")
      headers[name] = value
    end
    table.insert(reqs, wrk.format("POST", fields[1], headers, fields[#fields]))
  end
end
function request()
  local r = reqs[(i % #reqs) + 1]
  i = i + 2
  return r
end
"#,
            data = lua_quote(data.to_str().unwrap()),
        ),
    )
    .unwrap();
    file
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

/// Stores `n` messages `bench:<i>` as `sent` by `provider`, with `kind`'s provider ids.
fn store_sent(base: &str, n: usize, provider: &str, kind: Kind) -> MongoDocumentStore {
    rt().block_on(async {
        let docs = MongoDocumentStore::connect(MONGO, base, "majority")
            .await
            .unwrap();
        docs.ensure_indexes().await.unwrap();
        let now = now_ms();
        let records: Vec<MessageRecord> = (0..n)
            .map(|i| MessageRecord {
                id: format!("bench:{i}"),
                user_id: format!("u-{i}"),
                campaign: "bench".into(),
                channel: Channel::Sms,
                to: Some(format!("+1555{i:07}")),
                body: "hello".into(),
                subject: None,
                provider: Some(provider.into()),
                status: MessageStatus::Sent,
                attempts: 1,
                provider_message_id: Some(provider_message_id(kind, i)),
                error: None,
                created_at: now,
                updated_at: now,
                history: vec![HistoryEntry {
                    status: MessageStatus::Sent,
                    at: now,
                    provider: Some(provider.into()),
                    detail: Some(provider_message_id(kind, i)),
                }],
                lookup_at: None,
                held_until: None,
            })
            .collect();
        for chunk in records.chunks(5000) {
            docs.insert_messages(chunk.iter().cloned().map(std::sync::Arc::new).collect(), 1)
                .await
                .unwrap();
        }
        docs
    })
}

fn delivered_in(docs: &MongoDocumentStore) -> u64 {
    rt().block_on(async {
        docs.database()
            .collection::<mongodb::bson::Document>("messages")
            .count_documents(doc! {"status": "delivered"})
            .await
            .unwrap()
    })
}

/// Pass 1: `delivered` transitions through the adapter, `in_flight` at a time.
fn store_rate(base: &str, n: usize, in_flight: usize) -> f64 {
    let docs = std::sync::Arc::new(store_sent(base, n, "webhook-sim", Kind::Webhook));
    let started = Instant::now();
    rt().block_on(async {
        use futures::StreamExt;
        futures::stream::iter(0..n)
            .map(|i| {
                let docs = docs.clone();
                async move {
                    let change = StatusChange {
                        event: StatusEvent::Delivered,
                        at: now_ms(),
                        provider: Some("webhook-sim".into()),
                        detail: None,
                        provider_message_id: None,
                        attempt: None,
                        expect_provider_message_id: Some(format!("p-{i}")),
                        look_up_at: None,
                    };
                    docs.transition(format!("bench:{i}"), change).await.unwrap()
                }
            })
            .buffer_unordered(in_flight)
            .for_each(|_| async {})
            .await;
    });
    let rate = n as f64 / started.elapsed().as_secs_f64();
    let delivered = delivered_in(&docs);
    assert_eq!(delivered, n as u64, "every transition applied");
    println!("document store: {n} delivered transitions, {in_flight} in flight: {rate:.0}/s");
    rate
}

struct CallbackRun {
    rps: f64,
    p50: String,
    p99: String,
    total: u64,
    non2xx: u64,
    delivered: u64,
    /// With the journal: `delivered` over the time from wrk's start until MongoDB held every
    /// answered callback.
    applied_per_sec: Option<f64>,
}

/// Pass 2: `n` signed callbacks in `kind`'s format for `seconds` over `connections`; with
/// `journal`, answered once journaled and applied behind (then waits until applied).
fn callbacks(
    base: &str,
    kind: Kind,
    n: usize,
    seconds: u64,
    connections: u64,
    journal: bool,
) -> CallbackRun {
    let provider = format!("{}-sim", kind.name());
    let docs = store_sent(base, n, &provider, kind);
    ensure_rt_topics(base);
    let http = free_port();
    let herald = spawn_herald(base, http, free_port(), kind, journal);
    let path = format!("/webhooks/{provider}");
    let public = format!("http://127.0.0.1:{http}");
    let ts = (now_ms() / 1000).to_string();
    let requests: Vec<Signed> = (0..n)
        .map(|i| signed_callback(kind, i, &public, &path, &ts))
        .collect();
    // One callback by hand first: a refused one would make the whole run meaningless.
    let (code, answer) = rt().block_on(async {
        let mut req = reqwest::Client::new()
            .post(format!("{public}{}", requests[0].target))
            .body(requests[0].body.clone());
        for (k, v) in &requests[0].headers {
            req = req.header(*k, v);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    });
    assert!(
        (200..300).contains(&code),
        "{} callback refused: {code} {answer}",
        kind.name()
    );
    let script = write_wrk_script(base, &requests[1..]);
    let wrk_started = Instant::now();
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
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    let (rps, p50, p99, total, non2xx) = parse_wrk(&text);
    let ok = total.saturating_sub(non2xx);
    let mut applied_per_sec = None;
    if journal {
        // Answered once journaled: wait until the journal is empty (an entry leaves it only
        // once applied), watching Redis rather than MongoDB: counting documents in the test
        // server every few hundred ms takes the very capacity being measured.
        let redis = redis::Client::open("redis://127.0.0.1:6379/").unwrap();
        let mut conn = redis.get_connection().unwrap();
        let key = format!("{base}:callbacks");
        loop {
            let left: u64 = redis::cmd("XLEN").arg(&key).query(&mut conn).unwrap();
            if left == 0 {
                break;
            }
            assert!(
                wrk_started.elapsed() < Duration::from_secs(900),
                "the journal still holds {left} callbacks"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let drained = wrk_started.elapsed().as_secs_f64();
        let delivered = delivered_in(&docs);
        assert!(
            delivered >= ok.min(n as u64),
            "journal empty but only {delivered} of {} answered callbacks applied",
            ok.min(n as u64)
        );
        let rate = delivered as f64 / drained;
        println!(
            "journal drained: {delivered} messages delivered, the last {drained:.1} s after wrk started = {rate:.0}/s"
        );
        applied_per_sec = Some(rate);
    }
    drop(herald);
    let delivered = delivered_in(&docs);
    println!(
        "{} callbacks{}: {rps:.0}/s, p50 {p50}, p99 {p99}, {total} requests, {non2xx} non-2xx, {delivered} delivered in MongoDB",
        kind.name(),
        if journal { " (journal)" } else { "" }
    );
    assert!(
        delivered >= ok.min(n as u64),
        "every 2xx is reflected in MongoDB ({delivered} < {ok})"
    );
    CallbackRun {
        rps,
        p50,
        p99,
        total,
        non2xx,
        delivered,
        applied_per_sec,
    }
}

/// Pass 3: `sends` `signed_up` triggers through Kafka, sent to `kind`'s simulator.
fn dispatch(base: &str, kind: Kind, sends: usize) -> f64 {
    ensure_rt_topics(base);
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in 0..sends {
        let user = format!("d-{i}");
        let address = match kind {
            Kind::Sendgrid => format!(r#""email":"d{i}@example.test""#),
            _ => format!(r#""phone":"+1666{i:07}""#),
        };
        for payload in [
            format!(
                r#"{{"messageId":"i-{i}","type":"identify","userId":"{user}","timestamp":"2026-11-23T10:00:00Z","traits":{{{address},"first_name":"D"}}}}"#
            ),
            format!(
                r#"{{"messageId":"s-{i}","type":"track","userId":"{user}","timestamp":"2026-11-23T10:00:01Z","event":"signed_up"}}"#
            ),
        ] {
            let mut record = BaseRecord::<str, str>::to(base)
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
    let (http, sim_port) = (free_port(), free_port());
    let _sim = spawn_sim(
        sim_port,
        kind,
        &format!("http://127.0.0.1:{http}/webhooks/{}-sim", kind.name()),
    );
    let started = Instant::now();
    let _herald = spawn_herald(base, http, sim_port, kind, false);
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
        let n = sent_total(http);
        if n > 0 && first_sent.is_none() {
            first_sent = Some(Instant::now());
        }
        if n >= sends as u64 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{} dispatch stalled at {n}",
            kind.name()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let window = first_sent.unwrap().elapsed().as_secs_f64().max(0.1);
    let rate = sends as f64 / window;
    println!(
        "dispatch: {sends} sends to provider-sim --kind {} in {window:.2} s = {rate:.0}/s",
        kind.name()
    );
    rate
}

fn main() {
    let n = env_u64("HERALD_BENCH_CALLBACKS", 60_000) as usize;
    let sends = env_u64("HERALD_BENCH_SENDS", 10_000) as usize;
    let seconds = env_u64("HERALD_BENCH_SECONDS", 10);
    let connections = env_u64("HERALD_BENCH_CONNECTIONS", 256);
    let base = format!("bench_msg_{}_{}", std::process::id(), now_ms() % 1_000_000);

    let store = store_rate(&format!("{base}_s"), 20_000.min(n), 256);
    let twilio = callbacks(
        &format!("{base}_t"),
        Kind::Twilio,
        n,
        seconds,
        connections,
        false,
    );
    let journaled = callbacks(
        &format!("{base}_j"),
        Kind::Twilio,
        n,
        seconds,
        connections,
        true,
    );
    let webhook = callbacks(
        &format!("{base}_w"),
        Kind::Webhook,
        n,
        seconds,
        connections,
        false,
    );
    let mut dispatched = Vec::new();
    for kind in [Kind::Webhook, Kind::Twilio, Kind::Sendgrid] {
        let rate = dispatch(&format!("{base}_d{}", kind.name()), kind, sends);
        dispatched.push(format!("\"{}\":{rate:.0}", kind.name()));
    }
    let run = |r: &CallbackRun| {
        format!(
            "{{\"per_sec\":{:.0},\"p50\":\"{}\",\"p99\":\"{}\",\"requests\":{},\"non_2xx\":{},\"delivered\":{},\"applied_per_sec\":{}}}",
            r.rps,
            r.p50,
            r.p99,
            r.total,
            r.non2xx,
            r.delivered,
            r.applied_per_sec
                .map_or("null".to_string(), |a| format!("{a:.0}"))
        )
    };
    std::fs::create_dir_all("target/bench").unwrap();
    std::fs::write(
        "target/bench/messaging.json",
        format!(
            "{{\"store_transitions_per_sec\":{store:.0},\"twilio_callbacks\":{},\"twilio_callbacks_journaled\":{},\"webhook_callbacks\":{},\"sends_per_sec\":{{{}}}}}\n",
            run(&twilio),
            run(&journaled),
            run(&webhook),
            dispatched.join(",")
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
