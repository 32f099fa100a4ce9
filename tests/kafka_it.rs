//! Guarantees G1–G7 against real servers: a Kafka-protocol broker (Tansu), a MongoDB-protocol
//! server (nx-27017) and Redis, with the `herald` binary run as a child process.
//! Backends: `scripts/backends.sh up` (the README's test command runs it).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const EVENTS: u64 = 200_000;
const USERS: u64 = 5_000;

/// G1/G2/G3: SIGKILL at 5 random moments, restart each time; `users` equals the sequential
/// replay and the DLQ holds exactly the invalid messages.
#[test]
fn sigkill_and_restart_five_times_equals_the_replay() {
    let names = Names::new("kill", 4);
    produce(&names, EVENTS, USERS, 11);
    let want = expected(EVENTS, USERS, 11);
    // Static membership: a restarted instance takes its partitions back at once (KIP-345);
    // without it Tansu can strand a group whose member is killed while joining (BACKENDS.md).
    let extra = [("HERALD__KAFKA__GROUP_INSTANCE_ID", "kill-1")];
    let mut rng = SmallRng::seed_from_u64(11);
    let mut child = spawn_herald(&names, &extra, "0");
    let client = offsets_client(&names);
    for i in 1..=5 {
        // Kill at a random moment once this incarnation has made progress.
        let before: i64 = committed(&client, &names).iter().sum();
        let started = Instant::now();
        while committed(&client, &names).iter().sum::<i64>() <= before
            && started.elapsed() < Duration::from_secs(60)
        {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..1500)));
        kill9(&mut child);
        child = spawn_herald(&names, &extra, &i.to_string());
    }
    wait_fully_committed(&names, Duration::from_secs(600));
    let (status, took) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    assert!(took < Duration::from_secs(30));
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
    let dead: std::collections::BTreeSet<Vec<u8>> =
        dead_letters(&names).into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        dead, want.invalid,
        "the DLQ holds exactly the invalid messages"
    );
}

/// A second instance joins mid-run and later leaves; nothing is lost or doubled and no
/// partition is left unconsumed.
#[test]
fn a_second_instance_joins_and_leaves() {
    let names = Names::new("rebalance", 4);
    produce(&names, EVENTS / 2, USERS, 12);
    let want = expected(EVENTS / 2, USERS, 12);
    let client = offsets_client(&names);
    let mut a = spawn_herald(&names, &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "a")], "a");
    let started = Instant::now();
    while committed(&client, &names).iter().sum::<i64>() == 0
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Dynamic membership for the visitor, so its clean exit hands the partitions back now.
    let mut b = spawn_herald(&names, &[], "b");
    std::thread::sleep(Duration::from_secs(6));
    let (status, _) = sigterm(&mut b, Duration::from_secs(40));
    assert!(status.success());
    wait_fully_committed(&names, Duration::from_secs(600));
    let (status, _) = sigterm(&mut a, Duration::from_secs(40));
    assert!(status.success());
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
}

/// G6: SIGTERM mid-run exits 0 within the timeout with everything read committed, and the
/// restarted instance finishes the topic to the same result.
#[test]
fn sigterm_drains_commits_and_exits_zero() {
    let names = Names::new("term", 4);
    produce(&names, EVENTS / 2, USERS, 13);
    let want = expected(EVENTS / 2, USERS, 13);
    let client = offsets_client(&names);
    let extra = [("HERALD__KAFKA__GROUP_INSTANCE_ID", "term-1")];
    let mut child = spawn_herald(&names, &extra, "0");
    let started = Instant::now();
    while committed(&client, &names).iter().sum::<i64>() == 0
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (status, took) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let at_exit = committed(&client, &names);
    let mut child = spawn_herald(&names, &extra, "1");
    wait_fully_committed(&names, Duration::from_secs(600));
    // The restart read each partition from exactly where the drained instance committed.
    let log = std::fs::read_to_string(log_dir().join(format!("{}-1.log", names.base))).unwrap();
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
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
}

/// G5: killed right after a commit, every valid record below the committed offsets is durable:
/// its messageId is in the user's Redis state (written after MongoDB) and the user is in MongoDB.
#[test]
fn committed_offsets_never_pass_what_is_durable() {
    let names = Names::new("g5", 4);
    produce(&names, EVENTS / 2, USERS, 14);
    let client = offsets_client(&names);
    let mut child = spawn_herald(&names, &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "g5-1")], "0");
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
    let users = block_on(mongo_users(&names));
    let redis = redis::Client::open(REDIS).unwrap();
    let mut conn = redis.get_connection().unwrap();
    let mut checked = 0;
    for (p, o, payload) in records {
        let Ok(e) = herald::domain::event::decode(&payload, 1 << 20) else {
            continue;
        };
        let raw: Option<Vec<u8>> = redis::cmd("GET")
            .arg(format!("{}:user:{}", names.base, e.user_id))
            .query(&mut conn)
            .unwrap();
        let state: herald::domain::user::UserState = serde_json::from_slice(
            &raw.unwrap_or_else(|| panic!("no state for {} (p{p} o{o})", e.user_id)),
        )
        .unwrap();
        assert!(
            state.seen.contains(&e.message_id),
            "record p{p} o{o} committed but not durable"
        );
        assert!(
            users.contains_key(&e.user_id),
            "user {} committed but not in MongoDB",
            e.user_id
        );
        checked += 1;
    }
    assert!(checked > 0);
}

/// G7: MongoDB stops for 20 s mid-run: Herald pauses with bounded memory, says why, resumes by
/// itself, and the result equals the replay.
#[test]
fn a_mongodb_outage_pauses_and_resumes() {
    let mut names = Names::new("g7mongo", 4);
    let port = free_port();
    let data = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(&names.base);
    let mut mongo = private_mongo(port, &data);
    names.mongo = format!("mongodb://127.0.0.1:{port}");
    produce(&names, EVENTS / 2, USERS, 15);
    let want = expected(EVENTS / 2, USERS, 15);
    let client = offsets_client(&names);
    let mut child = spawn_herald(
        &names,
        &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "g7m-1")],
        "0",
    );
    let started = Instant::now();
    while committed(&client, &names).iter().sum::<i64>() == 0
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill9(&mut mongo.0);
    let down_at = Instant::now();
    let before = committed(&client, &names);
    let mut max_rss = 0;
    while down_at.elapsed() < Duration::from_secs(20) {
        max_rss = max_rss.max(rss_kib(child.id()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let after = committed(&client, &names);
    assert!(
        after.iter().sum::<i64>() - before.iter().sum::<i64>() <= 4 * 20_000,
        "commits went on while MongoDB was down: {before:?} → {after:?}"
    );
    assert!(
        max_rss < 1_500_000,
        "memory grew to {max_rss} KiB while MongoDB was down"
    );
    mongo = private_mongo(port, &data);
    wait_fully_committed(&names, Duration::from_secs(600));
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    let log = std::fs::read_to_string(log_dir().join(format!("{}-0.log", names.base))).unwrap();
    assert!(log.contains("mongodb"), "the log names the cause");
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
    drop(mongo);
}

/// G7: Redis hangs for 20 s mid-run (SIGSTOP): Herald pauses, resumes, and the result equals
/// the replay. (Redis here keeps nothing on disk, so the outage is a pause, not a restart.)
#[test]
fn a_redis_outage_pauses_and_resumes() {
    let mut names = Names::new("g7redis", 4);
    let port = free_port();
    let redis = private_redis(port);
    names.redis = format!("redis://127.0.0.1:{port}/0");
    produce(&names, EVENTS / 2, USERS, 16);
    let want = expected(EVENTS / 2, USERS, 16);
    let client = offsets_client(&names);
    let mut child = spawn_herald(
        &names,
        &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "g7r-1")],
        "0",
    );
    let started = Instant::now();
    while committed(&client, &names).iter().sum::<i64>() == 0
        && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
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
    wait_fully_committed(&names, Duration::from_secs(600));
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
    drop(redis);
}
