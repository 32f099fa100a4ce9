//! The `caps` collection: one document per (user, channel) with a frequency cap, holding the
//! ids and dispatch times of the messages counted in the cap's window,
//! `{_id: "<channel>:<user>", v, entries: [{id, at}]}`. A slot is taken by reading the
//! document, deciding in memory (`CapWindow::take_slot`), and writing it back only if nobody
//! wrote since (`v` unchanged; a first document by an insert that a concurrent insert makes
//! fail): of two instances counting the same user at once, one writes and the other decides
//! again on what it wrote. Keyed by message id, so asking again — a retry, a replay, an
//! answer lost after the write landed — finds the message counted and takes nothing more.

use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;

use crate::domain::policy::{CapWindow, Slot};
use crate::ports::StoreError;

use super::{bson_i64, transient};

/// Decisions lost to a concurrent writer before giving up (the caller tries again later).
const MAX_RACES: usize = 16;

pub async fn take_slot(
    db: &Database,
    write_concern: &Document,
    key: &str,
    message_id: &str,
    now_ms: i64,
    max: usize,
    per_ms: i64,
) -> Result<Slot, StoreError> {
    let coll = db.collection::<Document>("caps");
    for _ in 0..MAX_RACES {
        let found = coll.find_one(doc! {"_id": key}).await.map_err(transient)?;
        let (version, mut window) = match &found {
            // A document this release cannot read starts counting afresh (rewritten below)
            // rather than stop the user's messages for good.
            Some(d) => (
                d.get("v").and_then(bson_i64).unwrap_or(0),
                parse(d).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "an unreadable caps document is counted afresh");
                    CapWindow::default()
                }),
            ),
            None => (0, CapWindow::default()),
        };
        let slot = window.take_slot(message_id, now_ms, max, per_ms);
        if slot != Slot::Taken {
            return Ok(slot);
        }
        let entries: Vec<Bson> = window
            .entries
            .iter()
            .map(|(id, at)| Bson::Document(doc! {"id": id, "at": at}))
            .collect();
        let command = if found.is_none() {
            doc! {
                "insert": "caps",
                "documents": [{"_id": key, "v": 1_i64, "entries": entries}],
                "writeConcern": write_concern.clone(),
            }
        } else {
            doc! {
                "update": "caps",
                "updates": [{
                    "q": {"_id": key, "v": version},
                    "u": {"$set": {"entries": entries, "v": version + 1}},
                }],
                "writeConcern": write_concern.clone(),
            }
        };
        let answer = db.run_command(command).await.map_err(transient)?;
        if answer.get_document("writeConcernError").is_ok() {
            // It may have landed: asking again finds out (the message counted, or not).
            return Err(StoreError::Transient(format!(
                "mongodb: caps write concern not met: {answer}"
            )));
        }
        let raced = match answer.get_array("writeErrors") {
            Ok(errors) => {
                let duplicate = errors.iter().all(|e| {
                    e.as_document()
                        .and_then(|e| e.get("code"))
                        .and_then(bson_i64)
                        == Some(11000)
                });
                if !duplicate {
                    return Err(StoreError::Transient(format!(
                        "mongodb: caps write refused: {answer}"
                    )));
                }
                true
            }
            Err(_) => answer.get("n").and_then(bson_i64) == Some(0),
        };
        if !raced {
            return Ok(Slot::Taken);
        }
    }
    Err(StoreError::Transient(format!(
        "caps of {key}: {MAX_RACES} concurrent writers in a row"
    )))
}

fn parse(d: &Document) -> Result<CapWindow, StoreError> {
    let bad = |detail: &str| StoreError::BadData {
        key: format!("caps {}", d.get_str("_id").unwrap_or("?")),
        detail: detail.to_string(),
    };
    let entries = match d.get_array("entries") {
        Ok(entries) => entries,
        Err(_) => return Err(bad("no entries array")),
    };
    let mut window = CapWindow::default();
    for e in entries {
        let e = e
            .as_document()
            .ok_or_else(|| bad("an entry is not a document"))?;
        let id = e.get_str("id").map_err(|_| bad("an entry has no id"))?;
        let at = e
            .get("at")
            .and_then(bson_i64)
            .ok_or_else(|| bad("an entry has no time"))?;
        window.entries.push((id.to_string(), at));
    }
    Ok(window)
}
