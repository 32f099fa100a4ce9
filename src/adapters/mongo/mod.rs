//! MongoDB, the system of record: the document store (`users` with Herald's bookkeeping,
//! `messages`, suppressions), the group commit of message status transitions, and the few
//! helpers they share.

use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::Database;

use crate::ports::StoreError;

pub mod caps;
pub mod docs;
pub mod feed_cursor;
pub mod feedback;
pub mod reads;
pub mod transitions;
pub mod users;

pub(crate) fn transient(e: mongodb::error::Error) -> StoreError {
    StoreError::Transient(format!("mongodb: {e}"))
}

/// The `_id`s among `ids` whose document in `collection` carries `token` in `field`: after a
/// bulk write whose answer was partial or lost, which of its statements were this writer's.
pub(crate) async fn ids_with_token(
    db: &Database,
    collection: &str,
    ids: &[&str],
    field: &str,
    token: i64,
) -> Result<Vec<String>, StoreError> {
    let docs: Vec<Document> = db
        .collection::<Document>(collection)
        .find(doc! {"_id": {"$in": ids}, field: token})
        .projection(doc! {"_id": 1})
        .await
        .map_err(transient)?
        .try_collect()
        .await
        .map_err(transient)?;
    Ok(docs
        .iter()
        .filter_map(|d| d.get_str("_id").ok().map(str::to_string))
        .collect())
}

pub(crate) fn bson_i64(b: &Bson) -> Option<i64> {
    match b {
        Bson::Int32(i) => Some(*i as i64),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) => Some(*f as i64),
        _ => None,
    }
}
