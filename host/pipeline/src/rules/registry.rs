//! The plugin registry shared by every worker: plugin components stored by sha256 digest,
//! and the active ruleset (ordered plugin digests with their config) with a
//! monotonically increasing version and its history (the newest `RULESET_HISTORY`
//! versions; [`Registry::collect`] drops older ones, and the blobs no kept version
//! uses). A seam ([`RegistryBackend`]) each backend implements in its own folder: Redis
//! in Kafka mode, the embedded database otherwise. Every activation is one atomic
//! compare-and-set that also notifies the workers (Redis pub/sub, or an in-process
//! channel). [`Registry`] holds a backend and does what is the same for every one (the
//! JSON of versions and rollouts, which versions a collection keeps).

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::watch;

use crate::domain::audit::{AuditEntry, AuditEvent};
use crate::domain::heartbeat::WorkerStatus;
use crate::domain::ruleset::{
    ActivateError, Collected, Expect, HistoryLimits, Rollout, RulesetBody, RulesetRecord,
    last_dropped,
};

/// What a registry backend stores, as bytes and JSON text; implemented in
/// `backends/<name>/`. [`Registry`] is what the rest of the pipeline holds.
#[async_trait::async_trait]
pub trait RegistryBackend: Send + Sync + 'static {
    /// Stores a plugin's bytes under its digest (idempotent).
    async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()>;
    /// A plugin's bytes by digest.
    async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>>;
    /// Marks the blobs of `digests` as in use now; answers the digests whose blob is gone.
    async fn pin(&self, digests: &[&str]) -> anyhow::Result<Vec<String>>;
    /// Drops the versions up to `drop_to` and the blobs no kept version uses that
    /// nobody uploaded or activated within `limits.blob_grace`.
    async fn collect(&self, drop_to: u64, limits: &HistoryLimits) -> anyhow::Result<Collected>;
    /// The newest version number (0: none yet).
    async fn latest_version(&self) -> anyhow::Result<u64>;
    /// The oldest version the history keeps.
    async fn oldest_version(&self) -> anyhow::Result<u64>;
    /// The active version number.
    async fn active_version(&self) -> anyhow::Result<Option<u64>>;
    /// A version's body (JSON).
    async fn ruleset(&self, version: u64) -> anyhow::Result<Option<String>>;
    /// Stores `json` as a new version without activating it.
    async fn create(&self, json: String) -> anyhow::Result<u64>;
    /// Stores `json` as a new, active version if the active one is still `expect`, and
    /// notifies the workers; one atomic compare-and-set.
    async fn activate(&self, json: String, expect: Expect) -> Result<u64, ActivateError>;
    /// The rollout in progress (JSON).
    async fn rollout(&self) -> anyhow::Result<Option<String>>;
    /// Sets (or, with `None`, ends) the rollout and notifies the workers.
    async fn set_rollout(&self, json: Option<String>) -> anyhow::Result<()>;
    /// A receiver that changes whenever another version may have become active.
    fn changes(&self) -> watch::Receiver<u64>;
    /// Publishes a worker's heartbeat (JSON), which counts for `ttl`.
    async fn put_heartbeat(
        &self,
        instance: &str,
        json: String,
        ttl: std::time::Duration,
    ) -> anyhow::Result<()>;
    /// The heartbeats of the live workers (JSON).
    async fn heartbeats(&self) -> anyhow::Result<Vec<String>>;
    /// Appends `entry` to the audit trail (hash-chained; never trimmed).
    async fn append_audit(&self, entry: AuditEntry) -> anyhow::Result<AuditEvent>;
    /// The audit events after number `since`, at most `limit`.
    async fn audit(&self, since: u64, limit: usize) -> anyhow::Result<Vec<AuditEvent>>;
    /// Where workers of other processes report to a rules supervisor, if this backend
    /// is shared between processes (Redis); `None` when every role runs in one process.
    fn reports(&self) -> Option<&dyn ReportQueue> {
        None
    }
}

/// A queue of worker reports for the rules supervisor of another process.
#[async_trait::async_trait]
pub trait ReportQueue: Send + Sync {
    /// Appends a report (JSON).
    async fn push(&self, json: &str) -> anyhow::Result<()>;
    /// Creates the supervisors' consumer group if it is missing.
    async fn create_group(&self) -> anyhow::Result<()>;
    /// The reports (id, JSON) no supervisor has taken yet, for `consumer`.
    async fn read(&self, consumer: &str) -> anyhow::Result<Vec<(String, String)>>;
    /// Marks a report handled.
    async fn ack(&self, id: &str) -> anyhow::Result<()>;
}

/// The registry, as the roles hold it. Cheap to clone.
#[derive(Clone)]
pub struct Registry(Arc<dyn RegistryBackend>);

impl Registry {
    /// The registry `backend` implements.
    pub fn new(backend: impl RegistryBackend) -> Self {
        Self(Arc::new(backend))
    }

    /// Like [`Registry::new`], for a backend that is shared already.
    pub fn shared(backend: Arc<dyn RegistryBackend>) -> Self {
        Self(backend)
    }

    /// Stores a plugin's bytes under its digest (idempotent).
    pub async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        self.0.put_plugin(digest, bytes).await
    }

    /// Marks the blobs of `digests` as in use now, so that no collection takes them
    /// within the grace period; answers the digests whose blob is gone.
    pub async fn pin(&self, digests: &[&str]) -> anyhow::Result<Vec<String>> {
        self.0.pin(digests).await
    }

    /// Drops the versions older than the newest `limits.versions`, and the blobs that
    /// no kept version uses and that nobody uploaded or activated within
    /// `limits.blob_grace`.
    pub async fn collect(&self, limits: &HistoryLimits) -> anyhow::Result<Collected> {
        let latest = self.0.latest_version().await?;
        // The active version and the versions a rollout uses stay, however old.
        let active = self.active_version().await?.unwrap_or(latest);
        let rollout = self.rollout().await?.unwrap_or_default();
        let keep_from = rollout.versions().fold(active, u64::min);
        let drop_to = last_dropped(latest, limits, keep_from);
        self.0.collect(drop_to, limits).await
    }

    /// Stores `body` as a new version without activating it: a candidate for a shadow
    /// run or a canary.
    pub async fn create(&self, body: &RulesetBody) -> anyhow::Result<u64> {
        let json = serde_json::to_string(body).context("serialising a ruleset")?;
        self.0.create(json).await
    }

    /// The rollout in progress (none: the active version decides every order alone).
    pub async fn rollout(&self) -> anyhow::Result<Option<Rollout>> {
        let json = self.0.rollout().await?;
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
        self.0.set_rollout(json).await
    }

    /// The oldest version the history keeps (1 until the history limit dropped one).
    pub async fn oldest_version(&self) -> anyhow::Result<u64> {
        self.0.oldest_version().await
    }

    /// Publishes a worker's heartbeat, which counts for `ttl`.
    pub async fn put_heartbeat(
        &self,
        status: &WorkerStatus,
        ttl: std::time::Duration,
    ) -> anyhow::Result<()> {
        let json = serde_json::to_string(status).context("serialising a heartbeat")?;
        self.0.put_heartbeat(&status.instance, json, ttl).await
    }

    /// The heartbeats of the live workers (sent within their time to live), by instance.
    pub async fn heartbeats(&self) -> anyhow::Result<Vec<WorkerStatus>> {
        let raw = self.0.heartbeats().await?;
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
    pub async fn append_audit(&self, entry: AuditEntry) -> anyhow::Result<AuditEvent> {
        self.0.append_audit(entry).await
    }

    /// Appends a worker's report for the rules supervisor of another process (only the
    /// Redis registry has one: the embedded database runs every role in one process).
    pub async fn push_report(&self, json: &str) -> anyhow::Result<()> {
        match self.0.reports() {
            Some(queue) => queue.push(json).await,
            None => {
                anyhow::bail!("this registry takes no reports: its supervisor is in this process")
            }
        }
    }

    /// Creates the supervisors' group of the reports stream if it is missing (Redis).
    pub async fn reports_group(&self) -> anyhow::Result<()> {
        match self.0.reports() {
            Some(queue) => queue.create_group().await,
            None => Ok(()),
        }
    }

    /// The reports (id, JSON) no supervisor has taken yet, for `consumer` (Redis; none
    /// in the embedded database).
    pub async fn read_reports(&self, consumer: &str) -> anyhow::Result<Vec<(String, String)>> {
        match self.0.reports() {
            Some(queue) => queue.read(consumer).await,
            None => Ok(Vec::new()),
        }
    }

    /// Marks a report handled.
    pub async fn ack_report(&self, id: &str) -> anyhow::Result<()> {
        match self.0.reports() {
            Some(queue) => queue.ack(id).await,
            None => Ok(()),
        }
    }

    /// Whether other processes' workers may report through this registry (Redis).
    pub fn takes_reports(&self) -> bool {
        self.0.reports().is_some()
    }

    /// The audit events after number `since` (0: from the first), at most `limit`.
    pub async fn audit(&self, since: u64, limit: usize) -> anyhow::Result<Vec<AuditEvent>> {
        self.0.audit(since, limit).await
    }

    /// A plugin's bytes by digest.
    pub async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        self.0.plugin(digest).await
    }

    /// The active version number.
    pub async fn active_version(&self) -> anyhow::Result<Option<u64>> {
        self.0.active_version().await
    }

    /// A version by number.
    pub async fn get(&self, version: u64) -> anyhow::Result<Option<RulesetRecord>> {
        let body = self.0.ruleset(version).await?;
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
        let latest = self.0.latest_version().await?;
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
        self.0.activate(json, expect).await
    }

    /// A receiver that changes whenever another version may have become active. Redis:
    /// a pub/sub subscription (reconnecting); embedded: the database's own channel.
    pub async fn changes(&self) -> watch::Receiver<u64> {
        self.0.changes()
    }
}
