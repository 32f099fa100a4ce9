//! The operations files are valid: the compose file (`docker-compose config`, no engine
//! needed), the Prometheus config (`promtool check config`), and the Grafana dashboard (it
//! parses, and every query names a metric Herald exports). The tools come from
//! `scripts/backends.sh up` (Debian's `docker-compose` and `prometheus` packages).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is not installed ({e}): run scripts/backends.sh up"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_compose_file_is_valid() {
    let (ok, out) = run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "-q"],
    );
    assert!(ok, "docker-compose config: {out}");
    let (ok, services) = run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "--services"],
    );
    assert!(ok, "{services}");
    let services: BTreeSet<&str> = services.lines().map(str::trim).collect();
    for s in [
        "kafka",
        "rabbitmq",
        "redis",
        "mongo",
        "herald",
        "ingest",
        "provider-sim",
        "twilio-sim",
        "sendgrid-sim",
        "prometheus",
        "grafana",
    ] {
        assert!(services.contains(s), "service {s} missing: {services:?}");
    }
}

/// The compose stack's Herald environment: the `x-herald-env` defaults (`NAME: ${NAME:-v}`).
fn compose_herald_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    text.lines()
        .skip_while(|l| !l.starts_with("x-herald-env"))
        .skip(1)
        .take_while(|l| l.starts_with(' ') || l.is_empty())
        .filter_map(|l| {
            let (name, value) = l.trim().split_once(": ")?;
            let default = value
                .strip_prefix("${")?
                .strip_suffix('}')?
                .split_once(":-")?
                .1;
            Some((name.to_string(), default.to_string()))
        })
        .collect()
}

/// `herald check-config --config config/compose.toml` with only `env`: passed, and its output.
fn check_compose_config<'a>(env: impl Iterator<Item = &'a (String, String)>) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["check-config", "--config", "config/compose.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .envs(env.map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `config/compose.toml` passes `herald check-config` with the stack's environment, and the
/// SendGrid key Herald verifies events with is the one the stack's simulator signs for.
#[test]
fn the_compose_config_is_valid_with_the_stack_environment() {
    let env = compose_herald_env();
    let (ok, text) = check_compose_config(env.iter());
    assert!(ok, "check-config: {text}");
    let key = env
        .iter()
        .find(|(k, _)| k == "HERALD_SENDGRID_WEBHOOK_PUBLIC_KEY")
        .map(|(_, v)| v.clone())
        .expect("the stack sets the SendGrid public key");
    let compose = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    assert!(compose.contains("HERALD_SIM_WEBHOOK_SECRET: compose-sendgrid-secret"));
    assert_eq!(
        key,
        herald::provider_sim::sendgrid_public_key(b"compose-sendgrid-secret")
    );
}

/// The `ingest` service's own settings (`HERALD__…` lines of its `environment`).
fn compose_ingest_overrides() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(repo("docker-compose.yml")).unwrap();
    text.lines()
        .skip_while(|l| *l != "  ingest:")
        .skip(1)
        .take_while(|l| l.is_empty() || l.starts_with("   ") || l.starts_with("  #"))
        .filter_map(|l| {
            let (name, value) = l.trim().split_once(": ")?;
            name.starts_with("HERALD__")
                .then(|| (name.to_string(), value.trim_matches('"').to_string()))
        })
        .collect()
}

/// The stack's ingest tier is an `ingest.only` instance whose configuration passes
/// `herald check-config` (its listener set, its write keys in the stack's environment).
#[test]
fn the_compose_ingest_tier_config_is_valid() {
    let overrides = compose_ingest_overrides();
    assert!(
        overrides.contains(&("HERALD__INGEST__ONLY".into(), "true".into())),
        "{overrides:?}"
    );
    let env: Vec<(String, String)> = compose_herald_env().into_iter().chain(overrides).collect();
    assert!(env
        .iter()
        .any(|(k, v)| k == "HERALD_INGEST_WRITE_KEYS" && !v.is_empty()));
    let (ok, text) = check_compose_config(env.iter());
    assert!(ok, "check-config: {text}");
    // Without its listener the same settings are refused: the overrides were applied.
    let (ok, text) =
        check_compose_config(env.iter().filter(|(k, _)| k != "HERALD__INGEST__LISTEN"));
    assert!(!ok, "ingest.only without a listener passed: {text}");
    assert!(text.contains("ingest.listen"), "{text}");
}

#[test]
fn the_prometheus_config_is_valid() {
    let config = repo("deploy/prometheus/prometheus.yml");
    let (ok, out) = run("promtool", &["check", "config", config.to_str().unwrap()]);
    assert!(ok, "promtool: {out}");
}

/// The series names Herald exports, from its own registry's exposition (`# TYPE` lines). A
/// labelled family shows only once it has a child, so each typed event is reported once.
fn exported_series() -> BTreeSet<String> {
    let m = herald::telemetry::Metrics::new();
    m.records_consumed("kafka", 0, 1);
    m.invalid_record(herald::domain::event::RejectReason::NotJson, 0, "x");
    m.documents_written("users", 1);
    m.committed(0, 1, Some(1));
    m.dispatch_outcome("p", "sent");
    m.webhook_request("p", 204);
    m.merge("merged");
    let text = m.render();
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() == 4 && f[0] == "#" && f[1] == "TYPE" {
            let name = f[2];
            match f[3] {
                "counter" => {
                    out.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        out.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    out.insert(name.to_string());
                }
            }
        }
    }
    out
}

fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if k == "expr" {
                    out.push(v.as_str().unwrap_or_default().to_string());
                } else {
                    exprs(v, out);
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn every_dashboard_query_names_an_exported_metric() {
    let text = std::fs::read_to_string(repo("deploy/grafana/dashboards/herald.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON parses");
    let mut queries = Vec::new();
    exprs(&dashboard, &mut queries);
    assert!(queries.len() >= 9, "too few queries: {queries:?}");
    let exported = exported_series();
    let mut used = BTreeSet::new();
    for q in &queries {
        let names: Vec<&str> = q
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|t| t.starts_with("herald_"))
            .collect();
        assert!(!names.is_empty(), "query names no Herald metric: {q}");
        for n in names {
            assert!(exported.contains(n), "{n} (in `{q}`) is not exported");
            used.insert(n.to_string());
        }
    }
    // The dashboard covers what an operator needs at a glance (issue: throughput, lag, batch
    // sizes, flush and end-to-end latency, dispatch, retries, webhooks, restarts).
    for needed in [
        "herald_events_consumed_total",
        "herald_consumer_lag",
        "herald_batch_size_bucket",
        "herald_mongo_bulk_write_seconds_bucket",
        "herald_end_to_end_latency_seconds_bucket",
        "herald_dispatch_total",
        "herald_retries_fired_total",
        "herald_webhook_requests_total",
        "herald_actor_restarts_total",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard has no panel on {needed}"
        );
    }
}
