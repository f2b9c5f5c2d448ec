//! Configuration of the pipeline roles, typed and checked once: addresses are socket
//! addresses, limits are the engine's [`Limits`]. The binary fills it from flags, the
//! environment (the Go system's names) and a `.env` file (`host/cli`); the library
//! reads no environment variable itself.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use order_rules_engine::Limits;

pub use crate::domain::ruleset::HistoryLimits;

/// A configuration value that is not usable; the message names the variable and what
/// to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// Everything the roles need. Its `Debug` shows no secret: the admin token, the
/// password in `REDIS_ADDR` and secret librdkafka properties are `***`.
#[derive(Clone)]
pub struct Config {
    /// Kafka bootstrap servers (`host:port,...`). `None`: the embedded log in `data_dir`.
    pub kafka_brokers: Option<String>,
    /// librdkafka debug contexts (`KAFKA_DEBUG`, e.g. `cgrp,topic,fetch`), logged
    /// through `tracing` at target `librdkafka`.
    pub kafka_debug: Option<String>,
    /// librdkafka properties every Kafka client gets (`KAFKA_PROPERTIES`): security
    /// protocol, SASL, TLS files and the like.
    pub kafka_properties: Vec<(String, String)>,
    /// Topic of accepted orders.
    pub kafka_topic: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Consumer group of the workers.
    pub worker_group: String,
    /// Static consumer-group membership id of this worker, if any.
    pub worker_instance_id: Option<String>,
    /// Partitions of the order topic when this process creates it.
    pub kafka_partitions: i32,
    /// Replication factor of topics this process creates.
    pub kafka_replication: i32,
    /// How long the broker waits for a silent worker before it gives the worker's
    /// partitions to the others, in ms (`session.timeout.ms`): the time a group needs to
    /// resume after a worker dies without static membership.
    pub kafka_session_timeout_ms: u64,
    /// Longest time between two polls of the consumer before it leaves the group, in ms
    /// (`max.poll.interval.ms`). The worker keeps polling while a partition waits (its
    /// fetching is paused instead), so a slow partition never reaches it.
    pub kafka_max_poll_interval_ms: u64,
    /// Redis address (`host:port`, `redis://...`, or `rediss://...` for TLS). `None`: the
    /// embedded store.
    pub redis_addr: Option<String>,
    /// Certificates for a `rediss://` Redis (`REDIS_CA`, `REDIS_CERT`, `REDIS_KEY`).
    pub redis_tls: RedisTls,
    /// Whether `redis_addr` is a Redis Cluster (`REDIS_CLUSTER`); `None`: a cluster when
    /// it names several nodes or its node says it runs in cluster mode.
    pub redis_cluster: Option<bool>,
    /// Prefix of every Redis key and channel (`KEY_PREFIX`); empty keeps the Go system's
    /// key names.
    pub key_prefix: String,
    /// Listen address of the OrderService.
    pub order_service_addr: SocketAddr,
    /// Listen address of the CacheService.
    pub cache_service_addr: SocketAddr,
    /// Listen address of the AdminService (processes that run a worker).
    pub admin_addr: SocketAddr,
    /// Listen address of the Prometheus endpoint (`GET /metrics`); `None`: no metrics.
    pub metrics_addr: Option<SocketAddr>,
    /// Bearer token the AdminService requires; required unless `admin_addr` is loopback.
    /// Its principal is `admin`, a deployer with the data grant.
    pub admin_token: Option<String>,
    /// Named principals of the AdminService (`ADMIN_TOKENS`, and the lines of
    /// `ADMIN_TOKENS_FILE`): `name:role[+data]:sha256-of-the-token` entries.
    pub admin_tokens: Option<String>,
    /// Principals known by their mTLS client certificate's subject CN
    /// (`ADMIN_CERT_PRINCIPALS`): `cn:role[+data]` entries. Needs `TLS_CLIENT_CA`.
    pub admin_cert_principals: Option<String>,
    /// Whether tokens may cross the network in clear: an admin address that is not
    /// loopback, without TLS (`ADMIN_ALLOW_PLAINTEXT`; off by default, start refuses).
    pub admin_allow_plaintext: bool,
    /// TLS of every gRPC server of the process; `None`: plaintext.
    pub tls: Option<TlsFiles>,
    /// Directory of the embedded log and store.
    pub data_dir: PathBuf,
    /// Where compiled plugins are cached (`COMPONENT_CACHE_DIR`; default
    /// `DATA_DIR/component-cache`); `None`: every process compiles every plugin.
    pub component_cache: Option<PathBuf>,
    /// Ruleset file (TOML); `None`: the default ruleset built into the binary.
    pub ruleset: Option<PathBuf>,
    /// Trust file of signed plugins (`PLUGIN_TRUST_FILE`); `None`: no signature needed.
    pub plugin_trust_file: Option<PathBuf>,
    /// Whether a worker process serves the AdminService and runs the rules supervisor
    /// (`WORKER_ADMIN`, default true); false: only the `admin` role writes the registry.
    pub worker_admin: bool,
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
    /// How long the OrderService waits for the broker's acknowledgement, in ms.
    pub produce_timeout_ms: u64,
    /// How long a result lives after it is stored (`RESULT_TTL`); `None`: forever.
    pub result_ttl: Option<Duration>,
    /// How much ruleset history the registry keeps (`RULESET_HISTORY`, `PLUGIN_GRACE`).
    pub history: HistoryLimits,
    /// Limits of every plugin call.
    pub limits: Limits,
    /// Benchmark baseline, never for production: the built-in rules run compiled into
    /// the binary instead of as isolated Wasm components.
    pub native_baseline: bool,
    /// Limits of every gRPC server of the process.
    pub servers: ServerLimits,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: Vec<(&str, &str)> = self
            .kafka_properties
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
        f.debug_struct("Config")
            .field("kafka_brokers", &self.kafka_brokers)
            .field("kafka_debug", &self.kafka_debug)
            .field("kafka_properties", &properties)
            .field("kafka_topic", &self.kafka_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("worker_group", &self.worker_group)
            .field("worker_instance_id", &self.worker_instance_id)
            .field("kafka_partitions", &self.kafka_partitions)
            .field("kafka_replication", &self.kafka_replication)
            .field("kafka_session_timeout_ms", &self.kafka_session_timeout_ms)
            .field(
                "kafka_max_poll_interval_ms",
                &self.kafka_max_poll_interval_ms,
            )
            .field(
                "redis_addr",
                &self.redis_addr.as_deref().map(redacted_redis_addr),
            )
            .field("redis_tls", &self.redis_tls)
            .field("redis_cluster", &self.redis_cluster)
            .field("key_prefix", &self.key_prefix)
            .field("order_service_addr", &self.order_service_addr)
            .field("cache_service_addr", &self.cache_service_addr)
            .field("admin_addr", &self.admin_addr)
            .field("metrics_addr", &self.metrics_addr)
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field(
                "admin_tokens",
                &self.admin_tokens.as_ref().map(|_| "(hashes)"),
            )
            .field("admin_cert_principals", &self.admin_cert_principals)
            .field("admin_allow_plaintext", &self.admin_allow_plaintext)
            .field("tls", &self.tls)
            .field("data_dir", &self.data_dir)
            .field("component_cache", &self.component_cache)
            .field("ruleset", &self.ruleset)
            .field("plugin_trust_file", &self.plugin_trust_file)
            .field("worker_admin", &self.worker_admin)
            .field("default_currency", &self.default_currency)
            .field("max_retries", &self.max_retries)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("quarantine_failures", &self.quarantine_failures)
            .field("quarantine_window", &self.quarantine_window)
            .field("produce_timeout_ms", &self.produce_timeout_ms)
            .field("result_ttl", &self.result_ttl)
            .field("history", &self.history)
            .field("limits", &self.limits)
            .field("native_baseline", &self.native_baseline)
            .field("servers", &self.servers)
            .finish()
    }
}

/// Limits of each gRPC server (OrderService, CacheService, AdminService), so that one
/// client cannot hold a server's work without bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Most HTTP/2 streams (calls) open at once on one connection
    /// (`GRPC_MAX_STREAMS`, default [`DEFAULT_MAX_STREAMS`]).
    pub max_streams: u32,
    /// Most requests served at once per connection; more wait their turn
    /// (`GRPC_CONCURRENCY_PER_CONNECTION`, default [`DEFAULT_CONCURRENCY_PER_CONNECTION`]).
    pub concurrency_per_connection: usize,
    /// Longest time a call of the OrderService or the CacheService may take before the
    /// server ends it with CANCELLED "Timeout expired" (`GRPC_REQUEST_TIMEOUT`, default
    /// [`DEFAULT_REQUEST_TIMEOUT`]; keep it above the 30 s a client may ask to wait).
    pub request_timeout: Duration,
    /// The same for the AdminService, whose deploys compile plugins and whose replays
    /// decide many orders (`ADMIN_REQUEST_TIMEOUT`, default
    /// [`DEFAULT_ADMIN_REQUEST_TIMEOUT`]).
    pub admin_request_timeout: Duration,
}

/// Default of [`ServerLimits::max_streams`]: 256 calls open per connection.
pub const DEFAULT_MAX_STREAMS: u32 = 256;
/// Default of [`ServerLimits::concurrency_per_connection`]: 256 requests per connection,
/// four times the 64 concurrent clients of the benchmarks.
pub const DEFAULT_CONCURRENCY_PER_CONNECTION: usize = 256;
/// Default of [`ServerLimits::request_timeout`]: 60 s, twice the longest wait
/// (`wait_ms`) a CacheService call may ask for.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`ServerLimits::admin_request_timeout`]: 10 minutes.
pub const DEFAULT_ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(600);

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_streams: DEFAULT_MAX_STREAMS,
            concurrency_per_connection: DEFAULT_CONCURRENCY_PER_CONNECTION,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            admin_request_timeout: DEFAULT_ADMIN_REQUEST_TIMEOUT,
        }
    }
}

impl ServerLimits {
    /// Checks every value; the message names the variable.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_streams == 0 {
            return Err(ConfigError("GRPC_MAX_STREAMS must be at least 1".into()));
        }
        if self.concurrency_per_connection == 0 {
            return Err(ConfigError(
                "GRPC_CONCURRENCY_PER_CONNECTION must be at least 1".into(),
            ));
        }
        if self.request_timeout < Duration::from_secs(1) {
            return Err(ConfigError(
                "GRPC_REQUEST_TIMEOUT must be at least one second (keep it above the 30 s a \
                 CacheService call may wait)"
                    .into(),
            ));
        }
        if self.admin_request_timeout < Duration::from_secs(1) {
            return Err(ConfigError(
                "ADMIN_REQUEST_TIMEOUT must be at least one second".into(),
            ));
        }
        Ok(())
    }
}

/// The PEM files of the gRPC servers' TLS (`TLS_CERT`, `TLS_KEY`, `TLS_CLIENT_CA`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The servers' certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
}

impl TlsFiles {
    /// From the three variables: none (plaintext), or at least the certificate and key.
    pub fn from_vars(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        client_ca: Option<PathBuf>,
    ) -> Result<Option<Self>, ConfigError> {
        let set = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        match (set(cert), set(key), set(client_ca)) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), client_ca) => Ok(Some(Self {
                cert,
                key,
                client_ca,
            })),
            (None, None, Some(_)) => Err(ConfigError(
                "TLS_CLIENT_CA needs TLS_CERT and TLS_KEY: client certificates are checked over TLS"
                    .into(),
            )),
            _ => Err(ConfigError(
                "set both TLS_CERT and TLS_KEY (PEM files) for TLS, or neither for plaintext".into(),
            )),
        }
    }
}

/// The PEM files of a TLS connection to Redis (`rediss://`): a private CA to trust
/// instead of the system's roots (`REDIS_CA`), and a client certificate and key for
/// Redis's `tls-auth-clients` (`REDIS_CERT`, `REDIS_KEY`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RedisTls {
    /// The CA that signed Redis's certificate; `None`: the system's roots.
    pub ca: Option<PathBuf>,
    /// The client certificate and its key, both or neither.
    pub client: Option<(PathBuf, PathBuf)>,
}

impl RedisTls {
    /// From the three variables.
    pub fn from_vars(
        ca: Option<PathBuf>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Self, ConfigError> {
        let set = |p: Option<PathBuf>| p.filter(|p| !p.as_os_str().is_empty());
        let client = match (set(cert), set(key)) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some((cert, key)),
            _ => {
                return Err(ConfigError(
                    "set both REDIS_CERT and REDIS_KEY (PEM files) for a Redis client certificate, or neither".into(),
                ));
            }
        };
        Ok(Self {
            ca: set(ca),
            client,
        })
    }

    /// Whether any file is set.
    pub fn is_set(&self) -> bool {
        self.ca.is_some() || self.client.is_some()
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

impl Default for Config {
    /// The documented defaults, ignoring the environment.
    fn default() -> Self {
        let addr = |text: &str| {
            text.parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
        };
        Self {
            kafka_brokers: None,
            kafka_debug: None,
            kafka_properties: Vec::new(),
            kafka_topic: "orders".into(),
            dlq_topic: "orders-dlq".into(),
            worker_group: "worker-group".into(),
            worker_instance_id: None,
            kafka_partitions: 4,
            kafka_replication: 1,
            kafka_session_timeout_ms: 10_000,
            kafka_max_poll_interval_ms: 300_000,
            redis_addr: None,
            redis_tls: RedisTls::default(),
            redis_cluster: None,
            key_prefix: String::new(),
            order_service_addr: addr(DEFAULT_ORDER_SERVICE_ADDR),
            cache_service_addr: addr(DEFAULT_CACHE_SERVICE_ADDR),
            admin_addr: addr(DEFAULT_ADMIN_ADDR),
            metrics_addr: None,
            admin_token: None,
            admin_tokens: None,
            admin_cert_principals: None,
            admin_allow_plaintext: false,
            tls: None,
            data_dir: PathBuf::from("data"),
            component_cache: Some(PathBuf::from("data").join("component-cache")),
            ruleset: None,
            plugin_trust_file: None,
            worker_admin: true,
            default_currency: "USD".into(),
            max_retries: 3,
            retry_backoff_ms: 200,
            quarantine_failures: 5,
            quarantine_window: 20,
            produce_timeout_ms: 5000,
            result_ttl: Some(DEFAULT_RESULT_TTL),
            history: HistoryLimits {
                versions: DEFAULT_RULESET_HISTORY,
                blob_grace: DEFAULT_PLUGIN_GRACE,
            },
            limits: Limits::default(),
            native_baseline: false,
            servers: ServerLimits::default(),
        }
    }
}

impl Config {
    /// Checks every value; the message names the variable and what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |message: String| Err(ConfigError(message));
        for (name, value) in [
            ("KAFKA_TOPIC", &self.kafka_topic),
            ("DLQ_TOPIC", &self.dlq_topic),
            ("WORKER_GROUP", &self.worker_group),
        ] {
            if value.trim().is_empty() {
                return fail(format!("{name} must not be empty"));
            }
        }
        if self.kafka_topic == self.dlq_topic {
            return fail("KAFKA_TOPIC and DLQ_TOPIC must differ".into());
        }
        if self.kafka_partitions < 1 || self.kafka_replication < 1 {
            return fail("KAFKA_PARTITIONS and KAFKA_REPLICATION must be at least 1".into());
        }
        if self.default_currency.len() != 3
            || !self
                .default_currency
                .bytes()
                .all(|b| b.is_ascii_uppercase())
        {
            return fail(format!(
                "DEFAULT_CURRENCY `{}` is not an ISO 4217 code such as USD",
                self.default_currency
            ));
        }
        if self.quarantine_window == 0 || self.quarantine_failures >= self.quarantine_window {
            return fail(format!(
                "QUARANTINE_FAILURES ({}) must be below QUARANTINE_WINDOW ({}), which must be at least 1",
                self.quarantine_failures, self.quarantine_window
            ));
        }
        if self.kafka_session_timeout_ms == 0
            || self.kafka_max_poll_interval_ms < self.kafka_session_timeout_ms
        {
            return fail(format!(
                "KAFKA_MAX_POLL_INTERVAL_MS ({}) must be at least KAFKA_SESSION_TIMEOUT_MS ({}), which must be at least 1",
                self.kafka_max_poll_interval_ms, self.kafka_session_timeout_ms
            ));
        }
        if self.key_prefix.len() > 64
            || !self
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}')
        {
            return fail(format!(
                "KEY_PREFIX `{}` must be at most 64 printable characters without spaces or braces, such as `shop-a:`",
                self.key_prefix
            ));
        }
        if self.produce_timeout_ms == 0 {
            return fail("PRODUCE_TIMEOUT_MS must be at least 1".into());
        }
        if self.redis_addr.is_some()
            && (self.worker_group.contains('{') || self.worker_group.contains('}'))
        {
            return fail(format!(
                "WORKER_GROUP `{}` must not contain braces: they are Redis Cluster hash tags",
                self.worker_group
            ));
        }
        let tls_redis = self
            .redis_addr
            .as_deref()
            .is_some_and(|a| a.starts_with("rediss://") || a.starts_with("valkeys://"));
        if self.redis_tls.is_set() && !tls_redis {
            return fail(
                "REDIS_CA, REDIS_CERT and REDIS_KEY are for TLS to Redis: REDIS_ADDR must then be a rediss:// URL".into(),
            );
        }
        self.servers.validate()?;
        self.limits
            .validate()
            .map_err(|e| ConfigError(e.to_string()))
    }
}

/// librdkafka properties the pipeline sets itself, for its guarantees or from its own
/// variables: `KAFKA_PROPERTIES` may not change them.
const OWN_KAFKA_PROPERTIES: [&str; 10] = [
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "acks",
    "enable.idempotence",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "message.timeout.ms",
    "session.timeout.ms",
    "max.poll.interval.ms",
];

/// `addr` as it may be shown in logs and errors: the password of every node's URL
/// (`redis://user:secret@host`, or `redis://:secret@host`) is replaced by `***`.
pub fn redacted_redis_addr(addr: &str) -> String {
    addr.split(',')
        .map(|node| {
            let Some((scheme, rest)) = node.split_once("://") else {
                return node.to_string();
            };
            // The userinfo ends at the last `@` before the path.
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let Some(at) = rest[..authority_end].rfind('@') else {
                return node.to_string();
            };
            let user = match rest[..at].split_once(':') {
                Some((user, _)) => format!("{user}:***"),
                None => "***".to_string(),
            };
            format!("{scheme}://{user}{}", &rest[at..])
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// librdkafka properties that load native code or run a program: never taken from
/// `KAFKA_PROPERTIES`, whatever their value. OpenSSL engines and providers are shared
/// libraries; `plugin.library.paths` loads librdkafka plugins; the Kerberos kinit
/// command is run through a shell.
const CODE_LOADING_KAFKA_PROPERTIES: [&str; 5] = [
    "plugin.library.paths",
    "ssl.engine.location",
    "ssl.engine.id",
    "ssl.providers",
    "sasl.kerberos.kinit.cmd",
];

/// Whether a librdkafka property holds a secret (a password, a key, a client secret):
/// never shown in logs or `Debug`.
pub fn is_secret_kafka_property(key: &str) -> bool {
    key.contains("password")
        || key.contains("secret")
        || key == "ssl.key.pem"
        || key == "sasl.oauthbearer.config"
        || key == "sasl.jaas.config"
}

/// Parses `KAFKA_PROPERTIES`: librdkafka properties as `key=value` separated by `;` or
/// new lines (e.g. `security.protocol=SASL_SSL;sasl.mechanisms=PLAIN`).
pub fn parse_kafka_properties(value: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut properties = Vec::new();
    for item in value
        .split([';', '\n'])
        .map(str::trim)
        .filter(|i| !i.is_empty())
    {
        let Some((key, value)) = item.split_once('=') else {
            return Err(ConfigError(format!(
                "KAFKA_PROPERTIES: `{item}` is not key=value (separate properties with `;`)"
            )));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(ConfigError(format!(
                "KAFKA_PROPERTIES: `{item}` has no property name"
            )));
        }
        if OWN_KAFKA_PROPERTIES.contains(&key) {
            return Err(ConfigError(format!(
                "KAFKA_PROPERTIES: `{key}` is set by order-pipeline itself (its guarantees, or \
                 KAFKA_BROKERS, WORKER_GROUP, WORKER_INSTANCE_ID, PRODUCE_TIMEOUT_MS, \
                 KAFKA_SESSION_TIMEOUT_MS, KAFKA_MAX_POLL_INTERVAL_MS); leave it out"
            )));
        }
        if CODE_LOADING_KAFKA_PROPERTIES.contains(&key) {
            return Err(ConfigError(format!(
                "KAFKA_PROPERTIES: `{key}` loads native code or runs a program, which \
                 order-pipeline never allows; leave it out"
            )));
        }
        properties.push((key.to_string(), value.trim().to_string()));
    }
    Ok(properties)
}

/// Parses a time to live of variable `name`: a duration such as `7d`, `12h` or `90s`
/// (at least one second), or `0` for forever (`None`).
pub fn parse_ttl(name: &str, value: &str) -> Result<Option<Duration>, ConfigError> {
    let value = value.trim();
    if value == "0" {
        return Ok(None);
    }
    match humantime::parse_duration(value) {
        Ok(ttl) if ttl >= Duration::from_secs(1) => Ok(Some(ttl)),
        Ok(_) => Err(ConfigError(format!(
            "{name} `{value}` is below one second; give e.g. 7d, 12h or 90s, or 0 to keep forever"
        ))),
        Err(e) => Err(ConfigError(format!(
            "{name} `{value}` is not a duration ({e}); give e.g. 7d, 12h or 90s, or 0 to keep forever"
        ))),
    }
}

/// Parses `PLUGIN_GRACE`: a duration such as 10m or 1h, or 0 (unused blobs go at the
/// next change).
pub fn parse_grace(value: &str) -> Result<Duration, ConfigError> {
    let value = value.trim();
    if value == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(value).map_err(|e| {
        ConfigError(format!(
            "PLUGIN_GRACE `{value}` is not a duration ({e}); give e.g. 10m or 1h, or 0"
        ))
    })
}

/// Parses a listen address of variable `name`; Go's `:50051` form means every interface.
pub fn parse_listen(name: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    let value = value.trim();
    let full = if value.starts_with(':') {
        format!("0.0.0.0{value}")
    } else {
        value.to_string()
    };
    full.parse().map_err(|_| {
        ConfigError(format!(
            "{name} `{value}` is not a listen address such as 0.0.0.0:50051"
        ))
    })
}

#[cfg(test)]
mod ttl_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn kafka_properties_are_key_values_and_not_the_pipelines_own() {
        assert_eq!(
            parse_kafka_properties("security.protocol=SASL_SSL; sasl.mechanisms=PLAIN\n").unwrap(),
            vec![
                ("security.protocol".to_string(), "SASL_SSL".to_string()),
                ("sasl.mechanisms".to_string(), "PLAIN".to_string())
            ]
        );
        assert_eq!(parse_kafka_properties("").unwrap(), Vec::new());
        let err = parse_kafka_properties("client.id").unwrap_err();
        assert!(err.0.contains("`client.id` is not key=value"), "{err}");
        let err = parse_kafka_properties("acks=1").unwrap_err();
        assert!(err.0.contains("`acks` is set by order-pipeline"), "{err}");
        for key in CODE_LOADING_KAFKA_PROPERTIES {
            let err = parse_kafka_properties(&format!("security.protocol=SSL;{key}=/tmp/x.so"))
                .unwrap_err();
            assert!(
                err.0.contains(&format!("`{key}` loads native code")),
                "{err}"
            );
        }
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(redacted_redis_addr("127.0.0.1:6379"), "127.0.0.1:6379");
        assert_eq!(
            redacted_redis_addr("redis://worker:s3cr3t@redis:6379/0"),
            "redis://worker:***@redis:6379/0"
        );
        assert_eq!(
            redacted_redis_addr("rediss://:p@ss@h:1"),
            "rediss://:***@h:1"
        );
        assert_eq!(
            redacted_redis_addr("redis://a:x@n1:1,redis://a:x@n2:2"),
            "redis://a:***@n1:1,redis://a:***@n2:2"
        );
        assert_eq!(redacted_redis_addr("redis://token@h:1"), "redis://***@h:1");
    }

    #[test]
    fn debug_shows_no_secret() {
        let config = Config {
            admin_token: Some("admin-s3cret".into()),
            redis_addr: Some("redis://worker:redis-s3cret@redis:6379".into()),
            kafka_properties: parse_kafka_properties(
                "security.protocol=SASL_SSL;sasl.username=u;sasl.password=kafka-s3cret;\
                 ssl.key.password=key-s3cret",
            )
            .unwrap(),
            ..Config::default()
        };
        let shown = format!("{config:?} {config:#?}");
        for secret in ["admin-s3cret", "redis-s3cret", "kafka-s3cret", "key-s3cret"] {
            assert!(!shown.contains(secret), "{secret} shown: {shown}");
        }
        assert!(shown.contains("redis://worker:***@redis:6379"), "{shown}");
        assert!(shown.contains("SASL_SSL"), "{shown}");
    }

    #[test]
    fn ttls_are_durations_or_zero_for_forever() {
        assert_eq!(
            parse_ttl("RESULT_TTL", "7d").unwrap(),
            Some(Duration::from_secs(7 * 86400))
        );
        assert_eq!(
            parse_ttl("RESULT_TTL", " 90s ").unwrap(),
            Some(Duration::from_secs(90))
        );
        assert_eq!(parse_ttl("RESULT_TTL", "0").unwrap(), None);
        assert_eq!(parse_grace(" 0 ").unwrap(), Duration::ZERO);
        assert_eq!(parse_grace("10m").unwrap(), DEFAULT_PLUGIN_GRACE);
        let err = parse_grace("later").unwrap_err();
        assert!(err.0.starts_with("PLUGIN_GRACE `later`"), "{err}");
        let limits = |versions| HistoryLimits {
            versions,
            blob_grace: Duration::ZERO,
        };
        let last_dropped = crate::domain::ruleset::last_dropped;
        assert_eq!(last_dropped(5, &limits(20), 5), 0);
        assert_eq!(last_dropped(25, &limits(20), 25), 5);
        assert_eq!(last_dropped(25, &limits(0), 25), 24); // the active version always stays
        assert_eq!(last_dropped(25, &limits(2), 3), 2); // so do those a rollout uses
        let err = parse_ttl("RESULT_TTL", "soon").unwrap_err();
        assert!(
            err.0.starts_with("RESULT_TTL `soon` is not a duration"),
            "{err}"
        );
        let err = parse_ttl("RESULT_TTL", "10ms").unwrap_err();
        assert!(err.0.contains("below one second"), "{err}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_go_systems() {
        let config = Config::default();
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.order_service_addr.port(), 50051);
        assert_eq!(config.cache_service_addr.port(), 50052);
        assert_eq!(config.admin_addr.to_string(), DEFAULT_ADMIN_ADDR);
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
        assert!(err.0.contains("ORDER_SERVICE_ADDR"), "{err}");
        let bad = Config {
            default_currency: "usd".into(),
            ..Config::default()
        };
        assert!(bad.validate().unwrap_err().0.contains("DEFAULT_CURRENCY"));
        let same = Config {
            dlq_topic: "orders".into(),
            ..Config::default()
        };
        assert!(same.validate().is_err());
        let poll = Config {
            kafka_max_poll_interval_ms: 5_000,
            ..Config::default()
        };
        assert!(
            poll.validate()
                .unwrap_err()
                .0
                .contains("KAFKA_MAX_POLL_INTERVAL_MS")
        );
    }
}
