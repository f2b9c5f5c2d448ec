//! The parts of the configuration that are parsed from text or files: listen
//! addresses, durations, librdkafka properties, the TLS files, and what may be shown of
//! a secret.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::ConfigError;
#[cfg(test)]
use super::{DEFAULT_PLUGIN_GRACE, HistoryLimits};

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
