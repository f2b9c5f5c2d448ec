//! The order log: the OrderService publishes each accepted order to it
//! ([`OrderPublisher`]), the worker consumes it ([`LogConsumer`], in [`Lane`]s). Kafka in
//! production (`KAFKA_BROKERS`), the embedded log otherwise; each implements these traits
//! in its own folder of `backends/`.
//!
//! How a batch is committed is the log's: the worker hands each lane a [`BatchOutcome`]
//! (data: each entry's result and whether to dead-letter it), and the lane makes it
//! durable its own way. Kafka dead-letters, writes the results to the result store, then
//! stores the partition's offset; the embedded log commits results, dead letters and its
//! offset in one transaction.

use std::sync::Arc;
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::domain::OrderResult;

/// Why an order could not be published; the OrderService answers UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(pub String);

/// Where accepted orders go; implemented in `backends/<name>/`.
#[async_trait::async_trait]
pub trait OrderPublisher: Send + Sync + 'static {
    /// Where orders go, for spans: the topic, or `embedded`.
    fn destination(&self) -> &str;

    /// Publishes an order (binary protobuf `OrderRequest`) keyed by its id, with `headers`
    /// (the trace context); returns once the log has durably stored it.
    async fn publish(
        &self,
        id: &str,
        payload: Vec<u8>,
        headers: &[(String, String)],
    ) -> anyhow::Result<()>;
}

/// Where accepted orders go, as the OrderService holds it. Cheap to clone.
#[derive(Clone)]
pub struct Publisher(Arc<dyn OrderPublisher>);

impl Publisher {
    /// The publisher `backend` implements.
    pub fn new(backend: impl OrderPublisher) -> Self {
        Self(Arc::new(backend))
    }

    /// Like [`Publisher::new`], for a backend that is shared already.
    pub fn shared(backend: Arc<dyn OrderPublisher>) -> Self {
        Self(backend)
    }

    /// Where orders go, for spans: the topic, or `embedded`.
    pub fn destination(&self) -> &str {
        self.0.destination()
    }

    /// Publishes an order keyed by its id; returns once the log has durably stored it.
    pub async fn publish(
        &self,
        id: &str,
        payload: Vec<u8>,
        headers: &[(String, String)],
    ) -> Result<(), PublishError> {
        self.0
            .publish(id, payload, headers)
            .await
            .map_err(|e| PublishError(format!("{e:#}")))
    }
}

/// One entry the worker took from the log.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The entry's bytes (a binary protobuf `OrderRequest`, unless someone wrote
    /// something else to the log).
    pub payload: Vec<u8>,
    /// Its partition (0 for the embedded log).
    pub partition: i32,
    /// Its offset in the partition (the embedded log's sequence number).
    pub offset: i64,
    /// The `traceparent` it was published with, if any.
    pub traceparent: Option<String>,
    /// When the log took it, in Unix ms, if the log says.
    pub appended_at_ms: Option<i64>,
}

/// Dead-letter headers: why, and what the worker knew.
pub type Headers = Vec<(String, String)>;

/// What the worker made of a batch, for the lane to commit: data, not calls.
#[derive(Debug, Default)]
pub struct BatchOutcome {
    /// The results to store, each with the index of its entry in the batch, in order.
    /// The lane may replace one the store refused for good by the `failed` result it
    /// stored instead.
    pub results: Vec<(usize, Box<OrderResult>)>,
    /// The entries to dead-letter, by index in the batch, with their headers, in order.
    pub dead_letters: Vec<(usize, Headers)>,
    /// When each result's evaluation started (for traces), parallel to `results`.
    pub evaluated: Vec<SystemTime>,
}

/// How committing a batch ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// Its outcome is durable and the batch is marked consumed.
    Done,
    /// Shutdown came first: nothing is marked consumed; the batch is delivered again.
    Stopped,
}

/// One ordered stream of the log that the worker processes batch by batch: a Kafka
/// partition, or the embedded log's one sequence.
#[async_trait::async_trait]
pub trait Lane: Send {
    /// Where the entries come from, for spans: the topic, or `embedded`.
    fn source(&self) -> &str;

    /// The next batch, in order (waits for its first entry); `None` when the lane ends
    /// (shutdown, or the partition was taken away). An error fails the worker.
    async fn take(&mut self) -> anyhow::Result<Option<Vec<Entry>>>;

    /// Makes `outcome` of `batch` (what [`Lane::take`] returned last) durable, then marks
    /// the batch consumed. An error fails the worker (its batch is delivered again).
    async fn commit(
        &mut self,
        batch: &[Entry],
        outcome: &mut BatchOutcome,
    ) -> anyhow::Result<Committed>;
}

/// Where the worker reads accepted orders, and puts those that are not orders or ran out
/// of retries (the dead letters).
#[async_trait::async_trait]
pub trait LogConsumer: Send {
    /// Reads the log until `shutdown`, handing each new lane to `open` (which runs it
    /// on a task of its own). Returns once no new entry will be handed to a lane.
    async fn feed(
        &mut self,
        open: &mut (dyn FnMut(Box<dyn Lane>) + Send),
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()>;

    /// After every lane has ended: commits what the lanes marked consumed.
    async fn close(&mut self) {}
}

/// The worker's side of the order log, as the assembly hands it over.
pub type Consumer = Box<dyn LogConsumer>;
