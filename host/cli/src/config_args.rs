//! The pipeline's configuration as flags and environment variables (the Go system's
//! names; a `.env` file is read by `main`), each with its default. The only place the
//! binary reads the environment: clap does, here. Checked once into the library's typed
//! [`Config`].

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use order_pipeline::config::{
    self, AdminConfig, Config, ConfigError, HistoryLimits, KafkaConfig, PluginsConfig, RedisConfig,
    ServersConfig, TelemetryConfig, WorkerConfig, parse_listen,
};
use order_rules_engine::{Limits, limits};

/// The roles' configuration as flags and environment variables; [`ConfigArgs::into_config`]
/// checks it into the library's typed [`Config`]. Its `Debug` shows nothing (it holds
/// the admin token, the Redis password and librdkafka secrets).
#[derive(Clone, Args)]
pub(crate) struct ConfigArgs {
    /// Kafka bootstrap servers (`host:port,...`). Unset: the embedded log in DATA_DIR.
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// librdkafka debug contexts (e.g. `cgrp,topic,fetch`), logged at target `librdkafka`.
    #[arg(long, env = "KAFKA_DEBUG")]
    pub kafka_debug: Option<String>,
    /// librdkafka properties for every Kafka client, `key=value` separated by `;`: the
    /// security protocol, SASL, TLS files (e.g.
    /// `security.protocol=SASL_SSL;sasl.mechanisms=PLAIN;sasl.username=u;sasl.password=p`).
    #[arg(
        long,
        env = "KAFKA_PROPERTIES",
        default_value = "",
        hide_env_values = true
    )]
    pub kafka_properties: String,
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
    /// How long the broker waits for a silent worker before giving its partitions to the
    /// others, in ms: how long a group takes to resume after a worker dies (without
    /// WORKER_INSTANCE_ID). The broker accepts 6000 to 300000 by default.
    #[arg(long, env = "KAFKA_SESSION_TIMEOUT_MS", default_value_t = 10_000)]
    pub kafka_session_timeout_ms: u64,
    /// Longest time between two polls of the consumer before it leaves the group, in ms;
    /// at least KAFKA_SESSION_TIMEOUT_MS.
    #[arg(long, env = "KAFKA_MAX_POLL_INTERVAL_MS", default_value_t = 300_000)]
    pub kafka_max_poll_interval_ms: u64,
    /// Redis address (`host:port`, `redis://...`, or `rediss://...` for TLS). Unset: the
    /// embedded store in DATA_DIR.
    #[arg(long, env = "REDIS_ADDR", hide_env_values = true)]
    pub redis_addr: Option<String>,
    /// Whether REDIS_ADDR is a Redis Cluster (`true`/`false`); unset: a cluster when it
    /// names several nodes (comma-separated) or its node runs in cluster mode.
    #[arg(long, env = "REDIS_CLUSTER")]
    pub redis_cluster: Option<bool>,
    /// PEM CA that signed a `rediss://` Redis's certificate; unset: the system's roots.
    #[arg(long, env = "REDIS_CA", value_name = "CA.pem")]
    pub redis_ca: Option<PathBuf>,
    /// PEM client certificate for a `rediss://` Redis that checks clients (with REDIS_KEY).
    #[arg(long, env = "REDIS_CERT", value_name = "CERT.pem")]
    pub redis_cert: Option<PathBuf>,
    /// PEM private key of REDIS_CERT.
    #[arg(long, env = "REDIS_KEY", value_name = "KEY.pem")]
    pub redis_key: Option<PathBuf>,
    /// Prefix of every Redis key and channel, so that several pipelines can share one
    /// Redis (e.g. `shop-a:`); empty keeps the Go system's `order:<id>`.
    #[arg(long, env = "KEY_PREFIX", default_value = "")]
    pub key_prefix: String,
    /// Listen address of the OrderService.
    #[arg(long, env = "ORDER_SERVICE_ADDR", default_value = config::DEFAULT_ORDER_SERVICE_ADDR)]
    pub order_service_addr: String,
    /// Listen address of the CacheService.
    #[arg(long, env = "CACHE_SERVICE_ADDR", default_value = config::DEFAULT_CACHE_SERVICE_ADDR)]
    pub cache_service_addr: String,
    /// Listen address of the AdminService (deploy, activate, roll back rules); served by
    /// processes that run a worker.
    #[arg(long, env = "ADMIN_ADDR", default_value = config::DEFAULT_ADMIN_ADDR)]
    pub admin_addr: String,
    /// Listen address of the Prometheus endpoint (`GET /metrics`, e.g. 0.0.0.0:9090).
    /// Unset: no metrics are recorded or served.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// OTLP/gRPC receiver of the process's traces (e.g. http://127.0.0.1:4317, an
    /// OpenTelemetry Collector). Unset: no spans are recorded or exported.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// Service name of the exported spans; default `order-pipeline-ROLE`.
    #[arg(long, env = "OTEL_SERVICE_NAME")]
    pub otel_service_name: Option<String>,
    /// Bearer token the AdminService requires; required unless ADMIN_ADDR is loopback.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// Named principals of the AdminService: `name:role:sha256` entries separated by
    /// commas, role reader, operator or deployer (optionally `+data`: may read order data
    /// and overwrite results), the sha256 of the principal's token in hex
    /// (`printf %s TOKEN | sha256sum`).
    #[arg(long, env = "ADMIN_TOKENS", hide_env_values = true)]
    pub admin_tokens: Option<String>,
    /// A file of ADMIN_TOKENS entries, one per line (`#` comments).
    #[arg(long, env = "ADMIN_TOKENS_FILE", value_name = "FILE")]
    pub admin_tokens_file: Option<PathBuf>,
    /// Principals known by their mTLS client certificate's subject CN: `cn:role`
    /// entries separated by commas (needs TLS_CLIENT_CA).
    #[arg(long, env = "ADMIN_CERT_PRINCIPALS")]
    pub admin_cert_principals: Option<String>,
    /// Let admin tokens cross the network in clear: an ADMIN_ADDR that is not loopback
    /// without TLS_CERT. Refused at start unless this is set.
    #[arg(long, env = "ADMIN_ALLOW_PLAINTEXT")]
    pub admin_allow_plaintext: bool,
    /// PEM certificate (chain) of every gRPC server of the process: serve TLS. With
    /// TLS_KEY.
    #[arg(long, env = "TLS_CERT", value_name = "CERT.pem")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of TLS_CERT.
    #[arg(long, env = "TLS_KEY", value_name = "KEY.pem")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA whose certificates clients must present (mTLS). Needs TLS_CERT.
    #[arg(long, env = "TLS_CLIENT_CA", value_name = "CA.pem")]
    pub tls_client_ca: Option<PathBuf>,
    /// Directory of the embedded log and store.
    #[arg(long, env = "DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,
    /// Where compiled plugins are cached, by sha256 and engine settings, so that a worker
    /// switching to a plugin compiled before loads it in milliseconds. Default:
    /// DATA_DIR/component-cache; `off` compiles every time. It holds native code the
    /// host runs: protect it like the binary.
    #[arg(long, env = "COMPONENT_CACHE_DIR")]
    pub component_cache_dir: Option<String>,
    /// Ruleset file (TOML); unset: the default ruleset built into the binary.
    #[arg(long, env = "RULESET")]
    pub ruleset: Option<PathBuf>,
    /// Whether a worker process also serves the AdminService (on ADMIN_ADDR) and runs
    /// the rules supervisor (quarantine, canary ends, their audit events). false: the
    /// worker serves only its health there, reports what it sees to the `admin` role
    /// through Redis and never writes the registry, so its Redis user needs no write
    /// access to it (docs/SECURITY.md: Redis users).
    #[arg(long, env = "WORKER_ADMIN", default_value_t = true, action = clap::ArgAction::Set)]
    pub worker_admin: bool,
    /// Trust file of signed plugins (TOML: the keys that may sign rules, revoked keys and
    /// digests; docs/SECURITY.md). When set, a deploy of a rule that is not signed by a
    /// key it allows is refused, and workers refuse to load one. Read again when it
    /// changes. Unset: plugins need no signature.
    #[arg(long, env = "PLUGIN_TRUST_FILE", value_name = "FILE")]
    pub plugin_trust_file: Option<PathBuf>,
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
    /// How long results live once stored: a duration such as 7d, 12h or 90s, or 0 to keep
    /// them forever. The default is Kafka's default retention of the order topic.
    #[arg(long, env = "RESULT_TTL", default_value = "7d")]
    pub result_ttl: String,
    /// How many ruleset versions the registry keeps, the active one included: activate
    /// and rollback reach back that far, and the plugins only older versions used are
    /// deleted.
    #[arg(long, env = "RULESET_HISTORY", default_value_t = config::DEFAULT_RULESET_HISTORY,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ruleset_history: u64,
    /// How long a plugin no kept version uses stays after its last upload or activation
    /// (a duration such as 10m or 1h, or 0).
    #[arg(long, env = "PLUGIN_GRACE", default_value = "10m")]
    pub plugin_grace: String,
    /// Most calls open at once on one connection to a gRPC server (HTTP/2 streams).
    #[arg(long, env = "GRPC_MAX_STREAMS", default_value_t = config::DEFAULT_MAX_STREAMS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub grpc_max_streams: u32,
    /// Most requests served at once per connection to a gRPC server; more wait.
    #[arg(long, env = "GRPC_CONCURRENCY_PER_CONNECTION",
          default_value_t = config::DEFAULT_CONCURRENCY_PER_CONNECTION)]
    pub grpc_concurrency_per_connection: usize,
    /// Longest call of the OrderService and the CacheService (a duration such as 60s);
    /// longer ones end with CANCELLED "Timeout expired". Keep it above the 30 s a client
    /// may ask to wait.
    #[arg(long, env = "GRPC_REQUEST_TIMEOUT", default_value = "60s")]
    pub grpc_request_timeout: String,
    /// Longest call of the AdminService (deploys compile plugins, replays decide orders).
    #[arg(long, env = "ADMIN_REQUEST_TIMEOUT", default_value = "10m")]
    pub admin_request_timeout: String,
    /// Limits of every plugin call.
    #[command(flatten)]
    pub limits: LimitArgs,
}

impl std::fmt::Debug for ConfigArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigArgs").finish_non_exhaustive()
    }
}

/// `ADMIN_TOKENS` and the lines of `ADMIN_TOKENS_FILE`, together.
fn admin_tokens(
    tokens: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<Option<String>, ConfigError> {
    let mut text = tokens.unwrap_or_default();
    if let Some(file) = file.filter(|f| !f.as_os_str().is_empty()) {
        let lines = std::fs::read_to_string(file).map_err(|e| {
            ConfigError(format!(
                "ADMIN_TOKENS_FILE {}: cannot read it: {e}",
                file.display()
            ))
        })?;
        text.push('\n');
        text.push_str(&lines);
    }
    Ok((!text.trim().is_empty()).then_some(text))
}

/// A duration of variable `name` (e.g. `60s`, `10m`).
fn parse_duration(name: &str, value: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(value.trim()).map_err(|e| {
        ConfigError(format!(
            "{name} `{value}` is not a duration ({e}); give e.g. 60s or 10m"
        ))
    })
}

/// Limits every plugin call is held to.
#[derive(Debug, Clone, Args)]
pub(crate) struct LimitArgs {
    /// Fuel (about one unit per wasm instruction) per plugin call.
    #[arg(long, env = "PLUGIN_FUEL", default_value_t = limits::DEFAULT_FUEL)]
    pub fuel: u64,
    /// Wall-clock deadline per plugin call, in milliseconds.
    #[arg(long, env = "PLUGIN_DEADLINE_MS", default_value_t = limits::DEFAULT_DEADLINE.as_millis() as u64)]
    pub deadline_ms: u64,
    /// Memory cap per plugin instance, in MiB.
    #[arg(long, env = "PLUGIN_MEMORY_MIB", default_value_t = limits::DEFAULT_MEMORY_BYTES >> 20)]
    pub memory_mib: usize,
    /// A reused instance (isolation "reuse") is recycled after this many orders.
    #[arg(long, env = "PLUGIN_REUSE_MAX_USES", default_value_t = limits::DEFAULT_REUSE_MAX_USES,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub reuse_max_uses: u64,
    /// A reused instance is recycled once its memory has grown past this percentage of
    /// its cap.
    #[arg(long, env = "PLUGIN_REUSE_HIGH_WATER_PERCENT",
        default_value_t = limits::DEFAULT_REUSE_HIGH_WATER_PERCENT,
        value_parser = clap::value_parser!(u8).range(1..=100))]
    pub reuse_high_water_percent: u8,
    /// A reused rule's evaluation is also decided in a fresh instance, to catch a rule
    /// that carries state between orders: each instance's second one, and one in this
    /// many after that (0: no checks).
    #[arg(long, env = "PLUGIN_REUSE_CHECK_EVERY", default_value_t = limits::DEFAULT_REUSE_CHECK_EVERY)]
    pub reuse_check_every: u64,
    /// Benchmark baseline, not for production: run the built-in rules compiled into the
    /// binary instead of as isolated Wasm components, to measure what Wasm costs.
    #[arg(long, env = "NATIVE_RULES_BASELINE")]
    pub native_baseline: bool,
}

impl LimitArgs {
    /// As engine limits.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            deadline: Duration::from_millis(self.deadline_ms),
            memory_bytes: self.memory_mib.saturating_mul(1 << 20),
            reuse_max_uses: self.reuse_max_uses,
            reuse_high_water_percent: self.reuse_high_water_percent,
            reuse_check_every: self.reuse_check_every,
            ..Limits::default()
        }
    }
}

impl ConfigArgs {
    /// The typed configuration: addresses parsed, every value checked; the error names
    /// the variable to fix.
    pub(crate) fn into_config(self) -> Result<Config, ConfigError> {
        let component_cache = match self.component_cache_dir.as_deref().map(str::trim) {
            Some("off") => None,
            Some(dir) if !dir.is_empty() => Some(PathBuf::from(dir)),
            _ => Some(self.data_dir.join("component-cache")),
        };
        let config = Config {
            kafka: KafkaConfig {
                brokers: self.kafka_brokers,
                debug: self.kafka_debug,
                properties: config::parse_kafka_properties(&self.kafka_properties)?,
                topic: self.kafka_topic,
                dlq_topic: self.dlq_topic,
                group: self.worker_group,
                instance_id: self.worker_instance_id,
                partitions: self.kafka_partitions,
                replication: self.kafka_replication,
                session_timeout_ms: self.kafka_session_timeout_ms,
                max_poll_interval_ms: self.kafka_max_poll_interval_ms,
                produce_timeout_ms: self.produce_timeout_ms,
            },
            redis: RedisConfig {
                addr: self.redis_addr,
                tls: config::RedisTls::from_vars(self.redis_ca, self.redis_cert, self.redis_key)?,
                cluster: self.redis_cluster,
                key_prefix: self.key_prefix,
            },
            servers: ServersConfig {
                order: parse_listen("ORDER_SERVICE_ADDR", &self.order_service_addr)?,
                cache: parse_listen("CACHE_SERVICE_ADDR", &self.cache_service_addr)?,
                admin: parse_listen("ADMIN_ADDR", &self.admin_addr)?,
                tls: config::TlsFiles::from_vars(self.tls_cert, self.tls_key, self.tls_client_ca)?,
                limits: config::ServerLimits {
                    max_streams: self.grpc_max_streams,
                    concurrency_per_connection: self.grpc_concurrency_per_connection,
                    request_timeout: parse_duration(
                        "GRPC_REQUEST_TIMEOUT",
                        &self.grpc_request_timeout,
                    )?,
                    admin_request_timeout: parse_duration(
                        "ADMIN_REQUEST_TIMEOUT",
                        &self.admin_request_timeout,
                    )?,
                },
            },
            admin: AdminConfig {
                token: self.admin_token,
                tokens: admin_tokens(self.admin_tokens, self.admin_tokens_file.as_deref())?,
                cert_principals: self.admin_cert_principals.filter(|p| !p.trim().is_empty()),
                allow_plaintext: self.admin_allow_plaintext,
            },
            plugins: PluginsConfig {
                ruleset: self.ruleset,
                component_cache,
                trust_file: self.plugin_trust_file,
                limits: self.limits.limits(),
                history: HistoryLimits {
                    versions: self.ruleset_history,
                    blob_grace: config::parse_grace(&self.plugin_grace)?,
                },
                native_baseline: self.limits.native_baseline,
            },
            worker: WorkerConfig {
                admin: self.worker_admin,
                default_currency: self.default_currency,
                max_retries: self.max_retries,
                retry_backoff_ms: self.retry_backoff_ms,
                quarantine_failures: self.quarantine_failures,
                quarantine_window: self.quarantine_window,
            },
            telemetry: TelemetryConfig {
                metrics_addr: self
                    .metrics_addr
                    .as_deref()
                    .filter(|a| !a.trim().is_empty())
                    .map(|a| parse_listen("METRICS_ADDR", a))
                    .transpose()?,
            },
            data_dir: self.data_dir,
            result_ttl: config::parse_ttl("RESULT_TTL", &self.result_ttl)?,
        };
        config.validate()?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Only {
        #[command(flatten)]
        config: ConfigArgs,
    }

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["order-pipeline"];
        argv.extend_from_slice(args);
        Only::try_parse_from(argv).unwrap().config.into_config()
    }

    #[test]
    fn flags_become_the_typed_config() {
        let config = parse(&[
            "--order-service-addr",
            ":6000",
            "--deadline-ms",
            "250",
            "--kafka-debug",
            "cgrp",
        ])
        .unwrap();
        assert_eq!(config.servers.order.to_string(), "0.0.0.0:6000");
        assert_eq!(config.plugins.limits.deadline, Duration::from_millis(250));
        assert_eq!(config.kafka.debug.as_deref(), Some("cgrp"));
        assert_eq!(config.plugins.limits.reuse_max_uses, 1000);
        assert_eq!(config.plugins.limits.reuse_high_water_percent, 75);
        assert_eq!(config.plugins.limits.reuse_check_every, 100);
        let config = parse(&[
            "--reuse-max-uses",
            "7",
            "--reuse-high-water-percent",
            "50",
            "--reuse-check-every",
            "0",
        ])
        .unwrap();
        assert_eq!(config.plugins.limits.reuse_max_uses, 7);
        assert_eq!(config.plugins.limits.reuse_high_water_percent, 50);
        assert_eq!(config.plugins.limits.reuse_check_every, 0);
        assert!(Only::try_parse_from(["order-pipeline", "--reuse-max-uses", "0"]).is_err());
        let high = ["order-pipeline", "--reuse-high-water-percent", "101"];
        assert!(Only::try_parse_from(high).is_err());
    }

    #[test]
    fn compiled_plugins_are_cached_under_the_data_dir_unless_off() {
        let cache = |args: &[&str]| parse(args).unwrap().plugins.component_cache;
        assert_eq!(
            cache(&["--data-dir", "/srv/op"]),
            Some(PathBuf::from("/srv/op/component-cache"))
        );
        assert_eq!(
            cache(&["--component-cache-dir", "/var/cache/op"]),
            Some(PathBuf::from("/var/cache/op"))
        );
        assert_eq!(cache(&["--component-cache-dir", "off"]), None);
    }

    #[test]
    fn server_limits_have_defaults_and_are_checked() {
        let config = parse(&[]).unwrap();
        assert_eq!(config.servers.limits, config::ServerLimits::default());
        let config = parse(&[
            "--grpc-max-streams",
            "8",
            "--grpc-concurrency-per-connection",
            "4",
            "--grpc-request-timeout",
            "45s",
        ])
        .unwrap();
        assert_eq!(config.servers.limits.max_streams, 8);
        assert_eq!(config.servers.limits.concurrency_per_connection, 4);
        assert_eq!(
            config.servers.limits.request_timeout,
            Duration::from_secs(45)
        );
        let err = parse(&["--grpc-request-timeout", "500ms"]).unwrap_err();
        assert!(err.0.contains("GRPC_REQUEST_TIMEOUT"), "{err}");
        let err = parse(&["--grpc-concurrency-per-connection", "0"]).unwrap_err();
        assert!(err.0.contains("GRPC_CONCURRENCY_PER_CONNECTION"), "{err}");
        assert!(Only::try_parse_from(["order-pipeline", "--grpc-max-streams", "0"]).is_err());
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        let err = parse(&["--admin-addr", "localhost"]).unwrap_err();
        assert!(err.0.contains("ADMIN_ADDR"), "{err}");
        let err = parse(&["--quarantine-failures", "30"]).unwrap_err();
        assert!(err.0.contains("QUARANTINE_FAILURES"), "{err}");
    }
}
