//! The Segment-compatible HTTP ingest (REFERENCE.md §11) against real parts: `herald run` on
//! Kafka, Redis and MongoDB with `ingest.listen`, driven over HTTP by hand for each rule and
//! by the official client libraries (Segment's Python and Node.js libraries, RudderStack's
//! Python library: `tests/ingest_clients.py`, `tests/ingest_clients.js`). What lands in
//! `users` is compared with the test oracle's replay of what the clients were asked to send.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const KEYS: &str = "key-one,key-two";

fn start(names: &Names, extra: &[(&str, &str)]) -> (Herald, u16, u16) {
    let ingest = free_port();
    let http = free_port();
    let ingest_listen = format!("127.0.0.1:{ingest}");
    let http_listen = format!("127.0.0.1:{http}");
    let mut env = vec![
        ("HERALD__INGEST__LISTEN", ingest_listen.as_str()),
        ("HERALD__HTTP__LISTEN", http_listen.as_str()),
        ("HERALD_INGEST_WRITE_KEYS", KEYS),
    ];
    env.extend_from_slice(extra);
    let herald = spawn_herald(names, &env, "ingest");
    wait_port(ingest, Duration::from_secs(60));
    (herald, ingest, http)
}

fn basic(key: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{key}:"))
    )
}

async fn post(
    port: u16,
    path: &str,
    auth: Option<&str>,
    body: Vec<u8>,
    gzip: bool,
) -> (u16, Option<String>, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}{path}"))
        .header("content-type", "application/json");
    if let Some(key) = auth {
        req = req.header("authorization", basic(key));
    }
    let body = if gzip {
        req = req.header("content-encoding", "gzip");
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(&body).unwrap();
        e.finish().unwrap()
    } else {
        body
    };
    let r = req.body(body).send().await.unwrap();
    let code = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let answer = r.json::<Value>().await.unwrap_or(Value::Null);
    (code, retry_after, answer)
}

fn track(user: &str, id: &str, event: &str) -> Value {
    json!({"type": "track", "userId": user, "messageId": id, "event": event,
           "timestamp": "2026-11-23T10:00:00.000Z"})
}

/// Every record Herald's topic holds now, as JSON.
fn published(names: &Names) -> Vec<Value> {
    let ends = end_offsets(&offsets_client(names), names);
    records_below(names, &ends)
        .into_iter()
        .map(|(_, _, p)| serde_json::from_slice(&p).unwrap())
        .collect()
}

#[test]
fn every_rule_of_the_tracking_api() {
    let names = Names::new("ingest_rules", 4);
    let (mut herald, port, http) = start(&names, &[]);
    block_on(async {
        // One batch of each type, the batch's context and sentAt, two messages §2 refuses.
        let batch = json!({
            "context": {"library": {"name": "by-hand"}, "ip": "10.0.0.1"},
            "sentAt": "2026-11-23T10:00:10.000Z",
            "batch": [
                {"type": "identify", "userId": "u-1", "messageId": "m-1",
                 "timestamp": "2026-11-23T09:00:00.000Z", "traits": {"plan": "pro"},
                 "context": {"ip": "10.0.0.2"}},
                track("u-1", "m-2", "signed_up"),
                {"type": "page", "anonymousId": "anon-1", "messageId": "m-3", "name": "Home",
                 "timestamp": "2026-11-23T09:00:01.000Z"},
                {"type": "screen", "userId": "u-1", "messageId": "m-4",
                 "timestamp": "2026-11-23T09:00:02.000Z"},
                {"type": "group", "userId": "u-1", "groupId": "g-1", "messageId": "m-5",
                 "timestamp": "2026-11-23T09:00:03.000Z", "traits": {"name": "Acme"}},
                track("u-1", "m-6", "bad/name"),
                {"type": "alias", "userId": "u-1", "messageId": "m-7",
                 "timestamp": "2026-11-23T09:00:04.000Z"},
                // No messageId, no timestamp: both filled, the time corrected by the device's
                // clock (sent 10 s after the event).
                {"type": "track", "userId": "u-2", "event": "opened",
                 "originalTimestamp": "2026-11-23T10:00:00.000Z"},
            ]
        });
        let (code, _, answer) = post(
            port,
            "/v1/batch",
            Some("key-one"),
            batch.to_string().into(),
            false,
        )
        .await;
        assert_eq!(code, 200, "{answer}");
        assert_eq!(answer["success"], true);
        let rejected: Vec<(u64, String)> = answer["rejected"]
            .as_array()
            .expect("rejected listed")
            .iter()
            .map(|r| {
                (
                    r["index"].as_u64().unwrap(),
                    r["reason"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(rejected.len(), 2, "{answer}");
        assert_eq!(rejected[0].0, 5);
        assert!(rejected[0].1.starts_with("bad_event_name"), "{rejected:?}");
        assert_eq!(
            rejected[1],
            (6, "missing_field: `previousId` is required".to_string())
        );

        // The key in the body instead of the header; a single-message route; gzip.
        let single = json!({"writeKey": "key-two", "userId": "u-3", "messageId": "m-8",
                            "event": "clicked", "timestamp": "2026-11-23T10:00:00.000Z"});
        let (code, _, answer) =
            post(port, "/v1/track", None, single.to_string().into(), false).await;
        assert_eq!(code, 200, "{answer}");
        let zipped = json!({"batch": [track("u-3", "m-9", "zipped")]});
        let (code, _, answer) = post(
            port,
            "/v1/batch",
            Some("key-two"),
            zipped.to_string().into(),
            true,
        )
        .await;
        assert_eq!(code, 200, "{answer}");

        // Refused requests: nothing of them is published (their users never appear).
        let never = |id: &str| {
            json!({"batch": [track("never", id, "x")]})
                .to_string()
                .into_bytes()
        };
        for (what, path, auth, body, want) in [
            ("a wrong key", "/v1/batch", Some("nope"), never("n-1"), 401),
            ("no key", "/v1/batch", None, never("n-2"), 401),
            (
                "a wrong key in the body",
                "/v1/batch",
                None,
                json!({"writeKey": "nope", "batch": [track("never", "n-3", "x")]})
                    .to_string()
                    .into_bytes(),
                401,
            ),
            (
                "not JSON",
                "/v1/batch",
                Some("key-one"),
                b"{not json".to_vec(),
                400,
            ),
            (
                "no batch",
                "/v1/batch",
                Some("key-one"),
                b"{}".to_vec(),
                400,
            ),
            (
                "an unknown route",
                "/v1/nothing",
                Some("key-one"),
                never("n-4"),
                404,
            ),
        ] {
            let (code, _, answer) = post(port, path, auth, body, false).await;
            assert_eq!(code, want, "{what}: {answer}");
        }
        // Each limit at its edge (published) and one past it (400).
        let sized = |id: &str, bytes: usize| {
            let mut m = track("sized", id, "big");
            m["properties"] = json!({"pad": ""});
            let base = serde_json::to_vec(&m).unwrap().len();
            m["properties"]["pad"] = Value::String("x".repeat(bytes - base));
            m
        };
        let (code, _, a) = post(
            port,
            "/v1/batch",
            Some("key-one"),
            json!({"batch": [sized("s-1", 32 * 1024)]})
                .to_string()
                .into(),
            false,
        )
        .await;
        assert_eq!(code, 200, "a 32 KB message: {a}");
        let (code, _, a) = post(
            port,
            "/v1/batch",
            Some("key-one"),
            json!({"batch": [sized("never-1", 32 * 1024 + 1)]})
                .to_string()
                .into(),
            false,
        )
        .await;
        assert_eq!(code, 400, "a message over 32 KB: {a}");
        let many = |prefix: &str, n: usize| {
            let batch: Vec<Value> = (0..n)
                .map(|i| track("many", &format!("{prefix}-{i}"), "e"))
                .collect();
            json!({"batch": batch}).to_string().into_bytes()
        };
        let (code, _, a) = post(port, "/v1/batch", Some("key-one"), many("b", 2_500), false).await;
        assert_eq!(code, 200, "2,500 messages: {a}");
        let (code, _, a) = post(
            port,
            "/v1/batch",
            Some("key-one"),
            many("never", 2_501),
            false,
        )
        .await;
        assert_eq!(code, 400, "2,501 messages: {a}");
        let mut over = json!({"batch": [track("never", "n-5", "x")]})
            .to_string()
            .into_bytes();
        over.extend(std::iter::repeat_n(b' ', 500 * 1024));
        let (code, _, a) = post(port, "/v1/batch", Some("key-one"), over, false).await;
        assert_eq!(code, 400, "a body over 500 KB: {a}");

        // What reached Kafka: every accepted message once, completed.
        let records = published(&names);
        let ids: Vec<&str> = records
            .iter()
            .map(|r| r["messageId"].as_str().unwrap())
            .collect();
        let distinct: BTreeSet<&str> = ids.iter().copied().collect();
        assert_eq!(ids.len(), distinct.len(), "a message published twice");
        assert!(
            records.iter().all(|r| r["userId"] != "never"),
            "a refused request was published"
        );
        assert_eq!(records.len(), 6 + 2 + 1 + 2_500, "published: {ids:?}");
        let by_id = |id: &str| {
            records
                .iter()
                .find(|r| r["messageId"] == id)
                .unwrap()
                .clone()
        };
        let first = by_id("m-1");
        assert_eq!(
            first["context"],
            json!({"library": {"name": "by-hand"}, "ip": "10.0.0.2"})
        );
        assert!(first["receivedAt"].is_string());
        let generated = records.iter().find(|r| r["userId"] == "u-2").unwrap();
        let received =
            chrono::DateTime::parse_from_rfc3339(generated["receivedAt"].as_str().unwrap())
                .unwrap();
        let timestamp =
            chrono::DateTime::parse_from_rfc3339(generated["timestamp"].as_str().unwrap()).unwrap();
        assert_eq!(
            (received - timestamp).num_milliseconds(),
            10_000,
            "{generated}"
        );
        assert_eq!(
            generated["messageId"].as_str().unwrap().len(),
            36,
            "a UUID: {generated}"
        );

        // The dead letters: the two refused messages with their reasons.
        let dead = dead_letters(&names);
        let reasons: BTreeSet<String> = dead
            .iter()
            .map(|(_, e)| e.split(':').next().unwrap().to_string())
            .collect();
        assert_eq!(dead.len(), 2, "{dead:?}");
        assert_eq!(
            reasons,
            BTreeSet::from(["bad_event_name".to_string(), "missing_field".to_string()])
        );

        // `users`: the oracle's replay of what was published.
        users_become(&names, &records, Duration::from_secs(90)).await;
        let users = mongo_users(&names).await;
        assert_eq!(users["anon-1"].events["page_viewed"].count, 1);
        assert_eq!(users["u-1"].events["screen_viewed"].count, 1);
        assert_eq!(users["u-1"].groups["g-1"]["name"], "Acme");
    });
    let metrics = scrape(http);
    assert!(sum(&metrics, "herald_ingest_requests_total", &[("code", "200")]) >= 5.0);
    assert!(sum(&metrics, "herald_ingest_requests_total", &[("code", "401")]) >= 3.0);
    // Every request answered is timed, whatever its answer.
    assert_eq!(
        sum(&metrics, "herald_ingest_request_seconds", &[]),
        sum(&metrics, "herald_ingest_requests_total", &[])
    );
    assert_eq!(
        sum(
            &metrics,
            "herald_ingest_messages_total",
            &[("outcome", "rejected")]
        ),
        2.0
    );
    kill9(&mut herald);
}

#[test]
fn a_write_key_over_its_rate_gets_429_with_retry_after() {
    let names = Names::new("ingest_rate", 2);
    let (mut herald, port, _) = start(&names, &[("HERALD__INGEST__RATE_PER_SEC_PER_KEY", "2")]);
    block_on(async {
        let mut codes = Vec::new();
        for i in 0..6 {
            let body = json!({"batch": [track("u", &format!("r-{i}"), "e")]}).to_string();
            let (code, retry_after, _) =
                post(port, "/v1/batch", Some("key-one"), body.into(), false).await;
            if code == 429 {
                let seconds: u64 = retry_after.expect("Retry-After on 429").parse().unwrap();
                assert!((1..=2).contains(&seconds), "Retry-After {seconds}");
            }
            codes.push(code);
        }
        assert_eq!(&codes[..2], [200, 200], "{codes:?}");
        assert!(
            codes[2..].contains(&429),
            "no 429 past 2 requests/s: {codes:?}"
        );
        // Another key has its own allowance.
        let body = json!({"batch": [track("u", "other", "e")]}).to_string();
        let (code, _, _) = post(port, "/v1/batch", Some("key-two"), body.into(), false).await;
        assert_eq!(code, 200);
        // The refused ones were not published.
        let published: Vec<String> = published(&names)
            .iter()
            .map(|r| r["messageId"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            published.len(),
            codes.iter().filter(|c| **c == 200).count() + 1
        );
    });
    kill9(&mut herald);
}

#[test]
fn the_edge_resends_keep_their_ids_body_keys_are_limited_per_peer_and_slow_bodies_time_out() {
    let names = Names::new("ingest_edge", 2);
    let (mut herald, port, _) = start(
        &names,
        &[
            ("HERALD__INGEST__RATE_PER_SEC_PER_PEER", "2"),
            // The broker's ack wait as well as the body's: long enough for a busy machine's
            // first produce (metadata, a new topic's leader), which a 503 would not prove.
            ("HERALD__INGEST__TIMEOUT_MS", "5000"),
        ],
    );
    block_on(async {
        // The producer's first request learns the topic's leader: until it has, a 503 is the
        // right answer, and not what this test is about.
        let warm = json!({"batch": [track("warm", "warm-up", "e")]}).to_string();
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (code, _, a) = post(
                port,
                "/v1/batch",
                Some("key-two"),
                warm.clone().into(),
                false,
            )
            .await;
            if code == 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no 200 within 60 s: {code} {a}"
            );
        }
        // A client that sends a request again (after a 503, say) sends the same messages:
        // without `messageId` they get the same ids, so the pipeline's dedup absorbs them.
        let body = json!({"batch": [
            {"type": "track", "userId": "resent", "event": "e"},
            {"type": "track", "userId": "resent", "event": "e"},
        ]})
        .to_string();
        for _ in 0..2 {
            let (code, _, a) = post(
                port,
                "/v1/batch",
                Some("key-one"),
                body.clone().into(),
                false,
            )
            .await;
            assert_eq!(code, 200, "{a}");
        }
        let ids: Vec<String> = published(&names)
            .iter()
            .filter(|r| r["userId"] == "resent")
            .map(|r| r["messageId"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids.len(), 4, "{ids:?}");
        assert_eq!(ids[0], ids[2], "a resent message got another id");
        assert_eq!(ids[1], ids[3], "a resent message got another id");
        assert_ne!(ids[0], ids[1], "two messages of one request share an id");

        // Requests with the key in the body: limited per client address before the body is
        // read (a wrong key costs as much as a right one).
        let mut codes = Vec::new();
        for i in 0..6 {
            let body = json!({"writeKey": if i % 2 == 0 { "key-one" } else { "wrong" },
                "batch": [track("p", &format!("p-{i}"), "e")]})
            .to_string();
            let (code, _, _) = post(port, "/v1/batch", None, body.into(), false).await;
            codes.push(code);
        }
        assert_eq!(&codes[..2], [200, 401], "{codes:?}");
        assert!(
            codes[2..].contains(&429),
            "no 429 past 2 requests/s: {codes:?}"
        );
        // A key in the header is not limited by the address.
        let body = json!({"batch": [track("p", "header", "e")]}).to_string();
        let (code, _, _) = post(port, "/v1/batch", Some("key-two"), body.into(), false).await;
        assert_eq!(code, 200);

        // A body that never arrives: 408 once `ingest.timeout_ms` has passed.
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let head = format!(
                "POST /v1/batch HTTP/1.1\r\nhost: x\r\nauthorization: {}\r\n\
                 content-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
                basic("key-one")
            );
            s.write_all(head.as_bytes()).unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).to_string()
        })
        .await
        .unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    });
    kill9(&mut herald);
}

/// The calls one client library is asked to make (as Segment messages, for the oracle):
/// each type, for `users` users, plus one invalid track.
fn calls(lib: &str, users: usize) -> (Vec<Value>, Value) {
    let mut calls = Vec::new();
    let at = |i: usize| {
        format!(
            "2026-11-23T10:{:02}:{:02}.{:03}Z",
            (i / 60) % 60,
            i % 60,
            i % 1000
        )
    };
    let mut n = 0;
    let mut next = |calls: &mut Vec<Value>, mut m: Value| {
        m["messageId"] = json!(format!("{lib}-{n}"));
        m["timestamp"] = json!(at(n));
        n += 1;
        calls.push(m);
    };
    for u in 0..users {
        let user = format!("{lib}-user-{u}");
        next(
            &mut calls,
            json!({"type": "identify", "userId": user, "traits": {"plan": format!("p{u}"), "n": u}}),
        );
        next(
            &mut calls,
            json!({"type": "track", "userId": user, "event": "signed_up", "properties": {"k": u}}),
        );
        next(
            &mut calls,
            json!({"type": "track", "userId": user, "event": "purchased"}),
        );
        next(
            &mut calls,
            json!({"type": "page", "userId": user, "name": "Home"}),
        );
        next(
            &mut calls,
            json!({"type": "screen", "anonymousId": format!("{lib}-anon-{u}"), "name": "Main"}),
        );
        next(
            &mut calls,
            json!({"type": "group", "userId": user, "groupId": format!("g{}", u % 3), "traits": {"size": u}}),
        );
        if u % 2 == 0 {
            // The visitor signs up: its screen view merges into the user's profile.
            next(
                &mut calls,
                json!({"type": "alias", "userId": user, "previousId": format!("{lib}-anon-{u}")}),
            );
        }
    }
    let mut invalid =
        json!({"type": "track", "userId": format!("{lib}-user-0"), "event": "not/valid"});
    invalid["messageId"] = json!(format!("{lib}-invalid"));
    invalid["timestamp"] = json!(at(0));
    (calls, invalid)
}

fn run_client(lib: &str, port: u16, key: &str, calls: &[Value]) {
    let out = ingest_client(lib, port, key, calls).output().unwrap();
    assert!(
        out.status.success(),
        "{lib} client failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_official_segment_and_rudderstack_clients_land_every_message_once() {
    let names = Names::new("ingest_clients", 4);
    let (mut herald, port, _) = start(&names, &[]);
    let mut expected = Vec::new();
    let mut invalid_ids = BTreeSet::new();
    for (lib, key) in [
        ("segment", "key-one"),
        ("rudder", "key-two"),
        ("node", "key-one"),
    ] {
        let (mut sent, invalid) = calls(lib, 20);
        invalid_ids.insert(invalid["messageId"].as_str().unwrap().to_string());
        expected.extend(sent.iter().cloned());
        sent.insert(7, invalid);
        run_client(lib, port, key, &sent);
    }
    block_on(users_become(&names, &expected, Duration::from_secs(90)));
    // Each library's `alias` calls landed as merges.
    let merged = block_on(mongo_merged(&names));
    for lib in ["segment", "rudder", "node"] {
        for u in (0..20).step_by(2) {
            assert_eq!(
                merged.get(&format!("{lib}-anon-{u}")),
                Some(&format!("{lib}-user-{u}")),
                "{merged:?}"
            );
        }
    }
    assert_eq!(merged.len(), 30);
    let dead: BTreeSet<String> = dead_letters(&names)
        .iter()
        .map(|(p, _)| {
            serde_json::from_slice::<Value>(p).unwrap()["messageId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(dead, invalid_ids);
    kill9(&mut herald);
}

/// `ingest.only`: an instance with Redis and MongoDB unreachable (closed ports) and a topic
/// that does not exist yet still takes a client library's traffic — it connects to the broker
/// only, creates the topics — answers no webhooks, counts what it published, and drains on
/// SIGTERM; an engine started afterwards applies exactly what the client sent (the oracle's
/// replay) and dead-letters the one invalid message.
#[test]
fn an_ingest_only_instance_needs_only_its_broker_and_an_engine_applies_what_it_took() {
    ingest_only_on(Bus::Kafka);
}

#[test]
fn on_rabbitmq_an_ingest_only_instance_declares_its_queues_and_an_engine_applies_what_it_took() {
    ingest_only_on(Bus::Rabbit);
}

fn ingest_only_on(bus: Bus) {
    let names = Names::on(bus, "ingest_only", 4);
    let (ingest, http) = (free_port(), free_port());
    let (ingest_listen, http_listen) = (format!("127.0.0.1:{ingest}"), format!("127.0.0.1:{http}"));
    let closed = free_port();
    let (redis, mongo) = (
        format!("redis://127.0.0.1:{closed}/0"),
        format!("mongodb://127.0.0.1:{closed}/?serverSelectionTimeoutMS=500"),
    );
    let mut tier = spawn_herald(
        &names,
        &[
            ("HERALD__INGEST__ONLY", "true"),
            ("HERALD__INGEST__LISTEN", ingest_listen.as_str()),
            ("HERALD__HTTP__LISTEN", http_listen.as_str()),
            ("HERALD_INGEST_WRITE_KEYS", KEYS),
            ("HERALD__REDIS__URL", redis.as_str()),
            ("HERALD__REDIS__CLUSTER_NODES", ""),
            ("HERALD__MONGO__URL", mongo.as_str()),
            ("HERALD__STARTUP__TIMEOUT_MS", "5000"),
        ],
        "tier",
    );
    wait_port(ingest, Duration::from_secs(60));
    block_on(eventually(
        "the tier ready",
        Duration::from_secs(30),
        || async {
            reqwest::get(format!("http://127.0.0.1:{http}/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
        },
    ));
    let (mut sent, invalid) = calls("tier", 20);
    let expected = sent.clone();
    sent.insert(5, invalid.clone());
    // The tier created the destinations: nothing else declared them before this.
    run_client("segment", ingest, "key-one", &sent);
    let observer = Observer::new(&names, sent.len() as u64);
    let webhook = block_on(async {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{http}/webhooks/twilio"))
            .body("MessageSid=SM1&MessageStatus=delivered")
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(webhook, 404, "an ingest-only instance takes no callbacks");
    let metrics = scrape(http);
    let count = |outcome| {
        sum(
            &metrics,
            "herald_ingest_messages_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(count("published"), expected.len() as f64);
    assert_eq!(count("rejected"), 1.0);
    let (status, _) = sigterm(&mut tier, Duration::from_secs(20));
    assert!(
        status.success(),
        "the tier exits cleanly on SIGTERM: {status}"
    );
    // Nothing was consumed: an engine on the same topic applies all of it.
    let mut engine = spawn_herald(&names, &[], "engine");
    block_on(users_become(&names, &expected, Duration::from_secs(90)));
    let dead: Vec<Value> = observer
        .dead_letters()
        .iter()
        .map(|(p, _)| serde_json::from_slice(p).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["messageId"], invalid["messageId"]);
    kill9(&mut engine);
}

#[test]
fn every_message_a_client_saw_200_for_survives_a_sigkill_of_herald() {
    let names = Names::new("ingest_kill", 4);
    let ingest = free_port();
    let http = free_port();
    let env_of = || {
        vec![
            (
                "HERALD__INGEST__LISTEN".to_string(),
                format!("127.0.0.1:{ingest}"),
            ),
            (
                "HERALD__HTTP__LISTEN".to_string(),
                format!("127.0.0.1:{http}"),
            ),
            ("HERALD_INGEST_WRITE_KEYS".to_string(), KEYS.to_string()),
        ]
    };
    let spawn = |tag: &str| {
        let env = env_of();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let h = spawn_herald(&names, &env, tag);
        wait_port(ingest, Duration::from_secs(60));
        h
    };
    let mut herald = spawn("first");
    let (calls, _) = calls("killed", 300);
    let mut sender = ingest_client("segment", ingest, "key-one", &calls)
        .env("INGEST_PACE_MS", "3")
        .spawn()
        .unwrap();
    // SIGKILL once part of it has been answered 200.
    let offsets = offsets_client(&names);
    block_on(eventually(
        "some messages published",
        Duration::from_secs(60),
        || {
            let any = end_offsets(&offsets, &names).iter().sum::<i64>() > 0;
            async move { any }
        },
    ));
    kill9(&mut herald);
    let mut herald = spawn("second");
    let status = sender.wait().unwrap();
    assert!(status.success(), "the client gave up on some messages");
    block_on(users_become(&names, &calls, Duration::from_secs(120)));
    kill9(&mut herald);
}

#[test]
fn on_rabbitmq_the_ingest_publishes_with_confirms_and_dead_letters_the_invalid() {
    let names = Names::on(Bus::Rabbit, "ingest_rabbit", 2);
    let observer = Observer::new(&names, 0);
    let (mut herald, port, _) = start(&names, &[]);
    let (mut sent, invalid) = calls("rabbit", 15);
    let expected = sent.clone();
    sent.insert(3, invalid.clone());
    run_client("node", port, "key-two", &sent);
    block_on(users_become(&names, &expected, Duration::from_secs(90)));
    let dead: Vec<(String, String)> = observer
        .dead_letters()
        .iter()
        .map(|(p, reason)| {
            let m: Value = serde_json::from_slice(p).unwrap();
            (m["messageId"].as_str().unwrap().to_string(), reason.clone())
        })
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, invalid["messageId"].as_str().unwrap());
    assert!(dead[0].1.starts_with("bad_event_name"), "{dead:?}");
    kill9(&mut herald);
}
