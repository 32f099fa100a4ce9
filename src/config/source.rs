//! `[source]`, `[kafka]` and `[rabbitmq]`: which broker Herald reads, and how it reaches it.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use toml::Value;

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

pub(super) fn scalar_string(v: &Value) -> Option<String> {
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

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SourceKind::Kafka => "kafka",
            SourceKind::Rabbitmq => "rabbitmq",
            SourceKind::Embedded => "embedded",
        })
    }
}
