//! The Redis backend: the result store ([`RedisStore`], Go-compatible `order:<id>` keys),
//! the ruleset registry ([`RedisRegistry`]) and their one pub/sub [`Listener`], over one
//! connection ([`Redis`]).

mod pubsub;
mod registry;
mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;

use crate::config::RedisTls;

pub use pubsub::Listener;
pub use registry::RedisRegistry;
pub use store::{FALLBACK_POLL, RedisStore};

/// The name of every key and channel the pipeline uses, under `KEY_PREFIX` (empty by
/// default, which keeps the Go system's `order:<id>`): several pipelines can share one
/// Redis with prefixes of their own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The Go-compatible result of `id` (`order:<id>`).
    pub fn go(&self, id: &str) -> String {
        format!("{}order:{id}", self.prefix)
    }

    /// The full result of `id`.
    pub fn full(&self, id: &str) -> String {
        format!("{}order-result:{id}", self.prefix)
    }

    /// The channel announcing the ids whose results were written.
    pub fn written_channel(&self) -> String {
        format!("{}pipeline:results-written", self.prefix)
    }

    /// A plugin's bytes, by digest (shared by every worker group under the prefix).
    pub fn plugin(&self, digest: &str) -> String {
        format!("{}pipeline:plugin:{digest}", self.prefix)
    }

    /// The start of worker group `group`'s registry keys.
    pub fn registry(&self, group: &str) -> String {
        format!("{}pipeline:{group}:", self.prefix)
    }
}

/// A client and a self-reconnecting connection to Redis at `addr` (`host:port` as the
/// Go system took it, a `redis://` URL, or a `rediss://` URL for TLS with `tls`'s
/// certificates); fails clearly within 10 s.
pub async fn connect(
    addr: &str,
    tls: &RedisTls,
) -> anyhow::Result<(redis::Client, ConnectionManager)> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("redis://{addr}")
    };
    let client = if tls.is_set() {
        let read = |var: &str, path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("{var} `{}`: cannot read", path.display()))
        };
        let client_tls = match &tls.client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read("REDIS_CERT", cert)?,
                client_key: read("REDIS_KEY", key)?,
            }),
            None => None,
        };
        let root_cert = match &tls.ca {
            Some(ca) => Some(read("REDIS_CA", ca)?),
            None => None,
        };
        redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )
        .with_context(|| {
            format!("REDIS_ADDR `{addr}` with REDIS_CA/REDIS_CERT/REDIS_KEY: not usable")
        })?
    } else {
        redis::Client::open(url.as_str())
            .with_context(|| format!("REDIS_ADDR `{addr}` is not a Redis address"))?
    };
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2);
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("cannot connect to Redis at {addr}"))?;
    Ok((client, connection))
}

/// One Redis: a client (for pub/sub) and a self-reconnecting connection shared by the
/// store and the registry.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    connection: ConnectionManager,
    waiters: Arc<crate::waiters::Waiters>,
    keys: Keys,
}

impl Redis {
    /// Connects to `addr` (`REDIS_ADDR`); every key and channel is under `key_prefix`
    /// (`KEY_PREFIX`).
    pub async fn connect(addr: &str, key_prefix: &str, tls: &RedisTls) -> anyhow::Result<Self> {
        let (client, connection) = connect(addr, tls).await?;
        Ok(Self {
            client,
            connection,
            waiters: Arc::default(),
            keys: Keys::new(key_prefix),
        })
    }

    /// The result store, its waits woken by this backend's listener.
    pub fn store(&self) -> RedisStore {
        RedisStore::new(
            self.connection.clone(),
            Arc::clone(&self.waiters),
            self.keys.clone(),
        )
    }

    /// The registry of worker group `group`.
    pub fn registry(&self, group: &str) -> RedisRegistry {
        RedisRegistry::new(self.connection.clone(), self.keys.clone(), group)
    }

    /// The one listener of this backend: result announcements, and the ruleset changes
    /// of `registry` if there is one. Run it with the process's shutdown signal.
    pub fn listener(&self, registry: Option<&RedisRegistry>) -> Listener {
        Listener::new(
            self.client.clone(),
            Arc::clone(&self.waiters),
            self.keys.written_channel(),
            registry.map(|r| (r.channel(), r.change_sender())),
        )
    }

    /// Whether Redis answers PING: the readiness probe of the roles that use Redis.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .context("Redis does not answer PING")?;
        Ok(())
    }

    /// Warns when this Redis may forget results it acknowledged: a worker commits an
    /// order's offset once Redis has acknowledged its result, so at-least-once needs
    /// every acknowledged write on disk (`appendonly yes`, `appendfsync always`). With
    /// no persistence a restart forgets committed results; with `everysec` a machine
    /// crash can lose the last second. Managed Redis that refuses `CONFIG` is not
    /// checked (logged at debug). Returns whether the setting was confirmed.
    pub async fn check_durability(&self) -> bool {
        let mut connection = self.connection.clone();
        let answer: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("append*")
            .query_async(&mut connection)
            .await;
        match answer {
            Ok(pairs) => {
                let get = |key: &str| {
                    pairs
                        .chunks(2)
                        .find(|pair| pair[0] == key)
                        .and_then(|pair| pair.get(1).cloned())
                        .unwrap_or_default()
                };
                let (aof, fsync) = (get("appendonly"), get("appendfsync"));
                let durable = aof == "yes" && fsync == "always";
                if durable {
                    tracing::info!(
                        "Redis keeps every acknowledged result on disk (appendfsync always)"
                    );
                } else {
                    tracing::warn!(
                        appendonly = %aof,
                        appendfsync = %fsync,
                        "Redis may lose acknowledged results whose offsets are already committed: \
                         a restart without persistence, or a machine crash with everysec, loses \
                         them. Run Redis with --appendonly yes --appendfsync always (README: Durability)"
                    );
                }
                durable
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read Redis persistence settings");
                false
            }
        }
    }
}
