//! The result store: where the worker writes each order's result and the CacheService
//! reads it. A seam ([`ResultStore`]) that each backend implements in its own folder
//! (Redis in production, the embedded database otherwise); [`Store`] is what the rest
//! of the pipeline holds. Every implementation keeps the first final result of an order
//! id (`done` or `rejected`), so that resubmitting an id or re-processing a message never
//! changes a result a client has seen; a `failed` result may be replaced by a later
//! attempt. `tests/e2e/contract` runs the same cases over every implementation.

mod write;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::domain::diff::DiffReport;
use crate::domain::{OrderResult, PutOutcome};

pub use write::{Persisted, persist, write_batch};

/// Longest wait a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// What a result store does; implemented in `backends/<name>/`.
#[async_trait::async_trait]
pub trait ResultStore: Send + Sync + 'static {
    /// Writes `result` unless a final result for its id exists.
    async fn put(&self, result: &OrderResult) -> anyhow::Result<PutOutcome>;

    /// Writes the `failed` result of an order whose result the store refused for good
    /// ([`ResultStore::refusal`]) unless a final result exists, over a value of another
    /// kind under the result's key if the backend has such values.
    async fn put_recovery(&self, result: &OrderResult) -> anyhow::Result<PutOutcome>;

    /// Writes `result` whatever result exists: a replay's explicit `--overwrite`.
    async fn replace(&self, result: &OrderResult) -> anyhow::Result<()>;

    /// The result of `id`, if there is one.
    async fn get(&self, id: &str) -> anyhow::Result<Option<OrderResult>>;

    /// The result of `id`, waiting until `deadline` for it to appear.
    async fn wait_until(&self, id: &str, deadline: Instant) -> anyhow::Result<Option<OrderResult>>;

    /// The results of `ids`, in order, waiting until `deadline` (if any) for missing
    /// ones. By default one read (or wait) per id, concurrently; a backend that reads
    /// many at once does better.
    async fn get_many(
        &self,
        ids: &[String],
        deadline: Option<Instant>,
    ) -> anyhow::Result<Vec<Option<OrderResult>>> {
        let reads = ids.iter().map(|id| async move {
            match deadline {
                None => self.get(id).await,
                Some(deadline) => self.wait_until(id, deadline).await,
            }
        });
        futures::future::join_all(reads).await.into_iter().collect()
    }

    /// Tells waiting readers of other processes that these ids have results now (a
    /// backend whose readers wake on commit needs nothing).
    async fn announce(&self, _ids: &[&str]) -> anyhow::Result<()> {
        Ok(())
    }

    /// Stores a batch of the candidate's results of shadow run `run` (never where
    /// clients read) and adds `tally` to the run's.
    async fn put_shadow(
        &self,
        run: &str,
        candidates: &[OrderResult],
        tally: &DiffReport,
    ) -> anyhow::Result<()>;

    /// A worker starts taking part in shadow run `run`: a backend may drop what earlier
    /// runs left (the embedded database keeps one run; Redis lets them expire).
    async fn start_shadow(&self, _run: &str) -> anyhow::Result<()> {
        Ok(())
    }

    /// The tally of shadow run `run`, every worker's.
    async fn shadow_report(&self, run: &str) -> anyhow::Result<DiffReport>;

    /// The candidate's result of order `id` in shadow run `run`.
    async fn shadow_result(&self, run: &str, id: &str) -> anyhow::Result<Option<OrderResult>>;

    /// The code of an error of this store that no retry can get past (Redis's
    /// `CROSSSLOT`, `WRONGTYPE`, `NOPERM`, a script error), or `None` for one that may
    /// pass (a connection, a failover, a full disk): the worker retries the latter with
    /// backoff, and ends the order `failed` and dead-letters it on the former, so that
    /// its partition moves on.
    fn refusal(&self, _error: &anyhow::Error) -> Option<String> {
        None
    }
}

/// A result store, as the roles hold it. Cheap to clone.
#[derive(Clone)]
pub struct Store(Arc<dyn ResultStore>);

impl Store {
    /// The store `backend` implements.
    pub fn new(backend: impl ResultStore) -> Self {
        Self(Arc::new(backend))
    }

    /// Like [`Store::new`], for a backend that is shared already.
    pub fn shared(backend: Arc<dyn ResultStore>) -> Self {
        Self(backend)
    }

    /// Writes `result` unless a final result for its id exists.
    pub async fn put(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        self.0.put(result).await
    }

    /// See [`ResultStore::put_recovery`].
    pub async fn put_recovery(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        self.0.put_recovery(result).await
    }

    /// See [`ResultStore::put_shadow`].
    pub async fn put_shadow(
        &self,
        run: &str,
        candidates: &[OrderResult],
        tally: &DiffReport,
    ) -> anyhow::Result<()> {
        self.0.put_shadow(run, candidates, tally).await
    }

    /// See [`ResultStore::start_shadow`].
    pub async fn start_shadow(&self, run: &str) -> anyhow::Result<()> {
        self.0.start_shadow(run).await
    }

    /// The tally of shadow run `run`, every worker's.
    pub async fn shadow_report(&self, run: &str) -> anyhow::Result<DiffReport> {
        self.0.shadow_report(run).await
    }

    /// The candidate's result of order `id` in shadow run `run`.
    pub async fn shadow_result(&self, run: &str, id: &str) -> anyhow::Result<Option<OrderResult>> {
        self.0.shadow_result(run, id).await
    }

    /// Writes `result` whatever result exists: a replay's explicit `--overwrite` (the
    /// result records what it replaced).
    pub async fn replace(&self, result: &OrderResult) -> anyhow::Result<()> {
        self.0.replace(result).await
    }

    /// The result of `id`, if there is one.
    pub async fn get(&self, id: &str) -> anyhow::Result<Option<OrderResult>> {
        self.0.get(id).await
    }

    /// Like [`Store::get`], but waits up to `timeout` (at most [`MAX_WAIT`]) for the
    /// result to appear.
    pub async fn wait(&self, id: &str, timeout: Duration) -> anyhow::Result<Option<OrderResult>> {
        self.0
            .wait_until(id, Instant::now() + timeout.min(MAX_WAIT))
            .await
    }

    /// The results of `ids`, in order; with `wait`, waits up to that long (at most
    /// [`MAX_WAIT`]) for missing ones.
    pub async fn get_many(
        &self,
        ids: &[String],
        wait: Option<Duration>,
    ) -> anyhow::Result<Vec<Option<OrderResult>>> {
        let deadline = wait.map(|wait| Instant::now() + wait.min(MAX_WAIT));
        self.0.get_many(ids, deadline).await
    }

    /// Tells waiting readers that these ids have results now.
    pub async fn announce(&self, ids: &[&str]) -> anyhow::Result<()> {
        self.0.announce(ids).await
    }

    /// See [`ResultStore::refusal`].
    pub fn refusal(&self, error: &anyhow::Error) -> Option<String> {
        self.0.refusal(error)
    }
}
