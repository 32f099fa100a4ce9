//! The engine's guarantees on the real servers (Apache Kafka, Redis, nx-27017), `herald` run
//! as a child process, results compared with the reference model (tests/common/oracle.rs):
//! G8 (one owner per user, fenced writes), stale users reloaded, stored-state versions.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use herald::domain::user::UserProfile;

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

/// Stored-state versions: users written by earlier releases — the document without
/// bookkeeping, the positions and dedup window in Redis (the schema-1 JSON string, or the
/// schema-2 hash beside its sorted set) — load and go on, their replay protection kept; a user
/// whose stored state this release cannot read (bookkeeping of a newer schema, or an earlier
/// release's Redis state that does not parse) is quarantined — its records dead-lettered with
/// `state_unreadable`, its document left alone — and the partition goes on with everyone else.
#[test]
fn earlier_states_load_and_unreadable_ones_are_quarantined() {
    use mongodb::bson::{doc, DateTime};
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
    // Their documents, as the previous release wrote them (a top-level version, no
    // `_herald`), and a document whose bookkeeping is from a newer release.
    let legacy = |event_count: i64| {
        doc! {
            "traits": {"legacy": true}, "tags": ["kept"], "event_count": event_count,
            "events": {"bought": {"count": event_count,
                "first_at": DateTime::from_millis(1000), "last_at": DateTime::from_millis(2000)}},
            "first_seen": DateTime::from_millis(1000), "last_seen": DateTime::from_millis(2000),
            "updated_at": DateTime::from_millis(2000), "version": 7_i64, "schema_version": 2,
        }
    };
    let newer = doc! {"_id": "newer", "traits": {}, "tags": [], "event_count": 0_i64,
    "events": {}, "_herald": {"v": 3_i64, "s": 99, "pos": {}, "seen": ""}};
    block_on(async {
        let db = mongodb::Client::with_uri_str(MONGO)
            .await
            .unwrap()
            .database(&names.base);
        let users = db.collection::<mongodb::bson::Document>("users");
        for id in ["old", "broken"] {
            let mut d = doc! {"_id": id};
            d.extend(legacy(3));
            users.insert_one(d).await.unwrap();
        }
        users.insert_one(newer.clone()).await.unwrap();
    });
    let mut records = Vec::new();
    for i in 0..40 {
        for user in ["old", "broken", "newer", "fine-1", "fine-2"] {
            let payload = format!(
                r#"{{"messageId":"{user}-{i}","type":"track","userId":"{user}","timestamp":"2026-11-23T10:00:{:02}Z","event":"bought"}}"#,
                i % 60
            );
            records.push((i % 2, user.to_string(), payload));
        }
    }
    // `old-0` was seen already: its copy is a duplicate, as the earlier release's window says.
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
    assert_eq!(unreadable, 2.0, "both unreadable users quarantined");

    let users = block_on(mongo_users(&names));
    let fresh: Vec<_> = records
        .iter()
        .filter(|(_, u, p)| u != "broken" && u != "newer" && !p.contains("\"old-0\""))
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
    // The quarantined users' documents are left as they were.
    want.insert("broken".into(), users["broken"].clone());
    want.insert("newer".into(), users["newer"].clone());
    assert_eq!(users["broken"].event_count, 3);
    assert_eq!(users["newer"].event_count, 0);
    assert_users_equal(&users, &want);
    let states = block_on(stored_states(&names));
    assert!(
        remembers(&states["old"], "old-0"),
        "the earlier window was kept"
    );
    assert_eq!(
        states["newer"].version, 3,
        "the newer bookkeeping is left alone"
    );

    let dead = obs.dead_letters();
    let quarantined: BTreeSet<String> = dead
        .iter()
        .filter(|(_, e)| e.starts_with("state_unreadable"))
        .map(|(p, _)| {
            serde_json::from_slice::<serde_json::Value>(p).unwrap()["messageId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let want_ids: BTreeSet<String> = (0..40)
        .flat_map(|i| [format!("broken-{i}"), format!("newer-{i}")])
        .collect();
    assert_eq!(
        quarantined, want_ids,
        "every record of the quarantined users is dead-lettered"
    );
    let still: String = redis::cmd("HGET")
        .arg(format!("{prefix}user:broken"))
        .arg("s")
        .query(&mut conn)
        .unwrap();
    assert_eq!(still, broken, "the unreadable state is left as it was");
}

/// G8, the stale side: while Herald holds its users, another owner moves every one of them on
/// in MongoDB (their `_herald.v` bumped under another writer's token, as an instance that owns
/// another of their partitions would). Herald's next writes are refused as stale, each user is
/// reloaded from MongoDB and the records it applied since its last durable write are applied
/// again to the newer state — without restarting any partition — and the documents equal the
/// reference model: nothing skipped, nothing applied twice, everything committed.
#[test]
fn a_user_moved_on_elsewhere_is_reloaded_and_its_records_applied_again() {
    use mongodb::bson::doc;
    let names = Names::new("restale", 2);
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

    block_on(async {
        let users = mongodb::Client::with_uri_str(MONGO)
            .await
            .unwrap()
            .database(&names.base)
            .collection::<mongodb::bson::Document>("users");
        let all: Vec<mongodb::bson::Document> = {
            use futures::TryStreamExt;
            users
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap()
        };
        assert_eq!(all.len(), 200);
        for d in all {
            let h = d.get_document("_herald").unwrap();
            let v = int(h.get("v"));
            users
                .update_one(
                    doc! {"_id": d.get_str("_id").unwrap()},
                    doc! {"$set": {"_herald.v": v + 1, "_herald.w": 4242_i64}},
                )
                .await
                .unwrap();
        }
    });
    let second = round(20, 40);
    produce_to_partitions(&names, &second);
    obs.published(second.len() as u64);
    obs.wait_done(Duration::from_secs(180));
    let metrics = scrape(http);
    let contended = sum(&metrics, "herald_users_contended_total", &[]);
    let stale = sum(&metrics, "herald_stale_writes_total", &[]);
    let restarts = sum(
        &metrics,
        "herald_actor_restarts_total",
        &[("actor", "partition")],
    );
    let (status, _) = sigterm(&mut child, Duration::from_secs(40));
    assert!(status.success());
    assert!(
        stale >= 200.0 && contended >= 200.0,
        "every user's first write after the move is refused and reloaded ({stale}, {contended})"
    );
    assert_eq!(restarts, 0.0, "no partition restarted");

    let all: Vec<_> = first.into_iter().chain(second).collect();
    assert_users_equal(&block_on(mongo_users(&names)), &oracle_of(&all));
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
