//! The embedded result store: first final result wins, batch reads in one transaction,
//! waits woken by the commit that writes the ids.

use std::sync::Arc;
use std::time::Instant;

use redb::{ReadableDatabase, ReadableTable};

use super::{EmbeddedDb, RESULT_TIMES, RESULTS, blocking};
use crate::domain::{OrderResult, PutOutcome, ResultStatus};

impl EmbeddedDb {
    /// Writes one result (the CacheService path for tools; the worker uses batches).
    pub async fn put_result(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        let db = Arc::clone(&self.db);
        let id = result.id.clone();
        let result = result.clone();
        let outcome = blocking(move || {
            let txn = db.begin_write()?;
            let outcome = put(
                &mut txn.open_table(RESULTS)?,
                &mut txn.open_table(RESULT_TIMES)?,
                &result,
            )?;
            txn.commit()?;
            Ok(outcome)
        })
        .await?;
        self.waiters.wake([id.as_str()]);
        Ok(outcome)
    }

    /// Writes one result whatever result exists (a replay's `--overwrite`); the
    /// retention index follows the new result.
    pub async fn replace_result(&self, result: &OrderResult) -> anyhow::Result<()> {
        let db = Arc::clone(&self.db);
        let id = result.id.clone();
        let result = result.clone();
        blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(RESULTS)?;
                let mut times = txn.open_table(RESULT_TIMES)?;
                let old = table
                    .get(result.id.as_str())?
                    .map(|json| serde_json::from_str::<OrderResult>(json.value()))
                    .transpose()?;
                if let Some(old) = old {
                    times.remove((made_at(&old), result.id.as_str()))?;
                }
                let json = serde_json::to_string(&result)?;
                table.insert(result.id.as_str(), json.as_str())?;
                times.insert((made_at(&result), result.id.as_str()), ())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        self.waiters.wake([id.as_str()]);
        Ok(())
    }

    /// The results made from `since` (included) to `until` (excluded), Unix ms, oldest
    /// first, at most `limit`.
    pub async fn results_between(
        &self,
        since: i64,
        until: i64,
        limit: usize,
    ) -> anyhow::Result<Vec<OrderResult>> {
        let db = Arc::clone(&self.db);
        let (since, until) = (
            u64::try_from(since).unwrap_or(0),
            u64::try_from(until).unwrap_or(0),
        );
        blocking(move || {
            let txn = db.begin_read()?;
            let times = txn.open_table(RESULT_TIMES)?;
            let table = txn.open_table(RESULTS)?;
            let mut out = Vec::new();
            for entry in times.range((since, "")..(until, ""))? {
                if out.len() >= limit {
                    break;
                }
                let (key, _) = entry?;
                let (_, id) = key.value();
                if let Some(json) = table.get(id)? {
                    out.push(serde_json::from_str(json.value())?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The result of `id`. Read on the calling thread: a read transaction on cached
    /// pages takes microseconds, less than handing it to a blocking thread.
    pub async fn get_result(&self, id: &str) -> anyhow::Result<Option<OrderResult>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RESULTS)?;
        match table.get(id)? {
            Some(json) => Ok(Some(serde_json::from_str(json.value())?)),
            None => Ok(None),
        }
    }

    /// The results of `ids`, in order, from one read transaction.
    pub async fn get_results(&self, ids: Vec<String>) -> anyhow::Result<Vec<Option<OrderResult>>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(RESULTS)?;
            ids.iter()
                .map(|id| match table.get(id.as_str())? {
                    Some(json) => Ok(Some(serde_json::from_str(json.value())?)),
                    None => Ok(None),
                })
                .collect()
        })
        .await
    }

    /// The results of `ids`, in order, waiting until `deadline` for missing ones; a
    /// commit wakes the waiter once, however many of its ids it wrote.
    pub async fn wait_results(
        &self,
        ids: &[String],
        deadline: Instant,
    ) -> anyhow::Result<Vec<Option<OrderResult>>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let mut results: Vec<Option<OrderResult>> = ids.iter().map(|_| None).collect();
        let mut missing: Vec<usize> = (0..ids.len()).collect();
        let outcome = loop {
            // Register before reading, so a write between the two is not missed.
            let woken: Vec<_> = missing
                .iter()
                .map(|&i| self.waiters.register(&ids[i]))
                .collect();
            let read = match self
                .get_results(missing.iter().map(|&i| ids[i].clone()).collect())
                .await
            {
                Ok(read) => read,
                Err(e) => break Err(e),
            };
            let mut still = Vec::new();
            let mut still_woken = Vec::new();
            for ((i, found), rx) in missing.iter().zip(read).zip(woken) {
                match found {
                    Some(result) => results[*i] = Some(result),
                    None => {
                        still.push(*i);
                        still_woken.push(rx);
                    }
                }
            }
            missing = still;
            if missing.is_empty() {
                break Ok(());
            }
            let any = futures::future::select_all(still_woken);
            if tokio::time::timeout_at(deadline, any).await.is_err() {
                break Ok(());
            }
        };
        for id in ids {
            self.waiters.forget(id);
        }
        outcome.map(|()| results)
    }

    /// The result of `id`, waiting until `deadline` for it to be written.
    pub async fn wait_result(
        &self,
        id: &str,
        deadline: Instant,
    ) -> anyhow::Result<Option<OrderResult>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        self.waiters
            .wait_for(id, deadline, None, || self.get_result(id))
            .await
    }
}

/// Writes `result` unless a final result for its id is there, and indexes it by the time
/// it was made (for the result TTL: [`EmbeddedDb::prune`]).
pub(super) fn put(
    table: &mut redb::Table<'_, &'static str, &'static str>,
    times: &mut redb::Table<'_, (u64, &'static str), ()>,
    result: &OrderResult,
) -> anyhow::Result<PutOutcome> {
    if let Some(existing) = table.get(result.id.as_str())? {
        let existing: OrderResult = serde_json::from_str(existing.value())?;
        if existing.status != ResultStatus::Failed {
            return Ok(PutOutcome::KeptExisting);
        }
    }
    let json = serde_json::to_string(result)?;
    table.insert(result.id.as_str(), json.as_str())?;
    times.insert((made_at(result), result.id.as_str()), ())?;
    Ok(PutOutcome::Written)
}

/// When `result` was made, as the index's key.
pub(super) fn made_at(result: &OrderResult) -> u64 {
    u64::try_from(result.processed_at_unix_ms).unwrap_or(0)
}

/// The result store seam, on the embedded database.
#[async_trait::async_trait]
impl crate::store::ResultStore for EmbeddedDb {
    async fn put(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        self.put_result(result).await
    }

    async fn put_recovery(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        // No value of another kind can be under a result's key here.
        self.put_result(result).await
    }

    async fn replace(&self, result: &OrderResult) -> anyhow::Result<()> {
        self.replace_result(result).await
    }

    async fn get(&self, id: &str) -> anyhow::Result<Option<OrderResult>> {
        self.get_result(id).await
    }

    async fn wait_until(&self, id: &str, deadline: Instant) -> anyhow::Result<Option<OrderResult>> {
        self.wait_result(id, deadline).await
    }

    /// One transaction for the batch (per wake-up, when waiting).
    async fn get_many(
        &self,
        ids: &[String],
        deadline: Option<Instant>,
    ) -> anyhow::Result<Vec<Option<OrderResult>>> {
        match deadline {
            None => self.get_results(ids.to_vec()).await,
            Some(deadline) => self.wait_results(ids, deadline).await,
        }
    }

    async fn put_shadow(
        &self,
        run: &str,
        candidates: &[OrderResult],
        tally: &crate::domain::diff::DiffReport,
    ) -> anyhow::Result<()> {
        EmbeddedDb::put_shadow(self, run, candidates, tally).await
    }

    async fn start_shadow(&self, run: &str) -> anyhow::Result<()> {
        self.drop_shadows_but(run).await
    }

    async fn shadow_report(&self, run: &str) -> anyhow::Result<crate::domain::diff::DiffReport> {
        EmbeddedDb::shadow_report(self, run).await
    }

    async fn shadow_result(&self, run: &str, id: &str) -> anyhow::Result<Option<OrderResult>> {
        EmbeddedDb::shadow_result(self, run, id).await
    }
}
