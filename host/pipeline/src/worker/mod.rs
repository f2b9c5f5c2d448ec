//! The worker loop, one for every order log: take a batch from a lane of the log
//! ([`Lane`]), hand it to the [`Processor`], and give the lane the batch's outcome to
//! commit its own way (the backends say how: `backends/kafka/lanes.rs`,
//! `backends/embedded/lane.rs`). Each lane runs on a task of its own: a Kafka
//! partition's orders are processed in order, partitions concurrently.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::order_log::{BatchOutcome, Committed, Consumer, Lane};
use crate::processor::Processor;

/// Consumes `log` until `shutdown` (or until a lane fails): every batch of every lane
/// goes through `processor` and is committed by its lane. On shutdown the lanes finish
/// what they hold, then the log closes (Kafka commits its offsets).
pub async fn run(
    mut log: Consumer,
    processor: Arc<Processor>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let stop = shutdown.child_token();
    let (opened_tx, mut opened) = mpsc::unbounded_channel::<Box<dyn Lane>>();
    let mut lanes = JoinSet::new();
    let mut failure = None;
    {
        let mut open = move |lane: Box<dyn Lane>| {
            // The receiver lives until the feed ends.
            let _ = opened_tx.send(lane);
        };
        let feed = log.feed(&mut open, &stop);
        tokio::pin!(feed);
        loop {
            tokio::select! {
                fed = &mut feed => {
                    if let Err(e) = fed {
                        failure.get_or_insert(e);
                    }
                    break;
                }
                Some(lane) = opened.recv() => {
                    spawn(&mut lanes, lane, &processor);
                }
                Some(joined) = lanes.join_next() => {
                    if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
                        // A lane failed: stop feeding the others, then fail the worker
                        // (what it did not commit is delivered again).
                        failure.get_or_insert(e);
                        stop.cancel();
                    }
                }
            }
        }
    }
    tracing::info!("worker stopping: finishing in-flight orders");
    while let Ok(lane) = opened.try_recv() {
        spawn(&mut lanes, lane, &processor);
    }
    while let Some(joined) = lanes.join_next().await {
        if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
            failure.get_or_insert(e);
        }
    }
    log.close().await;
    tracing::info!("worker stopped");
    failure.map_or(Ok(()), Err)
}

fn spawn(lanes: &mut JoinSet<anyhow::Result<()>>, lane: Box<dyn Lane>, processor: &Arc<Processor>) {
    let span = tracing::info_span!("worker.lane", source = lane.source());
    lanes.spawn(run_lane(lane, Arc::clone(processor)).instrument(span));
}

/// One lane: take, process, commit, until the lane ends.
async fn run_lane(mut lane: Box<dyn Lane>, processor: Arc<Processor>) -> anyhow::Result<()> {
    while let Some(batch) = lane.take().await? {
        let taken = SystemTime::now();
        let payloads: Vec<&[u8]> = batch.iter().map(|e| e.payload.as_slice()).collect();
        let processed = processor
            .process_batch(&payloads)
            .instrument(tracing::debug_span!(
                "worker.process",
                messages = batch.len()
            ))
            .await;
        let mut outcome = BatchOutcome::default();
        for (index, processed) in processed.into_iter().enumerate() {
            let (result, headers) = processed.into_parts();
            if let Some((result, evaluated)) = result {
                outcome.results.push((index, result));
                outcome.evaluated.push(evaluated);
            }
            if let Some(headers) = headers {
                outcome.dead_letters.push((index, headers));
            }
        }
        let started = Instant::now();
        let write_started = SystemTime::now();
        if lane.commit(&batch, &mut outcome).await? == Committed::Stopped {
            tracing::info!("stopping before the batch was stored; it will be delivered again");
            return Ok(());
        }
        crate::metrics::record_stored(
            outcome.results.iter().map(|(_, r)| r.status),
            started.elapsed(),
        );
        if crate::telemetry::enabled() {
            let stored = (write_started, SystemTime::now());
            for ((index, result), evaluated) in outcome.results.iter().zip(&outcome.evaluated) {
                let entry = &batch[*index];
                let order = crate::telemetry::Processed {
                    traceparent: entry.traceparent.as_deref(),
                    partition: entry.partition,
                    offset: entry.offset,
                    taken,
                    evaluated: *evaluated,
                    result,
                };
                crate::telemetry::record_processed(lane.source(), &order, stored);
            }
        }
        let now = crate::domain::now_unix_ms();
        for entry in &batch {
            if let Some(appended) = entry.appended_at_ms {
                metrics::histogram!(crate::metrics::END_TO_END_SECONDS)
                    .record((now - appended).max(0) as f64 / 1e3);
            }
        }
    }
    Ok(())
}
