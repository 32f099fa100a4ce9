//! `[http]` (the webhook receiver and probes) and `[ingest]` (the Segment-compatible ingest).

use std::net::SocketAddr;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub listen: SocketAddr,
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    #[serde(default)]
    pub public_url: Option<String>,
    /// Answer callbacks once they are in the durable journal (Redis), applying them to
    /// MongoDB in large groups behind, instead of once applied.
    #[serde(default)]
    pub callback_journal: bool,
    /// Journaled callbacks not applied yet above which callbacks are answered 503.
    #[serde(default = "default_journal_max_pending")]
    pub callback_journal_max_pending: u64,
    /// How long a callback whose send is not recorded yet is kept to be applied.
    #[serde(default = "default_early_callback_ttl_ms")]
    pub early_callback_ttl_ms: u64,
    /// Most such callbacks kept at once; past it, they are answered 503.
    #[serde(default = "default_early_callbacks_max")]
    pub early_callbacks_max: u64,
    /// The read API's address (unset: off).
    #[serde(default)]
    pub api_listen: Option<SocketAddr>,
    /// The environment variable holding the read API's comma-separated bearer keys.
    #[serde(default = "default_api_keys_env")]
    pub api_keys_env: String,
}

fn default_api_keys_env() -> String {
    "HERALD_API_KEYS".into()
}

/// The Segment-compatible HTTP ingest (`[ingest]`, off unless `listen` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The instance runs the ingest alone: no pipeline, no Redis or MongoDB (an ingest tier
    /// scaled apart from the engine instances that consume what it publishes).
    #[serde(default)]
    pub only: bool,
    /// The environment variable holding the comma-separated write keys.
    #[serde(default = "default_write_keys_env")]
    pub write_keys_env: String,
    /// How long a request waits for the broker's acknowledgement before 503.
    #[serde(default = "default_ingest_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests per second per write key; unset: no limit.
    #[serde(default, deserialize_with = "optional_number")]
    pub rate_per_sec_per_key: Option<f64>,
    /// Requests per second per client address for requests whose write key is in the body
    /// (checked before the body is read, since the key cannot be).
    #[serde(default = "default_rate_per_peer")]
    pub rate_per_sec_per_peer: f64,
    /// Bytes of request bodies waiting for the broker at once; past it, 503.
    #[serde(default = "default_ingest_in_flight")]
    pub max_in_flight_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: None,
            only: false,
            write_keys_env: default_write_keys_env(),
            timeout_ms: default_ingest_timeout_ms(),
            rate_per_sec_per_key: None,
            rate_per_sec_per_peer: default_rate_per_peer(),
            max_in_flight_bytes: default_ingest_in_flight(),
        }
    }
}

/// An optional number that may also come as text: a key without a default has no type to
/// parse its `HERALD__…` variable by, so the variable arrives as a string.
fn optional_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumberOrText {
        Number(f64),
        Text(String),
    }
    match Option::<NumberOrText>::deserialize(d)? {
        None => Ok(None),
        Some(NumberOrText::Number(n)) => Ok(Some(n)),
        Some(NumberOrText::Text(t)) => t
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("expected a number, found {t:?}"))),
    }
}

fn default_write_keys_env() -> String {
    "HERALD_INGEST_WRITE_KEYS".into()
}

fn default_ingest_timeout_ms() -> u64 {
    10_000
}

fn default_rate_per_peer() -> f64 {
    100.0
}

fn default_ingest_in_flight() -> usize {
    64 << 20
}

fn default_early_callback_ttl_ms() -> u64 {
    3_600_000
}

fn default_early_callbacks_max() -> u64 {
    100_000
}

fn default_journal_max_pending() -> u64 {
    1_000_000
}

impl HttpConfig {
    pub fn public_url(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
            .trim_end_matches('/')
            .to_string()
    }
}
