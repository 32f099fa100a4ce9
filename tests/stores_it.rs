//! The Redis and MongoDB adapters against the real servers (scripts/backends.sh up).

mod common;

use std::sync::Arc;

use common::*;
use herald::adapters::mongo::docs::MongoDocumentStore;
use herald::adapters::redis::retry::RedisRetrySchedule;
use herald::adapters::redis::state::RedisStateStore;
use herald::domain::campaign::{Channel, TriggeredMessage};
use herald::domain::event::decode;
use herald::domain::keys::message_fingerprint;
use herald::domain::message::{MessageRecord, MessageStatus, StatusChange, StatusEvent};
use herald::domain::user::{DedupLimits, Position, UserState};
use herald::ports::{
    DocumentStore, LoadedState, RetryEntry, RetrySchedule, SeenPolicy, StateStore,
    TransitionResult, UserSnapshot,
};

fn snapshot(user: &str, s: &mut UserState) -> Arc<UserSnapshot> {
    Arc::new(UserSnapshot {
        user_id: Arc::from(user),
        version: s.version + 1,
        profile: s.profile.clone(),
        positions: s.positions.clone(),
        seen_added: s.seen.take_unsaved(),
    })
}

const SEEN: SeenPolicy = SeenPolicy {
    expire_before_ms: 0,
    max_ids: 10_000,
};

fn state(user: &str) -> UserState {
    let mut s = UserState::new();
    let e = decode(
        format!(
            r#"{{"messageId":"m1","type":"identify","userId":"{user}","timestamp":"2026-11-23T10:00:00Z",
            "traits":{{"subscribed":true,"n":1.5,"big":9007199254740993,"nested":{{"a":[1,"x",null]}},"plan":null}},
            "tags":{{"add":["vip","b"]}}}}"#
        )
        .as_bytes(),
        1 << 20,
    )
    .unwrap();
    s.apply(
        Some(Position {
            partition: 2,
            offset: 7,
        }),
        &e,
        1,
        DedupLimits::default(),
    );
    let t = decode(
        format!(r#"{{"messageId":"m2","type":"track","userId":"{user}","timestamp":"2026-11-23T10:00:05Z","event":"signed_up"}}"#).as_bytes(),
        1 << 20,
    )
    .unwrap();
    s.apply(
        Some(Position {
            partition: 2,
            offset: 8,
        }),
        &t,
        2,
        DedupLimits::default(),
    );
    s
}

#[test]
fn redis_state_round_trips_and_is_fenced() {
    let names = Names::new("redis", 1);
    block_on(async {
        let store = RedisStateStore::connect(REDIS, &format!("{}:", names.base))
            .await
            .unwrap();
        let u: Arc<str> = Arc::from("u-1");
        assert_eq!(
            store.load(vec![Arc::from("nobody")]).await.unwrap(),
            vec![LoadedState::Absent]
        );
        let mut s = state("u-1");
        let snap = snapshot("u-1", &mut s);
        // Owner 1 claims version 1 (a retried claim holds too); owner 2 cannot.
        assert_eq!(
            store.claim(1, vec![(u.clone(), 1)]).await.unwrap(),
            vec![true]
        );
        assert_eq!(
            store.claim(1, vec![(u.clone(), 1)]).await.unwrap(),
            vec![true]
        );
        assert_eq!(
            store.claim(2, vec![(u.clone(), 1)]).await.unwrap(),
            vec![false]
        );
        assert_eq!(
            store.save(2, vec![snap.clone()], SEEN).await.unwrap(),
            vec![false]
        );
        assert_eq!(
            store.save(1, vec![snap.clone()], SEEN).await.unwrap(),
            vec![true]
        );
        let back = match store.load(vec![u.clone()]).await.unwrap().remove(0) {
            LoadedState::Found(b) => b,
            other => panic!("not found: {other:?}"),
        };
        s.version = 1;
        assert_eq!(back, s);
        assert_eq!(back.last_position(2), Some(8));
        assert!(back.seen.contains(message_fingerprint("m1")));
        // A previous owner still at version 0 is refused from now on.
        assert_eq!(
            store.claim(3, vec![(u.clone(), 1)]).await.unwrap(),
            vec![false]
        );
        // The next version goes to whoever claims it first.
        assert_eq!(
            store.claim(2, vec![(u.clone(), 2)]).await.unwrap(),
            vec![true]
        );
        assert_eq!(
            store
                .save(1, vec![snapshot("u-1", &mut back.clone())], SEEN)
                .await
                .unwrap(),
            vec![false]
        );

        // A writer killed between its claim and its write: the next owner loads the claimed
        // version (nothing saved) and creates the one after it.
        let c: Arc<str> = Arc::from("u-crashed");
        assert_eq!(
            store.claim(1, vec![(c.clone(), 1)]).await.unwrap(),
            vec![true]
        );
        let loaded = match store.load(vec![c.clone()]).await.unwrap().remove(0) {
            LoadedState::Found(b) => b,
            other => panic!("a claimed user loads as found: {other:?}"),
        };
        assert_eq!(loaded.version, 1);
        assert!(loaded.positions.is_empty());
        assert_eq!(
            store
                .claim(2, vec![(c.clone(), loaded.version + 1)])
                .await
                .unwrap(),
            vec![true]
        );
    });
}

#[test]
fn redis_loads_schema_1_states_and_quarantines_unreadable_ones() {
    let names = Names::new("redis-schema", 1);
    block_on(async {
        let prefix = format!("{}:", names.base);
        let store = RedisStateStore::connect(REDIS, &prefix).await.unwrap();
        let client = redis::Client::open(REDIS).unwrap();
        let mut conn = client.get_connection().unwrap();
        // A state as the release before fencing wrote it: a JSON string, ids inline.
        let v1 = r#"{"user_id":"old","profile":{"traits":{"plan":"pro"},"tags":["vip"],"event_count":2,"events":{"buy":{"count":2,"first_at":5,"last_at":9}},"first_seen":5,"last_seen":9},"positions":[[0,41]],"seen":[["m-a",100],["m-b",101]]}"#;
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}user:old"))
            .arg(v1)
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}user:bad"))
            .arg("v")
            .arg(3)
            .arg("s")
            .arg(r#"{"schema":2,"profile":{"tags":7}}"#)
            .query(&mut conn)
            .unwrap();
        let loaded = store
            .load(vec![Arc::from("old"), Arc::from("bad")])
            .await
            .unwrap();
        let LoadedState::Found(old) = &loaded[0] else {
            panic!("schema 1 did not load: {:?}", loaded[0]);
        };
        assert_eq!(old.version, 0);
        assert_eq!(old.profile.event_count, 2);
        assert_eq!(old.last_position(0), Some(41));
        assert!(old.seen.contains(message_fingerprint("m-b")));
        assert!(
            matches!(&loaded[1], LoadedState::Unreadable(why) if why.contains("does not parse")),
            "{:?}",
            loaded[1]
        );
        // Its first claim converts it to the fenced form; the ids migrate on the next write.
        let mut old = old.clone();
        assert_eq!(
            store.claim(9, vec![(Arc::from("old"), 1)]).await.unwrap(),
            vec![true]
        );
        let snap = Arc::new(UserSnapshot {
            user_id: Arc::from("old"),
            version: 1,
            profile: old.profile.clone(),
            positions: old.positions.clone(),
            seen_added: old.seen.entries().collect(),
        });
        assert_eq!(store.save(9, vec![snap], SEEN).await.unwrap(), vec![true]);
        old.version = 1;
        let LoadedState::Found(again) = store.load(vec![Arc::from("old")]).await.unwrap().remove(0)
        else {
            panic!("converted state did not load");
        };
        assert_eq!(again, old);
    });
}

#[test]
fn mongo_users_upsert_is_idempotent_exact_and_fenced() {
    let names = Names::new("mongo", 1);
    block_on(async {
        let store = MongoDocumentStore::connect(MONGO, &names.base)
            .await
            .unwrap();
        store.ensure_indexes().await.unwrap();
        let mut s = state("u-1");
        let snap = snapshot("u-1", &mut s);
        let none = herald::ports::UsersWritten::default();
        assert_eq!(
            store.upsert_users(vec![snap.clone()], 1000).await.unwrap(),
            none
        );
        assert_eq!(
            store.upsert_users(vec![snap.clone()], 2000).await.unwrap(),
            none,
            "the same version again"
        );
        let users = mongo_users(&names).await;
        assert_eq!(users.len(), 1);
        assert_eq!(
            users["u-1"],
            s.profile.to_view(),
            "booleans, floats, big ints and nesting survive"
        );
        // Version 3 lands; a late version 2 (a previous owner) is refused as stale.
        let mut newer = (*snap).clone();
        newer.version = 3;
        newer.profile.event_count = 99;
        assert_eq!(
            store
                .upsert_users(vec![Arc::new(newer)], 3000)
                .await
                .unwrap(),
            none
        );
        let mut late = (*snap).clone();
        late.version = 2;
        let written = store
            .upsert_users(vec![Arc::new(late)], 4000)
            .await
            .unwrap();
        assert_eq!(written.stale, vec![Arc::<str>::from("u-1")]);
        assert_eq!(mongo_users(&names).await["u-1"].event_count, 99);
    });
}

#[test]
fn mongo_messages_follow_the_status_machine() {
    let names = Names::new("msgs", 1);
    block_on(async {
        let store = MongoDocumentStore::connect(MONGO, &names.base)
            .await
            .unwrap();
        store.ensure_indexes().await.unwrap();
        let m = TriggeredMessage {
            id: "welcome:m2".into(),
            user_id: "u-1".into(),
            campaign: "welcome".into(),
            channel: Channel::Sms,
            to: Some("+1555".into()),
            body: "Hi".into(),
            subject: None,
            skipped: None,
            trigger_at: 5,
        };
        let record = MessageRecord::from_triggered(&m, 10);
        // The flush that creates a message learns so (and only it may dispatch it), also when
        // it asks again after a lost answer; another flush finds it existing.
        assert_eq!(
            store
                .insert_messages(vec![record.clone()], 7)
                .await
                .unwrap(),
            vec![record.id.clone()]
        );
        assert_eq!(
            store
                .insert_messages(vec![record.clone()], 7)
                .await
                .unwrap(),
            vec![record.id.clone()]
        );
        assert!(store
            .insert_messages(vec![record.clone()], 8)
            .await
            .unwrap()
            .is_empty());
        let change = |event, pid: Option<&str>, expect: Option<&str>| StatusChange {
            event,
            at: 20,
            provider: Some("sim".into()),
            detail: None,
            provider_message_id: pid.map(str::to_string),
            attempt: Some(1),
            expect_provider_message_id: expect.map(str::to_string),
        };
        // A callback that overtakes its send is not ready yet.
        assert_eq!(
            store
                .transition(
                    m.id.clone(),
                    change(StatusEvent::Delivered, None, Some("p-1"))
                )
                .await
                .unwrap(),
            TransitionResult::NotReady
        );
        assert!(matches!(
            store
                .transition(m.id.clone(), change(StatusEvent::Sent, Some("p-1"), None))
                .await
                .unwrap(),
            TransitionResult::Applied(_)
        ));
        assert!(matches!(
            store
                .transition(
                    m.id.clone(),
                    change(StatusEvent::Delivered, None, Some("p-1"))
                )
                .await
                .unwrap(),
            TransitionResult::Applied(_)
        ));
        // A late `sent` never overwrites `delivered`.
        assert_eq!(
            store
                .transition(m.id.clone(), change(StatusEvent::Sent, Some("p-2"), None))
                .await
                .unwrap(),
            TransitionResult::Ignored(MessageStatus::Delivered)
        );
        let stored = store.get_message(m.id.clone()).await.unwrap().unwrap();
        assert_eq!(stored.status, MessageStatus::Delivered);
        assert_eq!(stored.history.len(), 3, "queued, sent, delivered");
        // A callback for a message not stored yet is recorded and applied on insert.
        store
            .record_early_callback(
                "welcome:m9".into(),
                change(StatusEvent::Delivered, None, None),
            )
            .await
            .unwrap();
        let mut later = record.clone();
        later.id = "welcome:m9".into();
        store.insert_messages(vec![later], 9).await.unwrap();
        let early = store
            .get_message("welcome:m9".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(early.status, MessageStatus::Delivered);
        assert!(store
            .stalled_messages(4_102_444_800_000, None, 10)
            .await
            .unwrap()
            .is_empty());
    });
}

/// The reconciler's query: messages waiting on a send (`queued`, `retrying`) unchanged since
/// a time, paged in `_id` order; `sent` and terminal ones are not listed.
#[test]
fn mongo_lists_stalled_messages_in_pages() {
    let names = Names::new("stalled", 1);
    block_on(async {
        let store = MongoDocumentStore::connect(MONGO, &names.base)
            .await
            .unwrap();
        store.ensure_indexes().await.unwrap();
        let record = |i: usize, at: i64| {
            let m = TriggeredMessage {
                id: format!("welcome:m{i:02}"),
                user_id: format!("u-{i}"),
                campaign: "welcome".into(),
                channel: Channel::Sms,
                to: Some("+1555".into()),
                body: "Hi".into(),
                subject: None,
                skipped: None,
                trigger_at: at,
            };
            MessageRecord::from_triggered(&m, at)
        };
        // 0..10 stored at t = 1,000; 10..12 at t = 9,000 (too recent).
        let mut records: Vec<_> = (0..10).map(|i| record(i, 1_000)).collect();
        records.extend((10..12).map(|i| record(i, 9_000)));
        store.insert_messages(records, 1).await.unwrap();
        let change = |event, attempt| StatusChange {
            event,
            at: 2_000,
            provider: Some("sim".into()),
            detail: None,
            provider_message_id: Some(format!("p-{attempt}")),
            attempt: Some(attempt),
            expect_provider_message_id: None,
        };
        for (i, event) in [
            (1, StatusEvent::Sent),
            (2, StatusEvent::Retrying),
            (3, StatusEvent::Failed),
        ] {
            store
                .transition(format!("welcome:m{i:02}"), change(event, 1))
                .await
                .unwrap();
        }
        let ids =
            |page: Vec<MessageRecord>| -> Vec<String> { page.into_iter().map(|r| r.id).collect() };
        let first = ids(store.stalled_messages(5_000, None, 4).await.unwrap());
        assert_eq!(
            first,
            ["welcome:m00", "welcome:m02", "welcome:m04", "welcome:m05"]
        );
        let second = ids(store
            .stalled_messages(5_000, first.last().cloned(), 4)
            .await
            .unwrap());
        assert_eq!(
            second,
            ["welcome:m06", "welcome:m07", "welcome:m08", "welcome:m09"]
        );
        assert!(store
            .stalled_messages(5_000, second.last().cloned(), 4)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            ids(store.stalled_messages(1_500, None, 100).await.unwrap()).len(),
            7,
            "m02 changed at 2,000: not idle since 1,500"
        );
    });
}

/// Leases belong to the instance that holds them: `hold` creates only absent entries, a
/// lease claimed by another instance is reported lost to its old holder's `extend`, and only
/// its holder completes it.
#[test]
fn redis_retry_leases_belong_to_their_holder() {
    let names = Names::new("leases", 1);
    block_on(async {
        let prefix = format!("{}:", names.base);
        let a = RedisRetrySchedule::connect(REDIS, &prefix, 1)
            .await
            .unwrap();
        let b = RedisRetrySchedule::connect(REDIS, &prefix, 1)
            .await
            .unwrap();
        let entry = |id: &str, attempt: u32, due_ms: i64| RetryEntry {
            message_id: id.into(),
            attempt,
            resend: 0,
            due_ms,
            lapsed: false,
        };
        let far = 4_102_444_800_000;
        assert_eq!(
            a.hold(vec![entry("m1", 1, far), entry("m2", 1, 0)], true)
                .await
                .unwrap(),
            [true, true]
        );
        assert_eq!(
            b.hold(vec![entry("m1", 1, 0)], true).await.unwrap(),
            [false],
            "m1 is held by a"
        );
        // a starts sending m2 (not m1), then m2's lease runs out (due 0): b claims it, and
        // it is b's, in doubt (a may have sent it).
        assert!(a
            .mark_sending(vec![entry("m2", 1, 0)])
            .await
            .unwrap()
            .is_empty());
        assert_eq!(
            b.mark_sending(vec![entry("m1", 1, 0)]).await.unwrap(),
            ["m1".to_string()],
            "b does not hold m1"
        );
        let claimed = b.claim_due(1_000, 15_000, 10).await.unwrap();
        assert_eq!(
            claimed,
            [RetryEntry {
                lapsed: true,
                ..entry("m2", 1, 0)
            }]
        );
        let lost = a
            .extend(vec![entry("m1", 1, far), entry("m2", 1, 0)], far + 1)
            .await
            .unwrap();
        assert_eq!(lost, ["m2".to_string()]);
        assert_eq!(a.entry("m1".into()).await.unwrap().unwrap().due_ms, far + 1);
        assert_eq!(
            a.entry("m2".into()).await.unwrap().unwrap().due_ms,
            16_000,
            "a did not extend b's lease"
        );
        a.complete(entry("m2", 1, 0)).await.unwrap();
        assert!(
            b.entry("m2".into()).await.unwrap().is_some(),
            "a cannot settle b's lease"
        );
        b.complete(entry("m2", 1, 0)).await.unwrap();
        assert!(b.entry("m2".into()).await.unwrap().is_none());
        // A new attempt scheduled elsewhere supersedes a's: a loses it too.
        b.schedule(entry("m1", 2, far)).await.unwrap();
        let lost = a.extend(vec![entry("m1", 1, far)], far).await.unwrap();
        assert_eq!(lost, ["m1".to_string()]);
        a.cancel("m1".into()).await.unwrap();
        // A scheduled retry, a message adopted without a lease and a fallback handed on
        // in-process are not in doubt when claimed: none was marked sending.
        b.schedule(entry("m3", 2, 0)).await.unwrap();
        assert_eq!(
            a.hold(vec![entry("m4", 1, 0)], false).await.unwrap(),
            [true]
        );
        a.hand_off(entry("m5", 2, 0)).await.unwrap();
        let mut claimed = a.claim_due(2_000, 15_000, 10).await.unwrap();
        claimed.sort_by(|x, y| x.message_id.cmp(&y.message_id));
        let lapsed: Vec<(&str, bool)> = claimed
            .iter()
            .map(|e| (e.message_id.as_str(), e.lapsed))
            .collect();
        assert_eq!(lapsed, [("m3", false), ("m4", false), ("m5", false)]);
        for id in ["m3", "m4", "m5"] {
            a.cancel(id.into()).await.unwrap();
        }
    });
}

/// Two store instances (two Herald processes) race the same transitions of many messages
/// through their group-commit writers: each change is applied exactly once.
#[test]
fn grouped_transitions_from_two_writers_apply_each_change_once() {
    let names = Names::new("race", 1);
    block_on(async {
        let a = MongoDocumentStore::connect(MONGO, &names.base)
            .await
            .unwrap();
        let b = MongoDocumentStore::connect(MONGO, &names.base)
            .await
            .unwrap();
        let ids: Vec<String> = (0..200).map(|i| format!("welcome:r{i}")).collect();
        let records: Vec<MessageRecord> = ids
            .iter()
            .map(|id| {
                MessageRecord::from_triggered(
                    &TriggeredMessage {
                        id: id.clone(),
                        user_id: "u".into(),
                        campaign: "welcome".into(),
                        channel: Channel::Sms,
                        to: Some("+1555".into()),
                        body: "Hi".into(),
                        subject: None,
                        skipped: None,
                        trigger_at: 1,
                    },
                    2,
                )
            })
            .collect();
        a.insert_messages(records, 1).await.unwrap();
        let change = |event, pid: Option<&str>, expect: Option<&str>| StatusChange {
            event,
            at: 3,
            provider: Some("sim".into()),
            detail: None,
            provider_message_id: pid.map(str::to_string),
            attempt: Some(1),
            expect_provider_message_id: expect.map(str::to_string),
        };
        // Both instances record the same send, then the same delivery, all at once.
        for (event, pid, expect) in [
            (StatusEvent::Sent, Some("p-1"), None),
            (StatusEvent::Delivered, None, Some("p-1")),
        ] {
            let mut all = Vec::new();
            for id in &ids {
                for store in [&a, &b] {
                    all.push(store.transition(id.clone(), change(event, pid, expect)));
                }
            }
            let results = futures::future::join_all(all).await;
            let applied = results
                .iter()
                .filter(|r| matches!(r, Ok(TransitionResult::Applied(_))))
                .count();
            assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
            assert_eq!(applied, ids.len(), "{event:?}: one applied per message");
        }
        for id in &ids {
            let m = a.get_message(id.clone()).await.unwrap().unwrap();
            assert_eq!(m.status, MessageStatus::Delivered);
            let statuses: Vec<MessageStatus> = m.history.iter().map(|h| h.status).collect();
            assert_eq!(
                statuses,
                vec![
                    MessageStatus::Queued,
                    MessageStatus::Sent,
                    MessageStatus::Delivered
                ],
                "{id}"
            );
        }
    });
}
