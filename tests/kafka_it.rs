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
    let mut child = spawn_herald(&names, &extra, "1");
    wait_fully_committed(&names, Duration::from_secs(600));
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
}
