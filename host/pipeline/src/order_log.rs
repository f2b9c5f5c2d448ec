//! The order log: the OrderService publishes each accepted order to it ([`Publisher`]),
//! the worker consumes it ([`Consumer`]). Kafka in production (`KAFKA_BROKERS`), the
//! embedded log otherwise.

use std::sync::Arc;

use crate::backends::embedded::EmbeddedDb;
use crate::backends::kafka::{DeadLetters, OrderConsumer};

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

/// Where the worker reads accepted orders, and puts those that are not orders or ran out
/// of retries (the dead letters).
pub enum Consumer {
    /// The order topic, as a member of the worker group, and the dead-letter topic.
    Kafka {
        /// The order topic.
        orders: OrderConsumer,
        /// The dead-letter topic.
        dead_letters: DeadLetters,
    },
    /// The embedded log; its dead letters and consumed offset live in the same database
    /// and are committed with the results.
    Embedded(Arc<EmbeddedDb>),
}
