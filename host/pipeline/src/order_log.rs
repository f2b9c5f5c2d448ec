//! The order log: the OrderService publishes each accepted order to it, the worker
//! consumes it. Kafka in production (`KAFKA_BROKERS`), the embedded log otherwise.

use std::sync::Arc;

use crate::backends::embedded::EmbeddedDb;
use crate::backends::kafka::KafkaPublisher;

/// Why an order could not be published; the OrderService answers UNAVAILABLE.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PublishError(pub String);

/// Where accepted orders go.
#[derive(Clone)]
pub enum Publisher {
    /// A Kafka topic.
    Kafka(KafkaPublisher),
    /// The embedded log.
    Embedded(Arc<EmbeddedDb>),
}

impl Publisher {
    /// Publishes an order (binary protobuf `OrderRequest`) keyed by its id; returns once
    /// the log has durably stored it.
    pub async fn publish(&self, id: &str, payload: Vec<u8>) -> Result<(), PublishError> {
        match self {
            Self::Kafka(publisher) => publisher
                .publish(id, &payload)
                .await
                .map_err(|e| PublishError(format!("{e:#}"))),
            Self::Embedded(db) => db
                .append(payload)
                .await
                .map(|_| ())
                .map_err(|e| PublishError(format!("{e:#}"))),
        }
    }
}
