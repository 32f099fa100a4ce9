//! The connection plumbing every Redis adapter shares: the error mapping, the URL with another
//! database, and the connection manager with Herald's timeouts.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use crate::ports::StoreError;

pub fn transient(e: redis::RedisError) -> StoreError {
    StoreError::Transient(format!("redis: {e}"))
}

pub(crate) fn bad_url(e: redis::RedisError) -> StoreError {
    StoreError::BadData {
        key: "redis.url".into(),
        detail: e.to_string(),
    }
}

/// `redis://host:port/0` with its database replaced by `db`.
pub fn url_with_db(url: &str, db: u32) -> Result<redis::ConnectionInfo, StoreError> {
    use redis::IntoConnectionInfo;
    let info = url.into_connection_info().map_err(bad_url)?;
    let redis_settings = info.redis_settings().clone().set_db(db as i64);
    Ok(info.set_redis_settings(redis_settings))
}

/// A connection manager with the timeouts every Herald Redis connection uses (5 s answers).
pub(crate) async fn manager(info: redis::ConnectionInfo) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(info).map_err(bad_url)?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(transient)
}
