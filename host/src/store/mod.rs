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

/// Longest pause between two reads of a result a client waits for in Redis: a result is
/// seen at most this long after it is written.
const REDIS_POLL_MAX: Duration = Duration::from_millis(4);

/// Longest wait a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(30);

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
    Redis(redis::RedisStore),
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
                // Poll with a growing pause: quick for results that are nearly there,
                // gentle on Redis for those that are not.
                let mut pause = Duration::from_millis(1);
                loop {
                    if let Some(result) = store.get(id).await? {
                        return Ok(Some(result));
                    }
                    let now = Instant::now();
                    if now >= deadline {
                        return Ok(None);
                    }
                    tokio::time::sleep(pause.min(deadline - now)).await;
                    pause = (pause * 2).min(REDIS_POLL_MAX);
                }
            }
        }
    }
}
