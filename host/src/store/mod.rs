//! The result store: where the worker writes each order's result and the CacheService
//! reads it. Redis in production, the embedded database otherwise; both keep the
//! first final result of an order id (`done` or `rejected`), so that resubmitting an
//! id or re-processing a message never changes a result a client has seen. A `failed`
//! result may be replaced by a later attempt.

pub mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::embedded::EmbeddedDb;
use crate::result::OrderResult;

/// Longest wait a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

/// Clients waiting for the results of order ids, woken by id when a result is written
/// (instead of every waiter re-reading the store on every write).
#[derive(Default)]
pub struct Waiters {
    by_id:
        std::sync::Mutex<std::collections::HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>>,
}

impl Waiters {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>,
    > {
        self.by_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers interest in `id`; the receiver fires when [`Waiters::wake`] names it.
    pub fn register(&self, id: &str) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.lock().entry(id.to_string()).or_default().push(tx);
        rx
    }

    /// Drops the registrations of `id` whose receivers are gone.
    pub fn forget(&self, id: &str) {
        let mut by_id = self.lock();
        if let Some(list) = by_id.get_mut(id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                by_id.remove(id);
            }
        }
    }

    /// Wakes everyone waiting for one of `ids`.
    pub fn wake<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut by_id = self.lock();
        if by_id.is_empty() {
            return;
        }
        for id in ids {
            for tx in by_id.remove(id).unwrap_or_default() {
                let _ = tx.send(());
            }
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The result was written.
    Written,
    /// A final result for this id existed; it was kept.
    KeptExisting,
}

/// A result store.
#[derive(Clone)]
pub enum Store {
    /// Redis (`REDIS_ADDR`).
    Redis(Box<redis::RedisStore>),
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
