//! MongoDB document store: `users` (the system of record of each user's state: replacements
//! through the multi-statement `update` command, `ordered: false`, each fenced by the version
//! its state was loaded at — `users.rs` — so a replay or a half-applied batch is harmless and
//! a previous owner's late write is refused) and `messages` (insert-if-absent, then
//! transitions through the status machine with an optimistic `version` check).

use std::sync::Arc;
use std::time::Duration;

use ahash::AHashSet;
use futures::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, Bson, DateTime, Document};
use mongodb::options::ClientOptions;
use mongodb::{Client, Database};

use crate::domain::campaign::Channel;
use crate::domain::message::{HistoryEntry, MessageRecord, MessageStatus, StatusChange};
use crate::domain::suppression::{normalise_address, Suppression, SuppressionReason};
use crate::ports::{
    BoxFut, Callback, DocumentStore, EarlyCallback, FeedSink, InsertedMessages, MessageChange,
    StalledFrom, StoreError, StoredUser, TransitionResult, UserSnapshot, UsersWritten,
};

use super::feed_cursor::{pending_fields, FeedCursor, Publication};
use super::transitions::{self, transition_alone, Codec, Job, ReadJob};
use super::users;
use super::{bson_i64, ids_with_token, transient};
use crate::domain::feed::state_at;
use tokio::sync::{mpsc, oneshot};

/// Statements per `update` command (the test server's sweet spot; real MongoDB takes more).
const CHUNK: usize = 1000;

#[derive(Clone)]
pub struct MongoDocumentStore {
    db: Database,
    /// `writeConcern` of the `users` and `messages` writes (`mongo.write_concern`).
    write_concern: Document,
    /// The group-commit writer of status transitions.
    transitions: mpsc::UnboundedSender<Job>,
    /// The grouped reader of single messages.
    reads: mpsc::UnboundedSender<ReadJob>,
    /// With feeds on: the cursor every message write carries, and their publisher.
    feeds: Option<FeedCursor>,
}

impl MongoDocumentStore {
    /// Hands every change of a message to `sink` once written, durably: each write carries the
    /// feed cursor (`adapters/mongo/feed_cursor.rs`), so a change a crash kept from the feeds
    /// is published by the sweep.
    pub fn with_feeds(mut self, sink: Arc<dyn FeedSink>) -> Self {
        let feeds = FeedCursor::start(self.db.clone(), sink, system_now_ms);
        self.transitions = transitions::spawn(self.db.clone(), codec(), Some(feeds.clone()));
        self.feeds = Some(feeds);
        self
    }

    /// Connects; `write_concern` is `mongo.write_concern` (`majority`, or a number of nodes).
    pub async fn connect(
        url: &str,
        database: &str,
        write_concern: &str,
    ) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(url)
            .await
            .map_err(|e| StoreError::BadData {
                key: "mongo.url".into(),
                detail: e.to_string(),
            })?;
        options.server_selection_timeout = Some(Duration::from_secs(5));
        options.connect_timeout = Some(Duration::from_secs(2));
        options.app_name = Some("herald".into());
        let client = Client::with_options(options).map_err(transient)?;
        let db = client.database(database);
        Ok(MongoDocumentStore {
            transitions: transitions::spawn(db.clone(), codec(), None),
            reads: transitions::spawn_reader(db.clone(), codec()),
            write_concern: write_concern_document(write_concern),
            db,
            feeds: None,
        })
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! {"ping": 1})
            .await
            .map(|_| ())
            .map_err(transient)
    }

    /// Indexes the queries need (idempotent).
    pub async fn ensure_indexes(&self) -> Result<(), StoreError> {
        for (coll, key, name) in [
            ("messages", doc! {"status": 1}, "status_1"),
            // The reconciler pages waiting messages in `updated_at` order straight from this
            // index (the two statuses' ranges merged, never sorted or rescanned).
            (
                "messages",
                doc! {"status": 1, "updated_at": 1},
                "status_1_updated_at_1",
            ),
            // Status lookups read due ones soonest first (only `sent` messages carry one).
            (
                "messages",
                doc! {"status": 1, "lookup_at": 1},
                "status_1_lookup_at_1",
            ),
            ("early_callbacks", doc! {"message_id": 1}, "message_id_1"),
            // The read API: a user's messages, newest first.
            (
                "messages",
                doc! {"user_id": 1, "created_at": -1},
                "user_id_1_created_at_-1",
            ),
            // Twilio callbacks name only the provider's id.
            (
                "messages",
                doc! {"provider_message_id": 1},
                "provider_message_id_1",
            ),
        ] {
            self.db
                .run_command(doc! {
                    "createIndexes": coll,
                    "indexes": [ { "key": key, "name": name } ],
                })
                .await
                .map_err(transient)?;
        }
        Ok(())
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Runs `update` commands of at most [`CHUNK`] statements (`ordered: false`: the other
    /// statements of every chunk are written whatever one of them does). Returns the `_id`s
    /// of statements that hit a duplicate key (an upsert whose filter did not match an
    /// existing document) and of those the server refused, with its message (bad data: never
    /// succeeds on retry).
    async fn update_many(
        db: &Database,
        coll: &str,
        statements: Vec<Document>,
        write_concern: &Document,
    ) -> Result<ChunkOutcome, StoreError> {
        let mut out = ChunkOutcome::default();
        for chunk in statements.chunks(CHUNK) {
            let reply = db
                .run_command(doc! {
                    "update": coll,
                    "updates": chunk.to_vec(),
                    "ordered": false,
                    "writeConcern": write_concern.clone(),
                })
                .await
                .map_err(transient)?;
            if let Ok(upserted) = reply.get_array("upserted") {
                out.upserted.extend(upserted.iter().filter_map(|u| {
                    let index = u.as_document()?.get("index").and_then(bson_i64)?;
                    let q = chunk.get(index as usize)?.get_document("q").ok()?;
                    q.get_str("_id").ok().map(str::to_string)
                }));
            }
            let Ok(errors) = reply.get_array("writeErrors") else {
                continue;
            };
            for error in errors.iter().filter_map(Bson::as_document) {
                let detail = error.get_str("errmsg").unwrap_or("write error").to_string();
                let id = error
                    .get("index")
                    .and_then(bson_i64)
                    .and_then(|i| chunk.get(i as usize))
                    .and_then(|st| st.get_document("q").ok())
                    .and_then(|q| q.get_str("_id").ok())
                    .map(str::to_string);
                let Some(id) = id else {
                    // A refusal we cannot attribute: retrying is all that is safe.
                    return Err(StoreError::BadData {
                        key: coll.to_string(),
                        detail,
                    });
                };
                if error.get("code").and_then(bson_i64) == Some(11000) {
                    out.duplicates.push(id);
                } else {
                    out.refused.push((id, detail));
                }
            }
        }
        Ok(out)
    }
}

/// `{w: "majority"}`, or `{w: <n>}` for a number of nodes.
fn write_concern_document(w: &str) -> Document {
    match w.parse::<i32>() {
        Ok(n) => doc! {"w": n},
        Err(_) => doc! {"w": w},
    }
}

/// Per-statement outcomes of a bulk `update`: the `_id`s it inserted, and its errors.
#[derive(Debug, Default)]
struct ChunkOutcome {
    upserted: Vec<String>,
    duplicates: Vec<String>,
    refused: Vec<(String, String)>,
}

pub(super) fn date(ms: i64) -> Bson {
    Bson::DateTime(DateTime::from_millis(ms))
}

fn opt_str(v: &Option<String>) -> Bson {
    v.as_ref().map_or(Bson::Null, |s| Bson::String(s.clone()))
}

/// The field of a `messages` document naming the flush that created it (a random token):
/// after a write whose answer was lost, it tells this flush's inserts from older documents.
const INSERTED_BY: &str = "inserted_by";

fn message_document(m: &MessageRecord, version: i64) -> Document {
    let history: Vec<Bson> = m
        .history
        .iter()
        .map(|h| {
            Bson::Document(doc! {
                "status": h.status.as_str(),
                "at": date(h.at),
                "provider": opt_str(&h.provider),
                "detail": opt_str(&h.detail),
            })
        })
        .collect();
    let mut d = doc! {
        "_id": &m.id,
        "user_id": &m.user_id,
        "campaign": &m.campaign,
        "channel": m.channel.as_str(),
        "to": opt_str(&m.to),
        "body": &m.body,
        "subject": opt_str(&m.subject),
        "provider": opt_str(&m.provider),
        "status": m.status.as_str(),
        "attempts": m.attempts as i64,
        "provider_message_id": opt_str(&m.provider_message_id),
        "error": opt_str(&m.error),
        "created_at": date(m.created_at),
        "updated_at": date(m.updated_at),
        "history": history,
        "version": version,
    };
    if let Some(at) = m.held_until {
        d.insert("held_until", date(at));
    }
    if let Some(at) = m.lookup_at {
        d.insert("lookup_at", date(at));
    }
    d
}

/// The wall clock in milliseconds (the feed sweep's idea of "idle").
fn system_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Up to `limit` `messages` matching `filter`, in `sort` order.
async fn find_messages(
    db: Database,
    filter: Document,
    sort: Document,
    limit: usize,
) -> Result<Vec<MessageRecord>, StoreError> {
    let docs: Vec<Document> = db
        .collection::<Document>("messages")
        .find(filter)
        .sort(sort)
        .limit(limit as i64)
        .await
        .map_err(transient)?
        .try_collect()
        .await
        .map_err(transient)?;
    docs.iter()
        .map(|d| parse_message(d).map(|(r, _)| r))
        .collect()
}

fn get_opt_str(d: &Document, k: &str) -> Option<String> {
    d.get_str(k).ok().map(str::to_string)
}

fn get_ms(d: &Document, k: &str) -> i64 {
    match d.get(k) {
        Some(Bson::DateTime(t)) => t.timestamp_millis(),
        Some(other) => bson_i64(other).unwrap_or(0),
        None => 0,
    }
}

pub(super) fn parse_message(d: &Document) -> Result<(MessageRecord, i64), StoreError> {
    let bad = |what: &str| StoreError::BadData {
        key: format!("messages/{}", d.get_str("_id").unwrap_or("?")),
        detail: format!("unreadable field {what}"),
    };
    let status = d
        .get_str("status")
        .ok()
        .and_then(MessageStatus::parse)
        .ok_or_else(|| bad("status"))?;
    let channel = d
        .get_str("channel")
        .ok()
        .and_then(Channel::parse)
        .ok_or_else(|| bad("channel"))?;
    let history = d
        .get_array("history")
        .map(|a| {
            a.iter()
                .filter_map(Bson::as_document)
                .filter_map(|h| {
                    Some(HistoryEntry {
                        status: MessageStatus::parse(h.get_str("status").ok()?)?,
                        at: get_ms(h, "at"),
                        provider: get_opt_str(h, "provider"),
                        detail: get_opt_str(h, "detail"),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let record = MessageRecord {
        id: d.get_str("_id").map_err(|_| bad("_id"))?.to_string(),
        user_id: get_opt_str(d, "user_id").unwrap_or_default(),
        campaign: get_opt_str(d, "campaign").unwrap_or_default(),
        channel,
        to: get_opt_str(d, "to"),
        body: get_opt_str(d, "body").unwrap_or_default(),
        subject: get_opt_str(d, "subject"),
        provider: get_opt_str(d, "provider"),
        status,
        attempts: d.get("attempts").and_then(bson_i64).unwrap_or(0) as u32,
        provider_message_id: get_opt_str(d, "provider_message_id"),
        error: get_opt_str(d, "error"),
        created_at: get_ms(d, "created_at"),
        updated_at: get_ms(d, "updated_at"),
        history,
        lookup_at: d.get("lookup_at").map(|_| get_ms(d, "lookup_at")),
        held_until: d.get("held_until").map(|_| get_ms(d, "held_until")),
    };
    let version = d.get("version").and_then(bson_i64).unwrap_or(0);
    Ok((record, version))
}

/// Read-modify-write of one message through the domain's status machine, retried on a
/// concurrent update (optimistic `version`).
fn codec() -> Codec {
    Codec {
        parse: parse_message,
        render: message_document,
    }
}

impl DocumentStore for MongoDocumentStore {
    fn load_users(&self, users: Vec<Arc<str>>) -> BoxFut<Result<Vec<StoredUser>, StoreError>> {
        let db = self.db.clone();
        async move { users::load(&db, &users).await }.boxed()
    }

    fn upsert_users(
        &self,
        users: Vec<Arc<UserSnapshot>>,
        token: u64,
        now_ms: i64,
    ) -> BoxFut<Result<UsersWritten, StoreError>> {
        let db = self.db.clone();
        let write_concern = self.write_concern.clone();
        async move {
            let statements: Vec<Document> = users
                .iter()
                .map(|u| {
                    doc! {
                        "q": users::fence(u),
                        "u": users::user_document(u, token, now_ms),
                        "upsert": true,
                    }
                })
                .collect();
            let outcome = Self::update_many(&db, "users", statements, &write_concern).await?;
            let find = |id: &str| {
                users
                    .iter()
                    .find(|u| &*u.user_id == id)
                    .map(|u| u.user_id.clone())
            };
            // A statement whose filter missed collided on `_id`: the document moved on —
            // by another writer (stale), or by this very statement in an earlier try whose
            // answer was lost (its token says so).
            let mut stale = Vec::new();
            if !outcome.duplicates.is_empty() {
                let missed: Vec<&str> = outcome.duplicates.iter().map(String::as_str).collect();
                let ours: AHashSet<String> =
                    ids_with_token(&db, "users", &missed, "_herald.w", token as i64)
                        .await?
                        .into_iter()
                        .collect();
                stale = missed
                    .iter()
                    .filter(|id| !ours.contains(**id))
                    .filter_map(|id| find(id))
                    .collect();
            }
            Ok(UsersWritten {
                stale,
                refused: outcome
                    .refused
                    .into_iter()
                    .filter_map(|(id, d)| Some((find(&id)?, d)))
                    .collect(),
            })
        }
        .boxed()
    }

    fn remove_created_messages(
        &self,
        ids: Vec<String>,
        token: u64,
    ) -> BoxFut<Result<(), StoreError>> {
        let db = self.db.clone();
        let write_concern = self.write_concern.clone();
        async move {
            if ids.is_empty() {
                return Ok(());
            }
            db.run_command(doc! {
                "delete": "messages",
                "deletes": [ { "q": { "_id": { "$in": ids }, INSERTED_BY: token as i64 }, "limit": 0 } ],
                "ordered": false,
                "writeConcern": write_concern,
            })
            .await
            .map(|_| ())
            .map_err(transient)
        }
        .boxed()
    }

    fn insert_messages(
        &self,
        messages: Vec<Arc<MessageRecord>>,
        token: u64,
    ) -> BoxFut<Result<InsertedMessages, StoreError>> {
        let db = self.db.clone();
        let write_concern = self.write_concern.clone();
        let feeds = self.feeds.is_some();
        async move {
            let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
            let statements: Vec<Document> = messages
                .iter()
                .map(|m| {
                    let mut created = message_document(m, 0);
                    created.insert(INSERTED_BY, token as i64);
                    if feeds {
                        created.extend(pending_fields(0));
                    }
                    doc! {
                        "q": { "_id": &m.id },
                        "u": { "$setOnInsert": created },
                        "upsert": true,
                    }
                })
                .collect();
            // A duplicate key here is two inserts racing: the message exists, as wanted.
            let outcome = Self::update_many(&db, "messages", statements, &write_concern).await?;
            let mut inserted = outcome.upserted;
            if inserted.len() + outcome.refused.len() < ids.len() {
                // Existing ones: some may be this flush's own, from an attempt whose answer
                // was lost. Their token says so (rare: a re-applied trigger, a retried write).
                let created: AHashSet<&str> = inserted
                    .iter()
                    .chain(outcome.refused.iter().map(|(id, _)| id))
                    .map(String::as_str)
                    .collect();
                let existing: Vec<&str> = ids
                    .iter()
                    .map(String::as_str)
                    .filter(|id| !created.contains(id))
                    .collect();
                inserted.extend(
                    ids_with_token(&db, "messages", &existing, INSERTED_BY, token as i64).await?,
                );
            }
            Ok(InsertedMessages {
                created: inserted,
                refused: outcome.refused,
            })
        }
        .boxed()
    }

    fn feeds(&self) -> bool {
        self.feeds.is_some()
    }

    fn feed_created(&self, records: Vec<MessageRecord>) {
        let Some(feeds) = &self.feeds else { return };
        let mut changes = Vec::new();
        let mut cursors = Vec::new();
        for record in records {
            let len = record.history.len() as u32;
            cursors.push((record.id.clone(), 0, len as i64));
            for seq in feeds.plan(&record.id, 0, len)..len {
                changes.push(MessageChange {
                    record: state_at(&record, seq as usize),
                    seq,
                });
            }
        }
        feeds.offer(Publication { changes, cursors });
    }

    fn transition(
        &self,
        id: String,
        change: StatusChange,
    ) -> BoxFut<Result<TransitionResult, StoreError>> {
        let (reply, answer) = oneshot::channel();
        let queued = self.transitions.send(Job {
            id: id.clone(),
            change: change.clone(),
            reply,
        });
        let db = self.db.clone();
        let feeds = self.feeds.clone();
        async move {
            if queued.is_ok() {
                if let Ok(result) = answer.await {
                    return result;
                }
            }
            // The writer's runtime is gone (a store used across runtimes): apply it alone (its
            // cursor stays pending; the sweep publishes it).
            transition_alone(&db, &codec(), &id, &change, feeds.is_some()).await
        }
        .boxed()
    }

    fn keep_early_callback(
        &self,
        message_id: String,
        callback: Callback,
        expires_at_ms: i64,
        max: u64,
    ) -> BoxFut<Result<bool, StoreError>> {
        let db = self.db.clone();
        async move {
            let early = db.collection::<Document>("early_callbacks");
            // The collection's size from its metadata: no scan per kept callback.
            let kept = early.estimated_document_count().await.map_err(transient)?;
            if kept >= max {
                return Ok(false);
            }
            let json = serde_json::to_string(&callback).map_err(|e| StoreError::BadData {
                key: message_id.clone(),
                detail: format!("callback not serialisable: {e}"),
            })?;
            early
                .insert_one(doc! {
                    "message_id": message_id,
                    "callback": json,
                    "expires_at": date(expires_at_ms),
                })
                .await
                .map_err(transient)?;
            Ok(true)
        }
        .boxed()
    }

    fn early_callbacks(&self, limit: usize) -> BoxFut<Result<Vec<EarlyCallback>, StoreError>> {
        let db = self.db.clone();
        async move {
            let docs: Vec<Document> = db
                .collection::<Document>("early_callbacks")
                .find(doc! {})
                .sort(doc! {"_id": 1})
                .limit(limit as i64)
                .await
                .map_err(transient)?
                .try_collect()
                .await
                .map_err(transient)?;
            Ok(docs
                .into_iter()
                .filter_map(|d| {
                    let key = d.get_object_id("_id").ok()?.to_hex();
                    let callback = d
                        .get_str("callback")
                        .map_err(|_| "written by an earlier release".to_string())
                        .and_then(|j| serde_json::from_str(j).map_err(|e| e.to_string()));
                    Some(EarlyCallback {
                        key,
                        callback,
                        expires_at_ms: get_ms(&d, "expires_at"),
                    })
                })
                .collect())
        }
        .boxed()
    }

    fn drop_early_callback(&self, key: String) -> BoxFut<Result<(), StoreError>> {
        let db = self.db.clone();
        async move {
            let Ok(oid) = mongodb::bson::oid::ObjectId::parse_str(&key) else {
                return Ok(());
            };
            db.collection::<Document>("early_callbacks")
                .delete_one(doc! {"_id": oid})
                .await
                .map_err(transient)?;
            Ok(())
        }
        .boxed()
    }

    fn get_message(&self, id: String) -> BoxFut<Result<Option<Arc<MessageRecord>>, StoreError>> {
        let db = self.db.clone();
        let (reply, answer) = oneshot::channel();
        let queued = self.reads.send(ReadJob {
            id: id.clone(),
            reply,
        });
        async move {
            if queued.is_ok() {
                if let Ok(result) = answer.await {
                    return result.map(|found| found.map(Arc::new));
                }
            }
            let found = db
                .collection::<Document>("messages")
                .find_one(doc! {"_id": &id})
                .await
                .map_err(transient)?;
            found
                .map(|d| parse_message(&d).map(|(r, _)| Arc::new(r)))
                .transpose()
        }
        .boxed()
    }

    fn lookups_due(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>> {
        find_messages(
            self.db.clone(),
            doc! {"status": "sent", "lookup_at": {"$lte": date(now_ms)}},
            doc! {"lookup_at": 1},
            limit,
        )
        .boxed()
    }

    fn claim_lookup(
        &self,
        id: String,
        due_ms: i64,
        next_ms: Option<i64>,
    ) -> BoxFut<Result<bool, StoreError>> {
        let db = self.db.clone();
        let write_concern = self.write_concern.clone();
        async move {
            let update = match next_ms {
                Some(at) => doc! {"$set": {"lookup_at": date(at)}},
                None => doc! {"$unset": {"lookup_at": ""}},
            };
            // Conditional on the value read: of two instances taking it, one matches.
            let reply = db
                .run_command(doc! {
                    "update": "messages",
                    "updates": [{
                        "q": {"_id": &id, "status": "sent", "lookup_at": date(due_ms)},
                        "u": update,
                    }],
                    "writeConcern": write_concern,
                })
                .await
                .map_err(transient)?;
            Ok(reply.get("nModified").and_then(bson_i64).unwrap_or(0) == 1)
        }
        .boxed()
    }

    fn take_cap_slot(
        &self,
        key: String,
        message_id: String,
        now_ms: i64,
        max: usize,
        per_ms: i64,
    ) -> BoxFut<Result<crate::domain::policy::Slot, StoreError>> {
        let db = self.db.clone();
        let write_concern = self.write_concern.clone();
        async move {
            super::caps::take_slot(&db, &write_concern, &key, &message_id, now_ms, max, per_ms)
                .await
        }
        .boxed()
    }

    fn count_status(&self, status: MessageStatus) -> BoxFut<Result<u64, StoreError>> {
        let db = self.db.clone();
        async move {
            db.collection::<Document>("messages")
                .count_documents(doc! {"status": status.as_str()})
                .await
                .map_err(transient)
        }
        .boxed()
    }

    fn stalled_messages(
        &self,
        idle_before_ms: i64,
        from: StalledFrom,
        limit: usize,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>> {
        let db = self.db.clone();
        async move {
            let waiting = doc! {"$in": ["queued", "held", "retrying"]};
            let (filter, sort) = match from {
                StalledFrom::Start => (
                    doc! {"status": waiting, "updated_at": {"$lt": date(idle_before_ms)}},
                    doc! {"updated_at": 1},
                ),
                StalledFrom::After(at) => (
                    doc! {"status": waiting, "updated_at": {"$gt": date(at), "$lt": date(idle_before_ms)}},
                    doc! {"updated_at": 1},
                ),
                StalledFrom::Tied { at, after_id } => (
                    doc! {"status": waiting, "updated_at": date(at), "_id": {"$gt": after_id}},
                    doc! {"_id": 1},
                ),
            };
            find_messages(db, filter, sort, limit).await
        }
        .boxed()
    }

    fn find_by_provider_message_id(
        &self,
        provider: String,
        provider_message_id: String,
    ) -> BoxFut<Result<Option<MessageRecord>, StoreError>> {
        let db = self.db.clone();
        async move {
            let messages = db.collection::<Document>("messages");
            // The current send first (indexed); an earlier send's id is only in the history.
            let mut found = messages
                .find_one(doc! {"provider_message_id": &provider_message_id, "provider": &provider})
                .await
                .map_err(transient)?;
            if found.is_none() {
                found = messages
                    .find_one(
                        doc! {"history.detail": &provider_message_id, "history.status": "sent"},
                    )
                    .await
                    .map_err(transient)?;
            }
            found.map(|d| parse_message(&d).map(|(r, _)| r)).transpose()
        }
        .boxed()
    }

    fn suppress(&self, suppressions: Vec<Suppression>) -> BoxFut<Result<usize, StoreError>> {
        let db = self.db.clone();
        async move {
            let mut new = 0;
            for s in suppressions {
                // `$setOnInsert`: the first reason recorded for an address stays.
                let result = db
                    .collection::<Document>("suppressions")
                    .update_one(
                        doc! {"_id": s.id()},
                        doc! {"$setOnInsert": {
                            "channel": s.channel.as_str(),
                            "address": normalise_address(s.channel, &s.address),
                            "reason": s.reason.as_str(),
                            "provider": &s.provider,
                            "at": date(s.at),
                        }},
                    )
                    .upsert(true)
                    .await
                    .map_err(transient)?;
                if result.upserted_id.is_some() {
                    new += 1;
                }
            }
            Ok(new)
        }
        .boxed()
    }

    fn suppressed(
        &self,
        ids: Vec<String>,
    ) -> BoxFut<Result<Vec<(String, SuppressionReason)>, StoreError>> {
        let db = self.db.clone();
        async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let docs: Vec<Document> = db
                .collection::<Document>("suppressions")
                .find(doc! {"_id": {"$in": &ids}})
                .await
                .map_err(transient)?
                .try_collect()
                .await
                .map_err(transient)?;
            Ok(docs
                .iter()
                .filter_map(|d| {
                    let reason = SuppressionReason::parse(d.get_str("reason").ok()?)?;
                    Some((d.get_str("_id").ok()?.to_string(), reason))
                })
                .collect())
        }
        .boxed()
    }
}
