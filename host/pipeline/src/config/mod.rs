//! Configuration of the pipeline roles, typed and checked once, grouped by concern:
//! [`KafkaConfig`], [`RedisConfig`], [`ServersConfig`], [`AdminConfig`],
//! [`PluginsConfig`], [`WorkerConfig`] and [`TelemetryConfig`]. Addresses are socket
//! addresses, limits are the engine's [`Limits`]. The binary fills it from flags, the
//! environment (the Go system's names) and a `.env` file (`host/cli`); the library
//! reads no environment variable itself. [`parse`] holds what is parsed from text.

mod parse;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use order_rules_engine::Limits;

pub use crate::domain::ruleset::HistoryLimits;
pub use parse::{
    DEFAULT_ADMIN_REQUEST_TIMEOUT, DEFAULT_CONCURRENCY_PER_CONNECTION, DEFAULT_MAX_STREAMS,
    DEFAULT_REQUEST_TIMEOUT, RedisTls, ServerLimits, TlsFiles, is_secret_kafka_property,
    parse_grace, parse_kafka_properties, parse_listen, parse_ttl, redacted_redis_addr,
};

/// A configuration value that is not usable; the message names the variable and what
/// to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything the roles need. Its `Debug` shows no secret: the admin token, the
/// password in `REDIS_ADDR` and secret librdkafka properties are `***`.
#[derive(Clone)]
pub struct Config {
    /// The order log and the producer (`KAFKA_*`, `DLQ_TOPIC`, `WORKER_GROUP`).
    pub kafka: KafkaConfig,
    /// The result store and the registry (`REDIS_*`, `KEY_PREFIX`).
    pub redis: RedisConfig,
    /// The gRPC servers (`*_ADDR`, `TLS_*`, `GRPC_*`).
    pub servers: ServersConfig,
    /// Who may call the AdminService (`ADMIN_*`).
    pub admin: AdminConfig,
    /// The rules and what they may use (`RULESET`, `PLUGIN_*`).
    pub plugins: PluginsConfig,
    /// How the worker decides (`DEFAULT_CURRENCY`, retries, quarantine, `WORKER_ADMIN`).
    pub worker: WorkerConfig,
    /// Metrics.
    pub telemetry: TelemetryConfig,
    /// Directory of the embedded log and store.
    pub data_dir: PathBuf,
    /// How long a result lives after it is stored (`RESULT_TTL`); `None`: forever.
    pub result_ttl: Option<Duration>,
}

/// The order log on Kafka.
#[derive(Clone)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers (`host:port,...`). `None`: the embedded log in `data_dir`.
    pub brokers: Option<String>,
    /// librdkafka debug contexts (`KAFKA_DEBUG`, e.g. `cgrp,topic,fetch`), logged
    /// through `tracing` at target `librdkafka`.
    pub debug: Option<String>,
    /// librdkafka properties every Kafka client gets (`KAFKA_PROPERTIES`): security
    /// protocol, SASL, TLS files and the like.
    pub properties: Vec<(String, String)>,
    /// Topic of accepted orders (`KAFKA_TOPIC`).
    pub topic: String,
    /// Dead-letter topic (`DLQ_TOPIC`).
    pub dlq_topic: String,
    /// Consumer group of the workers (`WORKER_GROUP`); it also names the registry.
    pub group: String,
    /// Static consumer-group membership id of this worker, if any (`WORKER_INSTANCE_ID`).
    pub instance_id: Option<String>,
    /// Partitions of the order topic when this process creates it.
    pub partitions: i32,
    /// Replication factor of topics this process creates.
    pub replication: i32,
    /// How long the broker waits for a silent worker before it gives the worker's
    /// partitions to the others, in ms (`session.timeout.ms`): the time a group needs to
    /// resume after a worker dies without static membership.
    pub session_timeout_ms: u64,
    /// Longest time between two polls of the consumer before it leaves the group, in ms
    /// (`max.poll.interval.ms`). The worker keeps polling while a partition waits (its
    /// fetching is paused instead), so a slow partition never reaches it.
    pub max_poll_interval_ms: u64,
    /// How long the OrderService waits for the broker's acknowledgement, in ms.
    pub produce_timeout_ms: u64,
}

/// The result store and registry on Redis.
#[derive(Clone, Default)]
pub struct RedisConfig {
    /// Redis address (`host:port`, `redis://...`, or `rediss://...` for TLS). `None`: the
    /// embedded store.
    pub addr: Option<String>,
    /// Certificates for a `rediss://` Redis (`REDIS_CA`, `REDIS_CERT`, `REDIS_KEY`).
    pub tls: RedisTls,
    /// Whether `addr` is a Redis Cluster (`REDIS_CLUSTER`); `None`: a cluster when it
    /// names several nodes or its node says it runs in cluster mode.
    pub cluster: Option<bool>,
    /// Prefix of every Redis key and channel (`KEY_PREFIX`); empty keeps the Go system's
    /// key names.
    pub key_prefix: String,
}

/// The gRPC servers of the process.
#[derive(Debug, Clone)]
pub struct ServersConfig {
    /// Listen address of the OrderService.
    pub order: SocketAddr,
    /// Listen address of the CacheService.
    pub cache: SocketAddr,
    /// Listen address of the AdminService (processes that run a worker).
    pub admin: SocketAddr,
    /// TLS of every gRPC server of the process; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// Limits of every gRPC server of the process.
    pub limits: ServerLimits,
}

/// Who may call the AdminService.
#[derive(Clone, Default)]
pub struct AdminConfig {
    /// Bearer token the AdminService requires; required unless the admin address is
    /// loopback. Its principal is `admin`, a deployer with the data grant.
    pub token: Option<String>,
    /// Named principals (`ADMIN_TOKENS`, and the lines of `ADMIN_TOKENS_FILE`):
    /// `name:role[+data]:sha256-of-the-token` entries.
    pub tokens: Option<String>,
    /// Principals known by their mTLS client certificate's subject CN
    /// (`ADMIN_CERT_PRINCIPALS`): `cn:role[+data]` entries. Needs `TLS_CLIENT_CA`.
    pub cert_principals: Option<String>,
    /// Whether tokens may cross the network in clear: an admin address that is not
    /// loopback, without TLS (`ADMIN_ALLOW_PLAINTEXT`; off by default, start refuses).
    pub allow_plaintext: bool,
}

/// The rules, and what a plugin may use.
#[derive(Debug, Clone)]
pub struct PluginsConfig {
    /// Ruleset file (TOML); `None`: the default ruleset built into the binary.
    pub ruleset: Option<PathBuf>,
    /// Where compiled plugins are cached (`COMPONENT_CACHE_DIR`; default
    /// `DATA_DIR/component-cache`); `None`: every process compiles every plugin.
    pub component_cache: Option<PathBuf>,
    /// Trust file of signed plugins (`PLUGIN_TRUST_FILE`); `None`: no signature needed.
    pub trust_file: Option<PathBuf>,
    /// Limits of every plugin call.
    pub limits: Limits,
    /// How much ruleset history the registry keeps (`RULESET_HISTORY`, `PLUGIN_GRACE`).
    pub history: HistoryLimits,
    /// Benchmark baseline, never for production: the built-in rules run compiled into
    /// the binary instead of as isolated Wasm components.
    pub native_baseline: bool,
}

/// How the worker decides.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Whether a worker process serves the AdminService and runs the rules supervisor
    /// (`WORKER_ADMIN`, default true); false: only the `admin` role writes the registry.
    pub admin: bool,
    /// Currency of orders that give none (the Go API's orders).
    pub default_currency: String,
    /// Retries of an order whose rule answered `retryable`.
    pub max_retries: u32,
    /// Pause before the first retry, in ms; doubles on each retry.
    pub retry_backoff_ms: u64,
    /// Failures of a rule within `quarantine_window` orders that take it out.
    pub quarantine_failures: usize,
    /// How many of a rule's latest orders `quarantine_failures` counts over.
    pub quarantine_window: usize,
}

/// What the process tells about itself.
#[derive(Debug, Clone, Default)]
pub struct TelemetryConfig {
    /// Listen address of the Prometheus endpoint (`GET /metrics`); `None`: no metrics.
    pub metrics_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(key, value)| {
                let shown = if is_secret_kafka_property(key) {
                    "***"
                } else {
                    value.as_str()
                };
                (key.as_str(), shown)
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("debug", &self.debug)
            .field("properties", &properties)
            .field("topic", &self.topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("group", &self.group)
            .field("instance_id", &self.instance_id)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("session_timeout_ms", &self.session_timeout_ms)
            .field("max_poll_interval_ms", &self.max_poll_interval_ms)
            .field("produce_timeout_ms", &self.produce_timeout_ms)
            .finish()
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("addr", &self.addr.as_deref().map(redacted_redis_addr))
            .field("tls", &self.tls)
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

impl std::fmt::Debug for AdminConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminConfig")
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("tokens", &self.tokens.as_ref().map(|_| "(hashes)"))
            .field("cert_principals", &self.cert_principals)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("kafka", &self.kafka)
            .field("redis", &self.redis)
            .field("servers", &self.servers)
            .field("admin", &self.admin)
            .field("plugins", &self.plugins)
            .field("worker", &self.worker)
            .field("telemetry", &self.telemetry)
            .field("data_dir", &self.data_dir)
            .field("result_ttl", &self.result_ttl)
            .finish()
    }
}

/// How long results live by default: 7 days, Kafka's default retention of the order
/// topic. As long as the topic can still redeliver an order, its first final result
/// is kept and wins; older results go, so Redis and the embedded database stop growing.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many ruleset versions the registry keeps by default: 20, the active one
/// included. `activate` and `rollback` reach back that far; every plugin those versions
/// use stays stored, so the registry holds at most 20 versions' worth of plugins (an
/// interpreter-based plugin is 10–20 MB) however many deploys there were.
pub const DEFAULT_RULESET_HISTORY: u64 = 20;

/// How long a plugin blob no kept version uses stays by default after its last upload or
/// activation: 10 minutes. A deploy uploads its plugin, then checks the new chain
/// (compiling a big plugin takes seconds) before it activates the version that uses it;
/// the grace keeps the blob through that with a wide margin.
pub const DEFAULT_PLUGIN_GRACE: Duration = Duration::from_secs(600);

/// The documented defaults of the listen addresses (the Go system's ports).
pub const DEFAULT_ORDER_SERVICE_ADDR: &str = "0.0.0.0:50051";
/// See [`DEFAULT_ORDER_SERVICE_ADDR`].
pub const DEFAULT_CACHE_SERVICE_ADDR: &str = "0.0.0.0:50052";
/// See [`DEFAULT_ORDER_SERVICE_ADDR`].
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:50053";

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            debug: None,
            properties: Vec::new(),
            topic: "orders".into(),
            dlq_topic: "orders-dlq".into(),
            group: "worker-group".into(),
            instance_id: None,
            partitions: 4,
            replication: 1,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            produce_timeout_ms: 5000,
        }
    }
}

impl Default for ServersConfig {
    fn default() -> Self {
        let addr = |text: &str| {
            text.parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
        };
        Self {
            order: addr(DEFAULT_ORDER_SERVICE_ADDR),
            cache: addr(DEFAULT_CACHE_SERVICE_ADDR),
            admin: addr(DEFAULT_ADMIN_ADDR),
            tls: None,
            limits: ServerLimits::default(),
        }
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            ruleset: None,
            component_cache: Some(PathBuf::from("data").join("component-cache")),
            trust_file: None,
            limits: Limits::default(),
            history: HistoryLimits {
                versions: DEFAULT_RULESET_HISTORY,
                blob_grace: DEFAULT_PLUGIN_GRACE,
            },
            native_baseline: false,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            admin: true,
            default_currency: "USD".into(),
            max_retries: 3,
            retry_backoff_ms: 200,
            quarantine_failures: 5,
            quarantine_window: 20,
        }
    }
}

impl Default for Config {
    /// The documented defaults, ignoring the environment.
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            redis: RedisConfig::default(),
            servers: ServersConfig::default(),
            admin: AdminConfig::default(),
            plugins: PluginsConfig::default(),
            worker: WorkerConfig::default(),
            telemetry: TelemetryConfig::default(),
            data_dir: PathBuf::from("data"),
            result_ttl: Some(DEFAULT_RESULT_TTL),
        }
    }
}

impl Config {
    /// Checks every value; the message names the variable and what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.validate()?;
        self.worker.validate()?;
        self.redis.validate(&self.kafka.group)?;
        self.servers.limits.validate()?;
        self.plugins
            .limits
            .validate()
            .map_err(|e| ConfigError(e.to_string()))
    }
}

impl KafkaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        for (name, value) in [
            ("KAFKA_TOPIC", &self.topic),
            ("DLQ_TOPIC", &self.dlq_topic),
            ("WORKER_GROUP", &self.group),
        ] {
            if value.trim().is_empty() {
                return fail(format!("{name} must not be empty"));
            }
        }
        if self.topic == self.dlq_topic {
            return fail("KAFKA_TOPIC and DLQ_TOPIC must differ".into());
        }
        if self.partitions < 1 || self.replication < 1 {
            return fail("KAFKA_PARTITIONS and KAFKA_REPLICATION must be at least 1".into());
        }
        if self.session_timeout_ms == 0 || self.max_poll_interval_ms < self.session_timeout_ms {
            return fail(format!(
                "KAFKA_MAX_POLL_INTERVAL_MS ({}) must be at least KAFKA_SESSION_TIMEOUT_MS ({}), which must be at least 1",
                self.max_poll_interval_ms, self.session_timeout_ms
            ));
        }
        if self.produce_timeout_ms == 0 {
            return fail("PRODUCE_TIMEOUT_MS must be at least 1".into());
        }
        Ok(())
    }
}

impl WorkerConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let currency = &self.default_currency;
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError(format!(
                "DEFAULT_CURRENCY `{currency}` is not an ISO 4217 code such as USD"
            )));
        }
        if self.quarantine_window == 0 || self.quarantine_failures >= self.quarantine_window {
            return Err(ConfigError(format!(
                "QUARANTINE_FAILURES ({}) must be below QUARANTINE_WINDOW ({}), which must be at least 1",
                self.quarantine_failures, self.quarantine_window
            )));
        }
        Ok(())
    }
}

impl RedisConfig {
    /// `group` names the registry's keys.
    fn validate(&self, group: &str) -> Result<(), ConfigError> {
        let prefix = &self.key_prefix;
        if prefix.len() > 64
            || !prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
        {
            return Err(ConfigError(format!(
                "KEY_PREFIX `{prefix}` must be at most 64 printable characters without spaces or braces, such as `shop-a:`"
            )));
        }
        if self.addr.is_some() && (group.contains('{') || group.contains('}')) {
            return Err(ConfigError(format!(
                "WORKER_GROUP `{group}` must not contain braces: they are Redis Cluster hash tags"
            )));
        }
        let tls_redis = self
            .addr
            .as_deref()
            .is_some_and(|a| a.starts_with("rediss://") || a.starts_with("valkeys://"));
        if self.tls.is_set() && !tls_redis {
            return Err(ConfigError(
                "REDIS_CA, REDIS_CERT and REDIS_KEY are for TLS to Redis: REDIS_ADDR must then be a rediss:// URL".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_the_go_systems() {
        let config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.servers.order.port(), 50051);
        assert_eq!(config.servers.cache.port(), 50052);
        assert_eq!(config.servers.admin.to_string(), DEFAULT_ADMIN_ADDR);
        assert_eq!(
            (config.kafka.topic.as_str(), config.kafka.dlq_topic.as_str()),
            ("orders", "orders-dlq")
        );
        assert_eq!(config.kafka.group, "worker-group");
    }

    #[test]
    fn go_style_addresses_and_bad_values() {
        assert_eq!(
            parse_listen("X", ":50051").unwrap().to_string(),
            "0.0.0.0:50051"
        );
        let err = parse_listen("ORDER_SERVICE_ADDR", "localhost").unwrap_err();
        assert!(err.0.contains("ORDER_SERVICE_ADDR"), "{err}");
        let mut bad = Config::default();
        bad.worker.default_currency = "usd".into();
        assert!(bad.validate().unwrap_err().0.contains("DEFAULT_CURRENCY"));
        let mut same = Config::default();
        same.kafka.dlq_topic = "orders".into();
        assert!(same.validate().is_err());
        let mut poll = Config::default();
        poll.kafka.max_poll_interval_ms = 5_000;
        assert!(
            poll.validate()
                .unwrap_err()
                .0
                .contains("KAFKA_MAX_POLL_INTERVAL_MS")
        );
    }

    #[test]
    fn debug_shows_no_secret() {
        let mut config = Config::default();
        config.admin.token = Some("admin-s3cret".into());
        config.redis.addr = Some("redis://worker:redis-s3cret@redis:6379".into());
        config.kafka.properties = parse_kafka_properties(
            "security.protocol=SASL_SSL;sasl.username=u;sasl.password=kafka-s3cret;\
             ssl.key.password=key-s3cret",
        )
        .unwrap();
        let shown = format!("{config:?} {config:#?}");
        for secret in ["admin-s3cret", "redis-s3cret", "kafka-s3cret", "key-s3cret"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        assert!(shown.contains("redis://worker:***@redis:6379"), "{shown}");
        assert!(shown.contains("SASL_SSL"), "{shown}");
    }
}
