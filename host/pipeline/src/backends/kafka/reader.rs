//! Reading a topic's messages by position, outside the worker group (no offsets are
//! committed): what a replay re-decides (by offsets or by a time range) and the
//! dead-letter tooling lists. A blocking consumer, used from a blocking thread.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use super::{ClientOptions, base};

/// How long a read waits for the broker before it gives up on a partition.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A message as read.
#[derive(Debug, Clone)]
pub struct ReadMessage {
    /// Its partition.
    pub partition: i32,
    /// Its offset.
    pub offset: i64,
    /// Its timestamp, Unix ms, when it has one.
    pub timestamp_ms: Option<i64>,
    /// Its value.
    pub payload: Vec<u8>,
    /// Its headers, as text.
    pub headers: Vec<(String, String)>,
}

/// Which messages of a topic.
#[derive(Debug, Clone)]
pub enum Range {
    /// Of `partition`, offsets `from` (included) to `to` (excluded; `None`: the end).
    Offsets {
        /// The partition.
        partition: i32,
        /// First offset.
        from: i64,
        /// Offset after the last.
        to: Option<i64>,
    },
    /// Of every partition, those appended from `since` (included) to `until` (excluded),
    /// Unix ms.
    Time {
        /// Start.
        since: i64,
        /// End.
        until: i64,
    },
    /// Every message of every partition.
    All,
}

fn reader(brokers: &str, options: &ClientOptions) -> anyhow::Result<BaseConsumer> {
    base(brokers, options, &[])
        .set("group.id", "order-pipeline-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()
        .context("creating a Kafka reader")
}

/// What to read of one partition: offsets `from` (included) to `to` (excluded), and
/// only messages older than `until` (Unix ms), if given.
struct Span {
    partition: i32,
    from: i64,
    to: i64,
    until: Option<i64>,
}

/// Reads `range` of `topic`, at most `limit` messages, oldest first per partition.
pub fn read(
    brokers: &str,
    options: &ClientOptions,
    topic: &str,
    range: &Range,
    limit: usize,
) -> anyhow::Result<Vec<ReadMessage>> {
    let consumer = reader(brokers, options)?;
    let mut out = Vec::new();
    for span in spans(&consumer, topic, range)? {
        if span.from >= span.to || out.len() >= limit {
            continue;
        }
        read_span(&consumer, topic, &span, limit, &mut out)?;
    }
    Ok(out)
}

/// The span of each partition of `topic` that `range` covers.
fn spans(consumer: &BaseConsumer, topic: &str, range: &Range) -> anyhow::Result<Vec<Span>> {
    let metadata = consumer
        .fetch_metadata(Some(topic), READ_TIMEOUT)
        .with_context(|| format!("reading the metadata of topic {topic}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut spans = Vec::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, READ_TIMEOUT)
            .with_context(|| format!("reading the offsets of {topic}/{partition}"))?;
        let span = |from: i64, to: i64, until| Span {
            partition,
            from,
            to,
            until,
        };
        match range {
            Range::Offsets {
                partition: p,
                from,
                to,
            } if *p == partition => {
                spans.push(span((*from).max(low), to.unwrap_or(high).min(high), None));
            }
            Range::Offsets { .. } => {}
            Range::All => spans.push(span(low, high, None)),
            Range::Time { since, until } => {
                let mut wanted = TopicPartitionList::new();
                wanted.add_partition_offset(topic, partition, Offset::Offset(*since))?;
                let found = consumer
                    .offsets_for_times(wanted, READ_TIMEOUT)
                    .context("finding offsets by time")?;
                let from = found
                    .find_partition(topic, partition)
                    .and_then(|p| match p.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    });
                if let Some(from) = from {
                    spans.push(span(from.max(low), high, Some(*until)));
                }
            }
        }
    }
    Ok(spans)
}

/// Reads `span` of `topic` into `out`, until its end, its time bound, or `limit`.
fn read_span(
    consumer: &BaseConsumer,
    topic: &str,
    span: &Span,
    limit: usize,
    out: &mut Vec<ReadMessage>,
) -> anyhow::Result<()> {
    let partition = span.partition;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(span.from))?;
    consumer.assign(&assignment)?;
    loop {
        let Some(message) = consumer.poll(READ_TIMEOUT) else {
            anyhow::bail!("{topic}/{partition}: no message within {READ_TIMEOUT:?}");
        };
        let message = message.with_context(|| format!("reading {topic}/{partition}"))?;
        if message.partition() != partition {
            continue;
        }
        let timestamp_ms = message.timestamp().to_millis();
        if span
            .until
            .is_some_and(|until| timestamp_ms.is_some_and(|t| t >= until))
        {
            return Ok(());
        }
        let headers = message
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        let value = h.value.map(String::from_utf8_lossy).unwrap_or_default();
                        (h.key.to_string(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(ReadMessage {
            partition,
            offset: message.offset(),
            timestamp_ms,
            payload: message.payload().unwrap_or_default().to_vec(),
            headers,
        });
        if message.offset() + 1 >= span.to || out.len() >= limit {
            return Ok(());
        }
    }
}

/// The order topic and its dead-letter topic, read back for a replay.
pub struct KafkaReplayLog {
    brokers: String,
    options: ClientOptions,
    topic: String,
    dlq_topic: String,
}

impl KafkaReplayLog {
    /// Reads `topic` and `dlq_topic` at `brokers` with `options`.
    pub fn new(brokers: &str, options: &ClientOptions, topic: &str, dlq_topic: &str) -> Self {
        Self {
            brokers: brokers.to_string(),
            options: options.clone(),
            topic: topic.to_string(),
            dlq_topic: dlq_topic.to_string(),
        }
    }

    /// `range` of `topic`, at most `limit`, on a blocking thread.
    async fn read(
        &self,
        topic: &str,
        range: Range,
        limit: usize,
    ) -> anyhow::Result<Vec<crate::replay::Recorded>> {
        let (brokers, options, topic) = (
            self.brokers.clone(),
            self.options.clone(),
            topic.to_string(),
        );
        let read =
            tokio::task::spawn_blocking(move || read(&brokers, &options, &topic, &range, limit))
                .await
                .map_err(|e| anyhow::anyhow!("reading Kafka panicked: {e}"))??;
        Ok(read
            .into_iter()
            .map(|m| crate::replay::Recorded {
                position: format!("{}/{}", m.partition, m.offset),
                headers: m.headers,
                payload: m.payload,
            })
            .collect())
    }
}

#[async_trait::async_trait]
impl crate::replay::ReplayLog for KafkaReplayLog {
    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<crate::replay::Recorded>> {
        self.read(&self.dlq_topic, Range::All, limit).await
    }

    async fn between(
        &self,
        since: i64,
        until: i64,
        limit: usize,
    ) -> anyhow::Result<crate::replay::InRange> {
        let entries = self
            .read(&self.topic, Range::Time { since, until }, limit)
            .await?;
        Ok(crate::replay::InRange::Entries(entries))
    }

    async fn offsets(
        &self,
        partition: i32,
        from: i64,
        to: Option<i64>,
        limit: usize,
    ) -> anyhow::Result<Option<Vec<crate::replay::Recorded>>> {
        let range = Range::Offsets {
            partition,
            from,
            to,
        };
        self.read(&self.topic, range, limit).await.map(Some)
    }
}
