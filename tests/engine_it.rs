//! The engine's guarantees on the real servers (Apache Kafka, Redis, nx-27017), `herald` run
//! as a child process, results compared with the reference model (tests/common/oracle.rs):
//! G8 (one owner per user, fenced writes) and stored-state versions.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use herald::domain::user::UserProfile;

/// Records of one user spread over two partitions, all of their updates commutative across
/// partitions (per-partition trait keys, tags only added, event counts and min/max times), so
/// the expected profile does not depend on how the partitions interleave.
fn split_users(users: usize, per_user: usize, partitions: i32) -> Vec<(i32, String, String)> {
    let mut out = Vec::with_capacity(users * per_user);
    for round in 0..per_user {
        for u in 0..users {
            let user = format!("split-{u}");
            let side = (round % 2) as i32;
            let partition = (u as i32 + side) % partitions;
            let ts = format!(
                "2026-11-23T10:{:02}:{:02}Z",
                (round / 60) % 60,
                (round + u) % 60
            );
            let id = format!("{user}-{round}");
            let payload = if round % 3 == 0 {
                format!(
                    r#"{{"messageId":"{id}","type":"identify","userId":"{user}","timestamp":"{ts}","traits":{{"p{side}_last":{round},"p{side}_name":"n{u}"}},"tags":{{"add":["side{side}"]}}}}"#
                )
            } else {
                let event = ["viewed", "clicked", "bought"][round % 3];
                format!(
                    r#"{{"messageId":"{id}","type":"track","userId":"{user}","timestamp":"{ts}","event":"{event}"}}"#
                )
            };
            out.push((partition, user, payload));
        }
    }
    out
}

fn oracle_of(records: &[(i32, String, String)]) -> std::collections::BTreeMap<String, UserProfile> {
    oracle::replay(records.iter().map(|(_, _, p)| p.as_bytes()))
}

/// G8: one instance; 1,500 users whose records arrive on two partitions at once, 45,000
/// events. Each user has one state: every update of both partitions is in its document.
#[test]
fn a_user_on_two_partitions_keeps_every_update() {
    let names = Names::new("split", 4);
    let records = split_users(1_500, 30, names.partitions);
    produce_to_partitions(&names, &records);
    let want = oracle_of(&records);
    let obs = Observer::new(&names, records.len() as u64);
    let mut child = spawn_herald(&names, &[], "0");
    obs.wait_done(Duration::from_secs(300));
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    assert_users_equal(&block_on(mongo_users(&names)), &want);
}

/// G8: two instances share the partitions; one is SIGSTOPped past `session.timeout.ms`, the
/// other takes its partitions over and goes on; then the stopped one is continued. Its late
/// writes (an older state of users the other one has moved on) are refused as stale, it
/// rejoins, and `users` equals the reference model.
#[test]
fn a_stopped_owner_cannot_overwrite_its_successor() {
    let names = Names::new("fence", 4);
    const EVENTS: u64 = 120_000;
    const USERS: u64 = 2_000;
    let third = (EVENTS / 3) as usize;
    produce_part(&names, EVENTS, USERS, 21, 0..third);
    let want = expected(EVENTS, USERS, 21);
    let mut obs = Observer::new(&names, third as u64);
    let session = ("HERALD__KAFKA__OPTIONS__session.timeout.ms", "6000");
    let http_a = free_port();
    let listen_a = format!("127.0.0.1:{http_a}");
    // Slow flushes keep users in flight on A when it stops.
    let mut a = spawn_herald(
        &names,
        &[
            ("HERALD__KAFKA__GROUP_INSTANCE_ID", "fa"),
            ("HERALD__HTTP__LISTEN", &listen_a),
            ("HERALD__BATCH__MAX_WAIT_MS", "1000"),
            session,
        ],
        "a",
    );
    obs.wait_progress(0, Duration::from_secs(60));
    let mut b = spawn_herald(
        &names,
        &[("HERALD__KAFKA__GROUP_INSTANCE_ID", "fb"), session],
        "b",
    );
    let log_b = log_dir().join(format!("{}-b.log", names.base));
    let started = Instant::now();
    while !std::fs::read_to_string(&log_b)
        .unwrap_or_default()
        .contains("kafka partitions assigned")
    {
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "B never joined"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Both work on the second third; stop A in the middle of it.
    produce_part(&names, EVENTS, USERS, 21, third..2 * third);
    obs.published(third as u64);
    std::thread::sleep(Duration::from_secs(2));
    signal(a.id(), "-STOP");
    // Past the session timeout B owns every partition; it works through the rest.
    std::thread::sleep(Duration::from_secs(10));
    produce_part(&names, EVENTS, USERS, 21, 2 * third..EVENTS as usize);
    obs.published(EVENTS - 2 * third as u64);
    let started = Instant::now();
    while std::fs::read_to_string(&log_b)
        .unwrap_or_default()
        .matches("kafka partitions assigned")
        .count()
        < 2
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "B never took A's partitions"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(5));
    signal(a.id(), "-CONT");
    obs.wait_done(Duration::from_secs(600));
    // A came back and tried to write what it held: refused, never applied.
    let stale = sum(&scrape(http_a), "herald_stale_writes_total", &[]);
    let log_a = std::fs::read_to_string(log_dir().join(format!("{}-a.log", names.base))).unwrap();
    assert!(
        stale > 0.0 || log_a.contains("assignment lost"),
        "A neither had a write refused nor noticed it lost its partitions"
    );
    eprintln!("stale writes refused on A: {stale}");
    let (status, _) = sigterm(&mut a, Duration::from_secs(40));
    assert!(status.success());
    let (status, _) = sigterm(&mut b, Duration::from_secs(40));
    assert!(status.success());
    assert_users_equal(&block_on(mongo_users(&names)), &want.users);
    let dead: BTreeSet<Vec<u8>> = obs.dead_letters().into_iter().map(|(p, _)| p).collect();
    assert_eq!(
        dead, want.invalid,
        "the DLQ holds exactly the invalid messages"
    );
}

/// Stored-state versions: a state written by the release before fencing (schema 1, a JSON
/// string) loads and goes on; a state that does not parse quarantines its user — their records
/// are dead-lettered with `state_unreadable`, the stored state is left alone — and the
/// partition goes on with everyone else.
#[test]
fn old_states_load_and_unreadable_ones_are_quarantined() {
    let names = Names::new("schema", 2);
    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_connection().unwrap();
    let prefix = format!("{}:", names.base);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let v1 = format!(
        r#"{{"user_id":"old","profile":{{"traits":{{"legacy":true}},"tags":["kept"],"event_count":3,"events":{{"bought":{{"count":3,"first_at":1000,"last_at":2000}}}},"first_seen":1000,"last_seen":2000}},"positions":[],"seen":[["old-0",{now_ms}]]}}"#
    );
    let broken = r#"{"schema":2,"profile":{"traits":[1,2,3]}}"#;
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}user:old"))
        .arg(&v1)
        .query(&mut conn)
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg(format!("{prefix}user:broken"))
        .arg("v")
        .arg(7)
        .arg("s")
        .arg(broken)
        .query(&mut conn)
        .unwrap();
    let mut records = Vec::new();
    for i in 0..40 {
        for user in ["old", "broken", "fine-1", "fine-2"] {
            let payload = format!(
                r#"{{"messageId":"{user}-{i}","type":"track","userId":"{user}","timestamp":"2026-11-23T10:00:{:02}Z","event":"bought"}}"#,
                i % 60
            );
            records.push((i % 2, user.to_string(), payload));
        }
    }
    // `old-0` was seen already: its copy is a duplicate, as the stored window says.
    records.push((
        0,
        "old".into(),
        r#"{"messageId":"old-0","type":"track","userId":"old","timestamp":"2026-11-23T09:00:00Z","event":"bought"}"#.into(),
    ));
    produce_to_partitions(&names, &records);
    let obs = Observer::new(&names, records.len() as u64);
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    let mut child = spawn_herald(&names, &[("HERALD__HTTP__LISTEN", &listen)], "0");
    obs.wait_done(Duration::from_secs(120));
    let unreadable = sum(&scrape(http), "herald_state_unreadable_total", &[]);
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    assert!(unreadable >= 1.0, "no quarantine counted");

    let users = block_on(mongo_users(&names));
    let fresh: Vec<_> = records
        .iter()
        .filter(|(_, u, p)| u != "broken" && !p.contains("\"old-0\""))
        .cloned()
        .collect();
    let mut want = oracle_of(&fresh);
    let old = want.get_mut("old").unwrap();
    old.traits.insert("legacy".into(), serde_json::json!(true));
    old.tags.insert("kept".into());
    old.event_count += 3;
    let bought = old.events.get_mut("bought").unwrap();
    bought.count += 3;
    bought.first_at = 1000;
    old.first_seen = Some(1000);
    assert_users_equal(&users, &want);
    assert!(
        !users.contains_key("broken"),
        "a quarantined user got a document"
    );

    let dead = obs.dead_letters();
    let broken_ids: BTreeSet<String> = dead
        .iter()
        .filter(|(_, e)| e.starts_with("state_unreadable"))
        .map(|(p, _)| {
            serde_json::from_slice::<serde_json::Value>(p).unwrap()["messageId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want_ids: BTreeSet<String> = (0..40).map(|i| format!("broken-{i}")).collect();
    assert_eq!(
        broken_ids, want_ids,
        "every record of the quarantined user is dead-lettered"
    );
    let still: String = redis::cmd("HGET")
        .arg(format!("{prefix}user:broken"))
        .arg("s")
        .query(&mut conn)
        .unwrap();
    assert_eq!(still, broken, "the unreadable state is left as it was");
}

/// G8, the fenced side: while Herald holds its users, another owner moves every one of them
/// on in Redis (their versions bumped under a foreign owner). Herald's next writes are refused,
/// the partitions that fed them restart from their commits (Kafka seeks them again), the users
/// reload at the newer version, and the documents still equal the reference model: nothing the
/// partitions re-read is skipped or applied out of order, everything is committed.
#[test]
fn a_fenced_partition_restarts_from_its_commit_and_loses_nothing() {
    let names = Names::new("refence", 2);
    let round = |from: usize, to: usize| -> Vec<(i32, String, String)> {
        let mut out = Vec::new();
        for i in from..to {
            for u in 0..200 {
                let user = format!("f-{u}");
                let payload = format!(
                    r#"{{"messageId":"{user}-{i}","type":"identify","userId":"{user}","timestamp":"2026-11-23T10:{:02}:{:02}Z","traits":{{"last":{i}}},"tags":{{"add":["t{}"]}}}}"#,
                    i / 60,
                    i % 60,
                    i % 7
                );
                out.push((u % 2, user, payload));
            }
        }
        out
    };
    let first = round(0, 20);
    produce_to_partitions(&names, &first);
    let mut obs = Observer::new(&names, first.len() as u64);
    let http = free_port();
    let listen = format!("127.0.0.1:{http}");
    // Users stay resident (no idle passivation) so they write from their loaded versions.
    let mut child = spawn_herald(
        &names,
        &[
            ("HERALD__HTTP__LISTEN", &listen),
            ("HERALD__AGGREGATOR__IDLE_MS", "600000"),
        ],
        "0",
    );
    obs.wait_done(Duration::from_secs(120));

    let client = redis::Client::open(REDIS).unwrap();
    let mut conn = client.get_connection().unwrap();
    for u in 0..200 {
        let key = format!("{}:user:f-{u}", names.base);
        let _: () = redis::pipe()
            .cmd("HINCRBY")
            .arg(&key)
            .arg("v")
            .arg(1)
            .ignore()
            .cmd("HSET")
            .arg(&key)
            .arg("o")
            .arg("4242")
            .ignore()
            .query(&mut conn)
            .unwrap();
    }
    let second = round(20, 40);
    produce_to_partitions(&names, &second);
    obs.published(second.len() as u64);
    obs.wait_done(Duration::from_secs(180));
    let metrics = scrape(http);
    let fenced = sum(&metrics, "herald_partitions_fenced_total", &[]);
    let stale = sum(&metrics, "herald_stale_writes_total", &[]);
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    assert!(
        stale >= 1.0,
        "no write was refused: the test fenced nothing"
    );
    assert!(fenced >= 1.0, "no partition was fenced");

    let all: Vec<_> = first.into_iter().chain(second).collect();
    assert_users_equal(&block_on(mongo_users(&names)), &oracle_of(&all));
    let log = std::fs::read_to_string(log_dir().join(format!("{}-0.log", names.base))).unwrap();
    assert!(
        !log.contains("went back"),
        "a restarted partition read records from before its seek"
    );
}

async fn next_event(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<herald::ports::AssignmentEvent>,
) -> herald::ports::AssignmentEvent {
    tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .expect("an assignment event within 60 s")
        .expect("the source is open")
}

/// A consumer that hits a fatal error (here injected through librdkafka's own test hook: the
/// `FENCED_INSTANCE_ID` a static member gets after a broker restart) is replaced: its
/// partitions are reported lost, a new consumer is assigned them again, and reading resumes at
/// the committed offsets — nothing skipped, nothing read before the commit again.
#[test]
fn a_kafka_consumer_with_a_fatal_error_is_replaced_and_reading_resumes_at_the_commit() {
    use herald::adapters::kafka::source::{KafkaSettings, KafkaSource};
    use herald::ports::{AssignmentEvent, Source};
    let names = Names::new("fatal", 2);
    let records: Vec<(String, String)> = (0..200)
        .map(|i| (format!("u-{}", i % 10), format!("{{\"n\":{i}}}")))
        .collect();
    produce_records(&names, &records);
    let settings = KafkaSettings {
        brokers: BROKERS.into(),
        topic: names.topic(),
        group_id: names.base.clone(),
        group_instance_id: Some("fatal-1".into()),
        partitions: names.partitions,
        options: vec![],
        channel_capacity: 1000,
    };
    block_on(async {
        let source = KafkaSource::start(settings, Duration::from_secs(30))
            .await
            .unwrap();
        let mut events = source.take_assignments().unwrap();
        let AssignmentEvent::Assigned(mut first) = next_event(&mut events).await else {
            panic!("first event is not an assignment");
        };
        first.sort();
        assert_eq!(first, vec![0, 1]);
        // Read each partition to its end; commit partition 0 at half of what it had.
        let end = end_offsets(&offsets_client(&names), &names);
        let mut committed = [0u64; 2];
        for p in [0u32, 1] {
            let reader = source.reader(p).unwrap();
            let mut read = 0u64;
            while (read as i64) < end[p as usize] {
                let batch = reader.fetch(1000).await.unwrap();
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                read += batch.len() as u64;
            }
            if p == 0 {
                committed[0] = read / 2;
                source.commit(0, committed[0]).await.unwrap();
            }
        }
        source.inject_fatal_error("injected by the test");
        let AssignmentEvent::Lost(mut lost) = next_event(&mut events).await else {
            panic!("the partitions of the failed consumer are not reported lost");
        };
        lost.sort();
        assert_eq!(lost, vec![0, 1]);
        let AssignmentEvent::Assigned(mut again) = next_event(&mut events).await else {
            panic!("the new consumer is not assigned the partitions");
        };
        again.sort();
        assert_eq!(again, vec![0, 1]);
        for p in [0u32, 1] {
            let reader = source.reader(p).unwrap();
            let want = end[p as usize] as u64 - committed[p as usize];
            let mut got = Vec::new();
            let started = Instant::now();
            while (got.len() as u64) < want {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "partition {p}: {} of {want} records after the replacement",
                    got.len()
                );
                let batch = reader.fetch(1000).await.unwrap();
                if batch.is_empty() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                got.extend(batch);
            }
            assert_eq!(
                got.first().map(|r| r.offset),
                Some(committed[p as usize]),
                "partition {p} resumes at its commit"
            );
            assert_eq!(
                got.len() as u64,
                want,
                "partition {p}: nothing more, nothing less"
            );
        }
        source.close();
    });
}
