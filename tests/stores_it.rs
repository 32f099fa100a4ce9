//! The Redis and MongoDB adapters against the real servers (scripts/backends.sh up): one
//! Redis, and the 3-primary Redis Cluster.

mod common;

use std::sync::Arc;

use common::*;
use herald::adapters::mongo::docs::MongoDocumentStore;
use herald::adapters::redis::connection::RedisTarget;
use herald::adapters::redis::retry::RedisRetrySchedule;
use herald::adapters::redis::state::RedisStateCache;
use herald::domain::campaign::{Channel, TriggeredMessage};
use herald::domain::event::decode;
use herald::domain::keys::message_fingerprint;
use herald::domain::message::{MessageRecord, MessageStatus, StatusChange, StatusEvent};
use herald::domain::user::{DedupLimits, Position, UserState};
use herald::ports::{
    DocumentStore, LoadedState, RetryEntry, RetrySchedule, StalledFrom, StateCache, StoredUser,
    TransitionResult, UserSnapshot,
};
use mongodb::bson::doc;

fn snapshot(user: &str, s: &UserState) -> Arc<UserSnapshot> {
    Arc::new(UserSnapshot {
        user_id: Arc::from(user),
        version: s.version + 1,
        profile: s.profile.clone(),
        positions: s.positions.clone(),
        seen: s.seen.entries().collect(),
        identity: s.identity.clone(),
    })
}

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

/// One Redis, and the cluster.
fn redis_targets() -> Vec<RedisTarget> {
    vec![
        RedisTarget::Single {
            url: REDIS.into(),
            retry_db: 1,
        },
        RedisTarget::Cluster {
            nodes: REDIS_CLUSTER.split(',').map(str::to_string).collect(),
        },
    ]
}

#[test]
fn the_state_cache_round_trips_misses_and_expires_on_one_redis_and_on_a_cluster() {
    for target in redis_targets() {
        let names = Names::new("cache", 1);
        block_on(async {
            let prefix = format!("{}:", names.base);
            let cache = RedisStateCache::connect(&target, &prefix, 60_000)
                .await
                .unwrap();
            let mut s = state("u-1");
            s.version = 4;
            let users: Vec<Arc<str>> = (0..300).map(|i| Arc::from(format!("u-{i}"))).collect();
            // Many users, spread over every slot of a cluster, in one call each way.
            let snaps: Vec<Arc<UserSnapshot>> = users
                .iter()
                .map(|u| Arc::new(UserSnapshot::of_state(u.clone(), &s)))
                .collect();
            assert_eq!(cache.load(users.clone()).await.unwrap(), vec![None; 300]);
            cache.save(snaps).await.unwrap();
            let back = cache.load(users.clone()).await.unwrap();
            assert!(back.iter().all(|b| b.as_ref() == Some(&s)), "{target:?}");
            assert!(back[0]
                .as_ref()
                .unwrap()
                .seen
                .contains(message_fingerprint("m1")));
            // An entry this release cannot read is a miss (MongoDB is read instead), and the
            // entries expire.
            let key = cache.key("u-7");
            assert!(key.ends_with("state:{u-7}"), "{key}");
            let mut conn = cluster_aware_connection(&target);
            let _: () = redis::cmd("SET")
                .arg(&key)
                .arg("garbage")
                .query(&mut conn)
                .unwrap();
            let ttl: i64 = redis::cmd("PTTL")
                .arg(cache.key("u-8"))
                .query(&mut conn)
                .unwrap();
            assert!(ttl > 0 && ttl <= 60_000, "{ttl}");
            let again = cache.load(vec![Arc::from("u-7")]).await.unwrap();
            assert_eq!(again, vec![None]);
            // A user marked in flux (its document being written) loads as a miss until its
            // entry is written again.
            let u9: Arc<str> = Arc::from("u-9");
            cache.begin_writes(vec![u9.clone()]).await.unwrap();
            assert_eq!(cache.load(vec![u9.clone()]).await.unwrap(), vec![None]);
            assert!(cache.load(vec![Arc::from("u-10")]).await.unwrap()[0].is_some());
            cache
                .save(vec![Arc::new(UserSnapshot::of_state(u9.clone(), &s))])
                .await
                .unwrap();
            assert_eq!(cache.load(vec![u9]).await.unwrap(), vec![Some(s.clone())]);
        });
    }
}

/// A state as a release that kept it in Redis wrote it (a hash beside a sorted set of dedup
/// fingerprints, or the schema-1 JSON string) loads, for users whose document has no
/// bookkeeping yet; a broken one is unreadable.
#[test]
fn the_state_cache_reads_what_earlier_releases_kept_in_redis() {
    let names = Names::new("legacy", 1);
    block_on(async {
        let prefix = format!("{}:", names.base);
        let target = RedisTarget::Single {
            url: REDIS.into(),
            retry_db: 1,
        };
        let cache = RedisStateCache::connect(&target, &prefix, 60_000)
            .await
            .unwrap();
        let client = redis::Client::open(REDIS).unwrap();
        let mut conn = client.get_connection().unwrap();
        let v1 = r#"{"user_id":"old","profile":{"traits":{"plan":"pro"},"tags":["vip"],"event_count":2,"events":{"buy":{"count":2,"first_at":5,"last_at":9}},"first_seen":5,"last_seen":9},"positions":[[0,41]],"seen":[["m-a",100],["m-b",101]]}"#;
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}user:old"))
            .arg(v1)
            .query(&mut conn)
            .unwrap();
        let v2 = r#"{"schema":2,"profile":{"traits":{"plan":"free"},"tags":[],"event_count":1,"events":{"buy":{"count":1,"first_at":5,"last_at":5}},"first_seen":5,"last_seen":5},"positions":[[3,17]]}"#;
        let _: () = redis::cmd("HSET")
            .arg(format!("{prefix}user:two"))
            .arg("v")
            .arg(6)
            .arg("o")
            .arg("123")
            .arg("s")
            .arg(v2)
            .query(&mut conn)
            .unwrap();
        let _: () = redis::cmd("ZADD")
            .arg(format!("{prefix}seen:two"))
            .arg(100)
            .arg(&message_fingerprint("m-z").to_be_bytes()[..])
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
        let loaded = cache
            .load_legacy(vec![
                Arc::from("old"),
                Arc::from("two"),
                Arc::from("bad"),
                Arc::from("none"),
            ])
            .await
            .unwrap();
        let Some(LoadedState::Found(old)) = &loaded[0] else {
            panic!("schema 1 did not load: {:?}", loaded[0]);
        };
        assert_eq!(old.version, 0);
        assert_eq!(old.profile.event_count, 2);
        assert_eq!(old.last_position(0), Some(41));
        assert!(old.seen.contains(message_fingerprint("m-b")));
        let Some(LoadedState::Found(two)) = &loaded[1] else {
            panic!("schema 2 did not load: {:?}", loaded[1]);
        };
        assert_eq!(
            two.version, 0,
            "this release's first write creates version 1"
        );
        assert_eq!(two.last_position(3), Some(17));
        assert!(two.seen.contains(message_fingerprint("m-z")));
        assert!(
            matches!(&loaded[2], Some(LoadedState::Unreadable(why)) if why.contains("does not parse")),
            "{:?}",
            loaded[2]
        );
        assert_eq!(loaded[3], None);
    });
}

/// MongoDB is the system of record: a document holds the profile and the bookkeeping, is
/// replaced only at the version its writer loaded, tells a retried statement of the same
/// flush from another writer's, and loads back exactly.
#[test]
fn mongo_users_hold_the_whole_state_and_are_fenced_by_version() {
    let names = Names::new("mongo", 1);
    block_on(async {
        let store = MongoDocumentStore::connect(MONGO, &names.base, "majority")
            .await
            .unwrap();
        store.ensure_indexes().await.unwrap();
        let s = state("u-1");
        let snap = snapshot("u-1", &s);
        let none = herald::ports::UsersWritten::default();
        assert_eq!(
            store
                .upsert_users(vec![snap.clone()], 7, 1000)
                .await
                .unwrap(),
            none
        );
        assert_eq!(
            store
                .upsert_users(vec![snap.clone()], 7, 2000)
                .await
                .unwrap(),
            none,
            "the same flush's statement again (its answer lost) is not stale"
        );
        assert_eq!(
            store
                .upsert_users(vec![snap.clone()], 8, 2000)
                .await
                .unwrap()
                .stale,
            vec![Arc::<str>::from("u-1")],
            "another writer of the same version is stale"
        );
        let users = mongo_users(&names).await;
        assert_eq!(users.len(), 1);
        assert_eq!(
            users["u-1"],
            s.profile.to_view(),
            "booleans, floats, big ints and nesting survive"
        );
        let loaded = store
            .load_users(vec![Arc::from("u-1"), Arc::from("nobody")])
            .await
            .unwrap();
        let StoredUser::Found(back) = &loaded[0] else {
            panic!("not found: {:?}", loaded[0]);
        };
        let mut want = s.clone();
        want.version = 1;
        assert_eq!(back, &want, "profile, positions and window round trip");
        assert_eq!(loaded[1], StoredUser::Absent);
        // Version 2 lands; a late writer still at version 0 or 1 is refused.
        let mut newer = (*snap).clone();
        newer.version = 2;
        newer.profile.event_count = 99;
        assert_eq!(
            store
                .upsert_users(vec![Arc::new(newer)], 9, 3000)
                .await
                .unwrap(),
            none
        );
        for late_version in [1, 2] {
            let mut late = (*snap).clone();
            late.version = late_version;
            let written = store
                .upsert_users(vec![Arc::new(late)], 10, 4000)
                .await
                .unwrap();
            assert_eq!(written.stale, vec![Arc::<str>::from("u-1")]);
        }
        assert_eq!(mongo_users(&names).await["u-1"].event_count, 99);
        let states = stored_states(&names).await;
        assert_eq!(states["u-1"].version, 2);
        assert_eq!(states["u-1"].positions[&2], 8);
        assert!(remembers(&states["u-1"], "m1") && remembers(&states["u-1"], "m2"));
    });
}

/// A document as the release before this one wrote it (the profile with a top-level
/// `version`, no `_herald`) loads as a profile without bookkeeping, and this release's first
/// write of the user (version 1) replaces it.
#[test]
fn mongo_documents_of_the_previous_release_load_and_are_taken_over() {
    let names = Names::new("mongo_old", 1);
    block_on(async {
        let store = MongoDocumentStore::connect(MONGO, &names.base, "1")
            .await
            .unwrap();
        let client = mongodb::Client::with_uri_str(MONGO).await.unwrap();
        let users = client
            .database(&names.base)
            .collection::<mongodb::bson::Document>("users");
        users
            .insert_one(doc! {
                "_id": "old", "traits": {"plan": "pro"}, "tags": ["vip"], "event_count": 2_i64,
                "events": {"buy": {"count": 2_i64,
                    "first_at": mongodb::bson::DateTime::from_millis(5),
                    "last_at": mongodb::bson::DateTime::from_millis(9)}},
                "first_seen": mongodb::bson::DateTime::from_millis(5),
                "last_seen": mongodb::bson::DateTime::from_millis(9),
                "updated_at": mongodb::bson::DateTime::from_millis(9),
                "version": 17_i64, "schema_version": 2,
            })
            .await
            .unwrap();
        let loaded = store.load_users(vec![Arc::from("old")]).await.unwrap();
        let StoredUser::WithoutBookkeeping(profile) = &loaded[0] else {
            panic!("{:?}", loaded[0]);
        };
        assert_eq!(profile.event_count, 2);
        assert_eq!(profile.events.get("buy").unwrap().last_at, 9);
        let mut s = UserState {
            profile: profile.clone(),
            ..UserState::default()
        };
        s.profile.event_count = 3;
        assert_eq!(
            store
                .upsert_users(vec![snapshot("old", &s)], 1, 10)
                .await
                .unwrap(),
            herald::ports::UsersWritten::default()
        );
        let doc = users.find_one(doc! {"_id": "old"}).await.unwrap().unwrap();
        assert!(doc.get("version").is_none(), "the old bookkeeping is gone");
        assert_eq!(int(doc.get_document("_herald").unwrap().get("v")), 1);
        // And a second writer that also took over from the old document is stale.
        assert_eq!(
            store
                .upsert_users(vec![snapshot("old", &s)], 2, 10)
                .await
                .unwrap()
                .stale
                .len(),
            1
        );
    });
}

#[test]
fn mongo_messages_follow_the_status_machine() {
    let names = Names::new("msgs", 1);
    block_on(async {
        let store = MongoDocumentStore::connect(MONGO, &names.base, "majority")
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
            policy_skip: None,
            failed: None,
            held_until: None,
            trigger_at: 5,
        };
        let record = MessageRecord::from_triggered(&m, 10);
        // The flush that creates a message learns so (and only it may dispatch it), also when
        // it asks again after a lost answer; another flush finds it existing.
        assert_eq!(
            store
                .insert_messages(vec![record.clone().into()], 7)
                .await
                .unwrap()
                .created,
            vec![record.id.clone()]
        );
        assert_eq!(
            store
                .insert_messages(vec![record.clone().into()], 7)
                .await
                .unwrap()
                .created,
            vec![record.id.clone()]
        );
        assert!(store
            .insert_messages(vec![record.clone().into()], 8)
            .await
            .unwrap()
            .created
            .is_empty());
        let change = |event, pid: Option<&str>, expect: Option<&str>| StatusChange {
            event,
            at: 20,
            provider: Some("sim".into()),
            detail: None,
            provider_message_id: pid.map(str::to_string),
            attempt: Some(1),
            expect_provider_message_id: expect.map(str::to_string),
            look_up_at: None,
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
        let sent = StatusChange {
            look_up_at: Some(1_000),
            ..change(StatusEvent::Sent, Some("p-1"), None)
        };
        assert!(matches!(
            store.transition(m.id.clone(), sent).await.unwrap(),
            TransitionResult::Applied(_)
        ));
        // A `sent` message's lookup falls due at its time, and one caller takes it.
        assert!(store.lookups_due(999, 10).await.unwrap().is_empty());
        let due = store.lookups_due(1_000, 10).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].lookup_at, Some(1_000));
        assert!(store
            .claim_lookup(m.id.clone(), 1_000, Some(5_000))
            .await
            .unwrap());
        assert!(
            !store
                .claim_lookup(m.id.clone(), 1_000, Some(6_000))
                .await
                .unwrap(),
            "a lookup is taken once"
        );
        assert!(store.lookups_due(4_999, 10).await.unwrap().is_empty());
        assert_eq!(store.lookups_due(5_000, 10).await.unwrap().len(), 1);
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
        // Delivered: no lookup any more.
        assert_eq!(stored.lookup_at, None);
        assert!(store
            .lookups_due(10_000_000_000_000, 10)
            .await
            .unwrap()
            .is_empty());
        assert!(!store.claim_lookup(m.id.clone(), 5_000, None).await.unwrap());
        assert_eq!(stored.history.len(), 3, "queued, sent, delivered");
        // A callback whose send is not recorded yet is kept (up to a cap), read back, and
        // forgotten once dropped; inserting its message applies nothing by itself.
        let cb = herald::ports::Callback {
            provider: "sim".into(),
            message_id: Some("welcome:m9".into()),
            provider_message_id: Some("p-9".into()),
            status: herald::ports::CallbackStatus::Delivered,
            error: None,
            retryable: false,
            suppress: None,
        };
        assert!(store
            .keep_early_callback("welcome:m9".into(), cb.clone(), 123_000, 2)
            .await
            .unwrap());
        assert!(store
            .keep_early_callback("welcome:m9".into(), cb.clone(), 124_000, 2)
            .await
            .unwrap());
        assert!(
            !store
                .keep_early_callback("welcome:m9".into(), cb.clone(), 125_000, 2)
                .await
                .unwrap(),
            "over the cap"
        );
        let mut later = record.clone();
        later.id = "welcome:m9".into();
        store.insert_messages(vec![later.into()], 9).await.unwrap();
        let early = store
            .get_message("welcome:m9".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(early.status, MessageStatus::Queued, "applied unchecked");
        let kept = store.early_callbacks(10).await.unwrap();
        assert_eq!(kept.len(), 2);
        assert_eq!(kept[0].callback.as_ref().unwrap(), &cb);
        assert_eq!(kept[0].expires_at_ms, 123_000);
        store
            .drop_early_callback(kept[0].key.clone())
            .await
            .unwrap();
        assert_eq!(store.early_callbacks(10).await.unwrap().len(), 1);
        // Only the message no send was recorded for waits (the delivered one does not).
        let waiting: Vec<String> = store
            .stalled_messages(4_102_444_800_000, StalledFrom::Start, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(waiting, vec!["welcome:m9".to_string()]);
    });
}

/// The reconciler's query: messages waiting on a send (`queued`, `retrying`) unchanged since
/// a time, paged in `_id` order; `sent` and terminal ones are not listed.
#[test]
fn mongo_lists_stalled_messages_in_pages() {
    let names = Names::new("stalled", 1);
    block_on(async {
        let store = MongoDocumentStore::connect(MONGO, &names.base, "majority")
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
                policy_skip: None,
                failed: None,
                held_until: None,
                trigger_at: at,
            };
            MessageRecord::from_triggered(&m, at)
        };
        // 0..10 stored at t = 1,000; 10..12 at t = 9,000 (too recent).
        let mut records: Vec<_> = (0..10).map(|i| record(i, 1_000)).collect();
        records.extend((10..12).map(|i| record(i, 9_000)));
        store
            .insert_messages(records.into_iter().map(Into::into).collect(), 1)
            .await
            .unwrap();
        let change = |event, attempt| StatusChange {
            event,
            at: 2_000,
            provider: Some("sim".into()),
            detail: None,
            provider_message_id: Some(format!("p-{attempt}")),
            attempt: Some(attempt),
            expect_provider_message_id: None,
            look_up_at: None,
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
        let page = |from: StalledFrom, limit: usize| {
            let store = &store;
            async move { store.stalled_messages(5_000, from, limit).await.unwrap() }
        };
        // In `updated_at` order: the first page is inside the millisecond of 1,000 (seven
        // messages share it), which is then read by `_id`, then what came after it.
        let first = page(StalledFrom::Start, 4).await;
        assert_eq!(first.len(), 4);
        assert!(first.iter().all(|r| r.updated_at == 1_000));
        let tied = |after_id: &str| StalledFrom::Tied {
            at: 1_000,
            after_id: after_id.into(),
        };
        assert_eq!(
            ids(page(tied(""), 4).await),
            ["welcome:m00", "welcome:m04", "welcome:m05", "welcome:m06"]
        );
        assert_eq!(
            ids(page(tied("welcome:m06"), 4).await),
            ["welcome:m07", "welcome:m08", "welcome:m09"]
        );
        assert_eq!(
            ids(page(StalledFrom::After(1_000), 4).await),
            ["welcome:m02"]
        );
        assert!(page(StalledFrom::After(2_000), 4).await.is_empty());
        assert_eq!(
            ids(store
                .stalled_messages(1_500, StalledFrom::Start, 100)
                .await
                .unwrap())
            .len(),
            7,
            "m02 changed at 2,000: not idle since 1,500"
        );
    });
}

/// Leases belong to the instance that holds them: `hold` creates only absent entries, a
/// lease claimed by another instance is reported lost to its old holder's `extend`, and only
/// its holder completes it — on one Redis and on the cluster.
#[test]
fn redis_retry_leases_belong_to_their_holder() {
    for target in redis_targets() {
        retry_leases_belong_to_their_holder(&target);
    }
}

fn retry_leases_belong_to_their_holder(target: &RedisTarget) {
    let names = Names::new("leases", 1);
    block_on(async {
        let prefix = format!("{}:", names.base);
        let a = RedisRetrySchedule::connect(target, &prefix).await.unwrap();
        let b = RedisRetrySchedule::connect(target, &prefix).await.unwrap();
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

/// The schedule is spread over parts (no hot key; one slot each on a cluster): many entries
/// claim, count and settle across all of them, and a loss of Redis's data is noticed.
#[test]
fn the_retry_schedule_spreads_over_parts_and_notices_a_loss() {
    for target in redis_targets() {
        let names = Names::new("parts", 1);
        block_on(async {
            let prefix = format!("{}:", names.base);
            let a = RedisRetrySchedule::connect(&target, &prefix).await.unwrap();
            assert!(
                a.lost_entries().await.unwrap(),
                "a fresh schedule reads as lost"
            );
            assert!(!a.lost_entries().await.unwrap());
            let entries: Vec<RetryEntry> = (0..200)
                .map(|i| RetryEntry {
                    message_id: format!("c:m{i}"),
                    attempt: 1,
                    resend: 0,
                    due_ms: 1_000 + i,
                    lapsed: false,
                })
                .collect();
            assert!(a
                .hold(entries.clone(), false)
                .await
                .unwrap()
                .iter()
                .all(|c| *c));
            assert_eq!(a.pending().await.unwrap(), 200);
            assert_eq!(a.next_due().await.unwrap(), Some(1_000));
            let mut claimed = Vec::new();
            loop {
                let batch = a.claim_due(10_000, 15_000, 64).await.unwrap();
                let n = batch.len();
                claimed.extend(batch);
                if n < 64 {
                    break;
                }
            }
            assert_eq!(claimed.len(), 200, "{target:?}");
            assert!(a.claim_due(10_000, 15_000, 64).await.unwrap().is_empty());
            assert!(a.extend(claimed.clone(), 50_000).await.unwrap().is_empty());
            for e in claimed {
                a.complete(e).await.unwrap();
            }
            assert_eq!(a.pending().await.unwrap(), 0);
            // The data goes (a flush): the next check says so, once.
            let mut conn = cluster_aware_connection(&target);
            for p in 0..16 {
                let _: () = redis::cmd("DEL")
                    .arg(format!("{prefix}retry:{{r{p}}}:mark"))
                    .query(&mut conn)
                    .unwrap();
            }
            assert!(a.lost_entries().await.unwrap());
            assert!(!a.lost_entries().await.unwrap());
        });
    }
}

/// Two store instances (two Herald processes) race the same transitions of many messages
/// through their group-commit writers: each change is applied exactly once.
#[test]
fn grouped_transitions_from_two_writers_apply_each_change_once() {
    let names = Names::new("race", 1);
    block_on(async {
        let a = MongoDocumentStore::connect(MONGO, &names.base, "majority")
            .await
            .unwrap();
        let b = MongoDocumentStore::connect(MONGO, &names.base, "majority")
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
                        policy_skip: None,
                        failed: None,
                        held_until: None,
                        trigger_at: 1,
                    },
                    2,
                )
            })
            .collect();
        a.insert_messages(records.into_iter().map(Into::into).collect(), 1)
            .await
            .unwrap();
        let change = |event, pid: Option<&str>, expect: Option<&str>| StatusChange {
            event,
            at: 3,
            provider: Some("sim".into()),
            detail: None,
            provider_message_id: pid.map(str::to_string),
            attempt: Some(1),
            expect_provider_message_id: expect.map(str::to_string),
            look_up_at: None,
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
