//! Identity merge (`alias`) against real servers, `herald` run as child processes, results
//! compared with the reference model's merge rule (tests/common/oracle.rs): random streams with
//! chains, repeats, self-aliases, cycles, retargets, blocked and unknown ids, published in
//! phases (tests/common/aliases.rs) while Herald is SIGKILLed five times, a second instance
//! joins and leaves, and Redis loses everything — on Kafka and on RabbitMQ; and with two
//! instances at once, each owning half the partitions, so an alias is mostly processed by
//! one instance while the id it merges is applied by the other (G11).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::aliases::AliasStream;
use common::*;

fn publish(names: &Names, records: &[(String, String)]) {
    match names.bus {
        Bus::Kafka => produce_records(names, records),
        Bus::Rabbit => rabbit::Amqp::connect(names).publish(records.iter().map(|(k, p)| (k, p))),
    }
}

fn flush_redis(port: u16) {
    let mut conn = redis::Client::open(format!("redis://127.0.0.1:{port}/0"))
        .unwrap()
        .get_connection()
        .unwrap();
    let _: () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
}

fn aliases_merge_once_under_kills_a_second_instance_and_a_lost_redis(bus: Bus) {
    let mut names = Names::on(bus, "merge", 4);
    let redis_port = free_port();
    let _redis = private_redis(redis_port);
    names.redis = format!("redis://127.0.0.1:{redis_port}/0");
    let stream = AliasStream::new(7, 300, 200, 4000);
    let extra = [("HERALD__KAFKA__GROUP_INSTANCE_ID", "merge-1")];
    let mut obs = Observer::new(&names, 0);
    let mut a = spawn_herald(&names, &extra, "0");
    let mut kills = 0;
    let mut published = 0i64;
    for (n, phase) in stream.phases.iter().enumerate() {
        // Each phase in three parts, something broken while the next part is in flight.
        let parts: Vec<&[(String, String)]> = phase.chunks(phase.len() / 3 + 1).collect();
        for (i, part) in parts.iter().enumerate() {
            publish(&names, part);
            obs.published(part.len() as u64);
            published += part.len() as i64;
            obs.wait_progress(published - part.len() as i64 / 2, Duration::from_secs(60));
            match (n, i) {
                (1, 0) | (1, 1) | (2, 0) | (3, 0) | (4, 1) => {
                    kills += 1;
                    kill9(&mut a);
                    a = spawn_herald(&names, &extra, &format!("{n}-{i}"));
                }
                (1, 2) | (4, 0) => flush_redis(redis_port),
                (3, 1) => {
                    // A second instance joins while the cycles and retargets merge, and
                    // leaves (on RabbitMQ it waits as a standby).
                    let mut b = spawn_herald(&names, &[], "b");
                    wait_running(&names, "b");
                    obs.wait_progress(obs.progress(), Duration::from_secs(60));
                    std::thread::sleep(Duration::from_secs(3));
                    let (status, _) = sigterm(&mut b, Duration::from_secs(40));
                    assert!(status.success(), "B exits after SIGTERM: {status:?}");
                }
                _ => {}
            }
        }
        obs.wait_done(Duration::from_secs(300));
        let want = stream.expected(n + 1);
        block_on(async {
            eventually(
                "users as the model says",
                Duration::from_secs(60),
                || async { mongo_users(&names).await == want.users },
            )
            .await;
        });
        assert_users_equal(&block_on(mongo_users(&names)), &want.users);
        assert_eq!(
            block_on(mongo_merged(&names)),
            want.merged,
            "merged ids after phase {}",
            n + 1
        );
    }
    assert_eq!(kills, 5);
    let (status, _) = sigterm(&mut a, Duration::from_secs(40));
    assert!(status.success(), "exit after SIGTERM: {status:?}");
    // The DLQ holds exactly the aliases naming blocked ids (compared as a set: one dead-
    // lettered again after a kill before its commit is the same message).
    let letters = obs.dead_letters();
    let dead: BTreeSet<String> = letters
        .iter()
        .map(|(_, e)| e.split(':').next().unwrap().to_string())
        .collect();
    let refused = stream.refused();
    assert_eq!(
        dead,
        refused
            .keys()
            .map(|r| r.to_string())
            .collect::<BTreeSet<_>>()
    );
    let blocked: BTreeSet<Vec<u8>> = letters.into_iter().map(|(p, _)| p).collect();
    assert_eq!(Some(&blocked.len()), refused.get("blocked_id"));
}

/// Waits until the model's users and merged ids are in MongoDB.
fn users_and_merges_become(names: &Names, stream: &AliasStream, phases: usize) {
    let want = stream.expected(phases);
    block_on(async {
        eventually(
            "users as the model says",
            Duration::from_secs(60),
            || async { mongo_users(names).await == want.users },
        )
        .await;
    });
    assert_users_equal(&block_on(mongo_users(names)), &want.users);
    assert_eq!(
        block_on(mongo_merged(names)),
        want.merged,
        "merged ids after phase {phases}"
    );
}

#[test]
fn two_instances_merge_ids_that_the_other_one_applies() {
    let names = Names::on(Bus::Kafka, "merge2", 8);
    let stream = AliasStream::new(8, 300, 200, 4000);
    let session = ("HERALD__KAFKA__OPTIONS__session.timeout.ms", "6000");
    let spawn = |id: &str, tag: &str| {
        spawn_herald(
            &names,
            &[("HERALD__KAFKA__GROUP_INSTANCE_ID", id), session],
            tag,
        )
    };
    let mut a = spawn("m2a", "a");
    let mut b = spawn("m2b", "b");
    wait_running(&names, "a");
    wait_running(&names, "b");
    let mut obs = Observer::new(&names, 0);
    let mut c = None;
    let mut published = 0i64;
    for (n, phase) in stream.phases.iter().enumerate() {
        let parts: Vec<&[(String, String)]> = phase.chunks(phase.len() / 2 + 1).collect();
        for (i, part) in parts.iter().enumerate() {
            publish(&names, part);
            obs.published(part.len() as u64);
            published += part.len() as i64;
            obs.wait_progress(published - part.len() as i64 / 2, Duration::from_secs(60));
            match (n, i) {
                (1, 0) => {
                    // B dies while the aliases merge; its static membership comes back.
                    kill9(&mut b.0);
                    b = spawn("m2b", "b2");
                }
                (1, 1) => c = Some(spawn_herald(&names, &[], "c")),
                (3, 0) => {
                    let mut leaving: Herald = c.take().expect("C joined");
                    let (status, _) = sigterm(&mut leaving.0, Duration::from_secs(40));
                    assert!(status.success(), "C left cleanly");
                }
                _ => {}
            }
        }
        obs.wait_done(Duration::from_secs(300));
        users_and_merges_become(&names, &stream, n + 1);
    }
    for child in [&mut a, &mut b] {
        let (status, _) = sigterm(&mut child.0, Duration::from_secs(40));
        assert!(status.success());
    }
}

#[test]
fn kafka_aliases_merge_once_under_kills_a_second_instance_and_a_lost_redis() {
    aliases_merge_once_under_kills_a_second_instance_and_a_lost_redis(Bus::Kafka);
}

#[test]
fn rabbitmq_aliases_merge_once_under_kills_a_second_instance_and_a_lost_redis() {
    aliases_merge_once_under_kills_a_second_instance_and_a_lost_redis(Bus::Rabbit);
}
