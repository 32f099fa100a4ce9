//! The feeds' cursor in each message document, which makes the messages topic and feedback
//! webhooks durable across a crash (ARCHITECTURE.md, "Downstream feeds"). With feeds on,
//! every write of a message also writes `fed` (how many `history` entries the feeds hold) and
//! `fed_pending: 1`; once the feeds acknowledged a change, its document's cursor moves
//! (`{_id, version}` → `fed`, `fed_pending: 0`). A change whose publication is lost — a crash,
//! a full queue, a feed down for long — keeps its document pending, and the sweep publishes
//! it from `fed` on once it has been idle for [`GRACE_MS`]. A change may repeat (its `seq` says
//! which it is), never be skipped.

use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::Database;
use tokio::sync::mpsc;

use crate::domain::feed::state_at;
use crate::ports::{FeedSink, MessageChange};

use super::docs::{date, parse_message};
use super::{bson_i64, transient};

/// How long a pending change is left to the instance that made it before the sweep publishes
/// it (far longer than a publication takes).
pub const GRACE_MS: i64 = 30_000;
/// How often the sweep looks for pending changes.
const SWEEP: Duration = Duration::from_secs(5);
/// Publications waiting; past it a change is left to the sweep.
const QUEUE: usize = 10_000;

/// Changes to publish, and the cursors to move once they are: `(_id, version written, fed)`.
pub struct Publication {
    pub changes: Vec<MessageChange>,
    pub cursors: Vec<(String, i64, i64)>,
}

/// The feeds' side of the document store: a publisher task and the sweep.
#[derive(Clone)]
pub struct FeedCursor {
    tx: mpsc::Sender<Publication>,
    /// Per message, the entries this process has queued (the next `seq` to queue): what is
    /// queued is published in order before anything queued later, so a later change need
    /// not queue it again.
    queued: Arc<parking_lot::Mutex<std::collections::HashMap<String, u32>>>,
}

/// Most messages [`FeedCursor::plan`] remembers; past it, it forgets them all (a change then
/// publishes again from the document's cursor: repeats, never gaps).
const REMEMBERED: usize = 200_000;

impl FeedCursor {
    /// Starts the publisher and the sweep on the current runtime.
    pub fn start(db: Database, sink: Arc<dyn FeedSink>, now_ms: fn() -> i64) -> FeedCursor {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(publish_queued(db.clone(), sink.clone(), rx));
        tokio::spawn(sweep(db, sink, now_ms));
        FeedCursor {
            tx,
            queued: Arc::default(),
        }
    }

    /// The first entry of message `id` to queue now, its document's cursor read as `fed` and
    /// its history `len` entries long: what neither the cursor nor this process's queue holds.
    /// Records the entries up to `len` as queued.
    pub fn plan(&self, id: &str, fed: u32, len: u32) -> u32 {
        let mut queued = self.queued.lock();
        if queued.len() >= REMEMBERED {
            queued.clear();
        }
        let start = fed.max(queued.get(id).copied().unwrap_or(0)).min(len);
        queued.insert(id.to_string(), len);
        start
    }

    /// Queues a publication. A full queue leaves it to the sweep, and its messages' next
    /// changes publish again from their cursors (so nothing after it goes out before it).
    pub fn offer(&self, p: Publication) {
        if p.changes.is_empty() {
            return;
        }
        if let Err(e) = self.tx.try_send(p) {
            let p = match e {
                mpsc::error::TrySendError::Full(p) | mpsc::error::TrySendError::Closed(p) => p,
            };
            let mut queued = self.queued.lock();
            for c in &p.changes {
                queued.remove(&c.record.id);
            }
            tracing::debug!("feed queue full; the sweep publishes these changes");
        }
    }
}

/// The fields a message write carries with feeds on: the cursor as it stands, and pending.
pub fn pending_fields(fed: i64) -> Document {
    doc! {"fed": fed, "fed_pending": 1_i32}
}

async fn publish_queued(
    db: Database,
    sink: Arc<dyn FeedSink>,
    mut rx: mpsc::Receiver<Publication>,
) {
    while let Some(p) = rx.recv().await {
        let mut delay = Duration::from_millis(100);
        while !publish(&db, &sink, &p).await {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
    }
}

/// Publishes and moves the cursors; on a failure, leaves them (the sweep tries again).
/// `true` if the feeds took the changes.
async fn publish(db: &Database, sink: &Arc<dyn FeedSink>, p: &Publication) -> bool {
    if let Err(e) = sink.publish(Arc::new(p.changes.clone())).await {
        tracing::warn!(error = %e, "feeds did not take these message changes; the sweep tries again");
        return false;
    }
    if p.cursors.is_empty() {
        return true;
    }
    let updates: Vec<Document> = p
        .cursors
        .iter()
        .map(|(id, version, fed)| {
            doc! {
                "q": {"_id": id, "version": version},
                "u": {"$set": {"fed": fed, "fed_pending": 0_i32}},
            }
        })
        .collect();
    // A document changed since (its version moved) keeps its own pending cursor.
    if let Err(e) = db
        .run_command(doc! {"update": "messages", "updates": updates, "ordered": false})
        .await
    {
        tracing::warn!(error = %e, "feed cursors not moved; the sweep publishes these changes again");
    }
    true
}

async fn sweep(db: Database, sink: Arc<dyn FeedSink>, now_ms: fn() -> i64) {
    loop {
        tokio::time::sleep(SWEEP).await;
        // A bounded number of pages per round: a document whose cursor cannot move is tried
        // again next round, not in a tight loop.
        for _ in 0..20 {
            match sweep_once(&db, &sink, now_ms()).await {
                Ok(0) => break,
                Ok(n) => tracing::info!(
                    messages = n,
                    "published message changes a feed had not taken"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "feed sweep failed; trying again later");
                    break;
                }
            }
        }
    }
}

/// One page of pending documents idle past the grace period, published from their cursor on.
async fn sweep_once(
    db: &Database,
    sink: &Arc<dyn FeedSink>,
    now_ms: i64,
) -> Result<usize, crate::ports::StoreError> {
    let found: Vec<Document> = db
        .collection::<Document>("messages")
        .find(doc! {"fed_pending": 1_i32, "updated_at": {"$lt": date(now_ms - GRACE_MS)}})
        .limit(500)
        .await
        .map_err(transient)?
        .try_collect()
        .await
        .map_err(transient)?;
    let mut p = Publication {
        changes: Vec::new(),
        cursors: Vec::new(),
    };
    for d in &found {
        let Ok((record, version)) = parse_message(d) else {
            continue;
        };
        let len = record.history.len();
        let fed = d
            .get("fed")
            .and_then(bson_i64)
            .unwrap_or(0)
            .clamp(0, len as i64) as usize;
        for seq in fed..len {
            p.changes.push(MessageChange {
                record: state_at(&record, seq),
                seq: seq as u32,
            });
        }
        p.cursors.push((record.id.clone(), version, len as i64));
    }
    let n = p.cursors.len();
    if n == 0 {
        return Ok(0);
    }
    if !publish(db, sink, &p).await {
        return Err(crate::ports::StoreError::Transient(
            "the feeds did not take the changes".into(),
        ));
    }
    Ok(n)
}
