//! The plugin registry shared by every worker: plugin components stored by sha256 digest,
//! and the active ruleset (ordered plugin digests with their config) with a
//! monotonically increasing version and its history (the newest `RULESET_HISTORY`
//! versions; [`Registry::collect`] drops older ones, and the blobs no kept version
//! uses). In Redis in Kafka mode
//! ([`backends::redis`](crate::backends::redis)), in the embedded database otherwise
//! ([`backends::embedded`](crate::backends::embedded)). Every activation is one atomic
//! compare-and-set that also notifies the workers (Redis pub/sub, or an in-process
//! channel).

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::backends::embedded::EmbeddedDb;
use crate::backends::redis::RedisRegistry;
use crate::domain::heartbeat::WorkerStatus;
use crate::domain::ruleset::{
    ActivateError, Collected, Expect, HistoryLimits, Rollout, RulesetBody, RulesetRecord,
    last_dropped,
};

/// The registry.
#[derive(Clone)]
pub enum Registry {
    /// In Redis.
    Redis(Box<RedisRegistry>),
    /// In the embedded database.
    Embedded(Arc<EmbeddedDb>),
}

impl Registry {
    /// Stores a plugin's bytes under its digest (idempotent).
    pub async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        match self {
            Self::Redis(r) => r.put_plugin(digest, bytes).await,
            Self::Embedded(db) => db.put_plugin(digest, bytes).await,
        }
    }

    /// Marks the blobs of `digests` as in use now, so that no collection takes them
    /// within the grace period; answers the digests whose blob is gone.
    pub async fn pin(&self, digests: &[&str]) -> anyhow::Result<Vec<String>> {
        match self {
            Self::Redis(r) => r.pin(digests).await,
            Self::Embedded(db) => db.pin(digests).await,
        }
    }

    /// Drops the versions older than the newest `limits.versions`, and the blobs that
    /// no kept version uses and that nobody uploaded or activated within
    /// `limits.blob_grace`.
    pub async fn collect(&self, limits: &HistoryLimits) -> anyhow::Result<Collected> {
        let latest = match self {
            Self::Redis(r) => r.latest_version().await?,
            Self::Embedded(db) => db.latest_ruleset().await?,
        };
        // The active version and the versions a rollout uses stay, however old.
        let active = self.active_version().await?.unwrap_or(latest);
        let rollout = self.rollout().await?.unwrap_or_default();
        let keep_from = rollout.versions().fold(active, u64::min);
        let drop_to = last_dropped(latest, limits, keep_from);
        match self {
            Self::Redis(r) => r.collect(drop_to, limits).await,
            Self::Embedded(db) => db.collect(drop_to, limits).await,
        }
    }

    /// Stores `body` as a new version without activating it: a candidate for a shadow
    /// run or a canary.
    pub async fn create(&self, body: &RulesetBody) -> anyhow::Result<u64> {
        let json = serde_json::to_string(body).context("serialising a ruleset")?;
        match self {
            Self::Redis(r) => r.create(json).await,
            Self::Embedded(db) => db.create_ruleset(json).await,
        }
    }

    /// The rollout in progress (none: the active version decides every order alone).
    pub async fn rollout(&self) -> anyhow::Result<Option<Rollout>> {
        let json = match self {
            Self::Redis(r) => r.rollout().await?,
            Self::Embedded(db) => db.rollout().await?,
        };
        json.map(|json| serde_json::from_str(&json).context("the stored rollout is not valid"))
            .transpose()
    }

    /// Sets the rollout (an empty one ends it) and tells the workers.
    pub async fn set_rollout(&self, rollout: &Rollout) -> anyhow::Result<()> {
        let json = if *rollout == Rollout::default() {
            None
        } else {
            Some(serde_json::to_string(rollout).context("serialising a rollout")?)
        };
        match self {
            Self::Redis(r) => r.set_rollout(json).await,
            Self::Embedded(db) => db.set_rollout(json).await,
        }
    }

    /// The oldest version the history keeps (1 until the history limit dropped one).
    pub async fn oldest_version(&self) -> anyhow::Result<u64> {
        match self {
            Self::Redis(r) => r.oldest_version().await,
            Self::Embedded(db) => db.oldest_ruleset().await,
        }
    }

    /// Publishes a worker's heartbeat, which counts for `ttl`.
    pub async fn put_heartbeat(
        &self,
        status: &WorkerStatus,
        ttl: std::time::Duration,
    ) -> anyhow::Result<()> {
        let json = serde_json::to_string(status).context("serialising a heartbeat")?;
        match self {
            Self::Redis(r) => r.put_heartbeat(&status.instance, &json, ttl).await,
            Self::Embedded(db) => {
                db.put_heartbeat(&status.instance, json, ttl);
                Ok(())
            }
        }
    }

    /// The heartbeats of the live workers (sent within their time to live), by instance.
    pub async fn heartbeats(&self) -> anyhow::Result<Vec<WorkerStatus>> {
        let raw = match self {
            Self::Redis(r) => r.heartbeats().await?,
            Self::Embedded(db) => db.heartbeats(),
        };
        let mut workers: Vec<WorkerStatus> = raw
            .iter()
            .filter_map(|json| match serde_json::from_str(json) {
                Ok(status) => Some(status),
                Err(e) => {
                    tracing::warn!(error = %e, "skipping a heartbeat that does not parse");
                    None
                }
            })
            .collect();
        workers.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(workers)
    }

    /// Appends `entry` to the audit trail (hash-chained; never trimmed); returns the event.
    pub async fn append_audit(
        &self,
        entry: crate::domain::audit::AuditEntry,
    ) -> anyhow::Result<crate::domain::audit::AuditEvent> {
        match self {
            Self::Redis(r) => r.append_audit(entry).await,
            Self::Embedded(db) => db.append_audit(entry).await,
        }
    }

    /// Appends a worker's report for the rules supervisor of another process (only the
    /// Redis registry has one: the embedded database runs every role in one process).
    pub async fn push_report(&self, json: &str) -> anyhow::Result<()> {
        match self {
            Self::Redis(r) => r.push_report(json).await,
            Self::Embedded(_) => anyhow::bail!(
                "the embedded registry takes no reports: its supervisor is in this process"
            ),
        }
    }

    /// Creates the supervisors' group of the reports stream if it is missing (Redis).
    pub async fn reports_group(&self) -> anyhow::Result<()> {
        match self {
            Self::Redis(r) => r.reports_group().await,
            Self::Embedded(_) => Ok(()),
        }
    }

    /// The reports (id, JSON) no supervisor has taken yet, for `consumer` (Redis; none
    /// in the embedded database).
    pub async fn read_reports(&self, consumer: &str) -> anyhow::Result<Vec<(String, String)>> {
        match self {
            Self::Redis(r) => r.read_reports(consumer).await,
            Self::Embedded(_) => Ok(Vec::new()),
        }
    }

    /// Marks a report handled.
    pub async fn ack_report(&self, id: &str) -> anyhow::Result<()> {
        match self {
            Self::Redis(r) => r.ack_report(id).await,
            Self::Embedded(_) => Ok(()),
        }
    }

    /// Whether other processes' workers may report through this registry (Redis).
    pub fn takes_reports(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    /// The audit events after number `since` (0: from the first), at most `limit`.
    pub async fn audit(
        &self,
        since: u64,
        limit: usize,
    ) -> anyhow::Result<Vec<crate::domain::audit::AuditEvent>> {
        match self {
            Self::Redis(r) => r.audit(since, limit).await,
            Self::Embedded(db) => db.audit(since, limit).await,
        }
    }

    /// A plugin's bytes by digest.
    pub async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        match self {
            Self::Redis(r) => r.plugin(digest).await,
            Self::Embedded(db) => db.plugin(digest).await,
        }
    }

    /// The active version number.
    pub async fn active_version(&self) -> anyhow::Result<Option<u64>> {
        match self {
            Self::Redis(r) => r.active_version().await,
            Self::Embedded(db) => db.active_ruleset().await,
        }
    }

    /// A version by number.
    pub async fn get(&self, version: u64) -> anyhow::Result<Option<RulesetRecord>> {
        let body = match self {
            Self::Redis(r) => r.ruleset(version).await?,
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

    /// Every version kept, newest first.
    pub async fn history(&self) -> anyhow::Result<Vec<RulesetRecord>> {
        let latest = match self {
            Self::Redis(r) => r.latest_version().await?,
            Self::Embedded(db) => db.latest_ruleset().await?,
        };
        let oldest = self.oldest_version().await?;
        let mut out = Vec::new();
        for version in (oldest..=latest).rev() {
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
            Self::Redis(r) => r.activate(json, expect).await,
            Self::Embedded(db) => db.activate_ruleset(json, expect).await,
        }
    }

    /// A receiver that changes whenever another version may have become active. Redis:
    /// a pub/sub subscription (reconnecting); embedded: the database's own channel.
    pub async fn changes(&self) -> watch::Receiver<u64> {
        match self {
            Self::Embedded(db) => db.ruleset_changes(),
            Self::Redis(r) => r.changes(),
        }
    }
}
