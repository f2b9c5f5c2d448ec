//! The embedded ruleset registry: plugin blobs by digest with when each was last used,
//! ruleset versions and the active one, activated by compare-and-set in one transaction;
//! and the collection of the versions beyond the history limit and of the blobs no kept
//! version uses, in one transaction too.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::watch;

use super::{
    ACTIVE_RULESET, EmbeddedDb, LATEST_RULESET, META, OLDEST_RULESET, PLUGIN_TIMES, PLUGINS,
    ROLLOUT, RULESETS, SETTINGS, blocking,
};
use crate::domain::now_unix_ms;
use crate::domain::ruleset::{ActivateError, Collected, Expect, HistoryLimits, RulesetBody};

impl EmbeddedDb {
    /// Keeps a worker's heartbeat in memory for `ttl` (the embedded mode has one worker,
    /// in this process).
    pub fn put_heartbeat(&self, instance: &str, json: String, ttl: std::time::Duration) {
        let until = std::time::Instant::now() + ttl;
        self.heartbeats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(instance.to_string(), (json, until));
    }

    /// The heartbeats still within their time to live.
    pub fn heartbeats(&self) -> Vec<String> {
        let now = std::time::Instant::now();
        let mut beats = self
            .heartbeats
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        beats.retain(|_, (_, until)| *until > now);
        beats.values().map(|(json, _)| json.clone()).collect()
    }

    /// Stores a plugin's bytes under its digest, uploaded now.
    pub async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let (db, digest, bytes) = (Arc::clone(&self.db), digest.to_string(), bytes.to_vec());
        blocking(move || {
            let txn = db.begin_write()?;
            txn.open_table(PLUGINS)?
                .insert(digest.as_str(), bytes.as_slice())?;
            txn.open_table(PLUGIN_TIMES)?
                .insert(digest.as_str(), now_unix_ms())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// Marks the blobs of `digests` as in use now; answers the digests that have none.
    pub async fn pin(&self, digests: &[&str]) -> anyhow::Result<Vec<String>> {
        let db = Arc::clone(&self.db);
        let digests: Vec<String> = digests.iter().map(ToString::to_string).collect();
        blocking(move || {
            let txn = db.begin_write()?;
            let mut missing = Vec::new();
            {
                let plugins = txn.open_table(PLUGINS)?;
                let mut times = txn.open_table(PLUGIN_TIMES)?;
                for digest in &digests {
                    if plugins.get(digest.as_str())?.is_some() {
                        times.insert(digest.as_str(), now_unix_ms())?;
                    } else {
                        missing.push(digest.clone());
                    }
                }
            }
            txn.commit()?;
            Ok(missing)
        })
        .await
    }

    /// Drops the versions up to `drop_to` and the blobs no kept version uses, unused
    /// for `limits.blob_grace`.
    pub async fn collect(&self, drop_to: u64, limits: &HistoryLimits) -> anyhow::Result<Collected> {
        let (db, limits) = (Arc::clone(&self.db), *limits);
        blocking(move || {
            let grace = i64::try_from(limits.blob_grace.as_millis()).unwrap_or(i64::MAX);
            let cutoff = now_unix_ms().saturating_sub(grace);
            let txn = db.begin_write()?;
            let mut collected = Collected::default();
            {
                let mut meta = txn.open_table(META)?;
                let mut rulesets = txn.open_table(RULESETS)?;
                let dropped: Vec<u64> = rulesets
                    .range(..=drop_to)?
                    .map(|entry| entry.map(|(version, _)| version.value()))
                    .collect::<Result<_, _>>()?;
                for version in &dropped {
                    rulesets.remove(version)?;
                }
                collected.versions = dropped.len() as u64;
                if drop_to > 0 {
                    meta.insert(OLDEST_RULESET, drop_to + 1)?;
                }
                let mut used = std::collections::HashSet::new();
                for entry in rulesets.iter()? {
                    let (version, body) = entry?;
                    let body: RulesetBody = serde_json::from_str(body.value()).map_err(|e| {
                        anyhow::anyhow!(
                            "ruleset version {} is not valid ({e}): nothing collected",
                            version.value()
                        )
                    })?;
                    used.extend(body.rules.into_iter().map(|r| r.digest));
                }
                let mut plugins = txn.open_table(PLUGINS)?;
                let mut times = txn.open_table(PLUGIN_TIMES)?;
                let unused: Vec<String> = plugins
                    .iter()?
                    .map(|entry| entry.map(|(digest, _)| digest.value().to_string()))
                    .collect::<Result<_, _>>()?;
                for digest in unused.iter().filter(|d| !used.contains(*d)) {
                    let last = times.get(digest.as_str())?.map_or(0, |t| t.value());
                    if last <= cutoff {
                        plugins.remove(digest.as_str())?;
                        times.remove(digest.as_str())?;
                        collected.blobs += 1;
                    }
                }
            }
            txn.commit()?;
            Ok(collected)
        })
        .await
    }

    /// A plugin's bytes by digest.
    pub async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let (db, digest) = (Arc::clone(&self.db), digest.to_string());
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(PLUGINS)?;
            Ok(table.get(digest.as_str())?.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn meta(&self, key: &'static str) -> anyhow::Result<Option<u64>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            Ok(txn.open_table(META)?.get(key)?.map(|v| v.value()))
        })
        .await
    }

    /// The active ruleset version.
    pub async fn active_ruleset(&self) -> anyhow::Result<Option<u64>> {
        self.meta(ACTIVE_RULESET).await
    }

    /// The oldest ruleset version the history keeps.
    pub async fn oldest_ruleset(&self) -> anyhow::Result<u64> {
        Ok(self.meta(OLDEST_RULESET).await?.unwrap_or(1))
    }

    /// The newest ruleset version (0 when there is none).
    pub async fn latest_ruleset(&self) -> anyhow::Result<u64> {
        Ok(self.meta(LATEST_RULESET).await?.unwrap_or(0))
    }

    /// A ruleset version's JSON body.
    pub async fn ruleset(&self, version: u64) -> anyhow::Result<Option<String>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(RULESETS)?;
            Ok(table.get(version)?.map(|v| v.value().to_string()))
        })
        .await
    }

    /// Activates `body` as a new version if the active one is still `expect`.
    pub async fn activate_ruleset(
        &self,
        body: String,
        expect: Expect,
    ) -> Result<u64, ActivateError> {
        let db = Arc::clone(&self.db);
        let outcome = blocking(move || {
            let txn = db.begin_write()?;
            let outcome = {
                let mut meta = txn.open_table(META)?;
                let active = meta.get(ACTIVE_RULESET)?.map(|v| v.value());
                let matches = match expect {
                    Expect::Nothing => active.is_none(),
                    Expect::Version(v) => active == Some(v),
                };
                if matches {
                    let version = meta.get(LATEST_RULESET)?.map_or(0, |v| v.value()) + 1;
                    txn.open_table(RULESETS)?.insert(version, body.as_str())?;
                    meta.insert(LATEST_RULESET, version)?;
                    meta.insert(ACTIVE_RULESET, version)?;
                    Ok(version)
                } else {
                    Err(active)
                }
            };
            txn.commit()?;
            Ok(outcome)
        })
        .await
        .map_err(ActivateError::Store)?;
        match outcome {
            Ok(version) => {
                self.rulesets.send_replace(version);
                Ok(version)
            }
            Err(active) => Err(ActivateError::Conflict(active)),
        }
    }

    /// Stores `body` as a new version without activating it (a candidate).
    pub async fn create_ruleset(&self, body: String) -> anyhow::Result<u64> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_write()?;
            let version = {
                let mut meta = txn.open_table(META)?;
                let version = meta.get(LATEST_RULESET)?.map_or(0, |v| v.value()) + 1;
                txn.open_table(RULESETS)?.insert(version, body.as_str())?;
                meta.insert(LATEST_RULESET, version)?;
                version
            };
            txn.commit()?;
            Ok(version)
        })
        .await
    }

    /// The rollout in progress (JSON), if any.
    pub async fn rollout(&self) -> anyhow::Result<Option<String>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(SETTINGS)?;
            Ok(table.get(ROLLOUT)?.map(|v| v.value().to_string()))
        })
        .await
    }

    /// Sets (or, with `None`, ends) the rollout, and tells the worker.
    pub async fn set_rollout(&self, json: Option<String>) -> anyhow::Result<()> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(SETTINGS)?;
                match &json {
                    Some(json) => table.insert(ROLLOUT, json.as_str())?,
                    None => table.remove(ROLLOUT)?,
                };
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        self.rulesets.send_modify(|_| {});
        Ok(())
    }

    /// Changes whenever a ruleset version is activated.
    pub fn ruleset_changes(&self) -> watch::Receiver<u64> {
        self.rulesets.subscribe()
    }
}

/// The registry seam, on the embedded database.
#[async_trait::async_trait]
impl crate::rules::registry::RegistryBackend for EmbeddedDb {
    async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        EmbeddedDb::put_plugin(self, digest, bytes).await
    }
    async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        EmbeddedDb::plugin(self, digest).await
    }
    async fn pin(&self, digests: &[&str]) -> anyhow::Result<Vec<String>> {
        EmbeddedDb::pin(self, digests).await
    }
    async fn collect(&self, drop_to: u64, limits: &HistoryLimits) -> anyhow::Result<Collected> {
        EmbeddedDb::collect(self, drop_to, limits).await
    }
    async fn latest_version(&self) -> anyhow::Result<u64> {
        self.latest_ruleset().await
    }
    async fn oldest_version(&self) -> anyhow::Result<u64> {
        self.oldest_ruleset().await
    }
    async fn active_version(&self) -> anyhow::Result<Option<u64>> {
        self.active_ruleset().await
    }
    async fn ruleset(&self, version: u64) -> anyhow::Result<Option<String>> {
        EmbeddedDb::ruleset(self, version).await
    }
    async fn create(&self, json: String) -> anyhow::Result<u64> {
        self.create_ruleset(json).await
    }
    async fn activate(&self, json: String, expect: Expect) -> Result<u64, ActivateError> {
        self.activate_ruleset(json, expect).await
    }
    async fn rollout(&self) -> anyhow::Result<Option<String>> {
        EmbeddedDb::rollout(self).await
    }
    async fn set_rollout(&self, json: Option<String>) -> anyhow::Result<()> {
        EmbeddedDb::set_rollout(self, json).await
    }
    fn changes(&self) -> watch::Receiver<u64> {
        self.ruleset_changes()
    }
    async fn put_heartbeat(
        &self,
        instance: &str,
        json: String,
        ttl: std::time::Duration,
    ) -> anyhow::Result<()> {
        EmbeddedDb::put_heartbeat(self, instance, json, ttl);
        Ok(())
    }
    async fn heartbeats(&self) -> anyhow::Result<Vec<String>> {
        Ok(EmbeddedDb::heartbeats(self))
    }
    async fn append_audit(
        &self,
        entry: crate::domain::audit::AuditEntry,
    ) -> anyhow::Result<crate::domain::audit::AuditEvent> {
        EmbeddedDb::append_audit(self, entry).await
    }
    async fn audit(
        &self,
        since: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<crate::domain::audit::AuditEvent>> {
        EmbeddedDb::audit(self, since, limit).await
    }
}
