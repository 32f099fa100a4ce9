//! `[demo]`: the partitions and the simulated providers of `herald demo`.

use std::collections::BTreeMap;

use serde::Deserialize;

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
