//! Redis user-state store: one JSON value per user under `<prefix>user:<id>`, holding the
//! profile, the last applied positions and the dedup window. Written in pipelines after
//! MongoDB acknowledged the batch; read when an aggregator starts.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;

use crate::domain::user::UserState;
use crate::ports::{BoxFut, StateStore, StoreError};

/// Pipelines larger than this are split (keeps each round trip well under the timeout).
const PIPELINE_CHUNK: usize = 1000;

#[derive(Clone)]
pub struct RedisStateStore {
    conn: ConnectionManager,
    prefix: Arc<str>,
}

pub fn transient(e: redis::RedisError) -> StoreError {
    StoreError::Transient(format!("redis: {e}"))
}

impl RedisStateStore {
    /// Connects (the manager reconnects by itself with backoff after a connection loss).
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::BadData {
            key: "redis.url".into(),
            detail: e.to_string(),
        })?;
        let config = ConnectionManagerConfig::new()
            // The 500 ms default is too short for a 1000-command pipeline on a busy machine.
            .set_response_timeout(Some(Duration::from_secs(10)))
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(2));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(transient)?;
        Ok(RedisStateStore {
            conn,
            prefix: Arc::from(prefix),
        })
    }

    pub fn key(&self, user_id: &str) -> String {
        format!("{}user:{user_id}", self.prefix)
    }

    /// PING, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(transient)
    }
}

impl StateStore for RedisStateStore {
    fn load(&self, user_id: &str) -> BoxFut<Result<Option<UserState>, StoreError>> {
        let mut conn = self.conn.clone();
        let key = self.key(user_id);
        async move {
            let raw: Option<Vec<u8>> = conn.get(&key).await.map_err(transient)?;
            match raw {
                None => Ok(None),
                Some(bytes) => {
                    serde_json::from_slice(&bytes)
                        .map(Some)
                        .map_err(|e| StoreError::BadData {
                            key,
                            detail: format!("stored state does not parse: {e}"),
                        })
                }
            }
        }
        .boxed()
    }

    fn save(&self, states: Vec<Arc<UserState>>) -> BoxFut<Result<(), StoreError>> {
        let mut conn = self.conn.clone();
        let prefix = self.prefix.clone();
        async move {
            for chunk in states.chunks(PIPELINE_CHUNK) {
                let mut pipe = redis::pipe();
                for s in chunk {
                    let json = serde_json::to_vec(s.as_ref()).map_err(|e| StoreError::BadData {
                        key: s.user_id.clone(),
                        detail: e.to_string(),
                    })?;
                    pipe.set(format!("{prefix}user:{}", s.user_id), json)
                        .ignore();
                }
                pipe.query_async::<()>(&mut conn).await.map_err(transient)?;
            }
            Ok(())
        }
        .boxed()
    }
}
