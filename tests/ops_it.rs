//! Operating Herald on real parts: `/metrics` after traffic holds every metric of REFERENCE.md §7
//! with the values the traffic implies (parsed with a Prometheus text-format parser); a real
//! Prometheus server scrapes Herald with the repo's scrape config; `/readyz` names the backend
//! that is down and recovers when it returns.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use herald::workload::{Workload, WorkloadSpec};

const SECRET: &str = "it-ops-secret";

fn config_with_provider(names: &Names, sim: u16) -> PathBuf {
    let path = log_dir().join(format!("{}.toml", names.base));
    std::fs::write(
        &path,
        format!(
            r#"
[[campaigns]]
id = "welcome"
on_event = "signed_up"
channel = "sms"
template = "Hi {{{{traits.first_name}}}}!"

[[providers]]
name = "sim-a"
channel = "sms"
url = "http://127.0.0.1:{sim}/v1/messages"
webhook_secret_env = "IT_SIM_SECRET"
"#
        ),
    )
    .unwrap();
    path
}

fn has(s: &prometheus_parse::Scrape, name: &str) -> bool {
    s.samples.iter().any(|x| x.metric == name)
}

#[test]
fn metrics_after_traffic_hold_every_contract_metric_with_plausible_values() {
    let names = Names::new("metrics", 2);
    let sim = free_port();
    let _sim = spawn_sim(sim, SECRET, &["--undelivered-rate", "0.3"], "metrics");
    let config = config_with_provider(&names, sim);
    const EVENTS: u64 = 6_000;
    produce(&names, EVENTS, 300, 31);
    let valid: Vec<String> = Workload::new(WorkloadSpec::new(EVENTS, 300, 31))
        .filter_map(|m| herald::domain::event::decode(&m.payload, 1 << 20).ok())
        .map(|e| String::from(e.message_id))
        .collect();
    let distinct: BTreeSet<&String> = valid.iter().collect();
    let invalid = EVENTS as usize - valid.len();
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut child = spawn_herald_with_config(
        &names,
        &config,
        &[
            ("IT_SIM_SECRET", SECRET),
            ("HERALD__HTTP__LISTEN", &listen),
            ("HERALD__RETRY__BASE_MS", "100"),
            // RUST_LOG-style filtering: debug for the batchers only.
            ("RUST_LOG", "info,herald::actors::batcher=debug"),
        ],
        "0",
    );
    wait_fully_committed(&names, Duration::from_secs(300));
    // Dispatch, callbacks and retries follow the events; wait for each to show.
    let started = Instant::now();
    let s = loop {
        let s = scrape(http);
        let lag_known = (0..2).all(|p| {
            s.samples.iter().any(|x| {
                x.metric == "herald_consumer_lag"
                    && x.labels.get("partition") == Some(&p.to_string())
            })
        });
        if sum(&s, "herald_retries_fired_total", &[]) > 0.0
            && sum(&s, "herald_webhook_requests_total", &[("code", "204")]) > 0.0
            && lag_known
            && sum(&s, "herald_consumer_lag", &[]) == 0.0
        {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "traffic never showed in /metrics"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    assert_eq!(
        sum(&s, "herald_events_applied_total", &[]) as usize,
        distinct.len(),
        "applied = distinct valid events"
    );
    assert_eq!(
        sum(&s, "herald_events_duplicate_total", &[]) as usize,
        valid.len() - distinct.len()
    );
    assert_eq!(
        sum(&s, "herald_events_invalid_total", &[]) as usize,
        invalid
    );
    assert_eq!(
        sum(&s, "herald_events_consumed_total", &[("source", "kafka")]) as u64,
        EVENTS
    );
    // Offsets are contiguous from 0 (one record per batch): the commits add up to the input.
    assert_eq!(sum(&s, "herald_commit_offset", &[]) as u64, EVENTS);
    assert!(sum(&s, "herald_batch_size_count", &[]) > 0.0);
    assert!(sum(&s, "herald_batch_size_sum", &[]) >= distinct.len() as f64 * 0.5);
    assert!(sum(&s, "herald_mongo_bulk_write_seconds_count", &[]) > 0.0);
    assert!(
        sum(
            &s,
            "herald_mongo_documents_written_total",
            &[("collection", "users")]
        ) >= 300.0
    );
    assert!(sum(&s, "herald_end_to_end_latency_seconds_count", &[]) > 0.0);
    assert!(has(&s, "herald_aggregators_active"));
    assert!(
        sum(
            &s,
            "herald_dispatch_total",
            &[("provider", "sim-a"), ("outcome", "sent")]
        ) > 0.0
    );
    let scheduled = sum(&s, "herald_retries_scheduled_total", &[]);
    let fired = sum(&s, "herald_retries_fired_total", &[]);
    assert!(
        scheduled >= fired && fired > 0.0,
        "{scheduled} scheduled, {fired} fired"
    );
    assert_eq!(sum(&s, "herald_actor_restarts_total", &[]), 0.0);
    assert!(has(&s, "herald_actor_restarts_total"));
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    // JSON logs with spans: each flush's line sits in a `flush` span (shard, users, events),
    // partition lines in a `partition` span; debug lines come from the batchers only.
    let log = std::fs::read_to_string(log_dir().join(format!("{}-0.log", names.base))).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let flushed: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["fields"]["message"] == "flushed")
        .collect();
    assert!(!flushed.is_empty(), "no flush was logged at debug");
    for f in &flushed {
        assert_eq!(f["span"]["name"], "flush", "{f}");
        assert!(f["span"]["users"].as_u64().is_some() && f["span"]["events"].as_u64().is_some());
    }
    let started = lines
        .iter()
        .find(|v| v["fields"]["message"] == "partition started")
        .expect("a partition started");
    assert_eq!(started["span"]["name"], "partition", "{started}");
    assert_eq!(started["span"]["source"], "kafka");
    for v in &lines {
        if v["level"] == "DEBUG" {
            assert_eq!(v["target"], "herald::actors::batcher", "filtered out: {v}");
        }
    }
}

#[test]
fn a_real_prometheus_scrapes_herald_with_the_repo_config() {
    let names = Names::new("prom", 2);
    produce(&names, 2_000, 100, 32);
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut child = spawn_herald(&names, &[("HERALD__HTTP__LISTEN", &listen)], "0");
    wait_fully_committed(&names, Duration::from_secs(300));
    // The repo's prometheus.yml, byte for byte, with a target file beside it naming this
    // Herald (the compose stack finds its replicas by DNS instead).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&names.base);
    std::fs::create_dir_all(dir.join("targets")).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/prometheus/prometheus.yml"
        ),
        dir.join("prometheus.yml"),
    )
    .unwrap();
    std::fs::write(
        dir.join("targets/herald.json"),
        format!(r#"[{{"targets": ["127.0.0.1:{http}"]}}]"#),
    )
    .unwrap();
    let port = free_port();
    let log =
        std::fs::File::create(log_dir().join(format!("{}-prometheus.log", names.base))).unwrap();
    let prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Private)
        .expect("prometheus is installed (scripts/backends.sh up)");
    let applied = block_on(async {
        let client = reqwest::Client::new();
        let started = Instant::now();
        loop {
            let r = client
                .get(format!("http://127.0.0.1:{port}/api/v1/query"))
                .query(&[("query", "herald_events_applied_total{job=\"herald\"}")])
                .send()
                .await;
            if let Ok(r) = r {
                if let Ok(v) = r.json::<serde_json::Value>().await {
                    if let Some(value) = v["data"]["result"][0]["value"][1].as_str() {
                        let applied: f64 = value.parse().unwrap();
                        if applied > 0.0 {
                            break applied;
                        }
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "Prometheus never had Herald's series"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let direct = sum(&scrape(http), "herald_events_applied_total", &[]);
    assert_eq!(applied, direct, "Prometheus holds what Herald exports");
    let up = block_on(async {
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", "up{job=\"herald\"}")])
            .send()
            .await
            .unwrap()
            .json::<serde_json::Value>()
            .await
            .unwrap()
    });
    assert_eq!(up["data"]["result"][0]["value"][1], "1", "{up}");
    drop(prometheus);
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
}

fn readyz(port: u16) -> (u16, String) {
    block_on(async {
        match reqwest::get(format!("http://127.0.0.1:{port}/readyz")).await {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(e) => (0, e.to_string()),
        }
    })
}

fn wait_ready(port: u16, code: u16, mentions: &str) -> String {
    let started = Instant::now();
    loop {
        let (c, body) = readyz(port);
        if c == code && body.to_lowercase().contains(mentions) {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "/readyz never answered {code} mentioning {mentions:?}; last {c} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn readyz_names_the_backend_that_is_down_and_recovers() {
    let mut names = Names::new("readyz", 2);
    let mongo_port = free_port();
    let data = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&names.base);
    let mut mongo = private_mongo(mongo_port, &data);
    names.mongo = format!("mongodb://127.0.0.1:{mongo_port}");
    let redis_port = free_port();
    let redis = private_redis(redis_port);
    names.redis = format!("redis://127.0.0.1:{redis_port}/0");
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut child = spawn_herald(&names, &[("HERALD__HTTP__LISTEN", &listen)], "0");
    wait_ready(http, 200, "");
    kill9(&mut mongo.0);
    let body = wait_ready(http, 503, "mongodb");
    assert!(
        !body.to_lowercase().contains("redis:"),
        "only MongoDB is down: {body}"
    );
    mongo = private_mongo(mongo_port, &data);
    wait_ready(http, 200, "");
    signal(redis.0.id(), "-STOP");
    wait_ready(http, 503, "redis");
    signal(redis.0.id(), "-CONT");
    wait_ready(http, 200, "");
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    drop(mongo);
    drop(redis);
}

/// Every §7 (and built §13) name, as its first sample line starts.
const EXPORTED_NAMES: [&str; 22] = [
    "herald_events_consumed_total",
    "herald_events_applied_total",
    "herald_events_duplicate_total",
    "herald_events_invalid_total",
    "herald_batch_size_count",
    "herald_mongo_bulk_write_seconds_count",
    "herald_mongo_documents_written_total",
    "herald_consumer_lag",
    "herald_commit_offset",
    "herald_aggregators_active",
    "herald_end_to_end_latency_seconds_count",
    "herald_dispatch_total",
    "herald_retries_scheduled_total",
    "herald_retries_fired_total",
    "herald_webhook_requests_total",
    "herald_actor_restarts_total",
    "herald_ingest_requests_total",
    "herald_ingest_request_seconds_count",
    "herald_ingest_messages_total",
    "herald_suppressed_total",
    "herald_users_resident",
    "herald_source_paused",
];

fn has_sample(text: &str, name: &str) -> bool {
    text.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with(['{', ' ']))
    })
}

#[test]
fn an_idle_instance_exports_every_metric_before_any_traffic() {
    let names = Names::new("metrics_idle", 2);
    let config = config_with_provider(&names, free_port());
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut child = spawn_herald_with_config(
        &names,
        &config,
        &[("IT_SIM_SECRET", SECRET), ("HERALD__HTTP__LISTEN", &listen)],
        "0",
    );
    // No record is ever produced: what shows is what Herald declares by itself, once it has its
    // partitions.
    let started = Instant::now();
    let text = loop {
        let text = block_on(async {
            match reqwest::get(format!("http://127.0.0.1:{http}/metrics")).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        });
        let missing: Vec<&str> = EXPORTED_NAMES
            .iter()
            .copied()
            .filter(|n| !has_sample(&text, n))
            .collect();
        let partitions = (0..2).all(|p| {
            text.contains(&format!(
                "herald_events_consumed_total{{source=\"kafka\",partition=\"{p}\"}} 0"
            )) || text.contains(&format!(
                "herald_events_consumed_total{{partition=\"{p}\",source=\"kafka\"}} 0"
            ))
        });
        if missing.is_empty() && partitions {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "an idle instance does not export {missing:?} (partitions: {partitions})"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let s = scrape(http);
    assert_eq!(sum(&s, "herald_events_consumed_total", &[]), 0.0);
    // Each reason, outcome and code known at start is a series at 0.
    for reason in herald::domain::event::RejectReason::ALL {
        assert!(
            text.contains(&format!(
                "herald_events_invalid_total{{reason=\"{}\"}} 0",
                reason.code()
            )),
            "no 0 series for reason {}",
            reason.code()
        );
    }
    for outcome in ["sent", "retryable", "rejected", "unknown"] {
        assert!(
            text.contains(&format!(
                "herald_dispatch_total{{provider=\"sim-a\",outcome=\"{outcome}\"}} 0"
            )),
            "no 0 series for sim-a {outcome}"
        );
    }
    assert!(text.contains("herald_webhook_requests_total{provider=\"sim-a\",code=\"204\"} 0"));
    assert!(text.contains("herald_ingest_requests_total{code=\"503\"} 0"));
    assert!(text.contains("herald_suppressed_total{reason=\"bounce\"} 0"));
    assert!(text.contains("herald_mongo_documents_written_total{collection=\"users\"} 0"));
    kill9(&mut child);
}
