//! Configuration of the pipeline roles: flags, environment variables (the Go system's
//! names) and a `.env` file (read by `main`), each with a default; checked at start-up.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use order_rules_engine::{Limits, limits};

/// Everything the roles need.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Kafka bootstrap servers (`host:port,...`). Unset: the embedded log in DATA_DIR.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// Topic of accepted orders.
    #[arg(long, env = "KAFKA_TOPIC", default_value = "orders")]
    pub kafka_topic: String,
    /// Dead-letter topic.
    #[arg(long, env = "DLQ_TOPIC", default_value = "orders-dlq")]
    pub dlq_topic: String,
    /// Consumer group of the workers.
    #[arg(long, env = "WORKER_GROUP", default_value = "worker-group")]
    pub worker_group: String,
    /// Static consumer-group membership id of this worker (e.g. the pod name). A worker
    /// restarted with the same id takes its partitions back at once; without one, the
    /// group waits for the broker to notice the old member is gone.
    #[arg(long, env = "WORKER_INSTANCE_ID")]
    pub worker_instance_id: Option<String>,
    /// Partitions of the order topic when this process creates it.
    #[arg(long, env = "KAFKA_PARTITIONS", default_value_t = 4)]
    pub kafka_partitions: i32,
    /// Replication factor of topics this process creates.
    #[arg(long, env = "KAFKA_REPLICATION", default_value_t = 1)]
    pub kafka_replication: i32,
    /// Redis address (`host:port` or `redis://...`). Unset: the embedded store in DATA_DIR.
    #[arg(long, env = "REDIS_ADDR")]
    pub redis_addr: Option<String>,
    /// Listen address of the OrderService.
    #[arg(long, env = "ORDER_SERVICE_ADDR", default_value = "0.0.0.0:50051")]
    pub order_service_addr: String,
    /// Listen address of the CacheService.
    #[arg(long, env = "CACHE_SERVICE_ADDR", default_value = "0.0.0.0:50052")]
    pub cache_service_addr: String,
    /// Listen address of the AdminService (deploy, activate, roll back rules); served by
    /// processes that run a worker.
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:50053")]
    pub admin_addr: String,
    /// Bearer token the AdminService requires; required unless ADMIN_ADDR is loopback.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Directory of the embedded log and store.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Ruleset file (TOML); unset: the default ruleset built into the binary.
    #[arg(long, env = "RULESET")]
    pub ruleset: Option<PathBuf>,
    /// Currency of orders that give none (the Go API's orders).
    #[arg(long, env = "DEFAULT_CURRENCY", default_value = "USD")]
    pub default_currency: String,
    /// Retries of an order whose rule answered `retryable`.
    #[arg(long, env = "MAX_RETRIES", default_value_t = 3)]
    pub max_retries: u32,
    /// Pause before the first retry, in ms; doubles on each retry.
    #[arg(long, env = "RETRY_BACKOFF_MS", default_value_t = 200)]
    pub retry_backoff_ms: u64,
    /// A rule that fails (trap, limits, malformed outcome) on more than this many of its
    /// last QUARANTINE_WINDOW orders is taken out: the previous ruleset is restored.
    #[arg(long, env = "QUARANTINE_FAILURES", default_value_t = 5)]
    pub quarantine_failures: usize,
    /// How many of a rule's latest orders QUARANTINE_FAILURES counts over.
    #[arg(long, env = "QUARANTINE_WINDOW", default_value_t = 20)]
    pub quarantine_window: usize,
    /// How long the OrderService waits for the broker's acknowledgement, in ms.
    #[arg(long, env = "PRODUCE_TIMEOUT_MS", default_value_t = 5000)]
    pub produce_timeout_ms: u64,
    /// Limits of every plugin call.
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// Limits every plugin call is held to.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Fuel (about one unit per wasm instruction) per plugin call.
    #[arg(long, env = "PLUGIN_FUEL", default_value_t = limits::DEFAULT_FUEL)]
    pub fuel: u64,
    /// Wall-clock deadline per plugin call, in milliseconds.
    #[arg(long, env = "PLUGIN_DEADLINE_MS", default_value_t = limits::DEFAULT_DEADLINE.as_millis() as u64)]
    pub deadline_ms: u64,
    /// Memory cap per plugin instance, in MiB.
    #[arg(long, env = "PLUGIN_MEMORY_MIB", default_value_t = limits::DEFAULT_MEMORY_BYTES >> 20)]
    pub memory_mib: usize,
    /// Benchmark baseline, not for production: run the built-in rules compiled into the
    /// binary instead of as isolated Wasm components, to measure what Wasm costs.
    #[arg(long, env = "NATIVE_RULES_BASELINE")]
    pub native_baseline: bool,
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            fuel: limits::DEFAULT_FUEL,
            deadline_ms: limits::DEFAULT_DEADLINE.as_millis() as u64,
            memory_mib: limits::DEFAULT_MEMORY_BYTES >> 20,
            native_baseline: false,
        }
    }
}

impl LimitArgs {
    /// As engine limits.
    pub fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            deadline: Duration::from_millis(self.deadline_ms),
            memory_bytes: self.memory_mib.saturating_mul(1 << 20),
            ..Limits::default()
        }
    }
}

impl Default for Config {
    /// The documented defaults, ignoring the environment.
    fn default() -> Self {
        Self {
            kafka_brokers: None,
            kafka_topic: "orders".into(),
            dlq_topic: "orders-dlq".into(),
            worker_group: "worker-group".into(),
            worker_instance_id: None,
            kafka_partitions: 4,
            kafka_replication: 1,
            redis_addr: None,
            order_service_addr: "0.0.0.0:50051".into(),
            cache_service_addr: "0.0.0.0:50052".into(),
            admin_addr: "127.0.0.1:50053".into(),
            admin_token: None,
            data_dir: PathBuf::from("data"),
            ruleset: None,
            default_currency: "USD".into(),
            max_retries: 3,
            retry_backoff_ms: 200,
            quarantine_failures: 5,
            quarantine_window: 20,
            produce_timeout_ms: 5000,
            limits: LimitArgs::default(),
        }
    }
}

impl Config {
    /// Checks every value; the message names the variable and what to fix.
    pub fn validate(&self) -> Result<(), String> {
        self.order_service_socket()?;
        self.cache_service_socket()?;
        self.admin_socket()?;
        for (name, value) in [
            ("KAFKA_TOPIC", &self.kafka_topic),
            ("DLQ_TOPIC", &self.dlq_topic),
            ("WORKER_GROUP", &self.worker_group),
        ] {
            if value.trim().is_empty() {
                return Err(format!("{name} must not be empty"));
            }
        }
        if self.kafka_topic == self.dlq_topic {
            return Err("KAFKA_TOPIC and DLQ_TOPIC must differ".into());
        }
        if self.kafka_partitions < 1 || self.kafka_replication < 1 {
            return Err("KAFKA_PARTITIONS and KAFKA_REPLICATION must be at least 1".into());
        }
        if self.default_currency.len() != 3
            || !self
                .default_currency
                .bytes()
                .all(|b| b.is_ascii_uppercase())
        {
            return Err(format!(
                "DEFAULT_CURRENCY `{}` is not an ISO 4217 code such as USD",
                self.default_currency
            ));
        }
        if self.quarantine_window == 0 || self.quarantine_failures >= self.quarantine_window {
            return Err(format!(
                "QUARANTINE_FAILURES ({}) must be below QUARANTINE_WINDOW ({}), which must be at least 1",
                self.quarantine_failures, self.quarantine_window
            ));
        }
        if self.produce_timeout_ms == 0 {
            return Err("PRODUCE_TIMEOUT_MS must be at least 1".into());
        }
        self.limits.limits().validate()
    }

    /// The OrderService listen address.
    pub fn order_service_socket(&self) -> Result<SocketAddr, String> {
        parse_listen("ORDER_SERVICE_ADDR", &self.order_service_addr)
    }

    /// The AdminService listen address.
    pub fn admin_socket(&self) -> Result<SocketAddr, String> {
        parse_listen("ADMIN_ADDR", &self.admin_addr)
    }

    /// The CacheService listen address.
    pub fn cache_service_socket(&self) -> Result<SocketAddr, String> {
        parse_listen("CACHE_SERVICE_ADDR", &self.cache_service_addr)
    }
}

/// Parses a listen address; Go's `:50051` form means every interface.
fn parse_listen(name: &str, value: &str) -> Result<SocketAddr, String> {
    let value = value.trim();
    let full = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    full.parse()
        .map_err(|_| format!("{name} `{value}` is not a listen address such as 0.0.0.0:50051"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_go_systems() {
        let config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.order_service_socket().unwrap().port(), 50051);
        assert_eq!(config.cache_service_socket().unwrap().port(), 50052);
        assert_eq!(
            (config.kafka_topic.as_str(), config.dlq_topic.as_str()),
            ("orders", "orders-dlq")
        );
        assert_eq!(config.worker_group, "worker-group");
    }

    #[test]
    fn go_style_addresses_and_bad_values() {
        assert_eq!(
            parse_listen("X", ":50051").unwrap().to_string(),
            "0.0.0.0:50051"
        );
        let err = parse_listen("ORDER_SERVICE_ADDR", "localhost").unwrap_err();
        assert!(err.contains("ORDER_SERVICE_ADDR"), "{err}");
        let bad = Config {
            default_currency: "usd".into(),
            ..Config::default()
        };
        assert!(bad.validate().unwrap_err().contains("DEFAULT_CURRENCY"));
        let same = Config {
            dlq_topic: "orders".into(),
            ..Config::default()
        };
        assert!(same.validate().is_err());
    }
}
