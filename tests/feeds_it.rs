//! The downstream feeds on real servers, `herald` run as child processes:
//! - the users' changelog, with two instances sharing users, one of them SIGSTOPped past its
//!   session (a fenced owner that wakes up mid-flush) and the other SIGKILLed: read from the
//!   start with `read_committed`, each key's last record is the reference model's user at the
//!   version MongoDB holds, and no key's version ever goes back; the topic is compacted;
//! - the messages topic: every transition of every message, in order per message (the
//!   statuses of its `history`), with a provider that fails a fifth of its sends.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use herald::domain::user::{EventStats, UserProfile};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const SECRET: &str = "it-feeds-secret";

/// Every record of `topic` from the start, as a `read_committed` reader sees them: (partition,
/// key, value) in each partition's order. Reads until every partition's position reaches its
/// high watermark, so an open transaction of a killed instance holds the read back until the
/// broker aborts it, and what was committed after it is read too.
fn read_topic(topic: &str, partitions: i32, group: &str) -> Vec<(i32, String, Value)> {
    let client = |isolation: &str| -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", BROKERS)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", isolation)
            .create()
            .unwrap()
    };
    // The ends as written, open transactions included: a `read_committed` client's
    // watermark query answers the last stable offset, which stops before an open
    // transaction and so before everything committed after it.
    let uncommitted = client("read_uncommitted");
    let ends: Vec<i64> = (0..partitions)
        .map(|p| {
            uncommitted
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .collect();
    let consumer = client("read_committed");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let started = Instant::now();
    loop {
        let position = consumer.position().unwrap();
        let done = (0..partitions).all(|p| {
            ends[p as usize] == 0
                || matches!(
                    position.find_partition(topic, p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= ends[p as usize]
                )
        });
        if done {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{topic}: not read to its end {ends:?} within 90 s (at {position:?})"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.unwrap();
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).to_string();
            let value: Value = serde_json::from_slice(m.payload().unwrap_or_default()).unwrap();
            out.push((m.partition(), key, value));
        }
    }
    out
}

fn millis(v: &Value) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A changelog value as the reference model's profile.
fn profile_of(v: &Value) -> UserProfile {
    let map = |v: &Value| -> BTreeMap<String, Value> {
        v.as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    };
    UserProfile {
        traits: map(&v["traits"]),
        tags: v["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| Some(t.as_str()?.to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        event_count: v["event_count"].as_i64().unwrap_or(0),
        events: v["events"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, s)| {
                        let stats = EventStats {
                            count: s["count"].as_i64().unwrap(),
                            first_at: millis(&s["first_at"]).unwrap(),
                            last_at: millis(&s["last_at"]).unwrap(),
                        };
                        (k.clone(), stats)
                    })
                    .collect()
            })
            .unwrap_or_default(),
        first_seen: millis(&v["first_seen"]),
        last_seen: millis(&v["last_seen"]),
        groups: v["groups"]
            .as_object()
            .map(|o| o.iter().map(|(k, t)| (k.clone(), map(t))).collect())
            .unwrap_or_default(),
    }
}

fn topic_config(topic: &str, key: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", BROKERS)
        .create()
        .unwrap();
    let described = block_on(admin.describe_configs(
        [&ResourceSpecifier::Topic(topic)],
        &AdminOptions::new().request_timeout(Some(Duration::from_secs(10))),
    ))
    .unwrap();
    let resource = described.into_iter().next()?.ok()?;
    resource.get(key).and_then(|e| e.value.clone())
}

#[test]
fn the_changelog_ends_at_every_users_state_across_a_fenced_owner_and_a_sigkill() {
    let names = Names::new("changelog", 4);
    let changelog = format!("{}.changelog", names.base);
    let records = split_users(400, 24, names.partitions);
    let want = oracle::replay(records.iter().map(|(_, _, p)| p.as_bytes()));
    let parts: Vec<&[(i32, String, String)]> = records.chunks(records.len() / 6 + 1).collect();
    let (port_a, port_b) = (free_port(), free_port());
    let (listen_a, listen_b) = (format!("127.0.0.1:{port_a}"), format!("127.0.0.1:{port_b}"));
    let extra = |id: &'static str| {
        vec![
            ("HERALD__KAFKA__GROUP_INSTANCE_ID", id),
            (
                "HERALD__HTTP__LISTEN",
                if id == "fa" {
                    listen_a.as_str()
                } else {
                    listen_b.as_str()
                },
            ),
            ("HERALD__KAFKA__OPTIONS__session.timeout.ms", "6000"),
            ("HERALD__CHANGELOG__TOPIC", changelog.as_str()),
            ("HERALD__CHANGELOG__TRANSACTION_TIMEOUT_MS", "8000"),
            ("HERALD__BATCH__MAX_WAIT_MS", "20"),
        ]
    };
    let mut obs = Observer::new(&names, 0);
    produce_to_partitions(&names, parts[0]);
    obs.published(parts[0].len() as u64);
    let mut a = spawn_herald(&names, &extra("fa"), "a");
    let mut b = spawn_herald(&names, &extra("fb"), "b");
    let joined = |tag: &str| {
        let log = log_dir().join(format!("{}-{tag}.log", names.base));
        let started = Instant::now();
        while !std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("kafka partitions assigned")
        {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{tag} never joined"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    joined("a");
    joined("b");
    let mut published = parts[0].len();
    for (i, part) in parts.iter().enumerate().skip(1) {
        produce_to_partitions(&names, part);
        published += part.len();
        obs.published(part.len() as u64);
        match i {
            1 => {
                // A stops mid-traffic, its flushes staged or written, and stays stopped past
                // its session: B takes its partitions and moves its users on. Woken, A's
                // writes are fenced and its open transactions must never show.
                obs.wait_progress((published - part.len() / 2) as i64, Duration::from_secs(60));
                signal(a.0.id(), "-STOP");
                std::thread::sleep(Duration::from_secs(12));
                signal(a.0.id(), "-CONT");
            }
            3 => {
                obs.wait_progress((published - part.len() / 2) as i64, Duration::from_secs(60));
                kill9(&mut b.0);
                b = spawn_herald(&names, &extra("fb"), "b2");
            }
            _ => obs.wait_progress((published - part.len()) as i64, Duration::from_secs(60)),
        }
    }
    obs.wait_done(Duration::from_secs(300));
    // The two shared users, so some flushes had a user another owner moved on: their
    // transactions were aborted (A's after its stop among them).
    let aborted: f64 = [port_a, port_b]
        .iter()
        .map(|p| sum(&scrape(*p), "herald_changelog_aborted_total", &[]))
        .sum();
    eprintln!("changelog transactions aborted on A and B: {aborted}");
    assert!(aborted > 0.0, "no flush of a contended user");
    for child in [&mut a, &mut b] {
        let (status, _) = sigterm(&mut child.0, Duration::from_secs(40));
        assert!(status.success());
    }
    assert_users_equal(&block_on(mongo_users(&names)), &want);

    let read = read_topic(&changelog, names.partitions, &format!("{}_cl", names.base));
    let mut last: BTreeMap<String, (i32, Value)> = BTreeMap::new();
    let mut back = Vec::new();
    for (partition, key, value) in read {
        let version = value["version"].as_u64().expect("a version");
        assert_eq!(value["_id"], json!(key));
        assert!(value.get("_herald").is_none());
        if let Some((p, before)) = last.get(&key) {
            assert_eq!(*p, partition, "{key}: records in two partitions");
            let was = before["version"].as_u64().unwrap();
            if version < was {
                back.push(format!("{key}: version {version} after {was}"));
            }
        }
        last.insert(key, (partition, value));
    }
    assert!(
        back.is_empty(),
        "versions went back: {:?}",
        &back[..back.len().min(5)]
    );
    let finals: BTreeMap<String, UserProfile> = last
        .iter()
        .map(|(k, (_, v))| (k.clone(), profile_of(v)))
        .collect();
    assert_users_equal(&finals, &want);
    let stored = block_on(stored_states(&names));
    for (key, (_, v)) in &last {
        assert_eq!(
            v["version"].as_i64(),
            Some(stored[key].version),
            "{key}: the last record is not MongoDB's version"
        );
    }
    assert_eq!(
        topic_config(&changelog, "cleanup.policy").as_deref(),
        Some("compact")
    );

    // The documented slow reader (examples/changelog_reader.py, Confluent's Python client)
    // ends with a table equal to the users.
    let db = log_dir().join(format!("{}.sqlite", names.base));
    let python = tools().join("venv/bin/python");
    let reader = std::process::Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/changelog_reader.py"
        ))
        .args([
            "--brokers",
            BROKERS,
            "--topic",
            &changelog,
            "--rate",
            "1000",
        ])
        .args([
            "--group",
            &format!("{}_reader", names.base),
            "--until-caught-up",
        ])
        .arg("--db")
        .arg(&db)
        .output()
        .expect("run the example reader");
    assert!(
        reader.status.success(),
        "{}",
        String::from_utf8_lossy(&reader.stderr)
    );
    let dump = std::process::Command::new(&python)
        .args([
            "-c",
            "import sqlite3,sys; [print(r[0]) for r in sqlite3.connect(sys.argv[1]).execute('SELECT doc FROM users')]",
        ])
        .arg(&db)
        .output()
        .unwrap();
    let table: BTreeMap<String, UserProfile> = String::from_utf8_lossy(&dump.stdout)
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["_id"].as_str().unwrap().to_string(), profile_of(&v))
        })
        .collect();
    assert_users_equal(&table, &want);
}

/// A `herald provider-sim` for the welcome campaign (`args`: its failure rates) and a config
/// file with that campaign, the simulator as its provider, and `extra` TOML after them.
fn welcome_rig(names: &Names, args: &[&str], extra: &str) -> (Private, std::path::PathBuf) {
    let sim_port = free_port();
    let mut sim_args = vec!["--latency-ms", "2"];
    sim_args.extend_from_slice(args);
    let sim = spawn_sim(sim_port, SECRET, &sim_args, &names.base);
    let config = log_dir().join(format!("{}.toml", names.base));
    std::fs::write(
        &config,
        format!(
            r#"
[[campaigns]]
id = "welcome"
on_event = "signed_up"
channel = "sms"
template = "Hi {{{{traits.first_name}}}}!"

[[providers]]
name = "sim"
channel = "sms"
url = "http://127.0.0.1:{sim_port}/v1/messages"
webhook_secret_env = "IT_SIM_SECRET"
circuit_failures = 1000000
{extra}
"#
        ),
    )
    .unwrap();
    (sim, config)
}

/// `users` users named `<prefix>-<u>`, each an identify with a phone then a `signed_up`
/// track (one welcome message), a user's records on partition `u % partitions`.
fn signed_up_users(prefix: &str, users: i32, partitions: i32) -> Vec<(i32, String, String)> {
    let mut records = Vec::new();
    for u in 0..users {
        let user = format!("{prefix}-{u}");
        let identify = json!({"messageId": format!("{user}-0"), "type": "identify",
            "userId": user, "timestamp": "2026-11-23T10:00:00Z",
            "traits": {"phone": format!("+1555{u:06}"), "first_name": user}});
        let track = json!({"messageId": format!("{user}-1"), "type": "track",
            "userId": user, "timestamp": "2026-11-23T10:00:01Z", "event": "signed_up"});
        for r in [identify, track] {
            records.push((u % partitions, user.clone(), r.to_string()));
        }
    }
    records
}

/// The messages topic with Herald SIGKILLed while sends and callbacks flow: once the
/// restarted instance's sweep has published what the killed one had not, each message's
/// records, repeats dropped by `seq`, are its `history`, in order.
#[test]
fn the_messages_topic_has_every_transition_of_every_message_in_order_across_a_sigkill() {
    let names = Names::new("msgfeed", 2);
    let topic = format!("{}.messages", names.base);
    let (_sim, config) = welcome_rig(
        &names,
        &["--fail-rate", "0.2", "--undelivered-rate", "0.1"],
        "[retry]\nbase_ms = 200\nmax_delay_ms = 1000\nmax_attempts = 12\nsweep_ms = 200\n",
    );
    let records = signed_up_users("m", 300, names.partitions);
    produce_to_partitions(&names, &records);
    // The provider calls back to the listener it is given.
    let listen = format!("127.0.0.1:{}", free_port());
    let extra = [
        ("HERALD__HTTP__LISTEN", listen.as_str()),
        ("HERALD__CHANGELOG__MESSAGES_TOPIC", topic.as_str()),
        ("HERALD__KAFKA__GROUP_INSTANCE_ID", "msgfeed"),
        ("IT_SIM_SECRET", SECRET),
    ];
    let mut herald = spawn_herald_with_config(&names, &config, &extra, "a");
    // Killed with sends, retries and callbacks in flight.
    block_on(eventually(
        "50 messages delivered",
        Duration::from_secs(60),
        || async {
            let docs = mongo_messages(&names).await;
            docs.values()
                .filter(|d| d.get_str("status") == Ok("delivered"))
                .count()
                >= 50
        },
    ));
    kill9(&mut herald.0);
    let mut herald = spawn_herald_with_config(&names, &config, &extra, "b");
    // Every message settles: delivered, or failed for good (undelivered).
    block_on(eventually(
        "300 messages settled",
        Duration::from_secs(120),
        || async {
            let docs = mongo_messages(&names).await;
            docs.len() == 300
                && docs
                    .values()
                    .all(|d| matches!(d.get_str("status"), Ok("delivered" | "failed")))
        },
    ));
    let docs = block_on(mongo_messages(&names));
    let want: BTreeMap<String, Vec<String>> = docs
        .iter()
        .map(|(id, d)| {
            let statuses = d
                .get_array("history")
                .unwrap()
                .iter()
                .map(|h| {
                    h.as_document()
                        .unwrap()
                        .get_str("status")
                        .unwrap()
                        .to_string()
                })
                .collect();
            (id.clone(), statuses)
        })
        .collect();
    // The topic catches up: the killed instance's last changes come from the sweep, once
    // they have been idle for its grace period (30 s).
    let started = Instant::now();
    let (got, out_of_order) = loop {
        let mut got: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut out_of_order = Vec::new();
        for (_, key, value) in read_topic(&topic, names.partitions, &format!("{}_m", names.base)) {
            assert_eq!(value["_id"], json!(key));
            assert_eq!(value["campaign"], json!("welcome"));
            let seq = value["seq"].as_u64().unwrap() as usize;
            let seen = got.entry(key.clone()).or_default();
            if seq < seen.len() {
                // A repeat (published again after the kill): the same change.
                assert_eq!(seen[seq], value["status"].as_str().unwrap(), "{key} #{seq}");
            } else if seq == seen.len() {
                seen.push(value["status"].as_str().unwrap().to_string());
            } else {
                out_of_order.push(format!("{key}: #{seq} after #{}", seen.len()));
            }
        }
        let done = got == want;
        if done || started.elapsed() > Duration::from_secs(90) {
            break (got, out_of_order);
        }
        std::thread::sleep(Duration::from_millis(1000));
    };
    assert!(
        out_of_order.is_empty(),
        "{:?}",
        &out_of_order[..out_of_order.len().min(5)]
    );
    let differ: Vec<_> = want
        .iter()
        .filter(|(id, w)| got.get(*id) != Some(w))
        .take(3)
        .map(|(id, w)| format!("{id}: history {w:?}, topic {:?}", got.get(id)))
        .collect();
    assert!(differ.is_empty(), "{differ:?}");
    assert_eq!(got.len(), want.len());
    let (status, _) = sigterm(&mut herald.0, Duration::from_secs(40));
    assert!(status.success());
}

/// The read API on real servers: users (a merged id answers with its `merged_into`),
/// messages, a user's messages paged newest first, 401 without a valid key; then schemathesis
/// (PyPI) generates requests from the API's own OpenAPI document and checks every answer
/// against it (no 5xx, documented codes, bodies and headers, auth enforced).
#[test]
fn the_read_api_answers_as_its_openapi_document_says() {
    let names = Names::new("readapi", 2);
    let (_sim, config) = welcome_rig(&names, &["--fail-rate", "0", "--undelivered-rate", "0"], "");
    let mut records = Vec::new();
    let mut push = |user: &str, v: Value| records.push((0, user.to_string(), v.to_string()));
    for u in 0..20 {
        let user = format!("r-{u}");
        push(
            &user,
            json!({"messageId": format!("{user}-0"), "type": "identify",
            "userId": user, "timestamp": "2026-11-23T10:00:00Z",
            "traits": {"phone": format!("+1444{u:06}"), "first_name": user}}),
        );
        for k in 1..=3 {
            push(
                &user,
                json!({"messageId": format!("{user}-{k}"), "type": "track",
                "userId": user, "timestamp": format!("2026-11-23T10:00:0{k}Z"),
                "event": "signed_up"}),
            );
        }
    }
    push(
        "r-anon",
        json!({"messageId": "anon-0", "type": "identify", "userId": "r-anon",
        "timestamp": "2026-11-23T09:00:00Z", "traits": {"seen_as": "anon"}}),
    );
    push(
        "r-0",
        json!({"messageId": "anon-1", "type": "alias", "previousId": "r-anon",
        "userId": "r-0", "timestamp": "2026-11-23T10:01:00Z"}),
    );
    let want = oracle::replay(records.iter().map(|(_, _, p)| p.as_bytes()));
    produce_to_partitions(&names, &records);
    let api_port = free_port();
    let api = format!("127.0.0.1:{api_port}");
    let listen = format!("127.0.0.1:{}", free_port());
    let mut herald = spawn_herald_with_config(
        &names,
        &config,
        &[
            ("HERALD__HTTP__LISTEN", listen.as_str()),
            ("HERALD__HTTP__API_LISTEN", api.as_str()),
            ("HERALD_API_KEYS", "key-a, key-b"),
            ("IT_SIM_SECRET", SECRET),
        ],
        "a",
    );
    block_on(eventually(
        "60 messages delivered",
        Duration::from_secs(90),
        || async {
            let docs = mongo_messages(&names).await;
            docs.len() == 60
                && docs
                    .values()
                    .all(|d| d.get_str("status") == Ok("delivered"))
        },
    ));
    block_on(eventually(
        "r-anon merged",
        Duration::from_secs(60),
        || async { mongo_merged(&names).await.contains_key("r-anon") },
    ));
    let base = format!("http://{api}");
    let http = reqwest::Client::new();
    let get = |path: String, key: Option<&'static str>| {
        let mut request = http.get(format!("{base}{path}"));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        async move {
            let answer = request.send().await.unwrap();
            let code = answer.status().as_u16();
            (code, answer.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    block_on(async {
        let (code, user) = get("/v1/users/r-7".into(), Some("key-b")).await;
        assert_eq!(code, 200, "{user}");
        assert_eq!(profile_of(&user), want["r-7"]);
        assert!(user.get("_herald").is_none() && user.get("version").is_none());
        let (code, merged) = get("/v1/users/r-anon".into(), Some("key-a")).await;
        assert_eq!(
            (code, merged),
            (200, json!({"_id": "r-anon", "merged_into": "r-0"}))
        );
        assert_eq!(get("/v1/users/nobody".into(), Some("key-a")).await.0, 404);
        assert_eq!(get("/v1/users/r-7".into(), None).await.0, 401);
        assert_eq!(get("/v1/users/r-7".into(), Some("key-c")).await.0, 401);
        assert_eq!(
            get("/v1/users/r-7/messages?limit=0".into(), Some("key-a"))
                .await
                .0,
            400
        );

        // Paged one by one, newest first, each message once; the same as one page of 100.
        let stored = mongo_messages(&names).await;
        let mut want_ids: Vec<(i64, String)> = stored
            .iter()
            .filter(|(_, d)| d.get_str("user_id") == Ok("r-7"))
            .map(|(id, d)| {
                (
                    d.get_datetime("created_at").unwrap().timestamp_millis(),
                    id.clone(),
                )
            })
            .collect();
        want_ids.sort_by(|a, b| b.cmp(a));
        let want_ids: Vec<String> = want_ids.into_iter().map(|(_, id)| id).collect();
        assert_eq!(want_ids.len(), 3);
        let mut paged = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(c) => format!("?limit=1&cursor={c}"),
                None => "?limit=1".into(),
            };
            let (code, page) = get(format!("/v1/users/r-7/messages{query}"), Some("key-a")).await;
            assert_eq!(code, 200, "{page}");
            for m in page["messages"].as_array().unwrap() {
                paged.push(m["_id"].as_str().unwrap().to_string());
            }
            match page["next_cursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
            assert!(paged.len() <= 3, "paging does not end: {paged:?}");
        }
        assert_eq!(paged, want_ids);
        let (_, whole) = get("/v1/users/r-7/messages?limit=100".into(), Some("key-a")).await;
        let whole: Vec<&str> = whole["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["_id"].as_str().unwrap())
            .collect();
        assert_eq!(whole, want_ids);
        let (code, m) = get(format!("/v1/messages/{}", want_ids[0]), Some("key-a")).await;
        assert_eq!(code, 200);
        assert_eq!(m["status"], json!("delivered"));
        assert_eq!(m["user_id"], json!("r-7"));
        assert_eq!(m["body"], json!("Hi r-7!"));
    });

    let settings = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/schemathesis.toml");
    let out = std::process::Command::new(tools().join("venv/bin/schemathesis"))
        .args(["--config-file", settings])
        .args(["run", &format!("{base}/v1/openapi.json")])
        .args(["--header", "Authorization: Bearer key-a"])
        .args(["--checks", "all", "--max-examples", "40", "--workers", "1"])
        .args(["--seed", "7", "--no-color", "--generation-deterministic"])
        .output()
        .expect("run schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, _) = sigterm(&mut herald.0, Duration::from_secs(40));
    assert!(status.success());
}

/// The calls a receiver got: headers (names lower-cased) and body.
type Calls = std::sync::Arc<std::sync::Mutex<Vec<(BTreeMap<String, String>, Vec<u8>)>>>;

/// A webhook receiver on `port`: records each call and answers 500 to the first
/// `fail_first`, 204 after.
fn feedback_receiver(port: u16, fail_first: usize) -> Calls {
    use std::io::{BufRead, BufReader, Read, Write};
    let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = calls.clone();
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut headers = BTreeMap::new();
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                continue;
            }
            loop {
                line.clear();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.trim_end().split_once(':') {
                    headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
                }
            }
            let n: usize = headers
                .get("content-length")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; n];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let count = {
                let mut calls = seen.lock().unwrap();
                calls.push((headers, body));
                calls.len()
            };
            let status = if count <= fail_first {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    });
    calls
}

/// Feedback webhooks: the hook is down while 120 messages are sent and delivered (the
/// pipeline does not wait for it), then comes up failing its first 25 calls: every delivered
/// message's event arrives, signed (checked with an HMAC computed here), its `event_id` the
/// same on every repeat.
#[test]
fn feedback_webhooks_arrive_signed_at_least_once_and_never_hold_up_the_pipeline() {
    use hmac::{Hmac, Mac};
    let names = Names::new("feedback", 2);
    let hook_port = free_port();
    let (_sim, config) = welcome_rig(
        &names,
        &["--fail-rate", "0", "--undelivered-rate", "0"],
        &format!(
            r#"
[retry]
base_ms = 200
max_delay_ms = 1000

[[feedback]]
url = "http://127.0.0.1:{hook_port}/herald-feedback"
secret_env = "IT_FEEDBACK_SECRET"
statuses = ["delivered", "failed"]
timeout_ms = 1000
"#
        ),
    );
    let records = signed_up_users("f", 120, names.partitions);
    produce_to_partitions(&names, &records);
    let listen = format!("127.0.0.1:{}", free_port());
    let mut herald = spawn_herald_with_config(
        &names,
        &config,
        &[
            ("HERALD__HTTP__LISTEN", listen.as_str()),
            ("IT_SIM_SECRET", SECRET),
            ("IT_FEEDBACK_SECRET", "hook-secret"),
        ],
        "a",
    );
    // The hook is down: ingestion and dispatch go on regardless.
    block_on(eventually(
        "120 messages delivered",
        Duration::from_secs(90),
        || async {
            let docs = mongo_messages(&names).await;
            docs.len() == 120
                && docs
                    .values()
                    .all(|d| d.get_str("status") == Ok("delivered"))
        },
    ));
    wait_fully_committed(&names, Duration::from_secs(60));
    let calls = feedback_receiver(hook_port, 25);
    let started = Instant::now();
    let events = loop {
        let events: BTreeMap<String, Value> = calls
            .lock()
            .unwrap()
            .iter()
            .skip(25)
            .map(|(_, body)| {
                let v: Value = serde_json::from_slice(body).unwrap();
                (v["event_id"].as_str().unwrap().to_string(), v)
            })
            .collect();
        if events.len() >= 120 {
            break events;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{} of 120 events delivered within 90 s",
            events.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let stored = block_on(mongo_messages(&names));
    let mut by_message: BTreeMap<String, String> = BTreeMap::new();
    for (event_id, v) in &events {
        let m = &v["message"];
        let id = m["_id"].as_str().unwrap();
        assert_eq!(m["status"], json!("delivered"), "{v}");
        assert_eq!(m["user_id"], json!(stored[id].get_str("user_id").unwrap()));
        assert!(by_message
            .insert(id.to_string(), event_id.clone())
            .is_none());
    }
    assert_eq!(by_message.len(), 120);
    let calls = calls.lock().unwrap();
    let mut repeated: BTreeMap<String, usize> = BTreeMap::new();
    for (headers, body) in calls.iter() {
        let ts = &headers["x-herald-timestamp"];
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        mac.update(ts.as_bytes());
        mac.update(b".");
        mac.update(body);
        let want = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
        assert_eq!(headers["x-herald-signature"], want);
        let v: Value = serde_json::from_slice(body).unwrap();
        let event = v["event_id"].as_str().unwrap();
        assert!(
            events.contains_key(event),
            "an event never delivered: {event}"
        );
        *repeated.entry(event.to_string()).or_default() += 1;
    }
    // The 25 refused calls were made again with the same event ids.
    assert!(calls.len() >= 145, "{} calls", calls.len());
    assert!(repeated.values().any(|n| *n > 1));
    let (status, _) = sigterm(&mut herald.0, Duration::from_secs(40));
    assert!(status.success());
}
