//! The embedded worker: reads the embedded log in batches, hands them to the
//! [`Processor`], and commits each batch's results, dead letters and new offset in one
//! transaction.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::backends::embedded::{DeadLetterRecord, EmbeddedDb};
use crate::domain::PutOutcome;
use crate::processor::Processor;

/// Most entries the embedded worker takes at once.
const EMBEDDED_BATCH: usize = 512;

/// Consumes the embedded log until `shutdown`, in batches: each batch's results, dead
/// letters and new offset are committed in one transaction.
pub async fn run(
    db: Arc<EmbeddedDb>,
    processor: Arc<Processor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    tracing::info!("worker consuming the embedded log");
    while !shutdown.is_cancelled() {
        let (consumed, batch) = db.read_batch(EMBEDDED_BATCH).await?;
        let Some(&(last, _)) = batch.last() else {
            db.wait_for_entries(consumed, shutdown.cancelled()).await;
            continue;
        };
        let taken = std::time::SystemTime::now();
        let payloads: Vec<&[u8]> = batch.iter().map(|(_, p)| p.as_slice()).collect();
        let processed = processor.process_batch(&payloads).await;
        let mut results = Vec::with_capacity(batch.len());
        // For the spans: each result's entry and when its evaluation started.
        let mut sources = Vec::with_capacity(batch.len());
        let mut dead_letters = Vec::new();
        for ((seq, payload), processed) in batch.iter().zip(processed) {
            let (result, headers) = processed.into_parts();
            if let Some((result, evaluated)) = result {
                results.push(*result);
                sources.push((*seq, evaluated));
            }
            if let Some(mut headers) = headers {
                headers.push(("source-seq".to_string(), seq.to_string()));
                dead_letters.push(DeadLetterRecord {
                    source_seq: *seq,
                    headers,
                    payload: payload.clone(),
                });
            }
        }
        let statuses: Vec<_> = results.iter().map(|r| r.status).collect();
        let traced = crate::telemetry::enabled().then(|| results.clone());
        let started = std::time::Instant::now();
        let write_started = std::time::SystemTime::now();
        let outcomes = db.commit_batch(results, dead_letters, last + 1).await?;
        crate::metrics::record_stored(statuses.into_iter(), started.elapsed());
        if let Some(results) = traced {
            let stored = (write_started, std::time::SystemTime::now());
            for (result, (seq, evaluated)) in results.iter().zip(&sources) {
                let traceparent = db.take_traceparent(*seq);
                let order = crate::telemetry::Processed {
                    traceparent: traceparent.as_deref(),
                    partition: 0,
                    offset: i64::try_from(*seq).unwrap_or(i64::MAX),
                    taken,
                    evaluated: *evaluated,
                    result,
                };
                crate::telemetry::record_processed("embedded", &order, stored);
            }
        }
        // Entries that were not orders leave nothing behind either.
        for (seq, _) in &batch {
            db.take_traceparent(*seq);
        }
        let kept = outcomes
            .iter()
            .filter(|o| **o == PutOutcome::KeptExisting)
            .count();
        if kept > 0 {
            tracing::debug!(kept, "kept existing final results of resubmitted ids");
        }
    }
    tracing::info!("worker stopped");
    Ok(())
}
