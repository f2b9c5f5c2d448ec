//! The ruleset registry in Redis: plugin blobs by digest (`pipeline:plugin:<sha256>`,
//! shared by every group), ruleset versions under the worker group's name, activated by
//! one compare-and-set script that also publishes the new version.

use anyhow::Context as _;
use tokio::sync::watch;

use super::{Conn, Keys};
use crate::domain::ruleset::{ActivateError, Expect};

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

/// The Redis registry: a connection plus the client for pub/sub. Rulesets live under
/// the worker group's name (`pipeline:<group>:ruleset...`), so several pipelines can
/// share one Redis; plugins are shared by digest.
#[derive(Clone)]
pub struct RedisRegistry {
    connection: Conn,
    activate: redis::Script,
    keys: Keys,
    /// The start of this group's keys (`<KEY_PREFIX>pipeline:<group>:`).
    namespace: String,
    changes: watch::Sender<u64>,
}

impl RedisRegistry {
    fn ruleset_prefix(&self) -> String {
        format!("{}ruleset:", self.namespace)
    }
    fn active_key(&self) -> String {
        format!("{}ruleset-active", self.namespace)
    }
    fn latest_key(&self) -> String {
        format!("{}ruleset-latest", self.namespace)
    }
    /// Pub/sub channel announcing a new active version.
    pub fn channel(&self) -> String {
        format!("{}ruleset-changed", self.namespace)
    }

    pub(super) fn new(connection: Conn, keys: Keys, group: &str) -> Self {
        Self {
            connection,
            activate: redis::Script::new(ACTIVATE_SCRIPT),
            namespace: keys.registry(group),
            keys,
            changes: watch::channel(0).0,
        }
    }

    /// Where the listener sends the ruleset versions it hears of.
    pub(super) fn change_sender(&self) -> watch::Sender<u64> {
        self.changes.clone()
    }
}

impl RedisRegistry {
    /// Stores a plugin's bytes under its digest (idempotent).
    pub async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let mut c = self.connection.clone();
        let () = redis::cmd("SET")
            .arg(self.keys.plugin(digest))
            .arg(bytes)
            .query_async(&mut c)
            .await
            .context("storing a plugin in Redis")?;
        Ok(())
    }

    /// Publishes a worker's heartbeat (`<group keys>worker:<instance>`, expiring after
    /// `ttl`), and lists the instance in the group's set of workers
    /// (`<group keys>workers`): readers look the heartbeats up from there instead of
    /// scanning, which a Redis Cluster does per node.
    pub async fn put_heartbeat(
        &self,
        instance: &str,
        json: &str,
        ttl: std::time::Duration,
    ) -> anyhow::Result<()> {
        let mut c = self.connection.clone();
        let () = redis::cmd("SET")
            .arg(self.heartbeat_key(instance))
            .arg(json)
            .arg("PX")
            .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
            .query_async(&mut c)
            .await
            .context("publishing a heartbeat to Redis")?;
        let _: i64 = redis::cmd("SADD")
            .arg(self.workers_key())
            .arg(instance)
            .query_async(&mut c)
            .await
            .context("publishing a heartbeat to Redis")?;
        Ok(())
    }

    fn heartbeat_key(&self, instance: &str) -> String {
        format!("{}worker:{instance}", self.namespace)
    }

    fn workers_key(&self) -> String {
        format!("{}workers", self.namespace)
    }

    /// The heartbeats that have not expired; instances whose heartbeat expired leave the
    /// set of workers.
    pub async fn heartbeats(&self) -> anyhow::Result<Vec<String>> {
        let mut c = self.connection.clone();
        let instances: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.workers_key())
            .query_async(&mut c)
            .await
            .context("listing heartbeats in Redis")?;
        if instances.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = instances.iter().map(|i| self.heartbeat_key(i)).collect();
        let values: Vec<Option<String>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .context("reading heartbeats from Redis")?;
        let gone: Vec<&String> = instances
            .iter()
            .zip(&values)
            .filter_map(|(instance, value)| value.is_none().then_some(instance))
            .collect();
        if !gone.is_empty() {
            // A worker that beats again meanwhile adds itself back with its next beat.
            let removed: redis::RedisResult<i64> = redis::cmd("SREM")
                .arg(self.workers_key())
                .arg(&gone)
                .query_async(&mut c)
                .await;
            if let Err(e) = removed {
                tracing::debug!(error = %e, "cannot forget expired heartbeats");
            }
        }
        Ok(values.into_iter().flatten().collect())
    }

    /// A plugin's bytes by digest.
    pub async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let mut c = self.connection.clone();
        redis::cmd("GET")
            .arg(self.keys.plugin(digest))
            .query_async(&mut c)
            .await
            .context("reading a plugin from Redis")
    }

    /// The active version number.
    pub async fn active_version(&self) -> anyhow::Result<Option<u64>> {
        let mut c = self.connection.clone();
        redis::cmd("GET")
            .arg(self.active_key())
            .query_async(&mut c)
            .await
            .context("reading the active ruleset version")
    }

    /// The newest version number (0 when there is none).
    pub async fn latest_version(&self) -> anyhow::Result<u64> {
        let mut c = self.connection.clone();
        let latest: Option<u64> = redis::cmd("GET")
            .arg(self.latest_key())
            .query_async(&mut c)
            .await
            .context("reading the ruleset history")?;
        Ok(latest.unwrap_or(0))
    }

    /// A version's JSON body.
    pub async fn ruleset(&self, version: u64) -> anyhow::Result<Option<String>> {
        let mut c = self.connection.clone();
        redis::cmd("GET")
            .arg(format!("{}{version}", self.ruleset_prefix()))
            .query_async(&mut c)
            .await
            .context("reading a ruleset")
    }

    /// Activates `json` as a new version if the active one is still `expect`, and
    /// publishes it.
    pub async fn activate(&self, json: String, expect: Expect) -> Result<u64, ActivateError> {
        let mut c = self.connection.clone();
        let expected = match expect {
            Expect::Nothing => "none".to_string(),
            Expect::Version(v) => v.to_string(),
        };
        let answer: i64 = self
            .activate
            .key(self.active_key())
            .key(self.latest_key())
            .arg(json)
            .arg(expected)
            .arg(self.ruleset_prefix())
            .arg(self.channel())
            .invoke_async(&mut c)
            .await
            .context("activating a ruleset in Redis")?;
        match answer {
            v if v > 0 => Ok(v.unsigned_abs()),
            0 => Err(ActivateError::Conflict(None)),
            v => Err(ActivateError::Conflict(Some(v.unsigned_abs()))),
        }
    }

    /// A receiver that changes whenever another version may have become active (fed by
    /// the backend's [`Listener`](super::Listener)).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}
