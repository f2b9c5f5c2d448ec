//! The ruleset registry in Redis, under the worker group's name: plugin blobs by digest
//! with when each was last uploaded or activated, ruleset versions activated by one
//! compare-and-set script that also publishes the new version, and one collection script
//! that drops the versions beyond the history limit and the blobs no kept version uses.

use anyhow::Context as _;
use tokio::sync::watch;

use super::{Conn, Keys};
use crate::domain::now_unix_ms;
use crate::domain::ruleset::{ActivateError, Collected, Expect, HistoryLimits};

/// A new version, not activated: KEYS = latest; ARGV = body, ruleset prefix. Returns
/// its number.
const CREATE_SCRIPT: &str = r#"
local v = redis.call('INCR', KEYS[1])
redis.call('SET', ARGV[2] .. v, ARGV[1])
return v
"#;

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

/// Stores a blob and when it was uploaded: KEYS = blob, times; ARGV = bytes, now (ms),
/// digest.
const PUT_PLUGIN_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
return 1
"#;

/// Marks blobs as in use now: KEYS = times; ARGV = prefix, now (ms), digests. Returns
/// the digests that have no blob under the group.
const PIN_SCRIPT: &str = r#"
local missing = {}
for i = 3, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 1 then
    redis.call('ZADD', KEYS[1], ARGV[2], ARGV[i])
  else
    table.insert(missing, ARGV[i])
  end
end
return missing
"#;

/// Drops versions up to ARGV[3] and the blobs no kept version uses that were last
/// pinned at or before ARGV[4]: KEYS = latest, oldest kept, times; ARGV = ruleset
/// prefix, blob prefix, last version to drop, cutoff (ms). Returns {versions, blobs}.
const COLLECT_SCRIPT: &str = r#"
local latest = tonumber(redis.call('GET', KEYS[1]) or '0')
local drop_to = tonumber(ARGV[3])
local oldest = tonumber(redis.call('GET', KEYS[2]) or '1')
local versions = 0
for v = oldest, drop_to do
  versions = versions + redis.call('DEL', ARGV[1] .. v)
end
if drop_to >= oldest then redis.call('SET', KEYS[2], drop_to + 1) end
local used = {}
for v = math.max(drop_to + 1, 1), latest do
  local body = redis.call('GET', ARGV[1] .. v)
  if body then
    local ok, doc = pcall(cjson.decode, body)
    if not ok or type(doc.rules) ~= 'table' then
      return redis.error_reply('ruleset version ' .. v .. ' is not valid: nothing collected')
    end
    for _, rule in ipairs(doc.rules) do used[rule.digest] = true end
  end
end
local blobs = 0
for _, digest in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[4])) do
  if not used[digest] then
    redis.call('DEL', ARGV[2] .. digest)
    redis.call('ZREM', KEYS[3], digest)
    blobs = blobs + 1
  end
end
return {versions, blobs}
"#;

/// The Redis registry: a connection plus the client for pub/sub. Rulesets and plugins
/// live under the worker group's name (`pipeline:<group>:ruleset...`,
/// `pipeline:<group>:plugin:<sha256>`), so several pipelines can share one Redis and
/// each collects only its own plugins.
#[derive(Clone)]
pub struct RedisRegistry {
    pub(super) connection: Conn,
    activate: redis::Script,
    create: redis::Script,
    put_plugin: redis::Script,
    pin: redis::Script,
    collect: redis::Script,
    keys: Keys,
    /// The start of this group's keys (`<KEY_PREFIX>pipeline:<group>:`).
    pub(super) namespace: String,
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
    /// The first version not dropped by the history limit (1 when none was).
    fn oldest_key(&self) -> String {
        format!("{}ruleset-oldest", self.namespace)
    }
    /// The start of the group's plugin blobs' keys.
    fn plugin_prefix(&self) -> String {
        format!("{}plugin:", self.namespace)
    }
    /// When each blob was last uploaded or activated (a sorted set: Unix ms by digest).
    fn plugin_times_key(&self) -> String {
        format!("{}plugin-times", self.namespace)
    }
    /// Pub/sub channel announcing a new active version.
    pub fn channel(&self) -> String {
        format!("{}ruleset-changed", self.namespace)
    }

    pub(super) fn new(connection: Conn, keys: Keys, group: &str) -> Self {
        Self {
            connection,
            activate: redis::Script::new(ACTIVATE_SCRIPT),
            create: redis::Script::new(CREATE_SCRIPT),
            put_plugin: redis::Script::new(PUT_PLUGIN_SCRIPT),
            pin: redis::Script::new(PIN_SCRIPT),
            collect: redis::Script::new(COLLECT_SCRIPT),
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
    /// Stores a plugin's bytes under its digest (idempotent), uploaded now.
    pub async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let mut c = self.connection.clone();
        let _: i64 = self
            .put_plugin
            .key(format!("{}{digest}", self.plugin_prefix()))
            .key(self.plugin_times_key())
            .arg(bytes)
            .arg(now_unix_ms())
            .arg(digest)
            .invoke_async(&mut c)
            .await
            .context("storing a plugin in Redis")?;
        Ok(())
    }

    /// Marks the blobs of `digests` as in use now, so that no collection takes them
    /// within the grace period; answers the digests that have no blob.
    pub async fn pin(&self, digests: &[&str]) -> anyhow::Result<Vec<String>> {
        let mut c = self.connection.clone();
        let mut invocation = self.pin.key(self.plugin_times_key());
        invocation.arg(self.plugin_prefix()).arg(now_unix_ms());
        for digest in digests {
            invocation.arg(*digest);
        }
        let missing: Vec<String> = invocation
            .invoke_async(&mut c)
            .await
            .context("marking plugins in use in Redis")?;
        // Blobs stored before each group kept its own are still there to use.
        let mut gone = Vec::new();
        for digest in missing {
            let shared: bool = redis::cmd("EXISTS")
                .arg(self.keys.shared_plugin(&digest))
                .query_async(&mut c)
                .await
                .context("looking for a plugin in Redis")?;
            if !shared {
                gone.push(digest);
            }
        }
        Ok(gone)
    }

    /// Drops the versions up to `drop_to` and the blobs no kept version uses, unused
    /// for `limits.blob_grace`; all in one script.
    pub async fn collect(&self, drop_to: u64, limits: &HistoryLimits) -> anyhow::Result<Collected> {
        let mut c = self.connection.clone();
        let grace = i64::try_from(limits.blob_grace.as_millis()).unwrap_or(i64::MAX);
        let (versions, blobs): (u64, u64) = self
            .collect
            .key(self.latest_key())
            .key(self.oldest_key())
            .key(self.plugin_times_key())
            .arg(self.ruleset_prefix())
            .arg(self.plugin_prefix())
            .arg(drop_to)
            .arg(now_unix_ms().saturating_sub(grace))
            .invoke_async(&mut c)
            .await
            .context("collecting the registry's history in Redis")?;
        Ok(Collected { versions, blobs })
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

    /// A plugin's bytes by digest (the group's, or one stored before each group kept
    /// its own).
    pub async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let mut c = self.connection.clone();
        for key in [
            format!("{}{digest}", self.plugin_prefix()),
            self.keys.shared_plugin(digest),
        ] {
            let bytes: Option<Vec<u8>> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut c)
                .await
                .context("reading a plugin from Redis")?;
            if bytes.is_some() {
                return Ok(bytes);
            }
        }
        Ok(None)
    }

    /// The oldest version the history keeps.
    pub async fn oldest_version(&self) -> anyhow::Result<u64> {
        let mut c = self.connection.clone();
        let oldest: Option<u64> = redis::cmd("GET")
            .arg(self.oldest_key())
            .query_async(&mut c)
            .await
            .context("reading the ruleset history")?;
        Ok(oldest.unwrap_or(1))
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

    /// Stores `json` as a new version without activating it (a candidate).
    pub async fn create(&self, json: String) -> anyhow::Result<u64> {
        let mut c = self.connection.clone();
        self.create
            .key(self.latest_key())
            .arg(json)
            .arg(self.ruleset_prefix())
            .invoke_async(&mut c)
            .await
            .context("storing a ruleset version in Redis")
    }

    fn rollout_key(&self) -> String {
        format!("{}rollout", self.namespace)
    }

    /// The rollout in progress (JSON), if any.
    pub async fn rollout(&self) -> anyhow::Result<Option<String>> {
        let mut c = self.connection.clone();
        redis::cmd("GET")
            .arg(self.rollout_key())
            .query_async(&mut c)
            .await
            .context("reading the rollout from Redis")
    }

    /// Sets (or, with `None`, ends) the rollout, and tells the workers.
    pub async fn set_rollout(&self, json: Option<String>) -> anyhow::Result<()> {
        let mut c = self.connection.clone();
        let command = match json {
            Some(json) => {
                let mut set = redis::cmd("SET");
                set.arg(self.rollout_key()).arg(json);
                set
            }
            None => {
                let mut del = redis::cmd("DEL");
                del.arg(self.rollout_key());
                del
            }
        };
        let _: redis::Value = command
            .query_async(&mut c)
            .await
            .context("writing the rollout to Redis")?;
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.channel())
            .arg(0)
            .query_async(&mut c)
            .await
            .context("announcing the rollout in Redis")?;
        Ok(())
    }

    /// A receiver that changes whenever another version may have become active (fed by
    /// the backend's [`Listener`](super::Listener)).
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// The registry seam, on Redis.
#[async_trait::async_trait]
impl crate::rules::registry::RegistryBackend for RedisRegistry {
    async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        RedisRegistry::put_plugin(self, digest, bytes).await
    }
    async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        RedisRegistry::plugin(self, digest).await
    }
    async fn pin(&self, digests: &[&str]) -> anyhow::Result<Vec<String>> {
        RedisRegistry::pin(self, digests).await
    }
    async fn collect(&self, drop_to: u64, limits: &HistoryLimits) -> anyhow::Result<Collected> {
        RedisRegistry::collect(self, drop_to, limits).await
    }
    async fn latest_version(&self) -> anyhow::Result<u64> {
        RedisRegistry::latest_version(self).await
    }
    async fn oldest_version(&self) -> anyhow::Result<u64> {
        RedisRegistry::oldest_version(self).await
    }
    async fn active_version(&self) -> anyhow::Result<Option<u64>> {
        RedisRegistry::active_version(self).await
    }
    async fn ruleset(&self, version: u64) -> anyhow::Result<Option<String>> {
        RedisRegistry::ruleset(self, version).await
    }
    async fn create(&self, json: String) -> anyhow::Result<u64> {
        RedisRegistry::create(self, json).await
    }
    async fn activate(&self, json: String, expect: Expect) -> Result<u64, ActivateError> {
        RedisRegistry::activate(self, json, expect).await
    }
    async fn rollout(&self) -> anyhow::Result<Option<String>> {
        RedisRegistry::rollout(self).await
    }
    async fn set_rollout(&self, json: Option<String>) -> anyhow::Result<()> {
        RedisRegistry::set_rollout(self, json).await
    }
    fn changes(&self) -> watch::Receiver<u64> {
        RedisRegistry::changes(self)
    }
    async fn put_heartbeat(
        &self,
        instance: &str,
        json: String,
        ttl: std::time::Duration,
    ) -> anyhow::Result<()> {
        RedisRegistry::put_heartbeat(self, instance, &json, ttl).await
    }
    async fn heartbeats(&self) -> anyhow::Result<Vec<String>> {
        RedisRegistry::heartbeats(self).await
    }
    async fn append_audit(
        &self,
        entry: crate::domain::audit::AuditEntry,
    ) -> anyhow::Result<crate::domain::audit::AuditEvent> {
        RedisRegistry::append_audit(self, entry).await
    }
    async fn audit(
        &self,
        since: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<crate::domain::audit::AuditEvent>> {
        RedisRegistry::audit(self, since, limit).await
    }
    fn reports(&self) -> Option<&dyn crate::rules::registry::ReportQueue> {
        Some(self)
    }
}
