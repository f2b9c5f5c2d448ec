//! The worker loops: consume the order log, hand batches to the
//! [`Processor`](crate::processor::Processor), write results (and dead letters), then commit. One per
//! backend, since committing differs: [`kafka`] stores each partition's offset after its
//! results are written; [`embedded`] commits results, dead letters and the offset in one
//! transaction.

mod embedded;
mod kafka;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::order_log::Consumer;
use crate::processor::Processor;
use crate::store::Store;

/// Consumes `log` until `shutdown`: every batch goes through `processor`, its results
/// are written to `store` (the embedded log commits them with its offset instead), then
/// the batch is marked done.
pub async fn run(
    log: Consumer,
    processor: Arc<Processor>,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match log {
        Consumer::Kafka {
            orders,
            dead_letters,
        } => kafka::run(orders, processor, store, dead_letters, shutdown).await,
        Consumer::Embedded(db) => embedded::run(db, processor, shutdown).await,
    }
}
