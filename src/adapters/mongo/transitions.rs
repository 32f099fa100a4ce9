//! Group commit for message status transitions. Sends, callbacks and retries each change one
//! message; done one by one that is two round trips per change (read, version-checked
//! replace), and the test server does a few thousand of those per second. Concurrent changes
//! are queued here and applied together: one `find` with `$in`, the status machine in memory
//! (in arrival order, so two changes of one message compose), one `update` command of
//! version-checked replacements. Each replacement carries a fresh write token; a statement
//! that lost a race (another instance wrote first) is found by its token missing and redone
//! alone, through the same read-check-replace loop.

use std::collections::HashMap;

use std::sync::Arc;

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;
use rand::Rng;
use tokio::sync::{mpsc, oneshot};

use crate::domain::message::{ApplyResult, MessageRecord, StatusChange};
use crate::ports::{MessageChange, StoreError, TransitionResult};

use super::feed_cursor::{pending_fields, FeedCursor, Publication};
use crate::domain::feed::state_at;

use super::{bson_i64, ids_with_token, transient};

/// Most changes applied in one round.
const MAX_GROUP: usize = 500;

pub struct Job {
    pub id: String,
    pub change: StatusChange,
    pub reply: oneshot::Sender<Result<TransitionResult, StoreError>>,
}

/// Codec of the `messages` documents (owned by the document store).
pub struct Codec {
    pub parse: fn(&Document) -> Result<(MessageRecord, i64), StoreError>,
    pub render: fn(&MessageRecord, i64) -> Document,
}

/// Starts the writer on the current runtime; it ends when every sender is dropped. With
/// feeds, each write carries the feed cursor and the applied changes are offered to the feeds
/// once written, in the order applied.
pub fn spawn(db: Database, codec: Codec, feeds: Option<FeedCursor>) -> mpsc::UnboundedSender<Job> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(writer(db, codec, feeds, rx));
    tx
}

/// Waits for one item, then takes whatever else is queued, up to [`MAX_GROUP`].
async fn next_group<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut group = vec![first];
    while group.len() < MAX_GROUP {
        match rx.try_recv() {
            Ok(item) => group.push(item),
            Err(_) => break,
        }
    }
    Some(group)
}

async fn writer(
    db: Database,
    codec: Codec,
    feeds: Option<FeedCursor>,
    mut rx: mpsc::UnboundedReceiver<Job>,
) {
    while let Some(jobs) = next_group(&mut rx).await {
        let (results, cursors, written) =
            match apply_group(&db, &codec, &jobs, feeds.is_some()).await {
                Ok(written) => written,
                Err(e) => (
                    jobs.iter().map(|_| Err(e.clone())).collect(),
                    Vec::new(),
                    Vec::new(),
                ),
            };
        if let Some(feeds) = &feeds {
            // Per message written here, the entries from what neither its cursor nor this
            // process's queue holds, up to its last change: in order, never a gap.
            let mut changes = Vec::new();
            for (id, fed, record) in &written {
                let len = record.history.len() as u32;
                for seq in feeds.plan(id, *fed as u32, len)..len {
                    changes.push(MessageChange {
                        record: state_at(record, seq as usize),
                        seq,
                    });
                }
            }
            feeds.offer(Publication { changes, cursors });
        }
        for (job, result) in jobs.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

/// One message's state through the group: as read, and as the changes leave it.
struct Slot {
    record: MessageRecord,
    version: i64,
    /// The feed cursor as read (a document without one: every entry it had is fed).
    fed: i64,
    dirty: bool,
}

/// Each job's result; the feed cursors of the documents this group wrote, `(_id, version
/// written, history entries)`; and those documents, `(_id, cursor as read, as written)`.
/// (Documents a lost race made this group write alone are left to the feed sweep.)
type GroupWritten = (
    Vec<Result<TransitionResult, StoreError>>,
    Vec<(String, i64, i64)>,
    Vec<(String, i64, MessageRecord)>,
);

async fn apply_group(
    db: &Database,
    codec: &Codec,
    jobs: &[Job],
    feeds: bool,
) -> Result<GroupWritten, StoreError> {
    let coll = db.collection::<Document>("messages");
    let mut ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let found: Vec<Document> = coll
        .find(doc! {"_id": {"$in": &ids}})
        .await
        .map_err(transient)?
        .try_collect()
        .await
        .map_err(transient)?;
    let mut slots: HashMap<String, Slot> = HashMap::with_capacity(found.len());
    let mut unreadable: HashMap<String, StoreError> = HashMap::new();
    for d in &found {
        let (record, version) = match (codec.parse)(d) {
            Ok(parsed) => parsed,
            Err(e) => {
                // One unreadable document fails its own changes, not the group's.
                unreadable.insert(d.get_str("_id").unwrap_or_default().to_string(), e);
                continue;
            }
        };
        let fed = d
            .get("fed")
            .and_then(bson_i64)
            .unwrap_or(record.history.len() as i64);
        slots.insert(
            record.id.clone(),
            Slot {
                record,
                version,
                fed,
                dirty: false,
            },
        );
    }
    let mut results: Vec<Result<TransitionResult, StoreError>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        if let Some(e) = unreadable.get(&job.id) {
            results.push(Err(e.clone()));
            continue;
        }
        let Some(slot) = slots.get_mut(&job.id) else {
            results.push(Ok(TransitionResult::NotFound));
            continue;
        };
        results.push(Ok(match slot.record.apply(&job.change) {
            ApplyResult::Ignored => TransitionResult::Ignored(slot.record.status),
            ApplyResult::NotReady => TransitionResult::NotReady,
            ApplyResult::Applied => {
                slot.dirty = true;
                TransitionResult::Applied(Arc::new(slot.record.clone()))
            }
        }));
    }
    let token: i64 = rand::thread_rng().gen();
    let statements: Vec<Document> = slots
        .values()
        .filter(|s| s.dirty)
        .map(|s| {
            let mut replacement = (codec.render)(&s.record, s.version + 1);
            replacement.insert("_id", &s.record.id);
            replacement.insert("w", token);
            if feeds {
                replacement.extend(pending_fields(s.fed));
            }
            doc! {
                "q": {"_id": &s.record.id, "version": version_filter(s.version)},
                "u": replacement,
                "upsert": false,
            }
        })
        .collect();
    if statements.is_empty() {
        return Ok((results, Vec::new(), Vec::new()));
    }
    let cursor = |s: &Slot| {
        (
            s.record.id.clone(),
            s.version + 1,
            s.record.history.len() as i64,
        )
    };
    let reply = db
        .run_command(doc! {"update": "messages", "updates": &statements, "ordered": false})
        .await
        .map_err(transient)?;
    let matched = reply.get("n").and_then(bson_i64).unwrap_or(0);
    // Only the feeds need the written documents: without them, nothing is copied.
    let documents = |keep: &dyn Fn(&Slot) -> bool| {
        slots
            .values()
            .filter(|s| feeds && s.dirty && keep(s))
            .map(|s| (s.record.id.clone(), s.fed, s.record.clone()))
            .collect::<Vec<_>>()
    };
    if matched as usize == statements.len() {
        let cursors = slots.values().filter(|s| s.dirty).map(cursor).collect();
        return Ok((results, cursors, documents(&|_| true)));
    }
    // Someone else wrote some of these first: find which, and redo their changes alone.
    let dirty: Vec<&str> = slots
        .values()
        .filter(|s| s.dirty)
        .map(|s| s.record.id.as_str())
        .collect();
    let written = ids_with_token(db, "messages", &dirty, "w", token).await?;
    let ours: std::collections::HashSet<&str> = written.iter().map(String::as_str).collect();
    for (job, result) in jobs.iter().zip(results.iter_mut()) {
        let lost = slots
            .get(&job.id)
            .is_some_and(|s| s.dirty && !ours.contains(job.id.as_str()));
        if lost {
            // Written alone, its cursor is left pending: the sweep publishes it again.
            *result = transition_alone(db, codec, &job.id, &job.change, feeds).await;
        }
    }
    let cursors = slots
        .values()
        .filter(|s| s.dirty && ours.contains(s.record.id.as_str()))
        .map(cursor)
        .collect();
    let documents = documents(&|s: &Slot| ours.contains(s.record.id.as_str()));
    Ok((results, cursors, documents))
}

/// Matches a message document still at `version` (read as 0 when it has none: a document
/// written without one, e.g. by hand or an older Herald, must not be stuck for ever).
fn version_filter(version: i64) -> Bson {
    if version == 0 {
        Bson::Document(doc! {"$in": [Bson::Null, 0_i64]})
    } else {
        Bson::Int64(version)
    }
}

/// Read, check with the status machine, replace if the version is unchanged; again on a race.
pub async fn transition_alone(
    db: &Database,
    codec: &Codec,
    id: &str,
    change: &StatusChange,
    feeds: bool,
) -> Result<TransitionResult, StoreError> {
    let coll = db.collection::<Document>("messages");
    for _ in 0..16 {
        let Some(found) = coll.find_one(doc! {"_id": id}).await.map_err(transient)? else {
            return Ok(TransitionResult::NotFound);
        };
        let (mut record, version) = (codec.parse)(&found)?;
        let fed = found
            .get("fed")
            .and_then(bson_i64)
            .unwrap_or(record.history.len() as i64);
        match record.apply(change) {
            ApplyResult::Ignored => return Ok(TransitionResult::Ignored(record.status)),
            ApplyResult::NotReady => return Ok(TransitionResult::NotReady),
            ApplyResult::Applied => {}
        }
        let mut replacement = (codec.render)(&record, version + 1);
        if feeds {
            replacement.extend(pending_fields(fed));
        }
        let replaced = coll
            .replace_one(
                doc! {"_id": id, "version": version_filter(version)},
                replacement,
            )
            .await
            .map_err(transient)?;
        if replaced.matched_count == 1 {
            return Ok(TransitionResult::Applied(Arc::new(record)));
        }
    }
    Err(StoreError::Transient(format!(
        "message {id}: too many concurrent updates"
    )))
}

/// A read of one message, grouped with concurrent reads into one `find` with `$in`.
pub struct ReadJob {
    pub id: String,
    pub reply: oneshot::Sender<Result<Option<MessageRecord>, StoreError>>,
}

/// Starts the grouped reader on the current runtime.
pub fn spawn_reader(db: Database, codec: Codec) -> mpsc::UnboundedSender<ReadJob> {
    let (tx, mut rx) = mpsc::unbounded_channel::<ReadJob>();
    tokio::spawn(async move {
        while let Some(jobs) = next_group(&mut rx).await {
            let ids: Vec<&str> = jobs.iter().map(|j| j.id.as_str()).collect();
            let found = async {
                db.collection::<Document>("messages")
                    .find(doc! {"_id": {"$in": &ids}})
                    .await
                    .map_err(transient)?
                    .try_collect::<Vec<Document>>()
                    .await
                    .map_err(transient)
            }
            .await;
            match found {
                Ok(docs) => {
                    let by_id: HashMap<&str, &Document> = docs
                        .iter()
                        .filter_map(|d| Some((d.get_str("_id").ok()?, d)))
                        .collect();
                    for job in jobs {
                        let result = by_id
                            .get(job.id.as_str())
                            .map(|d| (codec.parse)(d).map(|(r, _)| r))
                            .transpose();
                        let _ = job.reply.send(result);
                    }
                }
                Err(e) => {
                    for job in jobs {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    });
    tx
}
