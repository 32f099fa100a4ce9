//! The edge rules on real servers: a shared Redis's `notify-keyspace-events` is left alone
//! unless `redis.configure_notifications` says otherwise; an event that would make a profile
//! larger than `limits.max_profile_bytes` is dead-lettered with its reason and nothing else is
//! lost; `rediss://` (Redis over TLS) and Kafka's SSL listener carry the whole pipeline.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use serde_json::json;

fn redis_conn(port: u16) -> redis::Connection {
    redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .unwrap()
        .get_connection()
        .unwrap()
}

fn notify_flags(conn: &mut redis::Connection) -> String {
    let pair: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("notify-keyspace-events")
        .query(conn)
        .unwrap();
    pair.get(1).cloned().unwrap_or_default()
}

/// Waits until a Herald subscribed to the retry database's expiry events: by then it has
/// done (or not done) what it does to the server's settings.
fn wait_subscribed(conn: &mut redis::Connection, limit: Duration) {
    let channel = "__keyevent@1__:expired";
    let deadline = std::time::Instant::now() + limit;
    loop {
        let numsub: Vec<redis::Value> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(channel)
            .query(conn)
            .unwrap();
        if matches!(numsub.get(1), Some(redis::Value::Int(n)) if *n > 0) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "herald never subscribed to {channel}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_shared_redis_keeps_its_notification_settings_unless_herald_is_told_to_set_them() {
    let names = Names::new("edge_notify", 1);
    let port = free_port();
    let _redis = private_redis(port);
    let url = format!("redis://127.0.0.1:{port}/0");
    let mut conn = redis_conn(port);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("notify-keyspace-events")
        .arg("")
        .query(&mut conn)
        .unwrap();

    let mut herald = spawn_herald(&names, &[("HERALD__REDIS__URL", &url)], "default");
    wait_subscribed(&mut conn, Duration::from_secs(60));
    assert_eq!(
        notify_flags(&mut conn),
        "",
        "by default Herald must not change a server-wide setting"
    );
    kill9(&mut herald);

    let mut herald = spawn_herald(
        &names,
        &[
            ("HERALD__REDIS__URL", &url),
            ("HERALD__REDIS__CONFIGURE_NOTIFICATIONS", "true"),
        ],
        "configure",
    );
    // The old instance's subscription is gone with its connection; wait for the new one.
    wait_subscribed(&mut conn, Duration::from_secs(60));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let flags = notify_flags(&mut conn);
        if flags.contains('E') && flags.contains('x') {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "configure_notifications = true never set Ex: {flags:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    kill9(&mut herald);
}

fn identify(user: &str, id: &str, second: u32, traits: serde_json::Value) -> serde_json::Value {
    json!({"type": "identify", "userId": user, "messageId": id,
           "timestamp": format!("2026-11-23T09:00:{second:02}.000Z"), "traits": traits})
}

fn track(user: &str, id: &str, second: u32, event: &str) -> serde_json::Value {
    json!({"type": "track", "userId": user, "messageId": id, "event": event,
           "timestamp": format!("2026-11-23T09:00:{second:02}.000Z")})
}

fn publish(names: &Names, messages: &[serde_json::Value]) {
    let records: Vec<(String, String)> = messages
        .iter()
        .map(|m| (m["userId"].as_str().unwrap().to_string(), m.to_string()))
        .collect();
    produce_records(names, &records);
}

#[test]
fn an_event_that_would_make_a_profile_too_large_is_dead_lettered_and_nothing_else_is_lost() {
    let names = Names::new("edge_profile", 2);
    let big = "x".repeat(3_000);
    let kept = vec![
        identify("u-1", "m-1", 0, json!({"plan": "pro"})),
        track("u-1", "m-3", 2, "signed_up"),
        identify("u-2", "m-4", 3, json!({"bio": "y".repeat(1_000)})),
        identify("u-1", "m-5", 4, json!({"plan": "team"})),
    ];
    let too_large = identify("u-1", "m-2", 1, json!({"bio": big}));
    let sent = vec![
        kept[0].clone(),
        too_large.clone(),
        kept[1].clone(),
        kept[2].clone(),
        kept[3].clone(),
    ];
    publish(&names, &sent);
    let mut herald = spawn_herald(
        &names,
        &[("HERALD__LIMITS__MAX_PROFILE_BYTES", "2048")],
        "0",
    );
    block_on(users_become(&names, &kept, Duration::from_secs(120)));
    wait_fully_committed(&names, Duration::from_secs(120));
    let dead = dead_letters(&names);
    assert_eq!(dead.len(), 1, "only the oversized event: {dead:?}");
    let (payload, error) = &dead[0];
    let payload: serde_json::Value = serde_json::from_slice(payload).unwrap();
    assert_eq!(payload["messageId"], "m-2");
    assert!(
        error.starts_with("profile_too_large: ") && error.contains("limits.max_profile_bytes"),
        "{error}"
    );
    kill9(&mut herald);
}

/// A test CA and a server certificate it signed for `localhost` / 127.0.0.1: (CA, cert, key).
fn certificates(dir: &Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).display().to_string();
    let openssl = |args: &[&str]| {
        let made = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(made.success(), "openssl {args:?} failed");
    };
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=herald-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "redis.key",
        "-out",
        "redis.csr",
    ]);
    openssl(&[
        "x509",
        "-req",
        "-in",
        "redis.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "san.ext",
        "-out",
        "redis.crt",
    ]);
    (path("ca.crt"), path("redis.crt"), path("redis.key"))
}

#[test]
fn the_pipeline_runs_over_redis_with_tls() {
    let names = Names::new("edge_rediss", 2);
    let dir = log_dir().join(&names.base);
    std::fs::create_dir_all(&dir).unwrap();
    let (ca, cert, key) = certificates(&dir);
    let port = free_port();
    let _redis = Private(
        Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &cert, "--tls-key-file", &key])
            .args(["--tls-ca-cert-file", &ca, "--tls-auth-clients", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server"),
    );
    wait_port(port, Duration::from_secs(30));
    let messages: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            let user = format!("u-{}", i % 20);
            if i % 3 == 0 {
                identify(&user, &format!("m-{i}"), i % 60, json!({"n": i}))
            } else {
                track(&user, &format!("m-{i}"), i % 60, "opened")
            }
        })
        .collect();
    publish(&names, &messages);
    let url = format!("rediss://localhost:{port}/0");
    let mut herald = spawn_herald(
        &names,
        &[("HERALD__REDIS__URL", &url), ("SSL_CERT_FILE", &ca)],
        "0",
    );
    block_on(users_become(&names, &messages, Duration::from_secs(120)));
    wait_fully_committed(&names, Duration::from_secs(120));
    kill9(&mut herald);
}

/// The TLS listener scripts/backends.sh gives the test broker, and its CA.
fn kafka_tls() -> (String, String) {
    let cache = std::env::var("HERALD_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/herald"));
    let dir = std::env::var("HERALD_BACKENDS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| cache.join("backends"));
    let port = std::env::var("HERALD_KAFKA_SSL_PORT").unwrap_or_else(|_| "9094".into());
    (
        format!("127.0.0.1:{port}"),
        dir.join("kafka/tls/ca.crt").display().to_string(),
    )
}

#[test]
fn the_pipeline_consumes_from_kafka_over_tls() {
    let names = Names::new("edge_kafka_tls", 2);
    let (brokers, ca) = kafka_tls();
    let messages: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            track(
                &format!("u-{}", i % 20),
                &format!("m-{i}"),
                i % 60,
                "opened",
            )
        })
        .collect();
    publish(&names, &messages);
    let mut herald = spawn_herald(
        &names,
        &[
            ("HERALD__KAFKA__BROKERS", &brokers),
            ("HERALD__KAFKA__OPTIONS__security.protocol", "SSL"),
            ("HERALD__KAFKA__OPTIONS__ssl.ca.location", &ca),
        ],
        "0",
    );
    block_on(users_become(&names, &messages, Duration::from_secs(120)));
    wait_fully_committed(&names, Duration::from_secs(120));
    kill9(&mut herald);
}
