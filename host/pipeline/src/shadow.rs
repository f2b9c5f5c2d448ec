//! The shadow run, off the client's path: the processor offers each batch's live results
//! (through a [`ShadowSender`]); a task of its own decides their orders again with the shadow candidate,
//! stores the candidate's results where clients never read ([`Store::put_shadow`]) and
//! adds to the run's tally of differences. Batches that queued meanwhile are merged into
//! one pass. When it falls behind anyway, batches are dropped (counted in
//! `order_pipeline_shadow_orders_total{what="dropped"}`) rather than slowing the live
//! path down: at the pipeline's maximum rate the diff is of a sample.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::domain::OrderResult;
use crate::domain::diff::DiffReport;
use crate::processor::ShadowSender;
use crate::rules::live::LiveRuleset;
use crate::store::Store;

/// Batches waiting for the shadow task; beyond it, batches are dropped.
pub const SHADOW_QUEUE: usize = 64;

/// Most orders the shadow task decides and stores in one pass.
const MAX_MERGED: usize = 2000;

/// Results stored per write.
const WRITE_CHUNK: usize = 500;

/// The channel between the processor and the shadow task.
pub fn channel() -> (ShadowSender, mpsc::Receiver<Vec<OrderResult>>) {
    mpsc::channel(SHADOW_QUEUE)
}

/// Starts the shadow task in `tasks` and hands `processor`'s batches to it.
pub fn attach(
    processor: crate::processor::Processor,
    live: &Arc<LiveRuleset>,
    store: &Store,
    name: &str,
    tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
    shutdown: &CancellationToken,
) -> crate::processor::Processor {
    let (offer, batches) = channel();
    tasks.spawn(run(
        Arc::clone(live),
        store.clone(),
        name.to_string(),
        batches,
        shutdown.clone(),
    ));
    processor.with_shadow(offer)
}

/// Decides the offered orders again with the shadow candidate until `shutdown`.
pub async fn run(
    live: Arc<LiveRuleset>,
    store: Store,
    name: String,
    mut batches: mpsc::Receiver<Vec<OrderResult>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut started = String::new();
    loop {
        let mut batch = tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => return Ok(()),
            },
        };
        // Whatever queued meanwhile goes with it: one evaluation pass and one write for
        // many small batches (a Kafka worker hands over a batch per partition lane).
        while batch.len() < MAX_MERGED {
            match batches.try_recv() {
                Ok(more) => batch.extend(more),
                Err(_) => break,
            }
        }
        let Some((run, chain)) = live.rollout().shadow.clone() else {
            continue;
        };
        if started != run.id {
            store.start_shadow(&run.id).await?;
            started.clone_from(&run.id);
        }
        let who = name.clone();
        let decided = tokio::task::spawn_blocking(move || {
            let mut tally = DiffReport::default();
            let mut candidates = Vec::with_capacity(batch.len());
            for live in &batch {
                let Some(order) = &live.order else { continue };
                let evaluation = chain.chain.evaluate(order);
                let mut candidate = OrderResult::from_evaluation(order, evaluation, 1);
                candidate.ruleset_version = chain.version;
                candidate.processed_by.clone_from(&who);
                tally.add(live, &candidate);
                candidates.push(candidate);
            }
            (candidates, tally)
        })
        .await;
        let (candidates, tally) = match decided {
            Ok(decided) => decided,
            Err(e) => {
                tracing::error!(error = %e, "shadow evaluation panicked");
                continue;
            }
        };
        metrics::counter!(crate::metrics::SHADOW_ORDERS, "what" => "compared")
            .increment(tally.orders);
        metrics::counter!(crate::metrics::SHADOW_ORDERS, "what" => "differing")
            .increment(tally.differing);
        // The tally goes with the first part; the other parts only store results.
        let none = DiffReport::default();
        for (i, part) in candidates.chunks(WRITE_CHUNK).enumerate() {
            let tally = if i == 0 { &tally } else { &none };
            if let Err(e) = store.put_shadow(&run.id, part, tally).await {
                tracing::warn!(error = %format!("{e:#}"), run = %run.id, "cannot store shadow results");
                break;
            }
        }
    }
}
