//! The embedded log read back for a replay ([`crate::replay::ReplayLog`]).

use super::EmbeddedDb;

/// The embedded log read back for a replay: its dead letters, and the results decided
/// in a time range (processed entries are not kept; a result keeps its order).
#[async_trait::async_trait]
impl crate::replay::ReplayLog for EmbeddedDb {
    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<crate::replay::Recorded>> {
        Ok(EmbeddedDb::dead_letters(self)
            .await?
            .into_iter()
            .take(limit)
            .map(|d| crate::replay::Recorded {
                position: d.source_seq.to_string(),
                headers: d.headers,
                payload: d.payload,
            })
            .collect())
    }

    async fn between(
        &self,
        since: i64,
        until: i64,
        limit: usize,
    ) -> anyhow::Result<crate::replay::InRange> {
        let results = self.results_between(since, until, limit).await?;
        Ok(crate::replay::InRange::Results(results))
    }

    async fn offsets(
        &self,
        _partition: i32,
        _from: i64,
        _to: Option<i64>,
        _limit: usize,
    ) -> anyhow::Result<Option<Vec<crate::replay::Recorded>>> {
        Ok(None)
    }
}
