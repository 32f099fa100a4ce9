//! The Redis and MongoDB adapters against the real servers (scripts/backends.sh up).

mod common;

use std::sync::Arc;

use common::*;
use herald::adapters::mongo_docs::MongoDocumentStore;
use herald::adapters::redis_state::RedisStateStore;
use herald::domain::campaign::{Channel, TriggeredMessage};
use herald::domain::event::decode;
use herald::domain::message::{MessageRecord, MessageStatus, StatusChange, StatusEvent};
use herald::domain::user::{DedupLimits, Position, UserState};
use herald::ports::{DocumentStore, StateStore, TransitionResult};

fn state(user: &str) -> UserState {
    let mut s = UserState::new(user);
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
fn redis_state_round_trips() {
    let names = Names::new("redis", 1);
    block_on(async {
        let store = RedisStateStore::connect(REDIS, &format!("{}:", names.base))
            .await
            .unwrap();
        assert_eq!(store.load("nobody").await.unwrap(), None);
        let s = state("u-1");
        store.save(vec![Arc::new(s.clone())]).await.unwrap();
        let back = store.load("u-1").await.unwrap().unwrap();
        assert_eq!(back, s);
        assert_eq!(back.last_position(2), Some(8));
        assert!(back.seen.contains("m1"));
    });
}

#[test]
fn mongo_users_upsert_is_idempotent_and_exact() {
    let names = Names::new("mongo", 1);
    block_on(async {
        let store = MongoDocumentStore::connect(MONGO, &names.base)
            .await
            .unwrap();
        store.ensure_indexes().await.unwrap();
        let s = Arc::new(state("u-1"));
        store.upsert_users(vec![s.clone()], 1000).await.unwrap();
        store.upsert_users(vec![s.clone()], 2000).await.unwrap();
        let users = mongo_users(&names).await;
        assert_eq!(users.len(), 1);
        assert_eq!(
            users["u-1"], s.profile,
            "booleans, floats, big ints and nesting survive"
        );
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
            skipped: None,
            trigger_at: 5,
        };
        let record = MessageRecord::from_triggered(&m, 10);
        store.insert_messages(vec![record.clone()]).await.unwrap();
        store.insert_messages(vec![record.clone()]).await.unwrap();
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
        store.insert_messages(vec![later]).await.unwrap();
        let early = store
            .get_message("welcome:m9".into())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(early.status, MessageStatus::Delivered);
        assert!(store.queued_messages(10).await.unwrap().is_empty());
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
                        skipped: None,
                        trigger_at: 1,
                    },
                    2,
                )
            })
            .collect();
        a.insert_messages(records).await.unwrap();
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
