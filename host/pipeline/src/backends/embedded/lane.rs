//! The worker's side of the embedded log ([`EmbeddedLog`]): one lane, the log's one
//! sequence. A lane commits a batch's results, dead letters and the consumed offset in
//! one transaction.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{DeadLetterRecord, EmbeddedDb};
use crate::domain::PutOutcome;
use crate::order_log::{BatchOutcome, Committed, Entry, Lane, LogConsumer};

/// Most entries the embedded worker takes at once.
const EMBEDDED_BATCH: usize = 512;

/// The embedded log, as the worker consumes it.
pub struct EmbeddedLog(Arc<EmbeddedDb>);

impl EmbeddedLog {
    /// The worker's side of `db`'s log.
    pub fn new(db: Arc<EmbeddedDb>) -> Self {
        Self(db)
    }
}

#[async_trait::async_trait]
impl LogConsumer for EmbeddedLog {
    /// One lane, until `shutdown`.
    async fn feed(
        &mut self,
        open: &mut (dyn FnMut(Box<dyn Lane>) + Send),
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        tracing::info!("worker consuming the embedded log");
        open(Box::new(EmbeddedLane {
            db: Arc::clone(&self.0),
            shutdown: shutdown.clone(),
            last: None,
        }));
        shutdown.cancelled().await;
        Ok(())
    }
}

struct EmbeddedLane {
    db: Arc<EmbeddedDb>,
    shutdown: CancellationToken,
    /// The sequence number of the last entry taken.
    last: Option<u64>,
}

#[async_trait::async_trait]
impl Lane for EmbeddedLane {
    fn source(&self) -> &str {
        "embedded"
    }

    async fn take(&mut self) -> anyhow::Result<Option<Vec<Entry>>> {
        while !self.shutdown.is_cancelled() {
            let (consumed, batch) = self.db.read_batch(EMBEDDED_BATCH).await?;
            let Some(&(last, _)) = batch.last() else {
                self.db
                    .wait_for_entries(consumed, self.shutdown.cancelled())
                    .await;
                continue;
            };
            self.last = Some(last);
            let entries = batch
                .into_iter()
                .map(|(seq, payload)| Entry {
                    payload,
                    partition: 0,
                    offset: i64::try_from(seq).unwrap_or(i64::MAX),
                    // Kept in memory since the append; taken once.
                    traceparent: self.db.take_traceparent(seq),
                    appended_at_ms: None,
                })
                .collect();
            return Ok(Some(entries));
        }
        Ok(None)
    }

    async fn commit(
        &mut self,
        batch: &[Entry],
        outcome: &mut BatchOutcome,
    ) -> anyhow::Result<Committed> {
        let Some(last) = self.last else {
            anyhow::bail!("committing a batch of the embedded log before taking one (a bug)");
        };
        let dead_letters = std::mem::take(&mut outcome.dead_letters)
            .into_iter()
            .map(|(index, mut headers)| {
                let entry = &batch[index];
                let source_seq = u64::try_from(entry.offset).unwrap_or(0);
                headers.push(("source-seq".to_string(), source_seq.to_string()));
                DeadLetterRecord {
                    source_seq,
                    headers,
                    payload: entry.payload.clone(),
                }
            })
            .collect();
        let (indexes, results): (Vec<usize>, Vec<_>) =
            std::mem::take(&mut outcome.results).into_iter().unzip();
        let (outcomes, results) = self
            .db
            .commit_batch(results, dead_letters, last + 1)
            .await?;
        outcome.results = indexes.into_iter().zip(results).collect();
        let kept = outcomes
            .iter()
            .filter(|o| **o == PutOutcome::KeptExisting)
            .count();
        if kept > 0 {
            tracing::debug!(kept, "kept existing final results of resubmitted ids");
        }
        Ok(Committed::Done)
    }
}
