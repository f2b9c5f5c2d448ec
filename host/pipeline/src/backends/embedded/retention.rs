//! What the embedded database keeps: log entries until the worker has committed them,
//! and results for the result TTL (`RESULT_TTL`). [`EmbeddedDb::prune`] removes the rest
//! in bounded transactions; `app` runs it every minute.

use std::sync::Arc;
use std::time::Duration;

use redb::{Database, Durability, ReadableTable};

use super::results::made_at;
use super::{CONSUMED, EmbeddedDb, LOG, META, RESULT_TIMES, RESULTS, blocking};
use crate::domain::{OrderResult, now_unix_ms};

/// How often [`run`] prunes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Most log entries, and most results, one [`EmbeddedDb::prune`] call removes.
pub const PRUNE_BATCH: usize = 10_000;

/// META key: set once the results written before the time index existed are indexed.
const TIMES_INDEXED: &str = "result_times_indexed";

/// What one [`EmbeddedDb::prune`] call removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Log entries the worker had committed.
    pub log_entries: usize,
    /// Results made before the cutoff.
    pub results: usize,
}

impl Pruned {
    /// Whether a batch was full, so that more may be left to remove.
    pub fn more_left(&self) -> bool {
        self.log_entries == PRUNE_BATCH || self.results == PRUNE_BATCH
    }
}

impl EmbeddedDb {
    /// Removes up to [`PRUNE_BATCH`] committed log entries and up to [`PRUNE_BATCH`]
    /// results made before `results_made_before` (Unix ms; `None` keeps every result),
    /// in one transaction.
    pub async fn prune(&self, results_made_before: Option<i64>) -> anyhow::Result<Pruned> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let mut txn = db.begin_write()?;
            // Like the worker's commits: made durable by the next append's commit; a
            // crash before it only means pruning these again.
            txn.set_durability(Durability::None)?;
            let mut pruned = Pruned::default();
            {
                let consumed = txn
                    .open_table(META)?
                    .get(CONSUMED)?
                    .map_or(0, |v| v.value());
                let mut log = txn.open_table(LOG)?;
                for entry in log
                    .extract_from_if(..consumed, |_, _| true)?
                    .take(PRUNE_BATCH)
                {
                    entry?;
                    pruned.log_entries += 1;
                }
            }
            if let Some(cutoff) = results_made_before {
                let cutoff = u64::try_from(cutoff).unwrap_or(0);
                let mut times = txn.open_table(RESULT_TIMES)?;
                let mut results = txn.open_table(RESULTS)?;
                let expired: Vec<(u64, String)> = times
                    .range::<(u64, &str)>(..(cutoff, ""))?
                    .take(PRUNE_BATCH)
                    .map(|entry| {
                        entry.map(|(key, _)| {
                            let (at, id) = key.value();
                            (at, id.to_string())
                        })
                    })
                    .collect::<Result<_, _>>()?;
                for (at, id) in &expired {
                    times.remove((*at, id.as_str()))?;
                    // A failed result replaced by a later one is indexed again under the
                    // later time: only the entry of the stored result removes it.
                    let stored = match results.get(id.as_str())? {
                        Some(json) => Some(serde_json::from_str::<OrderResult>(json.value())?),
                        None => None,
                    };
                    if stored.is_some_and(|r| made_at(&r) == *at) {
                        results.remove(id.as_str())?;
                        pruned.results += 1;
                    }
                }
            }
            txn.commit()?;
            Ok(pruned)
        })
        .await
    }
}

/// Prunes `db` every [`PRUNE_EVERY`] until `shutdown` (results older than `ttl`; `None`
/// keeps them), counting what it removed in `order_pipeline_retention_removed_total`.
pub async fn run(
    db: Arc<EmbeddedDb>,
    ttl: Option<Duration>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let mut every =
        tokio::time::interval_at(tokio::time::Instant::now() + PRUNE_EVERY, PRUNE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        loop {
            let cutoff = ttl.map(|ttl| {
                now_unix_ms().saturating_sub(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX))
            });
            match db.prune(cutoff).await {
                Ok(pruned) => {
                    metrics::counter!(crate::metrics::RETENTION_REMOVED, "what" => "log")
                        .increment(pruned.log_entries as u64);
                    metrics::counter!(crate::metrics::RETENTION_REMOVED, "what" => "results")
                        .increment(pruned.results as u64);
                    if pruned.log_entries + pruned.results > 0 {
                        tracing::debug!(
                            log_entries = pruned.log_entries,
                            results = pruned.results,
                            "pruned the embedded database"
                        );
                    }
                    if !pruned.more_left() || shutdown.is_cancelled() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot prune the embedded database; trying again later");
                    break;
                }
            }
        }
    }
}

/// Indexes, once, the results stored before the time index existed.
pub(super) fn index_older_results(db: &Database) -> anyhow::Result<()> {
    let txn = db.begin_write()?;
    {
        let mut meta = txn.open_table(META)?;
        if meta.get(TIMES_INDEXED)?.is_some() {
            return Ok(());
        }
        let results = txn.open_table(RESULTS)?;
        let mut times = txn.open_table(RESULT_TIMES)?;
        let mut indexed = 0_u64;
        for entry in results.iter()? {
            let (id, json) = entry?;
            let result: OrderResult = serde_json::from_str(json.value())?;
            times.insert((made_at(&result), id.value()), ())?;
            indexed += 1;
        }
        meta.insert(TIMES_INDEXED, 1)?;
        if indexed > 0 {
            tracing::info!(
                results = indexed,
                "indexed the stored results for RESULT_TTL"
            );
        }
    }
    txn.commit()?;
    Ok(())
}
