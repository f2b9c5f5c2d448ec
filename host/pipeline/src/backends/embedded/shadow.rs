//! A shadow run's results and tally in the embedded database: the candidate's result of
//! each order by (run, id), and the run's tally, merged batch by batch in one
//! transaction. Starting a run drops the data of the runs before it.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};

use super::{EmbeddedDb, SHADOW_REPORTS, SHADOW_RESULTS, blocking};
use crate::domain::OrderResult;
use crate::domain::diff::DiffReport;

impl EmbeddedDb {
    /// Stores a batch of the candidate's results of shadow run `run` and adds its tally.
    pub async fn put_shadow(
        &self,
        run: &str,
        candidates: &[OrderResult],
        tally: &DiffReport,
    ) -> anyhow::Result<()> {
        let (db, run, tally) = (Arc::clone(&self.db), run.to_string(), tally.clone());
        let results: Vec<(String, String)> = candidates
            .iter()
            .map(|r| Ok((r.id.clone(), serde_json::to_string(r)?)))
            .collect::<Result<_, serde_json::Error>>()?;
        blocking(move || {
            let txn = db.begin_write()?;
            {
                let mut stored = txn.open_table(SHADOW_RESULTS)?;
                for (id, json) in &results {
                    stored.insert((run.as_str(), id.as_str()), json.as_str())?;
                }
                let mut reports = txn.open_table(SHADOW_REPORTS)?;
                let mut report: DiffReport = match reports.get(run.as_str())? {
                    Some(json) => serde_json::from_str(json.value())?,
                    None => DiffReport::default(),
                };
                report.merge(&tally);
                reports.insert(run.as_str(), serde_json::to_string(&report)?.as_str())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// The tally of shadow run `run` so far.
    pub async fn shadow_report(&self, run: &str) -> anyhow::Result<DiffReport> {
        let (db, run) = (Arc::clone(&self.db), run.to_string());
        blocking(move || {
            let txn = db.begin_read()?;
            let reports = txn.open_table(SHADOW_REPORTS)?;
            Ok(match reports.get(run.as_str())? {
                Some(json) => serde_json::from_str(json.value())?,
                None => DiffReport::default(),
            })
        })
        .await
    }

    /// The candidate's result of order `id` in shadow run `run`.
    pub async fn shadow_result(&self, run: &str, id: &str) -> anyhow::Result<Option<OrderResult>> {
        let (db, run, id) = (Arc::clone(&self.db), run.to_string(), id.to_string());
        blocking(move || {
            let txn = db.begin_read()?;
            let stored = txn.open_table(SHADOW_RESULTS)?;
            match stored.get((run.as_str(), id.as_str()))? {
                Some(json) => Ok(Some(serde_json::from_str(json.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    /// Drops every shadow run's data but `keep`'s.
    pub async fn drop_shadows_but(&self, keep: &str) -> anyhow::Result<()> {
        let (db, keep) = (Arc::clone(&self.db), keep.to_string());
        blocking(move || {
            let txn = db.begin_write()?;
            {
                txn.open_table(SHADOW_RESULTS)?
                    .retain(|(run, _), _| run == keep.as_str())?;
                txn.open_table(SHADOW_REPORTS)?
                    .retain(|run, _| run == keep.as_str())?;
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }
}
