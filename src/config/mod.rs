//! Layered configuration: built-in defaults (`config/default.toml`), then each `--config`
//! file in order, then `HERALD__SECTION__KEY` environment variables. Every error names its
//! source (file or variable), the key and the problem.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Value;

use crate::domain::campaign::{Campaign, Channel, Template};
use crate::domain::retry::RetryPolicy;
use crate::domain::user::DedupLimits;

pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");
const ENV_PREFIX: &str = "HERALD__";

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
#[error("{source_name}: {key}: {problem}")]
pub struct ConfigError {
    pub source_name: String,
    pub key: String,
    pub problem: String,
}

impl ConfigError {
    fn new(
        source_name: impl Into<String>,
        key: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ConfigError {
            source_name: source_name.into(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Kafka,
    Rabbitmq,
    Embedded,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub topic: String,
    pub group_id: String,
    #[serde(default)]
    pub group_instance_id: Option<String>,
    pub partitions: i32,
    /// librdkafka properties passed through to the consumer, the producer and the admin
    /// client (`[kafka.options]`, e.g. `"security.protocol" = "SASL_SSL"`). Herald's own
    /// settings that the guarantees need (no auto-commit, no automatic offset store) win.
    #[serde(default)]
    pub options: BTreeMap<String, Value>,
}

impl KafkaConfig {
    /// `kafka.options` as librdkafka strings (validated to be scalars).
    pub fn option_strings(&self) -> Vec<(String, String)> {
        self.options
            .iter()
            .filter_map(|(k, v)| scalar_string(v).map(|s| (k.clone(), s)))
            .collect()
    }
}

fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// librdkafka properties Herald sets itself because the guarantees depend on them.
pub const KAFKA_FORCED_OPTIONS: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "group.instance.id",
    "bootstrap.servers",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RabbitConfig {
    pub url: String,
    pub exchange: String,
    pub queues: u32,
}

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

fn default_max_profile_bytes() -> usize {
    1_048_576
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MongoConfig {
    pub url: String,
    pub database: String,
}

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
}

/// The Segment-compatible HTTP ingest (`[ingest]`, off unless `listen` is set).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// The environment variable holding the comma-separated write keys.
    #[serde(default = "default_write_keys_env")]
    pub write_keys_env: String,
    /// How long a request waits for the broker's acknowledgement before 503.
    #[serde(default = "default_ingest_timeout_ms")]
    pub timeout_ms: u64,
    /// Requests per second per write key; unset: no limit.
    #[serde(default, deserialize_with = "optional_number")]
    pub rate_per_sec_per_key: Option<f64>,
    /// Bytes of request bodies waiting for the broker at once; past it, 503.
    #[serde(default = "default_ingest_in_flight")]
    pub max_in_flight_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            listen: None,
            write_keys_env: default_write_keys_env(),
            timeout_ms: default_ingest_timeout_ms(),
            rate_per_sec_per_key: None,
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

fn default_ingest_in_flight() -> usize {
    64 << 20
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_size: usize,
    pub max_wait_ms: u64,
    pub shards: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    pub window_ms: i64,
    pub max_ids_per_user: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregatorConfig {
    pub idle_ms: u64,
    /// Most users held in memory per instance; beyond it the least valuable durable ones are
    /// passivated.
    pub max_resident: usize,
    /// Before users had one owner whatever their partition, the cap was per partition. Still
    /// accepted so old files load; ignored (see `max_resident`).
    #[serde(default)]
    pub max_per_partition: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub max_in_flight_per_partition: usize,
    pub fetch_max_records: usize,
    pub commit_interval_ms: u64,
    pub workers: usize,
    /// A revoked partition that has not drained by then is given up without a commit (its
    /// records go to the next owner, whose fenced writes win).
    pub revoke_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    pub base_ms: u64,
    pub max_delay_ms: u64,
    pub max_attempts: u32,
    pub sweep_ms: u64,
    /// How often the reconciler looks for messages waiting on a send that nobody holds.
    pub reconcile_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    /// The largest stored profile (its serialized state) Herald accepts; an event that would
    /// grow one past it is dead-lettered as `profile_too_large`.
    #[serde(default = "default_max_profile_bytes")]
    pub max_profile_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutConfig {
    pub timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: Option<LogFormat>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    pub fail_rate: f64,
    pub throttle_rate: f64,
    pub reject_rate: f64,
    pub undelivered_rate: f64,
    pub latency_ms: u64,
    pub callback_latency_ms: u64,
    /// Per-provider override of `reject_rate` (to exercise fallbacks).
    #[serde(default)]
    pub reject_rate_by_provider: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    pub partitions: u32,
    pub simulator: SimulatorConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CampaignConfig {
    pub id: String,
    pub on_event: String,
    pub channel: String,
    pub template: String,
    /// Email subject template.
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub when_traits: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub name: String,
    /// Which provider API this is (`webhook`: Herald's own protocol).
    #[serde(default)]
    pub kind: ProviderKind,
    pub channel: String,
    /// `webhook`: the send endpoint; `smtp`: `smtp://host:port` or `smtps://host:port`.
    #[serde(default)]
    pub url: Option<String>,
    /// Twilio, SendGrid, FCM: the API's base URL (defaults to the provider's public API).
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default = "default_priority")]
    pub priority: u32,
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    #[serde(default = "default_provider_timeout")]
    pub timeout_ms: u64,
    #[serde(default = "default_concurrency")]
    pub max_concurrency: usize,
    /// Consecutive retryable failures (429, 5xx, timeouts) that open the circuit.
    #[serde(default = "default_circuit_failures")]
    pub circuit_failures: u32,
    /// How long an open circuit stays open (its sends go to the fallback meanwhile).
    #[serde(default = "default_circuit_open_ms")]
    pub circuit_open_ms: u64,
    /// What a send whose answer was lost becomes: `retry` (default) or `fail`.
    #[serde(default)]
    pub on_unknown_outcome: OnUnknownOutcome,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub webhook_secret_env: Option<String>,
    /// Twilio.
    #[serde(default)]
    pub account_sid_env: Option<String>,
    #[serde(default)]
    pub auth_token_env: Option<String>,
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Twilio (a phone number), SendGrid and SMTP (an address).
    #[serde(default)]
    pub from: Option<String>,
    /// SendGrid.
    #[serde(default)]
    pub api_key_env: Option<String>,
    #[serde(default)]
    pub webhook_public_key_env: Option<String>,
    /// SMTP.
    #[serde(default)]
    pub username_env: Option<String>,
    #[serde(default)]
    pub password_env: Option<String>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub unsubscribe_url: Option<String>,
    /// FCM.
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub service_account_file_env: Option<String>,
}

/// `[[providers]] kind`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[default]
    Webhook,
    Twilio,
    Sendgrid,
    Smtp,
    Fcm,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Webhook => "webhook",
            ProviderKind::Twilio => "twilio",
            ProviderKind::Sendgrid => "sendgrid",
            ProviderKind::Smtp => "smtp",
            ProviderKind::Fcm => "fcm",
        }
    }

    /// The one channel a provider of this kind sends on (`webhook`: any).
    pub fn channel(self) -> Option<Channel> {
        match self {
            ProviderKind::Webhook => None,
            ProviderKind::Twilio => Some(Channel::Sms),
            ProviderKind::Sendgrid | ProviderKind::Smtp => Some(Channel::Email),
            ProviderKind::Fcm => Some(Channel::Push),
        }
    }

    /// The provider's public API.
    pub fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Twilio => Some("https://api.twilio.com"),
            ProviderKind::Sendgrid => Some("https://api.sendgrid.com/v3"),
            ProviderKind::Fcm => Some("https://fcm.googleapis.com"),
            ProviderKind::Webhook | ProviderKind::Smtp => None,
        }
    }
}

/// `[[providers]] on_unknown_outcome`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnUnknownOutcome {
    #[default]
    Retry,
    Fail,
}

impl ProviderConfig {
    /// `base_url` or the provider's public API, without a trailing `/`.
    pub fn effective_base_url(&self) -> Option<String> {
        self.base_url
            .as_deref()
            .or(self.kind.default_base_url())
            .map(|u| u.trim_end_matches('/').to_string())
    }

    /// The environment variables this provider reads secrets from, with what each holds.
    pub fn secret_vars(&self) -> Vec<(&'static str, &String)> {
        [
            ("token", &self.token_env),
            ("webhook secret", &self.webhook_secret_env),
            ("account sid", &self.account_sid_env),
            ("auth token", &self.auth_token_env),
            ("API key", &self.api_key_env),
            ("webhook public key", &self.webhook_public_key_env),
            ("username", &self.username_env),
            ("password", &self.password_env),
            ("service-account key file", &self.service_account_file_env),
        ]
        .into_iter()
        .filter_map(|(what, var)| var.as_ref().map(|v| (what, v)))
        .collect()
    }
}

fn default_priority() -> u32 {
    1
}
fn default_rate() -> u32 {
    500
}
fn default_provider_timeout() -> u64 {
    2000
}
fn default_concurrency() -> usize {
    64
}
fn default_circuit_failures() -> u32 {
    5
}
fn default_circuit_open_ms() -> u64 {
    5000
}

/// The raw, fully merged configuration (what `check-config` prints).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub kafka: KafkaConfig,
    pub rabbitmq: RabbitConfig,
    pub redis: RedisConfig,
    pub mongo: MongoConfig,
    pub http: HttpConfig,
    #[serde(default)]
    pub ingest: IngestConfig,
    pub batch: BatchConfig,
    pub dedup: DedupConfig,
    pub aggregator: AggregatorConfig,
    pub pipeline: PipelineConfig,
    pub retry: RetryConfig,
    pub limits: LimitsConfig,
    pub startup: TimeoutConfig,
    pub shutdown: TimeoutConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub demo: DemoConfig,
    #[serde(default)]
    pub campaigns: Vec<CampaignConfig>,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    /// Validated campaigns, built by [`Config::load`].
    #[serde(skip)]
    pub parsed_campaigns: Vec<Campaign>,
    /// The effective merged TOML with its provenance, for `check-config`.
    #[serde(skip)]
    pub effective: Option<Value>,
}

impl Config {
    pub fn dedup_limits(&self) -> DedupLimits {
        DedupLimits {
            window_ms: self.dedup.window_ms,
            max_ids: self.dedup.max_ids_per_user,
        }
    }

    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            base_ms: self.retry.base_ms,
            max_delay_ms: self.retry.max_delay_ms,
            max_attempts: self.retry.max_attempts,
        }
    }

    pub fn workers(&self) -> usize {
        match self.pipeline.workers {
            0 => num_cpus::get().max(1),
            n => n,
        }
    }

    pub fn batch_shards(&self) -> usize {
        match self.batch.shards {
            0 => num_cpus::get().max(1),
            n => n,
        }
    }

    /// Providers of a channel, in fallback order.
    pub fn providers_for(&self, channel: Channel) -> Vec<&ProviderConfig> {
        let mut v: Vec<&ProviderConfig> = self
            .providers
            .iter()
            .filter(|p| Channel::parse(&p.channel) == Some(channel))
            .collect();
        v.sort_by_key(|p| p.priority);
        v
    }

    /// Loads defaults, then `files` in order, then the environment.
    pub fn load(files: &[PathBuf]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        Self::load_with(files, &[], &env)
    }

    /// Like [`Config::load`] with extra in-memory layers (name, TOML text) applied after the
    /// files and before the environment, and an explicit environment (for tests).
    pub fn load_with(
        files: &[PathBuf],
        extra_layers: &[(&str, &str)],
        env: &[(String, String)],
    ) -> Result<Config, ConfigError> {
        let mut provenance: HashMap<String, String> = HashMap::new();
        let defaults = parse_layer("built-in defaults", DEFAULT_TOML)?;
        let mut merged = Value::Table(Default::default());
        merge(
            &mut merged,
            defaults.clone(),
            "",
            "built-in defaults",
            &mut provenance,
        );
        for path in files {
            let name = path.display().to_string();
            let text = read_file(path)?;
            let layer = parse_layer(&name, &text)?;
            merge(&mut merged, layer, "", &name, &mut provenance);
        }
        for (name, text) in extra_layers {
            let layer = parse_layer(name, text)?;
            merge(&mut merged, layer, "", name, &mut provenance);
        }
        for (var, raw) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let path: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
            if path.iter().any(|p| p.is_empty()) {
                return Err(ConfigError::new(
                    format!("env {var}"),
                    rest.to_string(),
                    "expected HERALD__SECTION__KEY",
                ));
            }
            let value = env_value(&defaults, &path, raw);
            set_path(&mut merged, &path, value);
            provenance.insert(path.join("."), format!("env {var}"));
        }
        let effective = merged.clone();
        let mut config: Config = serde_path_to_error::deserialize(merged).map_err(|e| {
            let key = e.path().to_string();
            let source = lookup_provenance(&provenance, &key);
            // toml appends "in `key`" on a second line; the key is already named.
            let problem = e.into_inner().to_string();
            let problem = problem
                .lines()
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            ConfigError::new(source, key, problem)
        })?;
        config.effective = Some(effective);
        config.validate(&provenance)?;
        Ok(config)
    }

    fn validate(&mut self, prov: &HashMap<String, String>) -> Result<(), ConfigError> {
        let err = |key: &str, problem: String| {
            ConfigError::new(lookup_provenance(prov, key), key.to_string(), problem)
        };
        let positive = [
            ("batch.max_size", self.batch.max_size as u64),
            ("batch.max_wait_ms", self.batch.max_wait_ms),
            ("dedup.max_ids_per_user", self.dedup.max_ids_per_user as u64),
            ("aggregator.idle_ms", self.aggregator.idle_ms),
            (
                "aggregator.max_resident",
                self.aggregator.max_resident as u64,
            ),
            (
                "pipeline.revoke_timeout_ms",
                self.pipeline.revoke_timeout_ms,
            ),
            (
                "pipeline.max_in_flight_per_partition",
                self.pipeline.max_in_flight_per_partition as u64,
            ),
            (
                "pipeline.fetch_max_records",
                self.pipeline.fetch_max_records as u64,
            ),
            (
                "pipeline.commit_interval_ms",
                self.pipeline.commit_interval_ms,
            ),
            ("retry.base_ms", self.retry.base_ms),
            ("retry.max_delay_ms", self.retry.max_delay_ms),
            ("retry.max_attempts", self.retry.max_attempts as u64),
            ("retry.sweep_ms", self.retry.sweep_ms),
            ("retry.reconcile_ms", self.retry.reconcile_ms),
            (
                "limits.max_message_bytes",
                self.limits.max_message_bytes as u64,
            ),
            (
                "limits.max_profile_bytes",
                self.limits.max_profile_bytes as u64,
            ),
            ("startup.timeout_ms", self.startup.timeout_ms),
            ("shutdown.timeout_ms", self.shutdown.timeout_ms),
            ("ingest.timeout_ms", self.ingest.timeout_ms),
            ("rabbitmq.queues", self.rabbitmq.queues as u64),
            ("demo.partitions", self.demo.partitions as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(err(key, "must be greater than 0".into()));
            }
        }
        if self.dedup.window_ms <= 0 {
            return Err(err("dedup.window_ms", "must be greater than 0".into()));
        }
        if self.retry.max_delay_ms < self.retry.base_ms {
            return Err(err(
                "retry.max_delay_ms",
                format!("must be at least retry.base_ms ({})", self.retry.base_ms),
            ));
        }
        for (key, value) in &self.kafka.options {
            let at = format!("kafka.options.{key}");
            if scalar_string(value).is_none() {
                return Err(err(&at, "must be a string, number or boolean".into()));
            }
            if KAFKA_FORCED_OPTIONS.contains(&key.as_str()) {
                return Err(err(
                    &at,
                    "is set by Herald (use kafka.brokers / kafka.group_id / \
                     kafka.group_instance_id; offsets are committed only once durable)"
                        .into(),
                ));
            }
        }
        if self.kafka.topic.is_empty() {
            return Err(err("kafka.topic", "must not be empty".into()));
        }
        if !is_collection_name(&self.mongo.database) {
            return Err(err(
                "mongo.database",
                "use only letters, digits and '_', not starting with a digit".into(),
            ));
        }
        for (key, url, schemes) in [
            ("redis.url", &self.redis.url, &["redis", "rediss"][..]),
            (
                "mongo.url",
                &self.mongo.url,
                &["mongodb", "mongodb+srv"][..],
            ),
            ("rabbitmq.url", &self.rabbitmq.url, &["amqp", "amqps"][..]),
        ] {
            let scheme = url.split("://").next().unwrap_or("");
            if !url.contains("://") || !schemes.contains(&scheme) {
                return Err(err(key, format!("expected a {}:// URL", schemes[0])));
            }
        }
        let sim = &self.demo.simulator;
        for (key, rate) in [
            ("demo.simulator.fail_rate", sim.fail_rate),
            ("demo.simulator.throttle_rate", sim.throttle_rate),
            ("demo.simulator.reject_rate", sim.reject_rate),
            ("demo.simulator.undelivered_rate", sim.undelivered_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(err(key, format!("must be between 0 and 1, got {rate}")));
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let key = |k: &str| format!("providers[{i}].{k}");
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(err(
                    "providers",
                    format!("{}: use only letters, digits, '-' and '_'", key("name")),
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(err(
                    "providers",
                    format!("{}: provider {:?} is defined twice", key("name"), p.name),
                ));
            }
            if Channel::parse(&p.channel).is_none() {
                return Err(err(
                    "providers",
                    format!(
                        "{}: must be sms, email or push, got {:?}",
                        key("channel"),
                        p.channel
                    ),
                ));
            }
            validate_provider_kind(p)
                .map_err(|(k, problem)| err("providers", format!("{}: {problem}", key(k))))?;
            if p.rate_per_sec == 0 || p.timeout_ms == 0 || p.max_concurrency == 0 {
                return Err(err(
                    "providers",
                    format!(
                        "{}: rate_per_sec, timeout_ms and max_concurrency must be greater than 0",
                        key("*")
                    ),
                ));
            }
        }
        if let Some(rate) = self.ingest.rate_per_sec_per_key {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(err(
                    "ingest.rate_per_sec_per_key",
                    format!("must be a number greater than 0, got {rate}"),
                ));
            }
        }
        let mut parsed = Vec::new();
        let mut ids = std::collections::HashSet::new();
        for (i, c) in self.campaigns.iter().enumerate() {
            let key = |k: &str| format!("campaigns[{i}].{k}");
            if c.id.is_empty() || c.id.contains(':') {
                return Err(err(
                    "campaigns",
                    format!("{}: must be non-empty and must not contain ':'", key("id")),
                ));
            }
            if !ids.insert(c.id.clone()) {
                return Err(err(
                    "campaigns",
                    format!("{}: campaign {:?} is defined twice", key("id"), c.id),
                ));
            }
            if !crate::domain::event::is_valid_event_name(&c.on_event) {
                return Err(err(
                    "campaigns",
                    format!(
                        "{}: not a valid event name: {:?}",
                        key("on_event"),
                        c.on_event
                    ),
                ));
            }
            let channel = Channel::parse(&c.channel).ok_or_else(|| {
                err(
                    "campaigns",
                    format!(
                        "{}: must be sms, email or push, got {:?}",
                        key("channel"),
                        c.channel
                    ),
                )
            })?;
            let template = Template::parse(&c.template)
                .map_err(|e| err("campaigns", format!("{}: {e}", key("template"))))?;
            let subject = c
                .subject
                .as_deref()
                .map(Template::parse)
                .transpose()
                .map_err(|e| err("campaigns", format!("{}: {e}", key("subject"))))?;
            if self.source.kind != SourceKind::Embedded && self.providers_for(channel).is_empty() {
                return Err(err(
                    "campaigns",
                    format!(
                        "{}: no provider is configured for channel {channel}",
                        key("channel")
                    ),
                ));
            }
            parsed.push(Campaign {
                id: c.id.clone(),
                on_event: c.on_event.clone(),
                channel,
                template,
                subject,
                when_traits: c
                    .when_traits
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
        self.parsed_campaigns = parsed;
        Ok(())
    }

    /// The effective configuration as TOML, with passwords in URLs masked.
    pub fn render_effective(&self) -> String {
        let mut v = self
            .effective
            .clone()
            .unwrap_or(Value::Table(Default::default()));
        mask_secrets(&mut v);
        let mut out = toml::to_string_pretty(&v).unwrap_or_default();
        for p in &self.providers {
            for (what, var) in p.secret_vars() {
                {
                    let state = if std::env::var_os(var).is_some() {
                        "set (masked)"
                    } else {
                        "NOT SET"
                    };
                    out.push_str(&format!(
                        "# provider {}: {what} from ${var}: {state}\n",
                        p.name
                    ));
                }
            }
        }
        out
    }
}

fn is_http_url(u: &str) -> bool {
    u.starts_with("http://") || u.starts_with("https://")
}

/// What each provider kind needs (REFERENCE.md §10): `Err((key, problem))`.
fn validate_provider_kind(p: &ProviderConfig) -> Result<(), (&'static str, String)> {
    let channel = Channel::parse(&p.channel);
    if let (Some(want), Some(got)) = (p.kind.channel(), channel) {
        if want != got {
            return Err((
                "channel",
                format!("a {} provider sends on {want}, not {got}", p.kind.as_str()),
            ));
        }
    }
    if let Some(base) = &p.base_url {
        if !is_http_url(base) {
            return Err(("base_url", "expected an http:// or https:// URL".into()));
        }
    }
    let need = |key: &'static str, v: &Option<String>| match v {
        Some(v) if !v.is_empty() => Ok(()),
        _ => Err((key, format!("required for kind = \"{}\"", p.kind.as_str()))),
    };
    match p.kind {
        ProviderKind::Webhook => match &p.url {
            Some(u) if is_http_url(u) => Ok(()),
            Some(_) => Err(("url", "expected an http:// or https:// URL".into())),
            None => Err(("url", "required for kind = \"webhook\"".into())),
        },
        ProviderKind::Twilio => {
            need("account_sid_env", &p.account_sid_env)?;
            need("auth_token_env", &p.auth_token_env)?;
            if p.from.is_none() == p.messaging_service_sid.is_none() {
                return Err((
                    "from",
                    "set exactly one of from and messaging_service_sid".into(),
                ));
            }
            Ok(())
        }
        ProviderKind::Sendgrid => {
            need("api_key_env", &p.api_key_env)?;
            need("from", &p.from)
        }
        ProviderKind::Smtp => {
            match &p.url {
                Some(u) if u.starts_with("smtp://") || u.starts_with("smtps://") => {}
                _ => {
                    return Err((
                        "url",
                        "expected smtp://host:port (STARTTLS) or smtps://host:port".into(),
                    ))
                }
            }
            need("from", &p.from)
        }
        ProviderKind::Fcm => {
            need("project_id", &p.project_id)?;
            need("service_account_file_env", &p.service_account_file_env)
        }
    }
}

/// MongoDB collection/database names as REFERENCE.md §3 allows them.
pub fn is_collection_name(s: &str) -> bool {
    !s.is_empty()
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            path.display().to_string(),
            "(file)",
            format!("cannot read: {e}"),
        )
    })
}

fn parse_layer(name: &str, text: &str) -> Result<Value, ConfigError> {
    text.parse::<toml::Table>().map(Value::Table).map_err(|e| {
        let problem = e.message().to_string();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].lines().count().max(1);
                format!("line {line}")
            })
            .unwrap_or_else(|| "(syntax)".into());
        ConfigError::new(name, at, problem)
    })
}

/// Deep-merges tables; anything else (including arrays of tables) is replaced whole.
fn merge(
    into: &mut Value,
    layer: Value,
    prefix: &str,
    source: &str,
    prov: &mut HashMap<String, String>,
) {
    match (into, layer) {
        (Value::Table(dst), Value::Table(src)) => {
            for (k, v) in src {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match dst.get_mut(&k) {
                    Some(existing) if existing.is_table() && v.is_table() => {
                        merge(existing, v, &path, source, prov)
                    }
                    _ => {
                        record_provenance(&v, &path, source, prov);
                        dst.insert(k, v);
                    }
                }
            }
        }
        (dst, src) => *dst = src,
    }
}

fn record_provenance(v: &Value, path: &str, source: &str, prov: &mut HashMap<String, String>) {
    prov.insert(path.to_string(), source.to_string());
    if let Value::Table(t) = v {
        for (k, child) in t {
            record_provenance(child, &format!("{path}.{k}"), source, prov);
        }
    }
}

fn lookup_provenance(prov: &HashMap<String, String>, key: &str) -> String {
    // serde_path_to_error renders array indices as `campaigns[0].x`; provenance is per table key.
    let mut k = key.split('[').next().unwrap_or(key).to_string();
    loop {
        if let Some(s) = prov.get(&k) {
            return s.clone();
        }
        match k.rfind('.') {
            Some(i) => k.truncate(i),
            None => return "configuration".to_string(),
        }
    }
}

/// Types an environment value like the default at the same path (integers stay integers).
fn env_value(defaults: &Value, path: &[String], raw: &str) -> Value {
    let mut cur = Some(defaults);
    for p in path {
        cur = cur.and_then(|v| v.get(p.as_str()));
    }
    match cur {
        Some(Value::Integer(_)) => raw
            .trim()
            .parse()
            .map(Value::Integer)
            .unwrap_or_else(|_| Value::String(raw.into())),
        Some(Value::Float(_)) => raw
            .trim()
            .parse()
            .map(Value::Float)
            .unwrap_or_else(|_| Value::String(raw.into())),
        Some(Value::Boolean(_)) => raw
            .trim()
            .parse()
            .map(Value::Boolean)
            .unwrap_or_else(|_| Value::String(raw.into())),
        _ => Value::String(raw.to_string()),
    }
}

fn set_path(root: &mut Value, path: &[String], value: Value) {
    let mut cur = root;
    for p in &path[..path.len() - 1] {
        let Value::Table(t) = cur else { return };
        cur = t
            .entry(p.clone())
            .or_insert_with(|| Value::Table(Default::default()));
        if !cur.is_table() {
            *cur = Value::Table(Default::default());
        }
    }
    if let Value::Table(t) = cur {
        t.insert(path[path.len() - 1].clone(), value);
    }
}

fn mask_secrets(v: &mut Value) {
    match v {
        Value::String(s) => *s = mask_url_password(s),
        Value::Table(t) => t.iter_mut().for_each(|(k, v)| {
            // librdkafka secrets (`sasl.password`, `ssl.key.password`, ...) in kafka.options.
            if k.contains("password") || k.contains("secret") {
                *v = Value::String("****".into());
            } else {
                mask_secrets(v)
            }
        }),
        Value::Array(a) => a.iter_mut().for_each(mask_secrets),
        _ => {}
    }
}

/// `scheme://user:secret@host` → `scheme://user:****@host`.
pub fn mask_url_password(s: &str) -> String {
    let Some(scheme_end) = s.find("://") else {
        return s.to_string();
    };
    let rest = &s[scheme_end + 3..];
    let Some(at) = rest.find('@') else {
        return s.to_string();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}://{}:****{}",
            &s[..scheme_end],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => s.to_string(),
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Kafka => "kafka",
            SourceKind::Rabbitmq => "rabbitmq",
            SourceKind::Embedded => "embedded",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(layers: &[(&str, &str)], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::load_with(&[], layers, &env)
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = load(&[], &[]).unwrap();
        assert_eq!(c.source.kind, SourceKind::Kafka);
        assert_eq!(c.kafka.topic, "herald.events");
        assert_eq!(c.batch.max_size, 5000);
        assert_eq!(c.batch.max_wait_ms, 250);
        assert_eq!(c.dedup.window_ms, 86_400_000);
        assert_eq!(c.retry.max_attempts, 5);
        assert_eq!(c.redis.prefix, "herald:");
        assert_eq!(c.http.public_url(), "http://127.0.0.1:8080");
    }

    #[test]
    fn later_layers_and_env_win() {
        let c = load(
            &[
                ("a.toml", "[batch]\nmax_size = 10"),
                ("b.toml", "[batch]\nmax_size = 20"),
            ],
            &[
                ("HERALD__KAFKA__BROKERS", "10.0.0.1:9092"),
                ("HERALD__BATCH__MAX_WAIT_MS", "7"),
            ],
        )
        .unwrap();
        assert_eq!(c.batch.max_size, 20);
        assert_eq!(c.batch.max_wait_ms, 7);
        assert_eq!(c.kafka.brokers, "10.0.0.1:9092");
    }

    #[test]
    fn a_number_without_a_default_can_come_from_the_environment() {
        let c = load(&[], &[("HERALD__INGEST__RATE_PER_SEC_PER_KEY", "2.5")]).unwrap();
        assert_eq!(c.ingest.rate_per_sec_per_key, Some(2.5));
        let c = load(&[("a.toml", "[ingest]\nrate_per_sec_per_key = 3")], &[]).unwrap();
        assert_eq!(c.ingest.rate_per_sec_per_key, Some(3.0));
        let e = load(&[], &[("HERALD__INGEST__RATE_PER_SEC_PER_KEY", "fast")]).unwrap_err();
        assert_eq!(e.key, "ingest.rate_per_sec_per_key");
        assert!(e.problem.contains("expected a number"), "{e}");
    }

    #[test]
    fn errors_name_source_key_and_problem() {
        let e = load(&[("bad.toml", "[batch]\nmax_size = \"many\"")], &[]).unwrap_err();
        assert_eq!(e.source_name, "bad.toml");
        assert_eq!(e.key, "batch.max_size");
        let e = load(&[], &[("HERALD__BATCH__MAX_SIZE", "0")]).unwrap_err();
        assert_eq!(e.source_name, "env HERALD__BATCH__MAX_SIZE");
        assert!(e.problem.contains("greater than 0"));
        let e = load(&[("x.toml", "[batch]\nmax_sise = 3")], &[]).unwrap_err();
        assert!(e.problem.contains("unknown field"), "{e}");
        let e = load(&[("y.toml", "[batch\n")], &[]).unwrap_err();
        assert_eq!(e.source_name, "y.toml");
        assert!(e.key.starts_with("line"));
    }

    #[test]
    fn kafka_options_pass_through_and_guarded_keys_are_refused() {
        let c = load(
            &[(
                "k.toml",
                "[kafka.options]\n\"security.protocol\" = \"SASL_SSL\"\n\"fetch.wait.max.ms\" = 20\n\"sasl.password\" = \"hunter2\"",
            )],
            &[("HERALD__KAFKA__OPTIONS__session.timeout.ms", "6000")],
        )
        .unwrap();
        let opts = c.kafka.option_strings();
        assert!(opts.contains(&("security.protocol".into(), "SASL_SSL".into())));
        assert!(opts.contains(&("fetch.wait.max.ms".into(), "20".into())));
        assert!(opts.contains(&("session.timeout.ms".into(), "6000".into())));
        assert!(!c.render_effective().contains("hunter2"), "secrets masked");
        let e = load(
            &[("k.toml", "[kafka.options]\n\"enable.auto.commit\" = true")],
            &[],
        )
        .unwrap_err();
        assert_eq!(e.key, "kafka.options.enable.auto.commit");
        let e = load(&[("k.toml", "[kafka.options]\n\"x\" = [1]")], &[]).unwrap_err();
        assert!(e.problem.contains("string, number or boolean"), "{e}");
    }

    #[test]
    fn campaigns_are_validated() {
        let e = load(
            &[(
                "c.toml",
                "[source]\nkind='embedded'\n[[campaigns]]\nid='w'\non_event='signed_up'\nchannel='fax'\ntemplate='x'",
            )],
            &[],
        )
        .unwrap_err();
        assert!(e.problem.contains("campaigns[0].channel"), "{e}");
        let e = load(
            &[(
                "c.toml",
                "[[campaigns]]\nid='w'\non_event='signed_up'\nchannel='sms'\ntemplate='x'",
            )],
            &[],
        )
        .unwrap_err();
        assert!(e.problem.contains("no provider"), "{e}");
    }

    #[test]
    fn masks_url_passwords() {
        assert_eq!(
            mask_url_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:****@127.0.0.1:5672/%2f"
        );
        assert_eq!(mask_url_password("redis://127.0.0.1"), "redis://127.0.0.1");
        let c = load(&[], &[]).unwrap();
        assert!(!c.render_effective().contains("guest:guest"));
    }
}
