//! `[redis]` and `[mongo]`: where state, the retry schedule and documents are kept.

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
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    pub url: String,
    pub database: String,
}

/// MongoDB collection/database names as REFERENCE.md §3 allows them.
pub fn is_collection_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}
