//! The order log: the OrderService publishes each accepted order to it ([`Publisher`]),
//! the worker consumes it ([`Consumer`]). Kafka in production (`KAFKA_BROKERS`), the
//! embedded log otherwise.

use std::sync::Arc;

use crate::backends::embedded::EmbeddedDb;
use crate::backends::kafka::{DeadLetters, KafkaPublisher, OrderConsumer};

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
    /// Where orders go, for spans: the topic, or `embedded`.
    pub fn destination(&self) -> &str {
        match self {
            Self::Kafka(publisher) => publisher.topic(),
            Self::Embedded(_) => "embedded",
        }
    }

    /// Publishes an order (binary protobuf `OrderRequest`) keyed by its id, with `headers`
    /// (the trace context: Kafka message headers; the embedded log keeps the
    /// `traceparent` in memory until the entry is processed); returns once the log has
    /// durably stored it.
    pub async fn publish(
        &self,
        id: &str,
        payload: Vec<u8>,
        headers: &[(String, String)],
    ) -> Result<(), PublishError> {
        match self {
            Self::Kafka(publisher) => publisher
                .publish(id, &payload, headers)
                .await
                .map_err(|e| PublishError(format!("{e:#}"))),
            Self::Embedded(db) => db
                .append(
                    payload,
                    headers
                        .iter()
                        .find(|(name, _)| name == "traceparent")
                        .map(|(_, value)| value.clone()),
                )
                .await
                .map(|_| ())
                .map_err(|e| PublishError(format!("{e:#}"))),
        }
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
