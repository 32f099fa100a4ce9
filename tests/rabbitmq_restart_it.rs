//! RabbitMQ restarted under Herald (`rabbitmqctl stop_app` / `start_app`): Herald notices,
//! reconnects with backoff, re-declares, resumes, and the result still equals the replay.
//! Its own test binary: stopping the shared broker would disturb any other RabbitMQ test
//! running beside it (test binaries run one after the other).

mod common;

use std::time::{Duration, Instant};

use common::*;

const EVENTS: u64 = 100_000;
const USERS: u64 = 5_000;

/// Starts the broker's application again even if the test fails half-way.
struct StartAppOnDrop;

impl Drop for StartAppOnDrop {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .arg("start_app")
            .status();
    }
}

#[test]
fn rabbitmq_restarted_mid_run_herald_reconnects_and_equals_the_replay() {
    let names = Names::on(Bus::Rabbit, "rmqrestart", 4);
    produce(&names, EVENTS, USERS, 21);
    let want = expected(EVENTS, USERS, 21);
    let mut obs = Observer::new(&names, EVENTS);
    let mut child = spawn_herald(&names, &[], "0");
    // Restart once acks were seen, so there is committed and uncommitted work on both sides.
    let started = Instant::now();
    loop {
        let stats = rabbit::queue_stats(&names.base);
        let left: u64 = stats.values().map(|s| s.ready + s.unacked).sum();
        if left > 0 && left < EVENTS {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "no acks");
        std::thread::sleep(Duration::from_millis(50));
    }
    let guard = StartAppOnDrop;
    rabbit::rabbitmqctl(&["stop_app"]);
    let log_path = log_dir().join(format!("{}-0.log", names.base));
    let stopped = Instant::now();
    while !std::fs::read_to_string(&log_path)
        .unwrap_or_default()
        .contains("RabbitMQ connection lost")
    {
        assert!(
            stopped.elapsed() < Duration::from_secs(60),
            "Herald did not notice the broker going away"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        child.try_wait().unwrap().is_none(),
        "Herald exited while RabbitMQ was down"
    );
    rabbit::rabbitmqctl(&["start_app"]);
    drop(guard);
    // A fresh connection for the observer: the broker restart closed its old one.
    obs.reconnect();
    obs.wait_done(Duration::from_secs(600));
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("RabbitMQ connection re-established"), "{log}");
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
    let dead: std::collections::BTreeSet<Vec<u8>> =
        obs.dead_letters().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        dead, want.invalid,
        "the DLQ holds exactly the invalid messages"
    );
}
