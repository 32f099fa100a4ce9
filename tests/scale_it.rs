//! Scale-out against real servers, `herald` run as child processes, results compared with the
//! reference model (tests/common/oracle.rs):
//! - G10: Redis loses all of Herald's keys (flushed, and restarted without persistence) at
//!   moments during traffic, between SIGKILLs, on Kafka and on RabbitMQ: `users` equals the
//!   replay, no message is sent twice, every retry fires.
//! - G11: two instances consume at once while each user's messages arrive on partitions both
//!   of them own, a third joins and leaves during traffic: `users` equals the replay, and no
//!   partition restarts (a contended user is reloaded, not its partitions).
//! - Poison: a record whose application panics is dead-lettered after its second panic and the
//!   partition goes on.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

const SECRET: &str = "it-webhook-secret";

fn write_config(names: &Names, text: &str) -> std::path::PathBuf {
    let path = log_dir().join(format!("{}.toml", names.base));
    std::fs::write(&path, text).unwrap();
    path
}

/// Publishes `(key, payload)` records in order, on the test's source.
fn publish(names: &Names, records: &[(String, String)]) {
    match names.bus {
        Bus::Kafka => produce_records(names, records),
        Bus::Rabbit => rabbit::Amqp::connect(names).publish(records.iter().map(|(k, p)| (k, p))),
    }
}

/// `users` users over `rounds` rounds: an identify with a phone first, a `signed_up` track (a
/// welcome SMS) for every third user — in round `3 + u % 30`, so triggers come all along the
/// stream — other tracks and identifies after, and every 50th record published again later (a
/// duplicate the dedup window, kept in MongoDB, must catch).
fn messaging_workload(users: usize, rounds: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for round in 0..rounds {
        for u in 0..users {
            let user = format!("w-{u}");
            let ts = format!("2026-11-23T10:{:02}:{:02}Z", round % 60, u % 60);
            let id = format!("{user}-{round}");
            let payload = match round {
                0 => json!({"messageId": id, "type": "identify", "userId": user, "timestamp": ts,
                    "traits": {"phone": format!("+1666{u:06}"), "first_name": user}}),
                r if u % 3 == 0 && r == signed_up_round(u) => json!({"messageId": id,
                    "type": "track", "userId": user, "timestamp": ts, "event": "signed_up"}),
                r if r % 4 == 1 => json!({"messageId": id, "type": "identify", "userId": user,
                    "timestamp": ts, "traits": {"round": r}, "tags": {"add": [format!("t{}", r % 5)]}}),
                r => {
                    let event = ["viewed", "clicked", "bought"][r % 3];
                    json!({"messageId": id, "type": "track", "userId": user, "timestamp": ts,
                        "event": event})
                }
            };
            out.push((user, payload.to_string()));
            if out.len() % 50 == 0 {
                let again = out[out.len() - 37].clone();
                out.push(again);
            }
        }
    }
    out
}

fn signed_up_round(u: usize) -> usize {
    3 + u % 30
}

/// G10 on both sources: Herald with a campaign and a provider answering 503 a third of the
/// time (retries), its Redis flushed twice and restarted empty once while records flow, Herald
/// SIGKILLed twice in between.
fn redis_loses_its_data_during_traffic(bus: Bus) {
    let mut names = Names::on(bus, "redisloss", 4);
    let redis_port = free_port();
    let mut redis = private_redis(redis_port);
    names.redis = format!("redis://127.0.0.1:{redis_port}/0");
    let sim_port = free_port();
    let _sim = spawn_sim(
        sim_port,
        SECRET,
        &[
            "--fail-rate",
            "0.3",
            "--undelivered-rate",
            "0",
            "--latency-ms",
            "20",
        ],
        &names.base,
    );
    let config = write_config(
        &names,
        &format!(
            r#"
[retry]
base_ms = 300
max_delay_ms = 1000
max_attempts = 12
sweep_ms = 300
reconcile_ms = 3000

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
"#
        ),
    );
    let records = messaging_workload(600, 40);
    let want = oracle::replay(records.iter().map(|(_, p)| p.as_bytes()));
    let welcomes: BTreeSet<String> = (0..600)
        .filter(|u| u % 3 == 0)
        .map(|u| format!("welcome:w-{u}-{}", signed_up_round(u)))
        .collect();
    let parts: Vec<&[(String, String)]> = records.chunks(records.len() / 8 + 1).collect();
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let extra = [
        ("HERALD__HTTP__LISTEN", listen.as_str()),
        ("HERALD__KAFKA__GROUP_INSTANCE_ID", "loss-1"),
        ("IT_SIM_SECRET", SECRET),
    ];
    let spawn = |tag: &str| spawn_herald_with_config(&names, &config, &extra, tag);
    let flush = |port: u16| {
        let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    };
    // Losses the instances logged so far (each instance writes its own log).
    let noticed = || {
        (0..=6)
            .map(|i| {
                let tag = if i == 0 {
                    "0".to_string()
                } else {
                    i.to_string()
                };
                std::fs::read_to_string(log_dir().join(format!("{}-{tag}.log", names.base)))
                    .unwrap_or_default()
                    .matches("the retry schedule lost entries")
                    .count()
            })
            .sum::<usize>()
    };
    // Each loss is noticed before the next fault: two losses before one sweep (a flush
    // while the client still reconnects after the restart) would be one to the schedule.
    let wait_noticed = |before: usize, step: usize| {
        let started = std::time::Instant::now();
        while noticed() <= before {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the schedule's loss at step {step} was not noticed within 60 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut obs = Observer::new(&names, 0);
    let mut child = spawn("0");
    let mut published = 0usize;
    for (i, part) in parts.iter().enumerate() {
        publish(&names, part);
        published += part.len();
        obs.published(part.len() as u64);
        // Let some of it through, then break something while the rest is in flight.
        obs.wait_progress((published - part.len() / 2) as i64, Duration::from_secs(60));
        let before = noticed();
        match i {
            1 | 5 => {
                flush(redis_port);
                wait_noticed(before, i);
            }
            2 | 6 => {
                kill9(&mut child.0);
                child = spawn(&format!("{i}"));
            }
            3 => {
                // Restarted without persistence: it comes back empty.
                drop(redis);
                redis = private_redis(redis_port);
                wait_noticed(before, i);
            }
            _ => {}
        }
    }
    obs.wait_done(Duration::from_secs(300));
    block_on(async {
        eventually(
            "every welcome message delivered",
            Duration::from_secs(180),
            || async {
                let docs = mongo_messages(&names).await;
                docs.len() == welcomes.len()
                    && docs
                        .values()
                        .all(|d| d.get_str("status").unwrap_or("") == "delivered")
            },
        )
        .await;
    });
    let reconciled = sum(&scrape(http), "herald_messages_reconciled_total", &[]);
    let (status, _) = sigterm(&mut child.0, Duration::from_secs(40));
    assert!(status.success());
    let noticed = noticed();
    eprintln!("schedule losses noticed: {noticed}; messages adopted by the reconciler since the last start: {reconciled}");
    assert!(noticed >= 3, "the flushes and the restart were noticed");
    assert_users_equal(&block_on(mongo_users(&names)), &want);
    let messages = block_on(mongo_messages(&names));
    assert_eq!(
        messages.keys().cloned().collect::<BTreeSet<_>>(),
        welcomes,
        "one message per trigger"
    );
    // Each message was accepted by the provider once: one attempt answered 200. (A send cut
    // off by a SIGKILL may be repeated under its own Idempotency-Key, G4: counted, allowed.)
    let sends = block_on(sim_sends(sim_port));
    let mut accepted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut repeated = 0;
    for s in &sends {
        if s["status"].as_u64() == Some(200) {
            accepted
                .entry(s["id"].as_str().unwrap().to_string())
                .or_default()
                .push(s["idempotency_key"].as_str().unwrap().to_string());
        }
        repeated += s["repeats"].as_u64().unwrap_or(0);
    }
    let twice: Vec<_> = accepted.iter().filter(|(_, k)| k.len() > 1).collect();
    assert!(twice.is_empty(), "messages accepted twice: {twice:?}");
    assert_eq!(accepted.len(), welcomes.len());
    let retried = sends
        .iter()
        .filter(|s| !s["idempotency_key"].as_str().unwrap().ends_with(":1"))
        .count();
    assert!(retried > 0, "no retry happened: the test retried nothing");
    eprintln!(
        "{} sends, {retried} retries, {repeated} repeated keys after kills",
        sends.len()
    );
    drop(redis);
}

#[test]
fn kafka_redis_loses_its_data_during_traffic() {
    redis_loses_its_data_during_traffic(Bus::Kafka);
}

#[test]
fn rabbitmq_redis_loses_its_data_during_traffic() {
    redis_loses_its_data_during_traffic(Bus::Rabbit);
}

/// G11: 8 partitions, 1,500 users whose records arrive on two partitions each; instances A
/// and B consume at once (so most users are resident in both and their writes contend); a
/// third instance C joins during the second part and leaves during the third; the second half
/// of the stream trickles in while they work.
#[test]
fn two_instances_share_users_and_a_third_joins_and_leaves() {
    let names = Names::new("shared", 8);
    let records = split_users(1_500, 24, names.partitions);
    let want = oracle::replay(records.iter().map(|(_, _, p)| p.as_bytes()));
    let parts: Vec<&[(i32, String, String)]> = records.chunks(records.len() / 6 + 1).collect();
    let session = ("HERALD__KAFKA__OPTIONS__session.timeout.ms", "6000");
    let (http_a, http_b) = (free_port(), free_port());
    let (listen_a, listen_b) = (format!("127.0.0.1:{http_a}"), format!("127.0.0.1:{http_b}"));
    let mut obs = Observer::new(&names, 0);
    produce_to_partitions(&names, parts[0]);
    obs.published(parts[0].len() as u64);
    let mut a = spawn_herald(
        &names,
        &[
            ("HERALD__KAFKA__GROUP_INSTANCE_ID", "sa"),
            ("HERALD__HTTP__LISTEN", &listen_a),
            session,
        ],
        "a",
    );
    let mut b = spawn_herald(
        &names,
        &[
            ("HERALD__KAFKA__GROUP_INSTANCE_ID", "sb"),
            ("HERALD__HTTP__LISTEN", &listen_b),
            session,
        ],
        "b",
    );
    let both_assigned = |log: &str| {
        let started = Instant::now();
        while !std::fs::read_to_string(log_dir().join(format!("{}-{log}.log", names.base)))
            .unwrap_or_default()
            .contains("kafka partitions assigned")
        {
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "{log} never joined"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    both_assigned("a");
    both_assigned("b");
    let mut c = None;
    let mut published = parts[0].len();
    for (i, part) in parts.iter().enumerate().skip(1) {
        produce_to_partitions(&names, part);
        published += part.len();
        obs.published(part.len() as u64);
        obs.wait_progress((published - part.len() / 2) as i64, Duration::from_secs(60));
        match i {
            2 => c = Some(spawn_herald(&names, &[], "c")),
            4 => {
                let mut leaving: Herald = c.take().expect("C joined");
                let (status, _) = sigterm(&mut leaving.0, Duration::from_secs(40));
                assert!(status.success(), "C left cleanly");
            }
            _ => {}
        }
    }
    obs.wait_done(Duration::from_secs(300));
    let metrics = [scrape(http_a), scrape(http_b)];
    let restarts: f64 = metrics
        .iter()
        .map(|m| sum(m, "herald_actor_restarts_total", &[("actor", "partition")]))
        .sum();
    let contended: f64 = metrics
        .iter()
        .map(|m| sum(m, "herald_users_contended_total", &[]))
        .sum();
    for child in [&mut a, &mut b] {
        let (status, _) = sigterm(&mut child.0, Duration::from_secs(40));
        assert!(status.success());
    }
    eprintln!("contended user reloads on A and B: {contended}; partition restarts: {restarts}");
    assert_users_equal(&block_on(mongo_users(&names)), &want);
    assert_eq!(restarts, 0.0, "no partition restarted");
}

/// A record whose application panics (fault injection: `HERALD_FAULT_PANIC_ON` names its
/// messageId) is tried again once, then dead-lettered as `poison: …` with the panic message;
/// the partition goes on and every other user equals the replay.
#[test]
fn a_record_that_panics_is_dead_lettered_and_the_partition_goes_on() {
    let names = Names::new("poison", 2);
    let mut records: Vec<(i32, String, String)> = Vec::new();
    for i in 0..60 {
        for u in 0..50 {
            let user = format!("p-{u}");
            let id = if u == 7 && i == 30 {
                "poison-7".to_string()
            } else if u == 8 && i == 10 {
                "poison-8".to_string()
            } else {
                format!("{user}-{i}")
            };
            let event = ["viewed", "bought"][i % 2];
            let payload = json!({"messageId": id, "type": "track", "userId": user,
                "timestamp": format!("2026-11-23T10:00:{:02}Z", i % 60), "event": event})
            .to_string();
            records.push((u % 2, user, payload));
        }
    }
    produce_to_partitions(&names, &records);
    let obs = Observer::new(&names, records.len() as u64);
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut child = spawn_herald(
        &names,
        &[
            ("HERALD__HTTP__LISTEN", &listen),
            ("HERALD_FAULT_PANIC_ON", "poison-7,poison-8"),
        ],
        "0",
    );
    obs.wait_done(Duration::from_secs(120));
    let metrics = scrape(http);
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success(), "a poison record does not stop Herald");
    assert_eq!(
        sum(
            &metrics,
            "herald_events_invalid_total",
            &[("reason", "poison")]
        ),
        2.0
    );
    assert_eq!(
        sum(
            &metrics,
            "herald_actor_restarts_total",
            &[("actor", "partition")]
        ),
        0.0,
        "no partition restarted"
    );
    assert!(
        sum(
            &metrics,
            "herald_actor_restarts_total",
            &[("actor", "aggregator")]
        ) >= 4.0,
        "each poison record panicked twice"
    );
    let dead = obs.dead_letters();
    let poison: BTreeSet<String> = dead
        .iter()
        .filter(|(_, e)| e.starts_with("poison: "))
        .map(|(p, e)| {
            assert!(e.contains("fault injection"), "the panic message: {e}");
            serde_json::from_slice::<serde_json::Value>(p).unwrap()["messageId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        poison,
        ["poison-7".to_string(), "poison-8".to_string()]
            .into_iter()
            .collect()
    );
    let healthy: Vec<_> = records
        .iter()
        .filter(|(_, _, p)| !p.contains("\"poison-"))
        .collect();
    let want = oracle::replay(healthy.iter().map(|(_, _, p)| p.as_bytes()));
    assert_users_equal(&block_on(mongo_users(&names)), &want);
}
