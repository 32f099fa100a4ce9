//! The callback journal in Redis: a stream `<prefix>callbacks`, one entry per callback (field
//! `c`, the callback as JSON), read through the consumer group `herald` by every instance
//! (consumer name random per process). Entries are acknowledged and deleted once applied, so
//! the stream holds only what is still to apply; an entry a consumer read but did not settle
//! (not applicable yet, or its instance died) is taken over by `XAUTOCLAIM` after a while.
//!
//! As durable as the Redis it is on — the same Redis that holds the retry schedule (run it
//! with `appendonly yes` in production).

use std::sync::Arc;

use std::time::Duration;

use futures::FutureExt;

use crate::ports::{BoxFut, Callback, CallbackJournal, JournalEntry, StoreError};

use super::connection::{transient, RedisConn, RedisTarget};

const GROUP: &str = "herald";
/// Stream entries as Redis answers them: `[id, [field, value, …]]`.
type RawEntries = Vec<(String, Vec<String>)>;
const FIELD: &str = "c";

#[derive(Clone)]
pub struct RedisCallbackJournal {
    /// Appends, acknowledgements, claims.
    conn: RedisConn,
    /// Blocking reads only (a blocked command holds up everything behind it on its
    /// connection).
    reader: RedisConn,
    key: Arc<str>,
    consumer: Arc<str>,
}

/// `[[id, [field, value, …]], …]` → entries (a missing or unreadable field is reported on the
/// entry, never dropped silently).
fn entries(raw: RawEntries) -> Vec<JournalEntry> {
    raw.into_iter()
        .map(|(id, fields)| {
            let json = fields
                .chunks_exact(2)
                .find(|kv| kv[0] == FIELD)
                .map(|kv| kv[1].as_str());
            let callback = match json {
                Some(json) => serde_json::from_str::<Callback>(json)
                    .map_err(|e| format!("unreadable journal entry: {e}")),
                None => Err(format!("journal entry without field `{FIELD}`")),
            };
            JournalEntry { id, callback }
        })
        .collect()
}

impl RedisCallbackJournal {
    pub async fn connect(target: &RedisTarget, prefix: &str) -> Result<Self, StoreError> {
        // Reads block for at most 500 ms, well inside the 5 s answer timeout.
        let conn = RedisConn::connect(target, Duration::from_secs(5)).await?;
        let reader = RedisConn::connect(target, Duration::from_secs(5)).await?;
        let key: Arc<str> = format!("{prefix}callbacks").into();
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&*key)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn.clone())
            .await;
        match created {
            Ok(()) => {}
            Err(e) if e.code() == Some("BUSYGROUP") => {}
            Err(e) => return Err(transient(e)),
        }
        Ok(RedisCallbackJournal {
            conn,
            reader,
            key,
            consumer: format!("{:016x}", rand::random::<u64>()).into(),
        })
    }
}

impl CallbackJournal for RedisCallbackJournal {
    fn append(&self, callbacks: Vec<Callback>) -> BoxFut<Result<(), StoreError>> {
        let this = self.clone();
        async move {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for cb in &callbacks {
                let json = serde_json::to_string(cb).map_err(|e| StoreError::BadData {
                    key: "callback".into(),
                    detail: e.to_string(),
                })?;
                pipe.cmd("XADD")
                    .arg(&*this.key)
                    .arg("*")
                    .arg(FIELD)
                    .arg(json)
                    .ignore();
            }
            pipe.query_async::<()>(&mut this.conn.clone())
                .await
                .map_err(transient)
        }
        .boxed()
    }

    fn read_new(&self, max: usize, block_ms: u64) -> BoxFut<Result<Vec<JournalEntry>, StoreError>> {
        let this = self.clone();
        async move {
            type Reply = Option<Vec<(String, RawEntries)>>;
            let reply: Reply = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&*this.consumer)
                .arg("COUNT")
                .arg(max)
                .arg("BLOCK")
                .arg(block_ms)
                .arg("STREAMS")
                .arg(&*this.key)
                .arg(">")
                .query_async(&mut this.reader.clone())
                .await
                .map_err(transient)?;
            Ok(reply
                .into_iter()
                .flatten()
                .flat_map(|(_, raw)| entries(raw))
                .collect())
        }
        .boxed()
    }

    fn reclaim(
        &self,
        min_idle_ms: u64,
        max: usize,
    ) -> BoxFut<Result<Vec<JournalEntry>, StoreError>> {
        let this = self.clone();
        async move {
            // Redis 7: [next cursor, entries, ids of entries deleted meanwhile].
            let (_, raw, _): (String, RawEntries, Vec<String>) = redis::cmd("XAUTOCLAIM")
                .arg(&*this.key)
                .arg(GROUP)
                .arg(&*this.consumer)
                .arg(min_idle_ms)
                .arg("0-0")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut this.conn.clone())
                .await
                .map_err(transient)?;
            Ok(entries(raw))
        }
        .boxed()
    }

    fn settle(&self, ids: Vec<String>) -> BoxFut<Result<(), StoreError>> {
        let this = self.clone();
        async move {
            if ids.is_empty() {
                return Ok(());
            }
            let mut pipe = redis::pipe();
            pipe.cmd("XACK")
                .arg(&*this.key)
                .arg(GROUP)
                .arg(&ids)
                .ignore()
                .cmd("XDEL")
                .arg(&*this.key)
                .arg(&ids)
                .ignore();
            pipe.query_async::<()>(&mut this.conn.clone())
                .await
                .map_err(transient)
        }
        .boxed()
    }

    fn backlog(&self) -> BoxFut<Result<u64, StoreError>> {
        let this = self.clone();
        async move {
            redis::cmd("XLEN")
                .arg(&*this.key)
                .query_async(&mut this.conn.clone())
                .await
                .map_err(transient)
        }
        .boxed()
    }
}
