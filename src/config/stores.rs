//! `[redis]` and `[mongo]`: MongoDB, the system of record (users with their bookkeeping,
//! messages), and Redis, the cache of user states, the retry schedule and the leases.

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    pub url: String,
    pub prefix: String,
    pub retry_db: u32,
    /// Set the server's `notify-keyspace-events` to `Ex` at start (a server-wide setting:
    /// off by default so a shared Redis is left as its operator configured it).
    #[serde(default)]
    pub configure_notifications: bool,
    /// Comma-separated `redis://host:port` (or `rediss://`) seed nodes of a Redis Cluster;
    /// when set, `url` and `retry_db` are not used (a cluster has database 0 only).
    #[serde(default)]
    pub cluster_nodes: Option<String>,
    /// A cached user state expires this long after its last write (MongoDB holds it anyway).
    #[serde(default = "default_state_ttl_ms")]
    pub state_ttl_ms: u64,
}

fn default_state_ttl_ms() -> u64 {
    7 * 24 * 3_600_000
}

impl RedisConfig {
    /// The seed nodes of `cluster_nodes`, if it names any (empty: one Redis at `url`).
    pub fn cluster_node_list(&self) -> Option<Vec<String>> {
        let nodes: Vec<String> = self
            .cluster_nodes
            .as_deref()?
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect();
        (!nodes.is_empty()).then_some(nodes)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    pub url: String,
    pub database: String,
    /// The write concern of `users` and `messages` writes: `majority` (a source position is
    /// committed only once a majority of the replica set holds every effect before it), or a
    /// number of nodes.
    #[serde(default = "default_write_concern")]
    pub write_concern: String,
}

fn default_write_concern() -> String {
    "majority".into()
}

/// MongoDB collection/database names as REFERENCE.md §3 allows them.
pub fn is_collection_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
