//! Guarantees G1–G7 against real servers, once per source: Apache Kafka (KRaft) or
//! RabbitMQ (consistent-hash exchange, single-active-consumer queues), with a MongoDB-protocol
//! server (nx-27017) and Redis, and the `herald` binary run as a child process.
//! Backends: `scripts/backends.sh up` (the README's test command runs it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const EVENTS: u64 = 200_000;
const USERS: u64 = 5_000;

/// Every guarantee test runs against both sources.
macro_rules! on_both_sources {
    ($($test:ident),* $(,)?) => {
        mod kafka {
            $( #[test] fn $test() { super::$test(super::Bus::Kafka) } )*
        }
        mod rabbitmq {
            $( #[test] fn $test() { super::$test(super::Bus::Rabbit) } )*
        }
    };
}

on_both_sources!(
    sigkill_and_restart_five_times_equals_the_replay,
    a_second_instance_joins_and_leaves,
    sigterm_drains_commits_and_exits_zero,
    committed_never_passes_what_is_durable,
    a_mongodb_outage_pauses_and_resumes,
    a_redis_outage_pauses_and_resumes,
    a_standby_takes_over_when_the_active_instance_is_killed,
);

/// The DLQ holds exactly the invalid messages (a message dead-lettered again after a crash
/// before its commit is the same message: compared as a set).
fn assert_dead_letters(obs: &Observer, want: &Expected) {
    let dead: BTreeSet<Vec<u8>> = obs.dead_letters().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        dead, want.invalid,
        "the DLQ holds exactly the invalid messages"
    );
}

/// G1/G2/G3: SIGKILL at 5 random moments, restart each time; `users` equals the sequential
/// replay and the DLQ holds exactly the invalid messages.
fn sigkill_and_restart_five_times_equals_the_replay(bus: Bus) {
    let names = Names::on(bus, "kill", 4);
    produce(&names, EVENTS, USERS, 11);
    let want = expected(EVENTS, USERS, 11);
    let obs = Observer::new(&names, EVENTS);
    // Static membership: a restarted instance takes its partitions back at once, without a
    // group-wide rebalance (KIP-345).
    let extra = [("HERALD__KAFKA__GROUP_INSTANCE_ID", "kill-1")];
    let mut rng = SmallRng::seed_from_u64(11);
    let mut child = spawn_herald(&names, &extra, "0");
    for i in 1..=5 {
        // Kill at a random moment once this incarnation has made progress.
        obs.wait_progress(obs.progress(), Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1500)));
        kill9(&mut child);
        child = spawn_herald(&names, &extra, &i.to_string());
    }
    obs.wait_done(Duration::from_secs(600));
    let (status, took) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert!(took < Duration::from_secs(30));
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
    assert_dead_letters(&obs, &want);
}

/// A second instance joins mid-run and later leaves cleanly; nothing is lost or doubled and no
/// partition is left unconsumed. (On RabbitMQ the visitor waits as a standby consumer.)
fn a_second_instance_joins_and_leaves(bus: Bus) {
    let names = Names::on(bus, "rebalance", 4);
    produce(&names, EVENTS / 2, USERS, 12);
    let want = expected(EVENTS / 2, USERS, 12);
    let obs = Observer::new(&names, EVENTS / 2);
    let mut a = spawn_herald(&names, &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "a")], "a");
    obs.wait_progress(0, Duration::from_secs(60));
    // Dynamic membership for the visitor, so its clean exit hands the partitions back now.
    let mut b = spawn_herald(&names, &[], "b");
    // B must really be in before it leaves (its start can take seconds on a loaded machine).
    let log_b = log_dir().join(format!("{}-b.log", names.base));
    let started = Instant::now();
    while !std::fs::read_to_string(&log_b)
        .unwrap_or_default()
        .contains("herald running")
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "B never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(6));
    let (status, _) = sigterm(&mut b, Duration::from_secs(40));
    assert!(status.success());
    obs.wait_done(Duration::from_secs(600));
    let (status, _) = sigterm(&mut a, Duration::from_secs(40));
    assert!(status.success());
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
}

/// A second instance waits while the first works (RabbitMQ: a standby consumer of every
/// queue; Kafka: a second static member sharing the partitions); the first is SIGKILLed and the
/// second takes over all of its partitions (queues) — on Kafka once the dead member's session
/// times out. The second half of the input is published only after the kill, so finishing it
/// needs every partition; the result equals the replay, nothing lost or doubled.
fn a_standby_takes_over_when_the_active_instance_is_killed(bus: Bus) {
    let names = Names::on(bus, "standby", 4);
    let half = (EVENTS / 4) as usize;
    produce_part(&names, EVENTS / 2, USERS, 17, 0..half);
    let want = expected(EVENTS / 2, USERS, 17);
    // Progress counts what was published so far: the first instance must really have started
    // (RabbitMQ: become the active consumer) before the second one starts.
    let mut obs = Observer::new(&names, half as u64);
    // A short session, so the dead static member's partitions move within the test.
    let session = ("HERALD__KAFKA__OPTIONS__session.timeout.ms", "6000");
    let mut a = spawn_herald(
        &names,
        &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "sa"), session],
        "a",
    );
    obs.wait_progress(0, Duration::from_secs(60));
    if bus == Bus::Rabbit {
        // The first instance is the active consumer of every queue before the second subscribes.
        let log_a = log_dir().join(format!("{}-a.log", names.base));
        let started = Instant::now();
        while std::fs::read_to_string(&log_a)
            .unwrap_or_default()
            .matches("active consumer of queue")
            .count()
            < names.partitions as usize
        {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the first instance never consumed every queue"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let mut b = spawn_herald(
        &names,
        &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "sb"), session],
        "b",
    );
    // Kill the worker once the second instance is in: on Kafka when the join round that
    // brought it in has finished (it shares the partitions then), on RabbitMQ once it
    // subscribed (it receives nothing while the first is active).
    let log_b = log_dir().join(format!("{}-b.log", names.base));
    let joined = match bus {
        Bus::Kafka => "kafka partitions assigned",
        Bus::Rabbit => "herald running",
    };
    let started = Instant::now();
    while !std::fs::read_to_string(&log_b)
        .unwrap_or_default()
        .contains(joined)
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the second instance never joined"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(2));
    if bus == Bus::Rabbit {
        let log_b = std::fs::read_to_string(&log_b).unwrap();
        assert!(
            !log_b.contains("active consumer of queue"),
            "the standby consumed while the first instance was active"
        );
    }
    kill9(&mut a);
    produce_part(&names, EVENTS / 2, USERS, 17, half..2 * half);
    obs.published(half as u64);
    obs.wait_done(Duration::from_secs(600));
    let (status, _) = sigterm(&mut b, Duration::from_secs(40));
    assert!(status.success());
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
    assert_dead_letters(&obs, &want);
}

/// G6: SIGTERM mid-run exits 0 within the timeout with everything read committed, and the
/// restarted instance finishes the input to the same result.
fn sigterm_drains_commits_and_exits_zero(bus: Bus) {
    let names = Names::on(bus, "term", 4);
    produce(&names, EVENTS / 2, USERS, 13);
    let want = expected(EVENTS / 2, USERS, 13);
    let obs = Observer::new(&names, EVENTS / 2);
    let extra = [("HERALD__KAFKA__GROUP_INSTANCE_ID", "term-1")];
    let mut child = spawn_herald(&names, &extra, "0");
    obs.wait_progress(0, Duration::from_secs(60));
    let (status, took) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    match bus {
        Bus::Kafka => {
            let client = offsets_client(&names);
            let at_exit = committed(&client, &names);
            let mut child = spawn_herald(&names, &extra, "1");
            obs.wait_done(Duration::from_secs(600));
            // The restart read each partition from exactly where the drained instance
            // committed.
            let log =
                std::fs::read_to_string(log_dir().join(format!("{}-1.log", names.base))).unwrap();
            for line in log.lines().filter(|l| l.contains("first record read")) {
                let v: serde_json::Value = serde_json::from_str(line).unwrap();
                let p = v["fields"]["partition"].as_u64().unwrap() as usize;
                let first = v["fields"]["offset"].as_u64().unwrap() as i64;
                assert!(
                    first >= at_exit[p],
                    "partition {p} re-read offset {first} below its commit {}",
                    at_exit[p]
                );
            }
            let (status, _) = sigterm(&mut child, Duration::from_secs(40));
            assert!(status.success());
        }
        Bus::Rabbit => {
            // Everything the drained instance applied was acked: no message whose every copy
            // is still in the queues has reached the user's state.
            let amqp = obs.amqp();
            amqp.wait_no_consumers(Duration::from_secs(30));
            let remaining = amqp.take_remaining();
            let copies = remaining_copies(&remaining);
            let produced = produced_copies(EVENTS / 2, USERS, 13);
            let states = block_on(stored_states(&names));
            let mut applied = 0;
            for (id, (user, n)) in &produced {
                let seen = states.get(user).is_some_and(|s| remembers(s, id));
                if seen {
                    applied += 1;
                    assert!(
                        copies.get(id).copied().unwrap_or(0) < *n,
                        "{id} was applied but none of its {n} copies was acked"
                    );
                }
            }
            assert!(applied > 0, "nothing was applied before SIGTERM");
            // Put the rest back, queue by queue in order, and let a new instance finish.
            for queue in &remaining {
                amqp.publish(queue.iter().map(|p| (user_of(p), p.as_slice())));
            }
            let mut child = spawn_herald(&names, &extra, "1");
            obs.wait_done(Duration::from_secs(600));
            let (status, _) = sigterm(&mut child, Duration::from_secs(40));
            assert!(status.success());
        }
    }
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
}

/// G5: killed right after a commit (ack), every valid record committed is durable: its
/// messageId is in the dedup window of the user's document in MongoDB (the system of record).
fn committed_never_passes_what_is_durable(bus: Bus) {
    let names = Names::on(bus, "g5", 4);
    produce(&names, EVENTS / 2, USERS, 14);
    let obs = Observer::new(&names, EVENTS / 2);
    let mut child = spawn_herald(&names, &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "g5-1")], "0");
    let committed_payloads: Vec<Vec<u8>> = match bus {
        Bus::Kafka => {
            let client = offsets_client(&names);
            let mut last: i64 = 0;
            let started = Instant::now();
            // Wait for a second commit to move, then kill at once.
            let mut moves = 0;
            let committed_at_kill = loop {
                let c = committed(&client, &names);
                let sum: i64 = c.iter().sum();
                if sum > last {
                    moves += 1;
                    last = sum;
                    if moves >= 2 {
                        kill9(&mut child);
                        break committed(&client, &names);
                    }
                }
                assert!(started.elapsed() < Duration::from_secs(120), "no commits");
            };
            let records = records_below(&names, &committed_at_kill);
            assert_eq!(records.len() as i64, committed_at_kill.iter().sum::<i64>());
            records.into_iter().map(|(_, _, p)| p).collect()
        }
        Bus::Rabbit => {
            // Kill as soon as the broker reports acks (delivered minus unacked moved).
            let started = Instant::now();
            loop {
                let stats = rabbit::queue_stats(&names.base);
                let left: u64 = stats.values().map(|s| s.ready + s.unacked).sum();
                if left > 0 && left < EVENTS / 2 {
                    kill9(&mut child);
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(120), "no acks");
                std::thread::sleep(Duration::from_millis(20));
            }
            let amqp = obs.amqp();
            amqp.wait_no_consumers(Duration::from_secs(30));
            let mut left = remaining_copies(&amqp.take_remaining());
            // Acked = produced minus what is left, copy by copy.
            Workload::new(WorkloadSpec::new(EVENTS / 2, USERS, 14))
                .filter_map(|m| {
                    let id = message_id(&m.payload);
                    match left.get_mut(&id) {
                        Some(n) if *n > 0 => {
                            *n -= 1;
                            None
                        }
                        _ => Some(m.payload.to_vec()),
                    }
                })
                .collect()
        }
    };
    let users = block_on(mongo_users(&names));
    let states = block_on(stored_states(&names));
    let mut checked = 0;
    for payload in committed_payloads {
        let Ok(e) = herald::domain::event::decode(&payload, 1 << 20) else {
            continue;
        };
        let state = states
            .get(e.user_id.as_str())
            .unwrap_or_else(|| panic!("no state for {} ({})", e.user_id, e.message_id));
        assert!(
            remembers(state, &e.message_id),
            "{} committed but not durable",
            e.message_id
        );
        assert!(
            users.contains_key(e.user_id.as_str()),
            "user {} committed but not in MongoDB",
            e.user_id
        );
        checked += 1;
    }
    assert!(checked > 0);
}

/// G7/G9: MongoDB is killed mid-run for 40 s, longer than the consumer's
/// `max.poll.interval.ms` (30 s here): Herald stops reading (what it reads after the kill stays
/// within the in-flight bounds, nothing from 5 s in; on Kafka the partitions are paused,
/// `herald_source_paused` = 1) but keeps its group membership, keeps its memory bounded, says
/// in `/readyz` what it waits for, resumes by itself, and the result equals the replay. The
/// backlog per partition is larger than the in-flight bound plus the hand-off, so pausing and
/// resuming is exercised under real fetches.
fn a_mongodb_outage_pauses_and_resumes(bus: Bus) {
    let mut names = Names::on(bus, "g7mongo", 4);
    let port = free_port();
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&names.base);
    let mut mongo = private_mongo(port, &data);
    names.mongo = format!("mongodb://127.0.0.1:{port}");
    produce(&names, EVENTS / 2, USERS, 15);
    let want = expected(EVENTS / 2, USERS, 15);
    let obs = Observer::new(&names, EVENTS / 2);
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    const IN_FLIGHT: i64 = 5_000;
    const FETCH: i64 = 1_000;
    let mut child = spawn_herald(
        &names,
        &[
            ("HERALD__KAFKA__GROUP_INSTANCE_ID", "g7m-1"),
            ("HERALD__HTTP__LISTEN", &listen),
            ("HERALD__PIPELINE__MAX_IN_FLIGHT_PER_PARTITION", "5000"),
            ("HERALD__PIPELINE__FETCH_MAX_RECORDS", "1000"),
            ("HERALD__KAFKA__OPTIONS__max.poll.interval.ms", "30000"),
        ],
        "0",
    );
    obs.wait_progress(0, Duration::from_secs(60));
    let consumed = || sum(&scrape(http), "herald_events_consumed_total", &[]) as i64;
    let readyz = || {
        block_on(async {
            let r = reqwest::get(format!("http://127.0.0.1:{http}/readyz"))
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        })
    };
    let read_at_kill = consumed();
    kill9(&mut mongo.0);
    let down_at = Instant::now();
    let mut max_rss = 0;
    let mut paused_seen = false;
    let mut read_at_5s = None;
    let mut not_ready = None;
    while down_at.elapsed() < Duration::from_secs(40) {
        if down_at.elapsed() > Duration::from_secs(5) && not_ready.is_none() {
            not_ready = Some(readyz());
        }
        max_rss = max_rss.max(rss_kib(child.id()));
        if down_at.elapsed() > Duration::from_secs(5) && read_at_5s.is_none() {
            read_at_5s = Some(consumed());
        }
        paused_seen |= sum(&scrape(http), "herald_source_paused", &[]) > 0.0;
        std::thread::sleep(Duration::from_millis(200));
    }
    let read_late = consumed() - read_at_5s.unwrap();
    let read_during = consumed() - read_at_kill;
    // What was in flight at the kill plus what was read after it stays within the bounds: per
    // partition the in-flight bound, plus the hand-off (Kafka: two fetches; RabbitMQ: the
    // prefetch, capped by the bound) and one fetch.
    let bound = 4 * (IN_FLIGHT + 2 * FETCH + FETCH).max(2 * IN_FLIGHT);
    assert!(
        read_during <= bound,
        "Herald read {read_during} records (bound {bound}) with MongoDB down"
    );
    assert_eq!(
        read_late, 0,
        "Herald kept reading 5 s into the MongoDB outage"
    );
    if bus == Bus::Kafka {
        assert!(
            paused_seen,
            "no partition was paused while MongoDB was down"
        );
    }
    assert!(
        max_rss < 1_500_000,
        "memory grew to {max_rss} KiB while MongoDB was down"
    );
    let (code, why) = not_ready.unwrap();
    assert_eq!(code, 503, "/readyz during the outage: {why}");
    assert!(
        why.contains("mongodb"),
        "/readyz names what it waits for: {why}"
    );
    mongo = private_mongo(port, &data);
    obs.wait_done(Duration::from_secs(600));
    if bus == Bus::Kafka {
        assert_eq!(
            sum(&scrape(http), "herald_source_paused", &[]),
            0.0,
            "every partition resumed"
        );
    }
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    let log = std::fs::read_to_string(log_dir().join(format!("{}-0.log", names.base))).unwrap();
    assert!(log.contains("mongodb"), "the log names the cause");
    assert!(
        !log.contains("assignment lost"),
        "Herald left its consumer group during the outage"
    );
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
    drop(mongo);
}

/// G7: Redis hangs for 20 s mid-run (SIGSTOP): Herald pauses, resumes, and the result equals
/// the replay. (Redis here keeps nothing on disk, so the outage is a pause, not a restart.)
fn a_redis_outage_pauses_and_resumes(bus: Bus) {
    let mut names = Names::on(bus, "g7redis", 4);
    let port = free_port();
    let redis = private_redis(port);
    names.redis = format!("redis://127.0.0.1:{port}/0");
    produce(&names, EVENTS / 2, USERS, 16);
    let want = expected(EVENTS / 2, USERS, 16);
    let obs = Observer::new(&names, EVENTS / 2);
    let mut child = spawn_herald(
        &names,
        &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "g7r-1")],
        "0",
    );
    obs.wait_progress(0, Duration::from_secs(60));
    signal(redis.0.id(), "-STOP");
    let mut max_rss = 0;
    let down_at = Instant::now();
    while down_at.elapsed() < Duration::from_secs(20) {
        max_rss = max_rss.max(rss_kib(child.id()));
        std::thread::sleep(Duration::from_millis(200));
    }
    signal(redis.0.id(), "-CONT");
    assert!(
        max_rss < 1_500_000,
        "memory grew to {max_rss} KiB while Redis was down"
    );
    obs.wait_done(Duration::from_secs(600));
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
    drop(redis);
}

use herald::workload::{Workload, WorkloadSpec};

fn message_id(payload: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["messageId"].as_str().map(str::to_string))
        .unwrap_or_else(|| format!("raw:{}", String::from_utf8_lossy(payload)))
}

fn user_of(payload: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(payload)
        .ok()
        .and_then(|v| v["userId"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// messageId → copies left in the queues.
fn remaining_copies(queues: &[Vec<Vec<u8>>]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for p in queues.iter().flatten() {
        *out.entry(message_id(p)).or_insert(0) += 1;
    }
    out
}

/// messageId → (userId, copies published), for the valid messages of a workload.
fn produced_copies(events: u64, users: u64, seed: u64) -> BTreeMap<String, (String, usize)> {
    let mut out: BTreeMap<String, (String, usize)> = BTreeMap::new();
    for m in Workload::new(WorkloadSpec::new(events, users, seed)) {
        if let Ok(e) = herald::domain::event::decode(&m.payload, 1 << 20) {
            out.entry(e.message_id.into())
                .or_insert((e.user_id.into(), 0))
                .1 += 1;
        }
    }
    out
}
