//! The connection plumbing every Redis adapter shares: where Redis is (one server, or a
//! cluster), the connection to it — a reconnecting multiplexed connection to `redis.url`, or
//! the redis crate's async cluster client over `redis.cluster_nodes`, which routes each
//! command to its slot's primary and follows MOVED/ASK; both pipeline concurrent requests over
//! one connection per server — and the error mapping.

use std::time::Duration;

use futures::future::join_all;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, IntoConnectionInfo, Pipeline, RedisFuture, Value};

use crate::ports::StoreError;

/// Where Herald's Redis is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis.url` (its database is used; `redis.retry_db` holds the wake-up timer key).
    Single { url: String, retry_db: u32 },
    /// `redis.cluster_nodes`: seed nodes of a cluster (database 0 only).
    Cluster { nodes: Vec<String> },
}

impl RedisTarget {
    pub fn is_cluster(&self) -> bool {
        matches!(self, RedisTarget::Cluster { .. })
    }
}

pub fn transient(e: redis::RedisError) -> StoreError {
    StoreError::Transient(format!("redis: {e}"))
}

fn bad_url(what: &str, e: redis::RedisError) -> StoreError {
    StoreError::BadData {
        key: what.into(),
        detail: e.to_string(),
    }
}

/// `redis://host:port/0` with its database replaced by `db`.
pub fn url_with_db(url: &str, db: u32) -> Result<redis::ConnectionInfo, StoreError> {
    let info = url
        .into_connection_info()
        .map_err(|e| bad_url("redis.url", e))?;
    let redis_settings = info.redis_settings().clone().set_db(db as i64);
    Ok(info.set_redis_settings(redis_settings))
}

#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// Connects to `target` (for a single server: its `redis.url` database), answers within
    /// `response_timeout`.
    pub async fn connect(
        target: &RedisTarget,
        response_timeout: Duration,
    ) -> Result<RedisConn, StoreError> {
        match target {
            RedisTarget::Single { url, .. } => {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| bad_url("redis.url", e))?;
                Ok(RedisConn::Single(manager(info, response_timeout).await?))
            }
            RedisTarget::Cluster { nodes } => {
                let client = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    .response_timeout(response_timeout)
                    .connection_timeout(Duration::from_secs(2))
                    .retries(2)
                    .build()
                    .map_err(|e| bad_url("redis.cluster_nodes", e))?;
                let conn = client.get_async_connection().await.map_err(transient)?;
                Ok(RedisConn::Cluster(conn))
            }
        }
    }

    /// Runs independent commands, answers in order. One pipeline on a single server; on a
    /// cluster each command goes to its own slot's primary (concurrently: the client
    /// pipelines them per server).
    pub async fn query_many(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>, StoreError> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            RedisConn::Single(conn) => {
                let mut conn = conn.clone();
                let mut pipe = redis::pipe();
                for c in cmds {
                    pipe.add_command(c);
                }
                pipe.query_async(&mut conn).await.map_err(transient)
            }
            RedisConn::Cluster(conn) => {
                let answers = join_all(cmds.into_iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { c.query_async::<Value>(&mut conn).await }
                }))
                .await;
                answers
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(transient)
            }
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(|_| ())
            .map_err(transient)
    }
}

/// A connection manager with the timeouts every Herald Redis connection uses.
pub(crate) async fn manager(
    info: redis::ConnectionInfo,
    response_timeout: Duration,
) -> Result<ConnectionManager, StoreError> {
    let client = redis::Client::open(info).map_err(|e| bad_url("redis.url", e))?;
    let config = ConnectionManagerConfig::new()
        .set_response_timeout(Some(response_timeout))
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(transient)
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}
