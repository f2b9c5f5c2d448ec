//! A worker's heartbeat as the registry keeps it: what `plugin status` shows
//! ([`rules::status`](crate::rules::status) collects and publishes it).

use serde::{Deserialize, Serialize};

/// One rule version's recent figures on one worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleStatus {
    /// Rule name.
    pub name: String,
    /// Rule version.
    pub version: String,
    /// Evaluations since the worker started.
    pub evaluations: u64,
    /// Failed evaluations since the worker started.
    pub failures: u64,
    /// Median and 99th percentile duration of the latest evaluations, µs.
    pub p50_us: u64,
    /// See `p50_us`.
    pub p99_us: u64,
    /// Median and 99th percentile fuel of the latest evaluations that did not fail.
    pub fuel_p50: u64,
    /// See `fuel_p50`.
    pub fuel_p99: u64,
}

/// A worker's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// WORKER_INSTANCE_ID, or host:pid.
    pub instance: String,
    /// The ruleset version it evaluates with.
    pub ruleset_version: u64,
    /// Why it could not switch to the registry's active version, if it could not.
    #[serde(default)]
    pub last_error: Option<String>,
    /// Orders it processed since it started.
    pub orders: u64,
    /// Each rule version it ran.
    pub rules: Vec<RuleStatus>,
    /// When it sent this, Unix ms.
    pub at_unix_ms: i64,
}
