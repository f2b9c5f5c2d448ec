//! The embedded ruleset registry: plugin blobs by digest, ruleset versions and the active
//! one, activated by compare-and-set in one transaction.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};
use tokio::sync::watch;

use super::{ACTIVE_RULESET, EmbeddedDb, LATEST_RULESET, META, PLUGINS, RULESETS, blocking};
use crate::domain::ruleset::{ActivateError, Expect};

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

    /// Stores a plugin's bytes under its digest.
    pub async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let (db, digest, bytes) = (Arc::clone(&self.db), digest.to_string(), bytes.to_vec());
        blocking(move || {
            let txn = db.begin_write()?;
            txn.open_table(PLUGINS)?
                .insert(digest.as_str(), bytes.as_slice())?;
            txn.commit()?;
            Ok(())
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

    /// Changes whenever a ruleset version is activated.
    pub fn ruleset_changes(&self) -> watch::Receiver<u64> {
        self.rulesets.subscribe()
    }
}
