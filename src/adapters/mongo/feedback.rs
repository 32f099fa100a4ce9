//! The feedback webhooks' durable schedule: the `feedback` collection, one document per
//! call to make (`_id` = event and hook), found by `due_ms` (indexed; milliseconds as an
//! integer — the MongoDB-protocol test server turns a date set by `$set` into a string). An
//! instance takes a due job by moving its `due_ms` one lease ahead, conditioned on the value
//! it read, so of several instances one takes it. A document that cannot be read is moved out
//! of the schedule (`due_ms` = never, `unreadable` = why) and logged, not deleted.

use futures::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, Binary, Bson, Document};
use mongodb::Database;

use crate::ports::{BoxFut, FeedbackJob, FeedbackStore, StoreError};

use super::transient;

#[derive(Clone)]
pub struct MongoFeedback {
    db: Database,
}

impl MongoFeedback {
    pub async fn new(db: Database) -> Result<Self, StoreError> {
        db.run_command(doc! {
            "createIndexes": "feedback",
            "indexes": [ { "key": {"due_ms": 1}, "name": "due_ms_1" } ],
        })
        .await
        .map_err(transient)?;
        Ok(MongoFeedback { db })
    }

    fn collection(&self) -> mongodb::Collection<Document> {
        self.db.collection::<Document>("feedback")
    }
}

fn parse(d: &Document) -> Option<FeedbackJob> {
    Some(FeedbackJob {
        id: d.get_str("_id").ok()?.to_string(),
        url: d.get_str("url").ok()?.to_string(),
        body: match d.get("body")? {
            Bson::Binary(b) => b.bytes.clone(),
            Bson::String(s) => s.clone().into_bytes(),
            _ => return None,
        },
        attempts: d.get("attempts").and_then(super::bson_i64).unwrap_or(0) as u32,
        due_ms: d.get("due_ms").and_then(super::bson_i64)?,
    })
}

impl FeedbackStore for MongoFeedback {
    fn enqueue(&self, jobs: Vec<FeedbackJob>) -> BoxFut<Result<(), StoreError>> {
        let this = self.clone();
        async move {
            if jobs.is_empty() {
                return Ok(());
            }
            // Upserts that only insert: a job scheduled already keeps its state.
            let updates: Vec<Document> = jobs
                .iter()
                .map(|j| {
                    doc! {
                        "q": {"_id": &j.id},
                        "u": {"$setOnInsert": {
                            "url": &j.url,
                            "body": Binary { subtype: mongodb::bson::spec::BinarySubtype::Generic, bytes: j.body.clone() },
                            "attempts": j.attempts as i64,
                            "due_ms": j.due_ms,
                        }},
                        "upsert": true,
                    }
                })
                .collect();
            this.db
                .run_command(doc! {"update": "feedback", "updates": updates, "ordered": false})
                .await
                .map_err(transient)?;
            Ok(())
        }
        .boxed()
    }

    fn claim_due(
        &self,
        now_ms: i64,
        lease_ms: i64,
        limit: usize,
    ) -> BoxFut<Result<Vec<FeedbackJob>, StoreError>> {
        let this = self.clone();
        async move {
            let found: Vec<Document> = this
                .collection()
                .find(doc! {"due_ms": {"$lte": now_ms}})
                .sort(doc! {"due_ms": 1})
                .limit(limit as i64)
                .await
                .map_err(transient)?
                .try_collect()
                .await
                .map_err(transient)?;
            let mut taken = Vec::with_capacity(found.len());
            for d in &found {
                let Some(mut job) = parse(d) else {
                    tracing::error!(id = ?d.get("_id"), "a feedback job cannot be read; moved out of the schedule");
                    let _ = this
                        .collection()
                        .update_one(
                            doc! {"_id": d.get("_id")},
                            doc! {"$set": {"due_ms": i64::MAX, "unreadable": "missing or mistyped url, body or due_ms"}},
                        )
                        .await;
                    continue;
                };
                let until = now_ms + lease_ms;
                let moved = this
                    .collection()
                    .update_one(
                        doc! {"_id": &job.id, "due_ms": job.due_ms},
                        doc! {"$set": {"due_ms": until}},
                    )
                    .await
                    .map_err(transient)?;
                if moved.modified_count == 1 {
                    job.due_ms = until;
                    taken.push(job);
                }
            }
            Ok(taken)
        }
        .boxed()
    }

    fn done(&self, id: String) -> BoxFut<Result<(), StoreError>> {
        let this = self.clone();
        async move {
            this.collection()
                .delete_one(doc! {"_id": &id})
                .await
                .map_err(transient)?;
            Ok(())
        }
        .boxed()
    }

    fn retry_at(&self, id: String, attempts: u32, due_ms: i64) -> BoxFut<Result<(), StoreError>> {
        let this = self.clone();
        async move {
            this.collection()
                .update_one(
                    doc! {"_id": &id},
                    doc! {"$set": {"due_ms": due_ms, "attempts": attempts as i64}},
                )
                .await
                .map_err(transient)?;
            Ok(())
        }
        .boxed()
    }
}
