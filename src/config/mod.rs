//! Layered configuration: built-in defaults (`config/default.toml`), then each `--config`
//! file in order, then `HERALD__SECTION__KEY` environment variables. Every error names its
//! source (file or variable), the key and the problem.
//!
//! This file holds [`Config`] itself, its loading and its validation; each section's types
//! are in a file of their own, re-exported here.

use std::collections::HashMap;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Value;

use crate::domain::campaign::{Campaign, Channel, Priority, TriggerContext};
use crate::domain::policy::{FrequencyCap, QuietHours, QuietPolicy};
use crate::domain::retry::RetryPolicy;
use crate::domain::template::Template;
use crate::domain::user::DedupLimits;

mod demo;
mod feeds;
mod http;
mod layers;
mod mask;
mod messaging;
mod pipeline;
mod runtime;
mod source;
mod stores;

pub use demo::{DemoConfig, SimulatorConfig};
pub use feeds::{ChangelogConfig, FeedbackConfig};
pub use http::{HttpConfig, IngestConfig};
pub use mask::mask_url_password;
pub use messaging::{
    CampaignConfig, FrequencyCapConfig, OnUnknownOutcome, PolicyConfig, ProviderConfig,
    ProviderKind, QuietHoursConfig,
};
pub use pipeline::{
    AggregatorConfig, BatchConfig, DedupConfig, LimitsConfig, MergeConfig, PipelineConfig,
    ReconcileConfig, RetryConfig,
};
pub use runtime::{LogConfig, LogFormat, TimeoutConfig};
pub use source::{KafkaConfig, RabbitConfig, SourceConfig, SourceKind, KAFKA_FORCED_OPTIONS};
pub use stores::{is_collection_name, MongoConfig, RedisConfig};

use layers::{env_value, lookup_provenance, merge, parse_layer, read_file, set_path};
use mask::mask_secrets;
use messaging::validate_provider_kind;
use source::scalar_string;

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
    #[serde(default)]
    pub changelog: ChangelogConfig,
    pub batch: BatchConfig,
    pub dedup: DedupConfig,
    pub aggregator: AggregatorConfig,
    pub pipeline: PipelineConfig,
    pub retry: RetryConfig,
    #[serde(default)]
    pub reconcile: ReconcileConfig,
    #[serde(default)]
    pub merge: MergeConfig,
    pub limits: LimitsConfig,
    pub startup: TimeoutConfig,
    pub shutdown: TimeoutConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub demo: DemoConfig,
    #[serde(default)]
    pub policy: PolicyConfig,
    #[serde(default)]
    pub campaigns: Vec<CampaignConfig>,
    #[serde(default)]
    pub frequency_caps: Vec<FrequencyCapConfig>,
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub feedback: Vec<FeedbackConfig>,
    /// Validated campaigns, built by [`Config::load`].
    #[serde(skip)]
    pub parsed_campaigns: Vec<Campaign>,
    /// Validated frequency caps, built by [`Config::load`].
    #[serde(skip)]
    pub parsed_caps: Vec<FrequencyCap>,
    /// `policy.default_timezone`, validated.
    #[serde(skip)]
    pub default_tz: Option<chrono_tz::Tz>,
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

    /// What campaigns evaluate a trigger with, at `now_ms`.
    pub fn trigger_context(&self, now_ms: i64) -> TriggerContext {
        TriggerContext {
            now_ms,
            default_tz: self.default_tz.unwrap_or(chrono_tz::Tz::UTC),
            max_body_bytes: self.limits.max_message_body_bytes,
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
            ("reconcile.status_after_ms", self.reconcile.status_after_ms),
            ("reconcile.max_age_ms", self.reconcile.max_age_ms),
            ("reconcile.lookup_every_ms", self.reconcile.lookup_every_ms),
            ("merge.max_ids", self.merge.max_ids as u64),
            ("merge.mark_ttl_ms", self.merge.mark_ttl_ms),
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
            (
                "changelog.transaction_timeout_ms",
                self.changelog.transaction_timeout_ms,
            ),
            ("rabbitmq.queues", self.rabbitmq.queues as u64),
            ("demo.partitions", self.demo.partitions as u64),
        ];
        for (key, v) in positive {
            if v == 0 {
                return Err(err(key, "must be greater than 0".into()));
            }
        }
        let lookups = self.reconcile.lookups_per_sec;
        if !(lookups.is_finite() && lookups > 0.0) {
            return Err(err(
                "reconcile.lookups_per_sec",
                "must be greater than 0".into(),
            ));
        }
        if let Err(e) = crate::domain::merge::BlockedIds::new(&self.merge.blocked_ids) {
            return Err(err("merge.blocked_ids", e));
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
        if self.redis.prefix.contains(['{', '}']) {
            return Err(err(
                "redis.prefix",
                "must not contain '{' or '}' (Herald's keys carry their own Redis Cluster hash tags)"
                    .into(),
            ));
        }
        if let Some(nodes) = self.redis.cluster_node_list() {
            for node in &nodes {
                let scheme = node.split("://").next().unwrap_or("");
                if !node.contains("://") || !["redis", "rediss"].contains(&scheme) {
                    return Err(err(
                        "redis.cluster_nodes",
                        format!("{node:?}: expected a redis:// URL"),
                    ));
                }
            }
        }
        let w = self.mongo.write_concern.as_str();
        if w.is_empty() || (w.parse::<i32>().is_ok_and(|n| n < 0)) {
            return Err(err(
                "mongo.write_concern",
                "expected \"majority\", a tag set name or a number of nodes".into(),
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
        for (i, f) in self.feedback.iter().enumerate() {
            let key = |k: &str| format!("feedback[{i}].{k}");
            if !(f.url.starts_with("http://") || f.url.starts_with("https://")) {
                return Err(err(
                    "feedback",
                    format!(
                        "{}: must be an http:// or https:// URL, got {:?}",
                        key("url"),
                        f.url
                    ),
                ));
            }
            if f.statuses.is_empty() {
                return Err(err(
                    "feedback",
                    format!("{}: names no status", key("statuses")),
                ));
            }
            if let Some(bad) = f
                .statuses
                .iter()
                .find(|s| crate::domain::message::MessageStatus::parse(s).is_none())
            {
                return Err(err(
                    "feedback",
                    format!(
                        "{}: {bad:?} is not a status (queued, held, sent, retrying, delivered, failed, skipped)",
                        key("statuses")
                    ),
                ));
            }
            if f.secret_env.trim().is_empty() || f.timeout_ms == 0 {
                return Err(err(
                    "feedback",
                    format!(
                        "{}: secret_env must name a variable and timeout_ms be greater than 0",
                        key("*")
                    ),
                ));
            }
        }
        if self.ingest.only && self.ingest.listen.is_none() {
            return Err(err(
                "ingest.only",
                "an instance that runs only the ingest needs ingest.listen".into(),
            ));
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
            let template = Template::parse(&c.template).map_err(|e| {
                err(
                    "campaigns",
                    format!("{}: campaign {:?}: {e}", key("template"), c.id),
                )
            })?;
            let subject = c
                .subject
                .as_deref()
                .map(Template::parse)
                .transpose()
                .map_err(|e| {
                    err(
                        "campaigns",
                        format!("{}: campaign {:?}: {e}", key("subject"), c.id),
                    )
                })?;
            let quiet_hours = c
                .quiet_hours
                .as_ref()
                .map(|q| {
                    let policy = match q.policy.as_str() {
                        "hold" => QuietPolicy::Hold,
                        "drop" => QuietPolicy::Drop,
                        other => {
                            return Err(format!("policy must be hold or drop, got {other:?}"));
                        }
                    };
                    QuietHours::new(&q.start, &q.end, policy)
                })
                .transpose()
                .map_err(|e| err("campaigns", format!("{}: {e}", key("quiet_hours"))))?;
            let priority = match c.priority.as_deref() {
                None => Priority::Normal,
                Some(p) => Priority::parse(p).ok_or_else(|| {
                    err(
                        "campaigns",
                        format!(
                            "{}: must be high, normal or low, got {p:?}",
                            key("priority")
                        ),
                    )
                })?,
            };
            if c.category.as_deref().is_some_and(str::is_empty) {
                return Err(err(
                    "campaigns",
                    format!("{}: must not be empty", key("category")),
                ));
            }
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
                category: c.category.clone(),
                critical: c.critical,
                quiet_hours,
                priority,
            });
        }
        self.parsed_campaigns = parsed;
        let mut caps = Vec::new();
        for (i, c) in self.frequency_caps.iter().enumerate() {
            let key = |k: &str| format!("frequency_caps[{i}].{k}");
            let channel = Channel::parse(&c.channel).ok_or_else(|| {
                err(
                    "frequency_caps",
                    format!(
                        "{}: must be sms, email or push, got {:?}",
                        key("channel"),
                        c.channel
                    ),
                )
            })?;
            if c.max == 0 || c.per_ms == 0 || c.per_ms > i64::MAX as u64 {
                return Err(err(
                    "frequency_caps",
                    format!("{}: max and per_ms must be greater than 0", key("*")),
                ));
            }
            if caps.iter().any(|x: &FrequencyCap| x.channel == channel) {
                return Err(err(
                    "frequency_caps",
                    format!("{}: channel {channel} has a cap already", key("channel")),
                ));
            }
            caps.push(FrequencyCap {
                channel,
                max: c.max as usize,
                per_ms: c.per_ms as i64,
            });
        }
        self.parsed_caps = caps;
        let tz = self
            .policy
            .default_timezone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| {
                err(
                    "policy.default_timezone",
                    format!(
                        "not an IANA time zone name: {:?}",
                        self.policy.default_timezone
                    ),
                )
            })?;
        self.default_tz = Some(tz);
        if self.limits.max_message_body_bytes == 0 {
            return Err(err(
                "limits.max_message_body_bytes",
                "must be greater than 0".to_string(),
            ));
        }
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
    fn an_ingest_only_instance_needs_its_listener() {
        let e = load(&[], &[("HERALD__INGEST__ONLY", "true")]).unwrap_err();
        assert_eq!(e.key, "ingest.only");
        assert!(e.problem.contains("ingest.listen"), "{e}");
        let c = load(
            &[],
            &[
                ("HERALD__INGEST__ONLY", "true"),
                ("HERALD__INGEST__LISTEN", "127.0.0.1:8088"),
            ],
        )
        .unwrap();
        assert!(c.ingest.only);
        assert!(!load(&[], &[]).unwrap().ingest.only);
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
    fn policy_keys_are_validated_and_template_errors_name_the_campaign() {
        let base = "[source]\nkind='embedded'\n[[campaigns]]\nid='promo'\non_event='signed_up'\nchannel='sms'\n";
        let with = |extra: &str| load(&[("c.toml", &format!("{base}{extra}"))], &[]);
        let e = with("template='Hi {% if traits.x %}'").unwrap_err();
        assert!(
            e.problem
                .contains("campaigns[0].template: campaign \"promo\""),
            "{e}"
        );
        assert!(e.problem.contains("1:"), "the line and column: {e}");
        let e = with("template='x'\nquiet_hours={start='25:00', end='08:00'}").unwrap_err();
        assert!(e.problem.contains("campaigns[0].quiet_hours"), "{e}");
        let e = with("template='x'\nquiet_hours={start='21:00', end='08:00', policy='later'}")
            .unwrap_err();
        assert!(e.problem.contains("hold or drop"), "{e}");
        let e = with("template='x'\npriority='urgent'").unwrap_err();
        assert!(e.problem.contains("campaigns[0].priority"), "{e}");
        let e = with("template='x'\n[policy]\ndefault_timezone='Mars/Olympus'").unwrap_err();
        assert_eq!(e.key, "policy.default_timezone", "{e}");
        let e =
            with("template='x'\n[[frequency_caps]]\nchannel='sms'\nmax=0\nper_ms=1").unwrap_err();
        assert!(e.problem.contains("frequency_caps[0]"), "{e}");
        let c = with(
            "template='x'\ncategory='marketing'\ncritical=true\npriority='low'\nquiet_hours={start='21:00', end='08:00'}\n[policy]\ndefault_timezone='Europe/Zurich'\n[[frequency_caps]]\nchannel='sms'\nmax=3\nper_ms=86400000",
        )
        .unwrap();
        let p = &c.parsed_campaigns[0];
        assert_eq!(
            (p.category.as_deref(), p.critical, p.priority),
            (Some("marketing"), true, Priority::Low)
        );
        assert_eq!(
            p.quiet_hours.unwrap().policy,
            QuietPolicy::Hold,
            "hold by default"
        );
        assert_eq!(c.parsed_caps[0].max, 3);
        assert_eq!(c.default_tz, Some(chrono_tz::Europe::Zurich));
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
