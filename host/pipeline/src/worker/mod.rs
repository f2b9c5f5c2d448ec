//! The worker loops: consume the order log, hand batches to the
//! [`Processor`](crate::processor::Processor), write results (and dead letters), then commit. One per
//! backend, since committing differs: [`kafka`] stores each partition's offset after its
//! results are written; [`embedded`] commits results, dead letters and the offset in one
//! transaction.

pub mod embedded;
pub mod kafka;
