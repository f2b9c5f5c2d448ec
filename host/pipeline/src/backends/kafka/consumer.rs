//! The order topic as the worker reads it: a group member that never auto-stores offsets
//! ([`OrderConsumer`]), the messages it hands out detached from it ([`LogEntry`]), and the
//! dead-letter topic ([`DeadLetters`]). The worker sees these, never rdkafka itself.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::Message as _;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers as _, OwnedMessage};

/// One message of the order topic, detached from the consumer.
pub struct LogEntry(OwnedMessage);

impl LogEntry {
    /// The bytes (a binary protobuf `OrderRequest`, or anything a producer sent).
    pub fn payload(&self) -> &[u8] {
        self.0.payload().unwrap_or_default()
    }

    /// When it was appended to the log (the producer's time stamp), in ms since the
    /// epoch.
    pub fn appended_at_ms(&self) -> Option<i64> {
        self.0.timestamp().to_millis()
    }

    /// The partition it came from.
    pub fn partition(&self) -> i32 {
        self.0.partition()
    }

    /// Its offset in the partition.
    pub fn offset(&self) -> i64 {
        self.0.offset()
    }

    /// The value of its first header named `name`, if it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.0
            .headers()?
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| std::str::from_utf8(h.value?).ok())
    }

    /// The key (the order id), lossily as text.
    pub fn key(&self) -> String {
        self.0
            .key()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .unwrap_or_default()
    }

    /// Where it came from, as dead-letter headers.
    pub fn source_headers(&self) -> [(String, String); 3] {
        [
            ("source-topic".to_string(), self.0.topic().to_string()),
            (
                "source-partition".to_string(),
                self.0.partition().to_string(),
            ),
            ("source-offset".to_string(), self.0.offset().to_string()),
        ]
    }
}

/// A member of the worker group consuming the order topic.
#[derive(Clone)]
pub struct OrderConsumer {
    consumer: Arc<StreamConsumer<super::LagContext>>,
    topic: Arc<str>,
}

impl OrderConsumer {
    /// Joins the group of `membership` and subscribes to `topic`.
    pub fn subscribe(
        brokers: &str,
        options: &super::ClientOptions,
        membership: &super::Membership<'_>,
        topic: &str,
    ) -> anyhow::Result<Self> {
        let consumer = super::consumer(brokers, options, membership)?;
        consumer.subscribe(&[topic])?;
        Ok(Self {
            consumer: Arc::new(consumer),
            topic: topic.into(),
        })
    }

    /// Stops fetching `partition` (its queue in the worker is full); polling goes on, so
    /// the member stays in the group however long the partition waits.
    pub fn pause(&self, partition: i32) {
        if let Err(e) = self.consumer.pause(&self.partition_list(partition)) {
            tracing::debug!(partition, error = %e, "cannot pause (partition revoked?)");
        }
    }

    /// Fetches `partition` again after [`OrderConsumer::pause`].
    pub fn resume(&self, partition: i32) {
        if let Err(e) = self.consumer.resume(&self.partition_list(partition)) {
            tracing::debug!(partition, error = %e, "cannot resume (partition revoked?)");
        }
    }

    fn partition_list(&self, partition: i32) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(1);
        list.add_partition(&self.topic, partition);
        list
    }

    /// The next message of any assigned partition.
    pub async fn next(&self) -> anyhow::Result<LogEntry> {
        Ok(LogEntry(self.consumer.recv().await?.detach()))
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Marks `entry` (and everything before it in its partition) done: its offset is
    /// committed with the next periodic or final commit.
    pub fn done(&self, entry: &LogEntry) {
        let message = &entry.0;
        if let Err(e) =
            self.consumer
                .store_offset(message.topic(), message.partition(), message.offset())
        {
            tracing::debug!(error = %e, "cannot store offset (partition revoked?)");
        }
    }

    /// Commits the stored offsets now (at shutdown).
    pub fn commit(&self) {
        match self.consumer.commit_consumer_state(CommitMode::Sync) {
            Ok(()) => tracing::info!("offsets committed"),
            Err(e) => tracing::debug!(error = %e, "final commit (nothing new to commit?)"),
        }
    }
}

/// The dead-letter topic.
#[derive(Clone)]
pub struct DeadLetters {
    producer: super::Producer,
    topic: String,
    timeout: Duration,
}

impl DeadLetters {
    /// Dead letters go to `topic` through `producer`, each waiting up to `timeout` for the
    /// broker's acknowledgement.
    pub fn new(producer: super::Producer, topic: &str, timeout: Duration) -> Self {
        Self {
            producer,
            topic: topic.to_string(),
            timeout,
        }
    }

    /// The topic's name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Publishes `entry`'s key with `payload` (its own, or none when the topic refused
    /// it) and `headers` (its source added), and waits for the broker.
    pub async fn send(
        &self,
        entry: &LogEntry,
        payload: &[u8],
        headers: &[(String, String)],
    ) -> anyhow::Result<()> {
        super::send(
            &self.producer,
            &self.topic,
            &entry.key(),
            payload,
            Some(headers),
            self.timeout,
        )
        .await
    }
}
