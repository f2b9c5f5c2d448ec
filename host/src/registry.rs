//! The plugin registry shared by every worker: plugin components stored by sha256 digest,
//! and the active ruleset (ordered plugin digests with their config) with a
//! monotonically increasing version and its whole history. In Redis in Kafka mode, in the
//! embedded database otherwise. Every activation is one atomic compare-and-set that also
//! notifies the workers (Redis pub/sub, or an in-process channel).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt as _;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::embedded::EmbeddedDb;
use crate::engine::Isolation;

/// One rule of a stored ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// Rule name (from the plugin's `describe`).
    pub name: String,
    /// Rule version (from `describe`).
    pub version: String,
    /// sha256 of the component; its bytes are stored under it.
    pub digest: String,
    /// The rule's config.
    pub config: Vec<(String, String)>,
    /// How its instances are used.
    pub isolation: Isolation,
}

/// What a ruleset version holds (its number is its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesetBody {
    /// The rules, in order.
    pub rules: Vec<RuleRef>,
    /// Why this version exists.
    pub reason: String,
    /// The version whose contents this one copies (activate, rollback), if any.
    #[serde(default)]
    pub based_on: Option<u64>,
    /// When it was made, Unix milliseconds.
    pub created_at_unix_ms: i64,
}

/// A ruleset version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetRecord {
    /// The version number (1, 2, ...).
    pub version: u64,
    /// Its contents.
    pub body: RulesetBody,
}

/// What the active version must be for an activation to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No ruleset may be active yet (bootstrap).
    Nothing,
    /// This version must be active (nobody changed it meanwhile).
    Version(u64),
}

/// Why an activation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The active version was not the expected one.
    #[error("the active ruleset changed meanwhile (now version {0:?}); look again and retry")]
    Conflict(Option<u64>),
    /// The registry could not be reached or written.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// Plugins are content-addressed, so every group shares them.
const PLUGIN_PREFIX: &str = "pipeline:plugin:";

/// Compare-and-set activation: KEYS = active, latest; ARGV = body, expected, prefix,
/// channel. Returns the new version, or -active / 0 (none active) on a conflict.
const ACTIVATE_SCRIPT: &str = r#"
local active = redis.call('GET', KEYS[1])
if ARGV[2] == 'none' then
  if active then return -tonumber(active) end
elseif active ~= ARGV[2] then
  if active then return -tonumber(active) end
  return 0
end
local v = redis.call('INCR', KEYS[2])
redis.call('SET', ARGV[3] .. v, ARGV[1])
redis.call('SET', KEYS[1], v)
redis.call('PUBLISH', ARGV[4], v)
return v
"#;

/// The registry.
#[derive(Clone)]
pub enum Registry {
    /// In Redis.
    Redis(Box<RedisRegistry>),
    /// In the embedded database.
    Embedded(Arc<EmbeddedDb>),
}

/// The Redis registry: a connection plus the client for pub/sub. Rulesets live under
/// the worker group's name (`pipeline:<group>:ruleset...`), so several pipelines can
/// share one Redis; plugins are shared by digest.
#[derive(Clone)]
pub struct RedisRegistry {
    client: redis::Client,
    connection: ConnectionManager,
    activate: redis::Script,
    namespace: String,
}

impl RedisRegistry {
    fn ruleset_prefix(&self) -> String {
        format!("pipeline:{}:ruleset:", self.namespace)
    }
    fn active_key(&self) -> String {
        format!("pipeline:{}:ruleset-active", self.namespace)
    }
    fn latest_key(&self) -> String {
        format!("pipeline:{}:ruleset-latest", self.namespace)
    }
    /// Pub/sub channel announcing a new active version.
    pub fn channel(&self) -> String {
        format!("pipeline:{}:ruleset-changed", self.namespace)
    }

    /// Connects to Redis at `addr` (as `REDIS_ADDR`) for the rulesets of worker group
    /// `group`.
    pub async fn connect(addr: &str, group: &str) -> anyhow::Result<Self> {
        let (client, connection) = crate::store::redis::connect(addr).await?;
        Ok(Self {
            client,
            connection,
            activate: redis::Script::new(ACTIVATE_SCRIPT),
            namespace: group.to_string(),
        })
    }
}

impl Registry {
    /// Stores a plugin's bytes under its digest (idempotent).
    pub async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Redis(r) => {
                let mut c = r.connection.clone();
                let () = redis::cmd("SET")
                    .arg(format!("{PLUGIN_PREFIX}{digest}"))
                    .arg(bytes)
                    .query_async(&mut c)
                    .await
                    .context("storing a plugin in Redis")?;
                Ok(())
            }
            Self::Embedded(db) => db.put_plugin(digest, bytes).await,
        }
    }

    /// A plugin's bytes by digest.
    pub async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Self::Redis(r) => {
                let mut c = r.connection.clone();
                Ok(redis::cmd("GET")
                    .arg(format!("{PLUGIN_PREFIX}{digest}"))
                    .query_async(&mut c)
                    .await
                    .context("reading a plugin from Redis")?)
            }
            Self::Embedded(db) => db.plugin(digest).await,
        }
    }

    /// The active version number.
    pub async fn active_version(&self) -> anyhow::Result<Option<u64>> {
        match self {
            Self::Redis(r) => {
                let mut c = r.connection.clone();
                Ok(redis::cmd("GET")
                    .arg(r.active_key())
                    .query_async(&mut c)
                    .await
                    .context("reading the active ruleset version")?)
            }
            Self::Embedded(db) => db.active_ruleset().await,
        }
    }

    /// A version by number.
    pub async fn get(&self, version: u64) -> anyhow::Result<Option<RulesetRecord>> {
        let body: Option<String> = match self {
            Self::Redis(r) => {
                let mut c = r.connection.clone();
                redis::cmd("GET")
                    .arg(format!("{}{version}", r.ruleset_prefix()))
                    .query_async(&mut c)
                    .await
                    .context("reading a ruleset")?
            }
            Self::Embedded(db) => db.ruleset(version).await?,
        };
        body.map(|json| {
            Ok(RulesetRecord {
                version,
                body: serde_json::from_str(&json)
                    .with_context(|| format!("ruleset version {version} is not valid"))?,
            })
        })
        .transpose()
    }

    /// The active version.
    pub async fn active(&self) -> anyhow::Result<Option<RulesetRecord>> {
        match self.active_version().await? {
            Some(version) => self.get(version).await,
            None => Ok(None),
        }
    }

    /// Every version, newest first.
    pub async fn history(&self) -> anyhow::Result<Vec<RulesetRecord>> {
        let latest = match self {
            Self::Redis(r) => {
                let mut c = r.connection.clone();
                let latest: Option<u64> = redis::cmd("GET")
                    .arg(r.latest_key())
                    .query_async(&mut c)
                    .await
                    .context("reading the ruleset history")?;
                latest.unwrap_or(0)
            }
            Self::Embedded(db) => db.latest_ruleset().await?,
        };
        let mut out = Vec::new();
        for version in (1..=latest).rev() {
            if let Some(record) = self.get(version).await? {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Makes `body` the active ruleset as a new version, if the active version is still
    /// `expect`; notifies the workers.
    pub async fn activate(&self, body: &RulesetBody, expect: Expect) -> Result<u64, ActivateError> {
        let json = serde_json::to_string(body).map_err(anyhow::Error::from)?;
        match self {
            Self::Redis(r) => {
                let mut c = r.connection.clone();
                let expected = match expect {
                    Expect::Nothing => "none".to_string(),
                    Expect::Version(v) => v.to_string(),
                };
                let answer: i64 = r
                    .activate
                    .key(r.active_key())
                    .key(r.latest_key())
                    .arg(json)
                    .arg(expected)
                    .arg(r.ruleset_prefix())
                    .arg(r.channel())
                    .invoke_async(&mut c)
                    .await
                    .context("activating a ruleset in Redis")?;
                match answer {
                    v if v > 0 => Ok(v.unsigned_abs()),
                    0 => Err(ActivateError::Conflict(None)),
                    v => Err(ActivateError::Conflict(Some(v.unsigned_abs()))),
                }
            }
            Self::Embedded(db) => db.activate_ruleset(json, expect).await,
        }
    }

    /// A receiver that changes whenever another version may have become active. Redis:
    /// a pub/sub subscription (reconnecting); embedded: the database's own channel.
    pub async fn changes(&self) -> watch::Receiver<u64> {
        match self {
            Self::Embedded(db) => db.ruleset_changes(),
            Self::Redis(r) => {
                let (tx, rx) = watch::channel(0u64);
                let client = r.client.clone();
                let channel = r.channel();
                tokio::spawn(async move {
                    loop {
                        if tx.is_closed() {
                            return;
                        }
                        match client.get_async_pubsub().await {
                            Ok(mut pubsub) => {
                                if let Err(e) = pubsub.subscribe(&channel).await {
                                    tracing::warn!(error = %e, "cannot subscribe to ruleset changes");
                                } else {
                                    let mut messages = pubsub.on_message();
                                    while let Some(message) = messages.next().await {
                                        let version: u64 = message.get_payload().unwrap_or(0);
                                        if tx.send(version).is_err() {
                                            return;
                                        }
                                    }
                                }
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "ruleset change subscription lost")
                            }
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
                rx
            }
        }
    }
}
