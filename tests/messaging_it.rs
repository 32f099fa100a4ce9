//! Messaging against real parts: `herald run` (Kafka, Redis, MongoDB) sending through two
//! `herald provider-sim` processes over HTTP, their signed callbacks coming back to Herald's
//! webhook receiver, and retries on the Redis schedule — including across a SIGKILL and with
//! two instances sharing Redis.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use herald::domain::signature::sign;
use mongodb::bson::Document;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

const SECRET: &str = "it-webhook-secret";

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn write_config(names: &Names, text: &str) -> PathBuf {
    let path = log_dir().join(format!("{}.toml", names.base));
    std::fs::write(&path, text).unwrap();
    path
}

/// One of several `herald run` instances sharing the backends (a Kafka static member named
/// `instance`), its HTTP on `http`.
fn spawn_instance(
    names: &Names,
    config: &std::path::Path,
    http: u16,
    instance: &str,
    tag: &str,
) -> Herald {
    let listen = format!("127.0.0.1:{http}");
    spawn_herald_with_config(
        names,
        config,
        &[
            ("HERALD__HTTP__LISTEN", listen.as_str()),
            ("HERALD__KAFKA__GROUP_INSTANCE_ID", instance),
            ("IT_SIM_SECRET", SECRET),
        ],
        tag,
    )
}

fn providers_toml(primary: u16, backup: u16) -> String {
    format!(
        r#"
[[campaigns]]
id = "welcome"
on_event = "signed_up"
channel = "sms"
template = "Hi {{{{traits.first_name}}}}, welcome aboard!"

[[providers]]
name = "sim-a"
channel = "sms"
url = "http://127.0.0.1:{primary}/v1/messages"
priority = 1
webhook_secret_env = "IT_SIM_SECRET"

[[providers]]
name = "sim-b"
channel = "sms"
url = "http://127.0.0.1:{backup}/v1/messages"
priority = 2
webhook_secret_env = "IT_SIM_SECRET"
"#
    )
}

/// An identify with a phone (or none) and a `signed_up` track, each published twice (the
/// duplicates must not send anything twice).
fn user_events(user: &str, phone: Option<&str>) -> Vec<(String, String)> {
    let traits = match phone {
        Some(p) => json!({"phone": p, "first_name": user}),
        None => json!({"first_name": user}),
    };
    let identify = json!({"messageId": format!("id-{user}"), "type": "identify", "userId": user,
        "timestamp": "2026-11-23T10:00:00Z", "traits": traits})
    .to_string();
    let track = json!({"messageId": format!("su-{user}"), "type": "track", "userId": user,
        "timestamp": "2026-11-23T10:00:01Z", "event": "signed_up"})
    .to_string();
    vec![
        (user.to_string(), identify.clone()),
        (user.to_string(), track.clone()),
        (user.to_string(), identify),
        (user.to_string(), track),
    ]
}

fn status(doc: &Document) -> &str {
    doc.get_str("status").unwrap_or("?")
}

fn history(doc: &Document) -> Vec<String> {
    doc.get_array("history")
        .map(|h| {
            h.iter()
                .filter_map(|e| e.as_document()?.get_str("status").ok().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Idempotency keys a sim received for one message.
fn keys_for(sends: &[serde_json::Value], id: &str) -> Vec<String> {
    let mut keys: Vec<String> = sends
        .iter()
        .filter(|s| s["id"] == id)
        .map(|s| s["idempotency_key"].as_str().unwrap().to_string())
        .collect();
    keys.sort();
    keys
}

async fn post_callback(
    client: &reqwest::Client,
    port: u16,
    provider: &str,
    body: &[u8],
    headers: &[(&str, String)],
) -> u16 {
    let mut req = client
        .post(format!("http://127.0.0.1:{port}/webhooks/{provider}"))
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

/// A refused callback: what it is, provider, body, headers, expected status.
type Case<'a> = (&'a str, &'a str, Vec<u8>, Vec<(&'a str, String)>, u16);

fn signed(body: &[u8], secret: &str, ts: i64) -> Vec<(&'static str, String)> {
    let ts = ts.to_string();
    vec![
        ("X-Herald-Signature", sign(secret.as_bytes(), &ts, body)),
        ("X-Herald-Timestamp", ts),
    ]
}

#[test]
fn every_path_ends_right_and_webhooks_are_guarded() {
    let names = Names::new("paths", 2);
    let (port_a, port_b, http) = (free_port(), free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    let config = write_config(
        &names,
        &format!(
            "[retry]\nbase_ms = 300\nmax_delay_ms = 1000\nmax_attempts = 2\nsweep_ms = 100\n{}",
            providers_toml(port_a, port_b)
        ),
    );
    // Per recipient, what sim-a answers, in order (sim-b answers 200 + delivered).
    let scripts = [
        ("u-ok", json!([{"status": 200}])),
        (
            "u-429",
            json!([{"status": 429, "retry_after": 1}, {"status": 200}]),
        ),
        ("u-5xx", json!([{"status": 503}, {"status": 200}])),
        ("u-4xx", json!([{"status": 400}])),
        (
            "u-undelivered",
            json!([{"status": 200, "callback": "undelivered"}, {"status": 200}]),
        ),
        ("u-fail", json!([{"status": 503}, {"status": 502}])),
        ("u-hold", json!([{"status": 200, "callback": "none"}])),
    ];
    let phone = |u: &str| {
        format!(
            "+1555{}",
            u.len() * 1000 + u.bytes().map(u32::from).sum::<u32>() as usize
        )
    };
    block_on(async {
        for (user, steps) in &scripts {
            sim_script(port_a, &phone(user), steps.clone()).await;
        }
    });
    let mut records = Vec::new();
    for (user, _) in &scripts {
        records.extend(user_events(user, Some(&phone(user))));
    }
    records.extend(user_events("u-nophone", None));
    produce_records(&names, &records);
    let http_listen = format!("127.0.0.1:{http}");
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &[
            ("HERALD__HTTP__LISTEN", &http_listen),
            ("IT_SIM_SECRET", SECRET),
        ],
        "paths",
    );
    let id = |u: &str| format!("welcome:su-{u}");
    let terminal = ["delivered", "failed", "skipped"];
    block_on(async {
        eventually("every message settled", Duration::from_secs(90), || async {
            let docs = mongo_messages(&names).await;
            docs.len() == scripts.len() + 1
                && docs
                    .iter()
                    .filter(|(k, _)| **k != id("u-hold"))
                    .all(|(_, d)| terminal.contains(&status(d)))
                && docs.get(&id("u-hold")).is_some_and(|d| status(d) == "sent")
        })
        .await;
        let docs = mongo_messages(&names).await;
        let expect = [
            ("u-ok", "delivered", "sim-a", 1),
            ("u-429", "delivered", "sim-a", 2),
            ("u-5xx", "delivered", "sim-a", 2),
            ("u-4xx", "delivered", "sim-b", 2),
            ("u-undelivered", "delivered", "sim-a", 2),
            ("u-fail", "failed", "sim-a", 2),
        ];
        for (user, want, provider, attempts) in expect {
            let d = &docs[&id(user)];
            assert_eq!(status(d), want, "{user}: {d}");
            assert_eq!(d.get_str("provider").unwrap(), provider, "{user}: {d}");
            assert_eq!(
                d.get("attempts")
                    .and_then(|a| a.as_i64().or(a.as_i32().map(i64::from))),
                Some(attempts),
                "{user}: {d}"
            );
            let h = history(d);
            assert_eq!(
                h.first().map(String::as_str),
                Some("queued"),
                "{user}: {h:?}"
            );
            assert_eq!(h.last().map(String::as_str), Some(want), "{user}: {h:?}");
        }
        assert!(history(&docs[&id("u-undelivered")]).contains(&"retrying".to_string()));
        let skipped = &docs[&id("u-nophone")];
        assert_eq!(status(skipped), "skipped");
        assert!(
            skipped.get_str("error").unwrap_or("").contains("phone"),
            "{skipped}"
        );

        // One send per attempt, nothing twice despite the duplicated trigger events.
        let sends_a = sim_sends(port_a).await;
        let sends_b = sim_sends(port_b).await;
        let per_message: BTreeMap<&str, usize> = [
            ("u-ok", 1),
            ("u-429", 2),
            ("u-5xx", 2),
            ("u-4xx", 1),
            ("u-undelivered", 2),
            ("u-fail", 2),
            ("u-hold", 1),
        ]
        .into_iter()
        .collect();
        for (user, n) in &per_message {
            let keys = keys_for(&sends_a, &id(user));
            assert_eq!(keys.len(), *n, "{user}: {keys:?}");
            let distinct: BTreeSet<_> = keys.iter().collect();
            assert_eq!(distinct.len(), keys.len(), "{user}: a key sent twice");
        }
        assert_eq!(
            keys_for(&sends_b, &id("u-4xx")),
            vec![format!("{}:2", id("u-4xx"))]
        );
        assert_eq!(sends_b.len(), 1);
        assert_eq!(sim_stats(port_a).await["repeated_keys"], 0);

        // Webhook security: a message in `sent` (its provider never called back) is the target.
        let client = reqwest::Client::new();
        let hold = id("u-hold");
        let pid = docs[&hold]
            .get_str("provider_message_id")
            .unwrap()
            .to_string();
        let body = json!({"id": hold, "provider_message_id": pid, "status": "delivered"})
            .to_string()
            .into_bytes();
        // Past the 300 s window by more than the seconds a loaded machine may take between
        // here and Herald's check (301 into the future flaked once requests took > 1 s).
        let now = now_secs();
        let cases: Vec<Case> = vec![
            ("unsigned", "sim-a", body.clone(), vec![], 401),
            (
                "wrong secret",
                "sim-a",
                body.clone(),
                signed(&body, "nope", now),
                401,
            ),
            (
                "too old",
                "sim-a",
                body.clone(),
                signed(&body, SECRET, now - 330),
                401,
            ),
            (
                "from the future",
                "sim-a",
                body.clone(),
                signed(&body, SECRET, now + 330),
                401,
            ),
            (
                "replayed old signature",
                "sim-a",
                body.clone(),
                signed(&body, SECRET, now - 3600),
                401,
            ),
            (
                "signature of another body",
                "sim-a",
                body.clone(),
                signed(b"{}", SECRET, now),
                401,
            ),
            (
                "unknown provider",
                "sim-zzz",
                body.clone(),
                signed(&body, SECRET, now),
                404,
            ),
        ];
        let big = vec![b' '; 64 * 1024 + 1];
        let malformed = b"{\"id\": ".to_vec();
        let unknown_status = json!({"id": hold, "provider_message_id": pid, "status": "lost"})
            .to_string()
            .into_bytes();
        let mut cases = cases;
        cases.push((
            "oversized",
            "sim-a",
            big.clone(),
            signed(&big, SECRET, now),
            413,
        ));
        cases.push((
            "malformed",
            "sim-a",
            malformed.clone(),
            signed(&malformed, SECRET, now),
            400,
        ));
        cases.push((
            "unknown status",
            "sim-a",
            unknown_status.clone(),
            signed(&unknown_status, SECRET, now),
            400,
        ));
        // Signed right, by another configured provider that made no send of the message.
        cases.push((
            "another provider's callback",
            "sim-b",
            body.clone(),
            signed(&body, SECRET, now),
            409,
        ));
        for (what, provider, body, headers, want) in &cases {
            let got = post_callback(&client, http, provider, body, headers).await;
            assert_eq!(got, *want, "{what}");
        }
        let after = mongo_messages(&names).await;
        assert_eq!(
            status(&after[&hold]),
            "sent",
            "refused callbacks changed nothing"
        );
        assert_eq!(history(&after[&hold]), history(&docs[&hold]));

        // The right callback: 204 once durable; a duplicate changes nothing.
        let ok = signed(&body, SECRET, now_secs());
        assert_eq!(post_callback(&client, http, "sim-a", &body, &ok).await, 204);
        let delivered = mongo_messages(&names).await[&hold].clone();
        assert_eq!(status(&delivered), "delivered");
        assert_eq!(post_callback(&client, http, "sim-a", &body, &ok).await, 204);
        let again = mongo_messages(&names).await[&hold].clone();
        assert_eq!(
            history(&again),
            history(&delivered),
            "duplicate changed nothing"
        );

        // A callback before its message exists is kept (204), not dropped.
        let early =
            json!({"id": "welcome:not-yet", "provider_message_id": "sim-x", "status": "delivered"})
                .to_string()
                .into_bytes();
        let h = signed(&early, SECRET, now_secs());
        assert_eq!(post_callback(&client, http, "sim-a", &early, &h).await, 204);

        // Fuzz: random bodies and headers never get a 5xx and never take Herald down.
        let mut rng = SmallRng::seed_from_u64(4);
        let statuses = [
            "delivered",
            "failed",
            "undelivered",
            "sent",
            "",
            "DELIVERED",
        ];
        let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
        let mut jobs = Vec::new();
        for i in 0..10_000u32 {
            let body: Vec<u8> = match rng.gen_range(0..5) {
                0 => (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect(),
                1 => json!({"id": format!("fuzz:{i}"), "status": statuses[rng.gen_range(0..statuses.len())],
                    "retryable": rng.gen::<bool>(), "error": null})
                .to_string()
                .into_bytes(),
                2 => json!({"id": rng.gen::<u32>(), "status": [1, 2]}).to_string().into_bytes(),
                3 => format!("{{\"id\":\"{}\"", "x".repeat(rng.gen_range(0..100))).into_bytes(),
                _ => json!({"id": hold, "status": "failed", "provider_message_id": pid}).to_string().into_bytes(),
            };
            let ts = match rng.gen_range(0..4) {
                0 => "not-a-number".to_string(),
                1 => (now_secs() + rng.gen_range(-1000..1000)).to_string(),
                _ => now_secs().to_string(),
            };
            let secret = if rng.gen_bool(0.5) { SECRET } else { "wrong" };
            let mut headers = vec![("X-Herald-Timestamp", ts.clone())];
            match rng.gen_range(0..4) {
                0 => {}
                1 => headers.push((
                    "X-Herald-Signature",
                    format!("v1={}", "ab".repeat(rng.gen_range(0..40))),
                )),
                _ => headers.push(("X-Herald-Signature", sign(secret.as_bytes(), &ts, &body))),
            }
            let provider = if rng.gen_bool(0.9) { "sim-a" } else { "nobody" };
            jobs.push((provider, body, headers));
        }
        for chunk in jobs.chunks(32) {
            let results = futures::future::join_all(
                chunk
                    .iter()
                    .map(|(p, b, h)| post_callback(&client, http, p, b, h)),
            )
            .await;
            for code in results {
                *codes.entry(code).or_default() += 1;
            }
        }
        assert!(
            codes.keys().all(|c| *c < 500),
            "no 5xx from random callbacks: {codes:?}"
        );
        assert!(codes.contains_key(&204) && codes.contains_key(&401) && codes.contains_key(&400));
        let last = mongo_messages(&names).await[&hold].clone();
        assert_eq!(
            status(&last),
            "delivered",
            "terminal stays terminal under fuzz"
        );
        let ready = reqwest::get(format!("http://127.0.0.1:{http}/readyz"))
            .await
            .unwrap();
        assert_eq!(
            ready.status().as_u16(),
            200,
            "still up and ready after the fuzz"
        );
    });
}

#[test]
fn a_thousand_retries_fire_once_across_a_sigkill_and_two_instances() {
    let names = Names::new("retries", 2);
    let (port_a, port_b) = (free_port(), free_port());
    let (http_1, http_2) = (free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    let config = write_config(
        &names,
        &format!(
            "[retry]\nbase_ms = 500\nmax_delay_ms = 20000\nmax_attempts = 3\nsweep_ms = 500\n{}",
            // 1,000 scripted 503s in a row would open sim-a's circuit (and fall back to
            // sim-b): here they are per-message answers, not an outage.
            providers_toml(port_a, port_b).replace(
                "priority = 1\n",
                "priority = 1\ncircuit_failures = 1000000\n"
            )
        ),
    );
    const N: usize = 1000;
    let phone = |i: usize| format!("+1777{i:06}");
    // The first send of each answers 503 with Retry-After: 20 (under the 20 s maximum
    // delay), so all 1,000 retries are scheduled (and none due) when the first instance is
    // killed, even when the first sends are spread over many seconds on a busy machine (with
    // a 2 s maximum delay, CI saw the earliest retries fire before the last were scheduled).
    block_on(async {
        for i in 0..N {
            sim_script(
                port_a,
                &phone(i),
                json!([{"status": 503, "retry_after": 20}, {"status": 200}]),
            )
            .await;
        }
    });
    let mut records = Vec::new();
    for i in 0..N {
        let user = format!("r-{i}");
        let events = user_events(&user, Some(&phone(i)));
        records.extend(events.into_iter().take(2));
    }
    produce_records(&names, &records);
    let spawn =
        |http: u16, instance: &str, tag: &str| spawn_instance(&names, &config, http, instance, tag);
    let mut first = spawn(http_1, "one", "one-a");
    let _second = spawn(http_2, "two", "two");
    // Every entry is attempt 2 (a first send holds an attempt-1 lease until its outcome is
    // recorded; then the 503 schedules attempt 2).
    block_on(wait_retries_scheduled(&names, N, Duration::from_secs(120)));
    let due: Vec<(String, i64)> = retry_entries(&names)
        .into_iter()
        .map(|(id, _, at)| (id, at))
        .collect();
    assert_eq!(due.len(), N);
    kill9(&mut first);
    let _first_again = spawn(http_1, "one", "one-b");
    block_on(async {
        eventually(
            "every retry delivered",
            Duration::from_secs(120),
            || async {
                let docs = mongo_messages(&names).await;
                docs.len() == N && docs.values().all(|d| status(d) == "delivered")
            },
        )
        .await;
        let sends = sim_sends(port_a).await;
        let mut by_key: BTreeMap<String, i64> = BTreeMap::new();
        for s in &sends {
            by_key.insert(
                s["idempotency_key"].as_str().unwrap().to_string(),
                s["received_at_ms"].as_i64().unwrap(),
            );
        }
        assert_eq!(
            sends.len(),
            2 * N,
            "one first send and one retry per message"
        );
        // A first send whose outcome was not recorded before the kill may be repeated with
        // its Idempotency-Key (G4); the retries themselves are never sent twice.
        let repeated: Vec<_> = sends
            .iter()
            .filter(|s| s["repeats"].as_u64() != Some(0))
            .map(|s| s["idempotency_key"].as_str().unwrap())
            .collect();
        assert!(
            repeated.iter().all(|k| k.ends_with(":1")),
            "a retry fired twice: {repeated:?}"
        );
        eprintln!("first sends repeated after the kill: {}", repeated.len());
        for (member, due_ms) in &due {
            let key = format!("{member}:2");
            let at = by_key
                .get(&key)
                .unwrap_or_else(|| panic!("{key} never fired"));
            assert!(*at + 5 >= *due_ms, "{key} fired {} ms early", *due_ms - at);
        }
        assert!(sim_sends(port_b).await.is_empty(), "no fallback was needed");
        // A delivery callback can be applied before the sender has taken its entry off the
        // schedule (it records the send, then removes the entry): the schedule empties just
        // after, and must.
        eventually(
            "the schedule empty once everything settled",
            Duration::from_secs(30),
            || async { retry_entries(&names).is_empty() },
        )
        .await;
    });
}

/// The outbox dispatches only what it created: a trigger applied a second time (its
/// `messageId` evicted from a one-id dedup window by the user's later events) finds its
/// message stored and sends nothing new. The provider is FIFO (one send at a time), so once
/// the user's next, distinct trigger was sent, a second send of the first would have been too.
#[test]
fn a_trigger_applied_again_after_its_dedup_id_was_evicted_sends_nothing_new() {
    let names = Names::new("outbox", 1);
    let (port_a, port_b, http) = (free_port(), free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    let config = write_config(
        &names,
        &format!(
            "[dedup]\nmax_ids_per_user = 1\n{}",
            providers_toml(port_a, port_b)
                .replace("priority = 1\n", "priority = 1\nmax_concurrency = 1\n")
        ),
    );
    let user = "u-again";
    let phone = "+15550001234";
    let track = |id: &str, event: &str| {
        (
            user.to_string(),
            json!({"messageId": id, "type": "track", "userId": user,
                "timestamp": "2026-11-23T10:00:01Z", "event": event})
            .to_string(),
        )
    };
    let mut records = user_events(user, Some(phone));
    records.truncate(2); // identify, then the `signed_up` track `su-u-again`
    records.push(track("v-1", "viewed")); // evicts `su-u-again` from the window
    records.push(track("su-u-again", "signed_up")); // applied again: not a known duplicate
    records.push(track("later", "signed_up")); // a distinct trigger, sent after it
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &[("HERALD__HTTP__LISTEN", &listen), ("IT_SIM_SECRET", SECRET)],
        "outbox",
    );
    block_on(async {
        eventually(
            "the later trigger's message is sent",
            Duration::from_secs(90),
            || async {
                sim_sends(port_a)
                    .await
                    .iter()
                    .any(|s| s["id"] == "welcome:later")
            },
        )
        .await;
        let sends = sim_sends(port_a).await;
        assert_eq!(
            keys_for(&sends, "welcome:su-u-again"),
            vec!["welcome:su-u-again:1".to_string()],
            "the re-applied trigger was sent again: {sends:?}"
        );
        // The sim lists a key once and counts its repeats (same key: the provider dedupes,
        // but a provider without idempotency keys would have sent it twice).
        assert_eq!(
            sim_stats(port_a).await["repeated_keys"],
            0,
            "the re-applied trigger was dispatched again"
        );
        let users = mongo_users(&names).await;
        assert_eq!(
            users[user].events["signed_up"].count, 3,
            "the re-applied trigger counted as an event (the window forgot it): the test \
             did not re-apply anything"
        );
    });
}

/// SIGTERM with sends in flight and queued (a provider that takes 100 ms a send, four at a
/// time): Herald finishes them before it exits 0, so nothing is left `queued` for the next
/// start to send again, and each message went out once.
#[test]
fn sigterm_drains_the_sends_in_flight() {
    let names = Names::new("sendterm", 2);
    let (port_a, port_b, http) = (free_port(), free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &["--latency-ms", "100"], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    let config = write_config(
        &names,
        &format!(
            "[shutdown]\ntimeout_ms = 60000\n{}",
            providers_toml(port_a, port_b)
                .replace("priority = 1\n", "priority = 1\nmax_concurrency = 4\n")
        ),
    );
    const N: usize = 200;
    let mut records = Vec::new();
    for i in 0..N {
        let events = user_events(&format!("t-{i}"), Some(&format!("+1666{i:06}")));
        records.extend(events.into_iter().take(2));
    }
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let mut herald = spawn_herald_with_config(
        &names,
        &config,
        &[("HERALD__HTTP__LISTEN", &listen), ("IT_SIM_SECRET", SECRET)],
        "sendterm",
    );
    block_on(async {
        eventually(
            "every message stored, some sent",
            Duration::from_secs(90),
            || async {
                let docs = mongo_messages(&names).await;
                docs.len() == N && docs.values().any(|d| status(d) != "queued")
            },
        )
        .await;
    });
    let (exit, _) = sigterm(&mut herald, Duration::from_secs(70));
    assert!(exit.success(), "herald exited {exit:?}");
    block_on(async {
        let docs = mongo_messages(&names).await;
        let queued: Vec<&String> = docs
            .iter()
            .filter(|(_, d)| status(d) == "queued")
            .map(|(k, _)| k)
            .collect();
        assert!(
            queued.is_empty(),
            "{} left queued at exit, e.g. {:?}",
            queued.len(),
            &queued[..queued.len().min(5)]
        );
        let sends = sim_sends(port_a).await;
        for id in docs.keys() {
            assert_eq!(
                keys_for(&sends, id),
                vec![format!("{id}:1")],
                "{id} was not sent exactly once"
            );
        }
        assert_eq!(
            sim_stats(port_a).await["repeated_keys"],
            0,
            "a send was repeated"
        );
    });
}

/// A provider that answers after Herald's timeout (the send happened; Herald never heard):
/// the attempt is sent again with the same `Idempotency-Key` — never as a new attempt under a
/// new key, which a provider could not recognise — and the first send's answer or callback
/// settles the message.
#[test]
fn a_send_answered_after_the_timeout_is_resent_as_the_same_attempt() {
    let names = Names::new("unknown", 1);
    let (port_a, port_b, http) = (free_port(), free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    let config = write_config(
        &names,
        &format!(
            "[retry]\nbase_ms = 200\nmax_delay_ms = 1000\n{}",
            providers_toml(port_a, port_b)
                .replace("priority = 1\n", "priority = 1\ntimeout_ms = 500\n")
        ),
    );
    let users: Vec<String> = (0..5).map(|i| format!("u-late-{i}")).collect();
    block_on(async {
        for i in 0..users.len() {
            sim_script(
                port_a,
                &format!("+1555300{i:04}"),
                json!([{"status": 200, "latency_ms": 1500}]),
            )
            .await;
        }
    });
    let mut records = Vec::new();
    for (i, user) in users.iter().enumerate() {
        records.extend(user_events(user, Some(&format!("+1555300{i:04}"))));
    }
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &[("HERALD__HTTP__LISTEN", &listen), ("IT_SIM_SECRET", SECRET)],
        "unknown",
    );
    block_on(async {
        eventually(
            "every late message is delivered",
            Duration::from_secs(90),
            || async {
                let messages = mongo_messages(&names).await;
                users.iter().all(|u| {
                    messages
                        .get(&format!("welcome:su-{u}"))
                        .is_some_and(|d| status(d) == "delivered")
                })
            },
        )
        .await;
        let sends = sim_sends(port_a).await;
        for user in &users {
            let id = format!("welcome:su-{user}");
            assert_eq!(
                keys_for(&sends, &id),
                vec![format!("{id}:1")],
                "a lost answer became a new attempt under a new key: {sends:?}"
            );
        }
        assert!(
            sim_sends(port_b).await.is_empty(),
            "a lost answer went to the fallback provider"
        );
        let messages = mongo_messages(&names).await;
        let doc = &messages[&format!("welcome:su-{}", users[0])];
        assert!(
            history(doc).contains(&"retrying".to_string()),
            "the timeout was not seen (the test proves nothing): {doc}"
        );
    });
}

/// Retries queued behind a rate-limited provider for longer than the retry lease (15 s):
/// the dispatcher holding them extends their leases, so no attempt is handed out — and sent —
/// twice (the simulator counts a repeated `Idempotency-Key`).
#[test]
fn retries_waiting_longer_than_their_lease_fire_once() {
    let names = Names::new("lease", 1);
    let (port_a, port_b, http) = (free_port(), free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    let config = write_config(
        &names,
        &format!(
            "[retry]\nbase_ms = 50\nmax_delay_ms = 100\n{}",
            providers_toml(port_a, port_b).replace(
                "priority = 1\n",
                "priority = 1\nrate_per_sec = 2\ncircuit_failures = 1000\n"
            )
        ),
    );
    let users: Vec<String> = (0..36).map(|i| format!("u-lease-{i}")).collect();
    block_on(async {
        for i in 0..users.len() {
            sim_script(
                port_a,
                &format!("+1555400{i:04}"),
                json!([{"status": 503}, {"status": 200}]),
            )
            .await;
        }
    });
    let mut records = Vec::new();
    for (i, user) in users.iter().enumerate() {
        records.extend(user_events(user, Some(&format!("+1555400{i:04}"))));
    }
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &[("HERALD__HTTP__LISTEN", &listen), ("IT_SIM_SECRET", SECRET)],
        "lease",
    );
    block_on(async {
        eventually(
            "every message is delivered",
            Duration::from_secs(150),
            || async {
                let messages = mongo_messages(&names).await;
                users.iter().all(|u| {
                    messages
                        .get(&format!("welcome:su-{u}"))
                        .is_some_and(|d| status(d) == "delivered")
                })
            },
        )
        .await;
        let sends = sim_sends(port_a).await;
        let first = sends
            .first()
            .and_then(|s| s["received_at_ms"].as_i64())
            .unwrap();
        let last = sends
            .last()
            .and_then(|s| s["received_at_ms"].as_i64())
            .unwrap();
        assert!(
            last - first > 20_000,
            "the sends took {} ms: the retries did not wait longer than a lease (the test \
             proves nothing)",
            last - first
        );
        assert_eq!(
            sim_stats(port_a).await["repeated_keys"],
            0,
            "an attempt was dispatched twice"
        );
        for user in &users {
            let id = format!("welcome:su-{user}");
            assert_eq!(
                keys_for(&sends, &id),
                vec![format!("{id}:1"), format!("{id}:2")]
            );
        }
    });
}

/// SIGKILL while a rejected message is being sent to the fallback provider: the next attempt
/// was scheduled before the hand-off, so after a restart it fires — at the fallback provider,
/// with the same key, not at the first provider again — instead of the message staying
/// `retrying` for ever.
#[test]
fn a_fallback_cut_off_by_sigkill_continues_at_the_next_provider() {
    let names = Names::new("fallkill", 1);
    let (port_a, port_b, http) = (free_port(), free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    let config = write_config(
        &names,
        &providers_toml(port_a, port_b)
            .replace("priority = 2\n", "priority = 2\ntimeout_ms = 10000\n"),
    );
    let user = "u-fallkill";
    let phone = "+15555000001";
    block_on(async {
        sim_script(port_a, phone, json!([{"status": 400}])).await;
        sim_script(port_b, phone, json!([{"status": 200, "latency_ms": 4000}])).await;
    });
    let mut records = user_events(user, Some(phone));
    records.truncate(2);
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let env = [
        ("HERALD__HTTP__LISTEN", listen.as_str()),
        ("IT_SIM_SECRET", SECRET),
    ];
    let mut first = spawn_herald_with_config(&names, &config, &env, "fallkill-1");
    let id = format!("welcome:su-{user}");
    block_on(async {
        eventually(
            "the fallback provider has the send",
            Duration::from_secs(60),
            || async { !sim_sends(port_b).await.is_empty() },
        )
        .await;
    });
    kill9(&mut first.0);
    let _second = spawn_herald_with_config(&names, &config, &env, "fallkill-2");
    block_on(async {
        // `sent` at the fallback provider: its answer to the repeated key is the first
        // send's (the simulator calls back only for a send it answered; the killed one's
        // callback went with its connection). Without the scheduled hand-off it stays
        // `retrying`.
        eventually(
            &format!("{id} is sent by sim-b"),
            Duration::from_secs(90),
            || async {
                mongo_messages(&names).await.get(&id).is_some_and(|d| {
                    matches!(status(d), "sent" | "delivered")
                        && d.get_str("provider") == Ok("sim-b")
                })
            },
        )
        .await;
        assert_eq!(
            keys_for(&sim_sends(port_a).await, &id),
            vec![format!("{id}:1")],
            "the first provider, which rejected it, got it again"
        );
        assert_eq!(
            keys_for(&sim_sends(port_b).await, &id),
            vec![format!("{id}:2")],
            "the fallback send under another key"
        );
    });
}

/// A stored message waiting on a send that nothing holds — its instance died between storing
/// it and leasing its send, or the retry schedule was lost — is adopted by the reconciler and
/// sent once, even with two instances reconciling: at their start (what was stranded before)
/// and periodically (what is stranded while they run). A `queued` message gets attempt 1, a
/// `retrying` one its next attempt, one whose last send had an unknown outcome that attempt
/// again (its key).
#[test]
fn messages_stranded_without_a_lease_are_adopted_and_sent_once() {
    use mongodb::bson::{doc, DateTime};
    let names = Names::new("stranded", 1);
    let (port_a, port_b) = (free_port(), free_port());
    let (http_1, http_2) = (free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    let config = write_config(
        &names,
        &format!(
            "[retry]\nreconcile_ms = 1000\n{}",
            providers_toml(port_a, port_b)
        ),
    );
    // (id suffix, status, attempts, last history detail) → the key it must be sent under.
    let stranded = |batch: &str, i: usize| {
        let kind = i % 3;
        let id = format!("welcome:{batch}-{i:03}");
        let long_ago = DateTime::from_millis(1_000);
        let mut history = vec![doc! {"status": "queued", "at": long_ago}];
        let (status, attempts, key) = match kind {
            0 => ("queued", 0, format!("{id}:1")),
            1 => {
                history.push(
                    doc! {"status": "retrying", "at": long_ago, "provider": "sim-a",
                    "detail": "sim-a: 503 Service Unavailable"},
                );
                ("retrying", 1, format!("{id}:2"))
            }
            _ => {
                history.push(doc! {"status": "retrying", "at": long_ago, "provider": "sim-a",
                    "detail": "sim-a: no answer within 500 ms; outcome unknown, sent again with the same key"});
                ("retrying", 1, format!("{id}:1"))
            }
        };
        let document = doc! {
            "_id": &id, "user_id": format!("{batch}-{i}"), "campaign": "welcome",
            "channel": "sms", "to": format!("+1555{i:07}"), "body": "Hi, welcome aboard!",
            "status": status, "attempts": attempts, "created_at": long_ago,
            "updated_at": long_ago, "history": history,
        };
        (id, document, key)
    };
    const N: usize = 150;
    let insert = |batch: &'static str| {
        let names = &names;
        block_on(async move {
            let client = mongodb::Client::with_uri_str(&names.mongo).await.unwrap();
            let coll = client
                .database(&names.base)
                .collection::<Document>("messages");
            let docs: Vec<Document> = (0..N).map(|i| stranded(batch, i).1).collect();
            coll.insert_many(docs).await.unwrap();
        })
    };
    insert("before");
    let spawn =
        |http: u16, instance: &str, tag: &str| spawn_instance(&names, &config, http, instance, tag);
    let _first = spawn(http_1, "one", "one");
    let _second = spawn(http_2, "two", "two");
    wait_port(http_1, Duration::from_secs(60));
    wait_port(http_2, Duration::from_secs(60));
    insert("while");
    let expected: BTreeMap<String, String> = ["before", "while"]
        .iter()
        .flat_map(|batch| (0..N).map(|i| stranded(batch, i)))
        .map(|(id, _, key)| (id, key))
        .collect();
    block_on(async {
        eventually(
            "every stranded message delivered",
            Duration::from_secs(120),
            || async {
                let docs = mongo_messages(&names).await;
                docs.len() == 2 * N && docs.values().all(|d| status(d) == "delivered")
            },
        )
        .await;
        let sends = sim_sends(port_a).await;
        for (id, key) in &expected {
            assert_eq!(keys_for(&sends, id), vec![key.clone()], "{id}");
        }
        assert_eq!(
            sim_stats(port_a).await["repeated_keys"],
            0,
            "a send repeated"
        );
        assert!(sim_sends(port_b).await.is_empty(), "no fallback was needed");
    });
    let adopted = sum(&scrape(http_1), "herald_messages_reconciled_total", &[])
        + sum(&scrape(http_2), "herald_messages_reconciled_total", &[]);
    // Each stranded message is adopted at least once. A pass that read a message just
    // before its adopted send settled may adopt it again; the sweep then finds that attempt
    // made and sends nothing (the keys above are each sent once).
    assert!(adopted as usize >= 2 * N, "only {adopted} adopted");
}

/// With `http.callback_journal`, a callback is answered once it is in the journal (Redis) and
/// applied to MongoDB behind: every callback answered 204 before a SIGKILL is applied by the
/// next start, and verification still comes first (a forged one is refused and changes
/// nothing).
#[test]
fn journaled_callbacks_answered_before_a_sigkill_are_all_applied() {
    use futures::StreamExt;
    use mongodb::bson::{doc, DateTime};
    let names = Names::new("journal", 1);
    let (port_a, port_b, http) = (free_port(), free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    let config = write_config(&names, &providers_toml(port_a, port_b));
    const N: usize = 3_000;
    let id = |i: usize| format!("welcome:journal-{i:04}");
    block_on(async {
        let client = mongodb::Client::with_uri_str(&names.mongo).await.unwrap();
        let coll = client
            .database(&names.base)
            .collection::<Document>("messages");
        let at = DateTime::now();
        let docs: Vec<Document> = (0..N)
            .map(|i| {
                doc! {
                    "_id": id(i), "user_id": format!("journal-{i}"), "campaign": "welcome",
                    "channel": "sms", "to": format!("+1555{i:07}"), "body": "Hi",
                    "provider": "sim-a", "status": "sent", "attempts": 1_i64,
                    "provider_message_id": format!("p-{i}"), "created_at": at, "updated_at": at,
                    "history": [
                        {"status": "queued", "at": at},
                        {"status": "sent", "at": at, "provider": "sim-a", "detail": format!("p-{i}")},
                    ],
                    "version": 1_i64,
                }
            })
            .collect();
        coll.insert_many(docs).await.unwrap();
    });
    let listen = format!("127.0.0.1:{http}");
    let env = [
        ("HERALD__HTTP__LISTEN", listen.as_str()),
        ("HERALD__HTTP__CALLBACK_JOURNAL", "true"),
        ("IT_SIM_SECRET", SECRET),
    ];
    let mut first = spawn_herald_with_config(&names, &config, &env, "journal-a");
    wait_port(http, Duration::from_secs(60));
    let body = |i: usize| {
        json!({"id": id(i), "provider_message_id": format!("p-{i}"), "status": "delivered"})
            .to_string()
            .into_bytes()
    };
    let delivered = |names: &Names| {
        let names = names.clone();
        async move {
            mongo_messages(&names)
                .await
                .values()
                .filter(|d| status(d) == "delivered")
                .count()
        }
    };
    block_on(async {
        let client = reqwest::Client::new();
        // Verified before it is journaled: forged, or for a provider without callbacks.
        let forged = body(0);
        let bad = signed(&forged, "not-the-secret", now_secs());
        assert_eq!(
            post_callback(&client, http, "sim-a", &forged, &bad).await,
            401
        );
        let good = signed(&forged, SECRET, now_secs());
        assert_eq!(
            post_callback(&client, http, "nobody", &forged, &good).await,
            404
        );
        let answers: Vec<u16> = futures::stream::iter(0..N)
            .map(|i| {
                let client = client.clone();
                async move {
                    let b = body(i);
                    let headers = signed(&b, SECRET, now_secs());
                    post_callback(&client, http, "sim-a", &b, &headers).await
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        assert!(answers.iter().all(|&a| a == 204), "answers: {answers:?}");
    });
    kill9(&mut first.0);
    let applied_at_kill = block_on(delivered(&names));
    eprintln!("{applied_at_kill} of {N} callbacks applied when the first instance was killed");
    let _again = spawn_herald_with_config(&names, &config, &env, "journal-b");
    block_on(async {
        eventually(
            "every journaled callback applied",
            Duration::from_secs(120),
            || async { delivered(&names).await == N },
        )
        .await;
    });
    // The backlog gauge comes back to 0 (it is measured every second).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending = sum(&scrape(http), "herald_callback_journal_pending", &[]);
        if pending == 0.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "herald_callback_journal_pending stays at {pending}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Providers whose callback overtakes their own answer, once and never again (as Twilio's
/// status callbacks are not retried): every callback arrives before Herald has recorded the
/// send it is about — first sends, retries after `undelivered`, fallbacks after a 400. None is
/// refused; each is kept and applied once its send is recorded, and every message ends as the
/// scripts say.
#[test]
fn callbacks_that_overtake_their_send_are_kept_and_applied() {
    let names = Names::new("cbfirst", 2);
    let (port_a, port_b, http) = (free_port(), free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &["--callback-first"], "cbfirst-a");
    let _sim_b = spawn_sim(port_b, SECRET, &["--callback-first"], "cbfirst-b");
    let config = write_config(&names, &providers_toml(port_a, port_b));
    // The oracle: what each user's message must end as, and at which provider.
    let kinds = ["plain", "retry", "fallback"];
    let users: Vec<(String, &str, String)> = (0..60)
        .map(|i| {
            (
                format!("u-cbf-{i}"),
                kinds[i % 3],
                format!("+1555600{i:04}"),
            )
        })
        .collect();
    block_on(async {
        for (_, kind, phone) in &users {
            match *kind {
                "retry" => {
                    sim_script(
                        port_a,
                        phone,
                        json!([{"status": 200, "callback": "undelivered"}, {"status": 200}]),
                    )
                    .await
                }
                "fallback" => sim_script(port_a, phone, json!([{"status": 400}])).await,
                _ => {}
            }
        }
    });
    let records: Vec<(String, String)> = users
        .iter()
        .flat_map(|(u, _, phone)| {
            let mut r = user_events(u, Some(phone));
            r.truncate(2);
            r
        })
        .collect();
    produce_records(&names, &records);
    let _herald = spawn_instance(&names, &config, http, "cbfirst", "cbfirst");
    block_on(async {
        eventually(
            "every message delivered",
            Duration::from_secs(120),
            || async {
                let docs = mongo_messages(&names).await;
                docs.len() == users.len() && docs.values().all(|d| status(d) == "delivered")
            },
        )
        .await;
        let docs = mongo_messages(&names).await;
        let (sends_a, sends_b) = (sim_sends(port_a).await, sim_sends(port_b).await);
        for (user, kind, _) in &users {
            let id = format!("welcome:su-{user}");
            let (provider, keys_a, keys_b) = match *kind {
                "plain" => ("sim-a", vec![format!("{id}:1")], vec![]),
                "retry" => ("sim-a", vec![format!("{id}:1"), format!("{id}:2")], vec![]),
                _ => ("sim-b", vec![format!("{id}:1")], vec![format!("{id}:2")]),
            };
            assert_eq!(docs[&id].get_str("provider"), Ok(provider), "{id}");
            assert_eq!(keys_for(&sends_a, &id), keys_a, "{id} at sim-a");
            assert_eq!(keys_for(&sends_b, &id), keys_b, "{id} at sim-b");
        }
        for port in [port_a, port_b] {
            let stats = sim_stats(port).await;
            assert_eq!(
                stats["callbacks_refused"], 0,
                "a callback was refused: {stats}"
            );
            assert_eq!(stats["repeated_keys"], 0, "{stats}");
        }
        // 20 plain + 40 of the retried (two sends each) at sim-a; 20 fallbacks at sim-b.
        assert_eq!(sim_stats(port_a).await["callbacks_sent"], 60);
        assert_eq!(sim_stats(port_b).await["callbacks_sent"], 20);
    });
}

/// 5 % of sends are never called back: their status is looked up at the provider (`GET
/// <url>/<id>`) once `reconcile.status_after_ms` has passed, and applied as their callbacks
/// would have been — delivered, failed, or undelivered (then sent again and delivered).
#[test]
fn messages_whose_provider_never_calls_back_are_looked_up() {
    let names = Names::new("lookup", 2);
    let (port_a, port_b, http) = (free_port(), free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "lookup-a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "lookup-b");
    let config = write_config(&names, &providers_toml(port_a, port_b));
    // The oracle: each user's message's end, and the keys sim-a receives for it.
    let users: Vec<(String, &str, String)> = (0..240)
        .map(|i| {
            let kind = match i % 40 {
                0 => "silent-delivered",
                20 if i % 80 == 20 => "silent-failed",
                20 => "silent-undelivered",
                _ => "plain",
            };
            (format!("u-lk-{i}"), kind, format!("+1555700{i:04}"))
        })
        .collect();
    block_on(async {
        for (_, kind, phone) in &users {
            let steps = match *kind {
                "silent-delivered" => json!([{"status": 200, "callback": "none"}]),
                "silent-failed" => {
                    json!([{"status": 200, "callback": "none", "lookup": "failed"}])
                }
                "silent-undelivered" => json!([
                    {"status": 200, "callback": "none", "lookup": "undelivered"},
                    {"status": 200}
                ]),
                _ => continue,
            };
            sim_script(port_a, phone, steps).await;
        }
    });
    let records: Vec<(String, String)> = users
        .iter()
        .flat_map(|(u, _, phone)| user_events(u, Some(phone)))
        .collect();
    produce_records(&names, &records);
    let listen = format!("127.0.0.1:{http}");
    let _herald = spawn_herald_with_config(
        &names,
        &config,
        &[
            ("HERALD__HTTP__LISTEN", listen.as_str()),
            ("IT_SIM_SECRET", SECRET),
            ("HERALD__RECONCILE__STATUS_AFTER_MS", "3000"),
            ("HERALD__RECONCILE__LOOKUP_EVERY_MS", "250"),
        ],
        "lookup",
    );
    let expected = |kind: &str| match kind {
        "silent-failed" => "failed",
        _ => "delivered",
    };
    block_on(async {
        eventually(
            "every message at its end",
            Duration::from_secs(120),
            || async {
                let docs = mongo_messages(&names).await;
                docs.len() == users.len()
                    && users.iter().all(|(u, kind, _)| {
                        docs.get(&format!("welcome:su-{u}"))
                            .is_some_and(|d| status(d) == expected(kind))
                    })
            },
        )
        .await;
        let docs = mongo_messages(&names).await;
        let sends = sim_sends(port_a).await;
        for (user, kind, _) in &users {
            let id = format!("welcome:su-{user}");
            let keys = match *kind {
                "silent-undelivered" => vec![format!("{id}:1"), format!("{id}:2")],
                _ => vec![format!("{id}:1")],
            };
            assert_eq!(keys_for(&sends, &id), keys, "{id} ({kind})");
            let looked_up = history(&docs[&id]);
            match *kind {
                "silent-failed" => assert_eq!(looked_up, ["queued", "sent", "failed"], "{id}"),
                "silent-undelivered" => assert_eq!(
                    looked_up,
                    ["queued", "sent", "retrying", "sent", "delivered"],
                    "{id}"
                ),
                _ => assert_eq!(looked_up, ["queued", "sent", "delivered"], "{id}"),
            }
        }
        let silent = users.iter().filter(|(_, k, _)| *k != "plain").count() as u64;
        let stats = sim_stats(port_a).await;
        assert!(
            stats["lookups"].as_u64().unwrap() >= silent,
            "every silent send looked up: {stats}"
        );
        assert_eq!(stats["repeated_keys"], 0, "{stats}");
        assert!(sim_sends(port_b).await.is_empty());
    });
    let scrape = scrape(http);
    let looked = |outcome: &str| {
        sum(
            &scrape,
            "herald_status_lookups_total",
            &[("provider", "sim-a"), ("outcome", outcome)],
        )
    };
    assert!(looked("delivered") >= 6.0, "{}", looked("delivered"));
    assert!(looked("failed") >= 3.0);
    assert!(looked("undelivered") >= 3.0);
    assert_eq!(looked("refused"), 0.0);
}

/// §12 on the real servers: a campaign with quiet hours holds its messages until the window's
/// end and sends each once then — with two instances, one of them SIGKILLed and restarted while
/// they wait — never before the end, late by at most the sweep interval (and a send); a user
/// whose `traits.timezone` puts the trigger outside the window is sent at once; a second
/// campaign's opted-out users are `skipped` with `opted_out: marketing`, the others (inside its
/// `drop` window) with `quiet_hours`. The expected outcome of each message is worked out here
/// from §12's rules, not read from Herald.
#[test]
fn held_messages_go_out_at_their_window_end_once_across_a_sigkill() {
    let names = Names::new("held", 2);
    let (port_a, port_b) = (free_port(), free_port());
    let (http_1, http_2) = (free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    // A window of UTC wall-clock minutes that holds now and ends 30–90 s from now.
    let now_ms = now_secs() * 1000;
    let end_ms = ((now_ms + 30_000) / 60_000 + 1) * 60_000;
    let hhmm = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .unwrap()
            .format("%H:%M")
            .to_string()
    };
    let (start, end) = (hhmm(end_ms - 10 * 60_000), hhmm(end_ms));
    let config = write_config(
        &names,
        &format!(
            "[retry]\nsweep_ms = 500\n{}\n[[campaigns]]\nid = \"promo\"\non_event = \"signed_up\"\nchannel = \"sms\"\ncategory = \"marketing\"\ntemplate = \"{{{{ traits.first_name | upcase }}}}: 20% off\"\nquiet_hours = {{ start = \"{start}\", end = \"{end}\", policy = \"drop\" }}\n",
            providers_toml(port_a, port_b).replace(
                "template = \"Hi {{traits.first_name}}, welcome aboard!\"\n",
                &format!("template = \"Hi {{{{traits.first_name}}}}, welcome aboard!\"\nquiet_hours = {{ start = \"{start}\", end = \"{end}\", policy = \"hold\" }}\n"),
            )
        ),
    );
    const N: usize = 20;
    let user = |i: usize| format!("h-{i}");
    // Users 0–4 opted out of marketing; user 5 lives 5 h 30 min ahead of UTC (outside the
    // 10-minute window); the rest are held.
    let mut records = Vec::new();
    for i in 0..N {
        let mut traits = json!({"phone": format!("+1666{i:06}"), "first_name": user(i)});
        if i < 5 {
            traits["preferences"] = json!({"categories": {"marketing": false}});
        }
        if i == 5 {
            traits["timezone"] = json!("Asia/Kolkata");
        }
        let identify = json!({"messageId": format!("id-{i}"), "type": "identify", "userId": user(i),
            "timestamp": "2026-11-23T10:00:00Z", "traits": traits});
        let track = json!({"messageId": format!("su-{i}"), "type": "track", "userId": user(i),
            "timestamp": "2026-11-23T10:00:01Z", "event": "signed_up"});
        records.push((user(i), identify.to_string()));
        records.push((user(i), track.to_string()));
    }
    produce_records(&names, &records);
    let spawn =
        |http: u16, instance: &str, tag: &str| spawn_instance(&names, &config, http, instance, tag);
    let mut first = spawn(http_1, "one", "one-a");
    let _second = spawn(http_2, "two", "two");
    block_on(async {
        eventually("every trigger stored", Duration::from_secs(60), || async {
            mongo_messages(&names).await.len() == 2 * N
        })
        .await;
        let docs = mongo_messages(&names).await;
        for i in 0..N {
            let promo = &docs[&format!("promo:su-{i}")];
            let want = match i {
                0..5 => "opted_out: marketing",
                // Asia/Kolkata is outside the window.
                5 => "",
                _ => "quiet_hours",
            };
            if i == 5 {
                assert_ne!(
                    status(promo),
                    "skipped",
                    "promo for the user outside the window"
                );
            } else {
                assert_eq!(status(promo), "skipped");
                assert_eq!(promo.get_str("error").unwrap(), want);
            }
            if i != 5 {
                let welcome = &docs[&format!("welcome:su-{i}")];
                assert_eq!(status(welcome), "held", "welcome for user {i}");
                let until = welcome
                    .get_datetime("held_until")
                    .unwrap()
                    .timestamp_millis();
                assert_eq!(until, end_ms, "held until the window's end");
            }
        }
        // The kill is for the held messages: the one sent at once is recorded first (killed
        // between its provider's answer and the record, it is sent again under the same
        // Idempotency-Key — a repeat this test would count, and not what it is about).
        eventually(
            "the welcome outside the window recorded",
            Duration::from_secs(60),
            || async {
                let docs = mongo_messages(&names).await;
                matches!(status(&docs["welcome:su-5"]), "sent" | "delivered")
            },
        )
        .await;
    });
    assert!(
        now_secs() * 1000 < end_ms,
        "the window ended before the kill: the machine was too slow for this test"
    );
    kill9(&mut first);
    let _first_again = spawn(http_1, "one", "one-b");
    block_on(async {
        eventually(
            "every welcome delivered",
            Duration::from_secs(180),
            || async {
                let docs = mongo_messages(&names).await;
                (0..N).all(|i| status(&docs[&format!("welcome:su-{i}")]) == "delivered")
            },
        )
        .await;
        let sends = sim_sends(port_a).await;
        for i in 0..N {
            let id = format!("welcome:su-{i}");
            let mine: Vec<_> = sends.iter().filter(|s| s["id"] == id.as_str()).collect();
            assert_eq!(mine.len(), 1, "{id} sent once: {mine:?}");
            assert_eq!(mine[0]["repeats"].as_u64(), Some(0), "{id} repeated");
            let at = mine[0]["received_at_ms"].as_i64().unwrap();
            if i == 5 {
                assert!(at < end_ms, "the user outside the window is not held");
            } else {
                assert!(
                    at >= end_ms,
                    "{id} sent {} ms before its window ended",
                    end_ms - at
                );
                assert!(
                    at <= end_ms + 500 + 2_500,
                    "{id} sent {} ms after its window ended",
                    at - end_ms
                );
            }
        }
        let promos = sends
            .iter()
            .filter(|s| s["id"].as_str().unwrap().starts_with("promo:"))
            .count();
        assert_eq!(promos, 1, "only the user outside the window gets the promo");
        assert!(sim_sends(port_b).await.is_empty(), "no fallback was needed");
    });
}

/// §12's frequency caps on the real servers: 3 messages per user per hour on sms, with two
/// instances, one SIGKILLed while the sends are going out and restarted. For each user, of
/// its 6 capped triggers exactly 3 reach the provider and 3 are `skipped` with
/// `frequency_capped` — never one more, however the kill fell between counting and sending —
/// and its 2 critical ones are sent regardless. The counts come from the cap's definition here,
/// not from Herald.
#[test]
fn frequency_caps_hold_exactly_across_a_sigkill() {
    let names = Names::new("caps", 2);
    let (port_a, port_b) = (free_port(), free_port());
    let (http_1, http_2) = (free_port(), free_port());
    let _sim_a = spawn_sim(port_a, SECRET, &[], "a");
    let _sim_b = spawn_sim(port_b, SECRET, &[], "b");
    const MAX: usize = 3;
    let config = write_config(
        &names,
        &format!(
            "[[frequency_caps]]\nchannel = \"sms\"\nmax = {MAX}\nper_ms = 3600000\n{}\n[[campaigns]]\nid = \"ping\"\non_event = \"pinged\"\nchannel = \"sms\"\ntemplate = \"ping {{{{ event.properties.n }}}}\"\n\n[[campaigns]]\nid = \"otp\"\non_event = \"otp_requested\"\nchannel = \"sms\"\ncritical = true\npriority = \"high\"\ntemplate = \"code {{{{ event.properties.code }}}}\"\n",
            // Slow enough that the kill falls among the sends.
            providers_toml(port_a, port_b).replace("priority = 1\n", "priority = 1\nrate_per_sec = 60\n")
        ),
    );
    const USERS: usize = 30;
    const PINGS: usize = 6;
    const OTPS: usize = 2;
    let user = |i: usize| format!("c-{i}");
    let mut records = Vec::new();
    for i in 0..USERS {
        let identify = json!({"messageId": format!("id-{i}"), "type": "identify", "userId": user(i),
            "timestamp": "2026-11-23T10:00:00Z", "traits": {"phone": format!("+1555{i:06}")}});
        records.push((user(i), identify.to_string()));
        for k in 0..PINGS {
            let ping = json!({"messageId": format!("p-{i}-{k}"), "type": "track", "userId": user(i),
                "timestamp": "2026-11-23T10:00:01Z", "event": "pinged", "properties": {"n": k}});
            records.push((user(i), ping.to_string()));
        }
        for k in 0..OTPS {
            let otp = json!({"messageId": format!("o-{i}-{k}"), "type": "track", "userId": user(i),
                "timestamp": "2026-11-23T10:00:02Z", "event": "otp_requested", "properties": {"code": 1000 + k}});
            records.push((user(i), otp.to_string()));
        }
    }
    produce_records(&names, &records);
    let spawn =
        |http: u16, instance: &str, tag: &str| spawn_instance(&names, &config, http, instance, tag);
    let mut first = spawn(http_1, "one", "one-a");
    let _second = spawn(http_2, "two", "two");
    block_on(eventually(
        "some sends under way",
        Duration::from_secs(60),
        || async { sim_sends(port_a).await.len() >= 40 },
    ));
    kill9(&mut first);
    let _first_again = spawn(http_1, "one", "one-b");
    let total = USERS * (PINGS + OTPS);
    block_on(async {
        eventually(
            "every message settled",
            Duration::from_secs(120),
            || async {
                let docs = mongo_messages(&names).await;
                docs.len() == total
                    && docs
                        .values()
                        .all(|d| matches!(status(d), "delivered" | "skipped"))
            },
        )
        .await;
        let docs = mongo_messages(&names).await;
        let sends = sim_sends(port_a).await;
        let sent: BTreeSet<String> = sends
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect();
        for i in 0..USERS {
            let pings: Vec<String> = (0..PINGS).map(|k| format!("ping:p-{i}-{k}")).collect();
            let went = pings.iter().filter(|id| sent.contains(*id)).count();
            assert_eq!(
                went, MAX,
                "user {i}: capped sends that reached the provider"
            );
            for id in &pings {
                let d = &docs[id];
                if sent.contains(id) {
                    assert_eq!(status(d), "delivered", "{id}");
                } else {
                    assert_eq!(status(d), "skipped", "{id}");
                    assert_eq!(d.get_str("error").unwrap(), "frequency_capped", "{id}");
                }
            }
            for k in 0..OTPS {
                let id = format!("otp:o-{i}-{k}");
                assert!(sent.contains(&id), "{id}: critical, never capped");
                assert_eq!(status(&docs[&id]), "delivered");
            }
        }
        assert!(sim_sends(port_b).await.is_empty(), "no fallback was needed");
    });
}
