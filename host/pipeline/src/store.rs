//! The result store: where the worker writes each order's result and the CacheService
//! reads it. Redis in production, the embedded database otherwise; both keep the
//! first final result of an order id (`done` or `rejected`), so that resubmitting an
//! id or re-processing a message never changes a result a client has seen. A `failed`
//! result may be replaced by a later attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backends::embedded::EmbeddedDb;
use crate::backends::redis::RedisStore;
use crate::domain::diff::DiffReport;
use crate::domain::{OrderResult, PutOutcome};

/// Longest wait a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// The code of a store error that no retry can get past (Redis's `CROSSSLOT`,
/// `WRONGTYPE`, `NOPERM`, a script error), or `None` for one that may pass (a connection,
/// a failover, a full disk): the worker retries the latter with backoff, and ends the
/// order `failed` and dead-letters it on the former, so that its partition moves on.
pub fn refusal(e: &anyhow::Error) -> Option<String> {
    crate::backends::redis::permanent_error(e)
}

/// A result store.
#[derive(Clone)]
pub enum Store {
    /// Redis (`REDIS_ADDR`).
    Redis(Box<RedisStore>),
    /// The embedded database in the data directory.
    Embedded(Arc<EmbeddedDb>),
}

impl Store {
    /// Writes `result` unless a final result for its id exists.
    pub async fn put(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        match self {
            Self::Redis(store) => store.put(result).await,
            Self::Embedded(db) => db.put_result(result).await,
        }
    }

    /// Writes the `failed` result of an order whose result the store refused for good
    /// ([`refusal`]) unless a final result exists; Redis writes it over a value of another
    /// type under the result's key.
    pub async fn put_recovery(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        match self {
            Self::Redis(store) => store.put_recovery(result).await,
            Self::Embedded(db) => db.put_result(result).await,
        }
    }

    /// Stores a batch of the candidate's results of shadow run `run` (never where
    /// clients read) and adds `tally` to the run's.
    pub async fn put_shadow(
        &self,
        run: &str,
        candidates: &[OrderResult],
        tally: &DiffReport,
    ) -> anyhow::Result<()> {
        match self {
            Self::Redis(store) => store.put_shadow(run, candidates, tally).await,
            Self::Embedded(db) => db.put_shadow(run, candidates, tally).await,
        }
    }

    /// The tally of shadow run `run`, every worker's.
    pub async fn shadow_report(&self, run: &str) -> anyhow::Result<DiffReport> {
        match self {
            Self::Redis(store) => store.shadow_report(run).await,
            Self::Embedded(db) => db.shadow_report(run).await,
        }
    }

    /// The candidate's result of order `id` in shadow run `run`.
    pub async fn shadow_result(&self, run: &str, id: &str) -> anyhow::Result<Option<OrderResult>> {
        match self {
            Self::Redis(store) => store.shadow_result(run, id).await,
            Self::Embedded(db) => db.shadow_result(run, id).await,
        }
    }

    /// Writes `result` whatever result exists: a replay's explicit `--overwrite` (the
    /// result records what it replaced).
    pub async fn replace(&self, result: &OrderResult) -> anyhow::Result<()> {
        match self {
            Self::Redis(store) => store.replace(result).await,
            Self::Embedded(db) => db.replace_result(result).await,
        }
    }

    /// The result of `id`, if there is one.
    pub async fn get(&self, id: &str) -> anyhow::Result<Option<OrderResult>> {
        match self {
            Self::Redis(store) => store.get(id).await,
            Self::Embedded(db) => db.get_result(id).await,
        }
    }

    /// Like [`Store::get`], but waits up to `timeout` for the result to appear.
    pub async fn wait(&self, id: &str, timeout: Duration) -> anyhow::Result<Option<OrderResult>> {
        let deadline = Instant::now() + timeout.min(MAX_WAIT);
        match self {
            Self::Embedded(db) => db.wait_result(id, deadline).await,
            Self::Redis(store) => {
                store
                    .wait(id, tokio::time::Instant::from_std(deadline))
                    .await
            }
        }
    }

    /// The results of `ids`, in order; with `wait`, waits up to that long for missing
    /// ones (the embedded store reads them in one transaction per wake-up; Redis
    /// pipelines the reads on its multiplexed connection).
    pub async fn get_many(
        &self,
        ids: &[String],
        wait: Option<Duration>,
    ) -> anyhow::Result<Vec<Option<OrderResult>>> {
        match (self, wait) {
            (Self::Embedded(db), None) => db.get_results(ids.to_vec()).await,
            (Self::Embedded(db), Some(wait)) => {
                db.wait_results(ids, Instant::now() + wait.min(MAX_WAIT))
                    .await
            }
            (Self::Redis(_), _) => {
                let reads = ids.iter().map(|id| async move {
                    match wait {
                        None => self.get(id).await,
                        Some(wait) => self.wait(id, wait).await,
                    }
                });
                futures::future::join_all(reads).await.into_iter().collect()
            }
        }
    }

    /// Tells waiting readers that these ids have results now (Redis: one message for
    /// the batch; the embedded store wakes them on commit already).
    pub async fn announce(&self, ids: &[&str]) -> anyhow::Result<()> {
        match self {
            Self::Redis(store) => store.announce(ids).await,
            Self::Embedded(_) => Ok(()),
        }
    }
}
