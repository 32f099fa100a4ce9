//! The read API's queries: a user's document, a message, a user's messages newest first
//! (through the index `{user_id, created_at}`; ties in one millisecond by `_id`).

use std::sync::Arc;

use futures::{FutureExt, TryStreamExt};
use mongodb::bson::{doc, Document};

use crate::domain::feed::user_json;
use crate::domain::message::MessageRecord;
use crate::ports::{BoxFut, DocumentStore, MessagesAfter, ReadStore, StoreError};

use super::docs::{date, parse_message, MongoDocumentStore};
use super::transient;
use super::users::{ms, parse_profile};

impl ReadStore for MongoDocumentStore {
    fn user(&self, id: String) -> BoxFut<Result<Option<serde_json::Value>, StoreError>> {
        let db = self.database().clone();
        async move {
            let found = db
                .collection::<Document>("users")
                .find_one(doc! {"_id": &id})
                .projection(doc! {"_herald": 0})
                .await
                .map_err(transient)?;
            Ok(found.map(|d| {
                let merged_into = d.get_str("merged_into").ok();
                let updated_at = ms(d.get("updated_at")).unwrap_or(0);
                user_json(&id, &parse_profile(&d), merged_into, updated_at, None)
            }))
        }
        .boxed()
    }

    fn message(&self, id: String) -> BoxFut<Result<Option<MessageRecord>, StoreError>> {
        let found = self.get_message(id);
        async move { Ok(found.await?.map(Arc::unwrap_or_clone)) }.boxed()
    }

    fn user_messages(
        &self,
        user: String,
        limit: usize,
        after: Option<MessagesAfter>,
    ) -> BoxFut<Result<Vec<MessageRecord>, StoreError>> {
        let db = self.database().clone();
        async move {
            let filter = match after {
                None => doc! {"user_id": &user},
                // `$and` spelled out: the MongoDB-protocol test server drops a field beside `$or`.
                Some(a) => doc! {"$and": [
                    {"user_id": &user},
                    {"$or": [
                        {"created_at": {"$lt": date(a.created_at)}},
                        {"created_at": date(a.created_at), "_id": {"$lt": &a.id}},
                    ]},
                ]},
            };
            let docs: Vec<Document> = db
                .collection::<Document>("messages")
                .find(filter)
                .sort(doc! {"created_at": -1, "_id": -1})
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
        .boxed()
    }
}
