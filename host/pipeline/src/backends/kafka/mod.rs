//! Kafka: an idempotent producer with acks=all (the OrderService and the dead-letter
//! path), topic creation at start-up, and the consumer the worker uses.

mod consumer;
mod lanes;
pub mod reader;

pub use consumer::{DeadLetters, LogEntry, OrderConsumer};
pub use lanes::KafkaLog;

/// How a worker takes part in its consumer group.
#[derive(Debug, Clone, Copy)]
pub struct Membership<'a> {
    /// The group.
    pub group: &'a str,
    /// Static membership id, if any: a restarted worker with the same id takes its
    /// partitions back at once instead of waiting for the group to notice the old one
    /// is gone.
    pub instance_id: Option<&'a str>,
    /// `session.timeout.ms`: how long the broker waits for a silent member.
    pub session_timeout: Duration,
    /// `max.poll.interval.ms`: longest time between two polls before leaving the group.
    pub max_poll_interval: Duration,
}

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// What every Kafka client of the process gets besides the brokers.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ClientOptions {
    /// librdkafka debug contexts (`KAFKA_DEBUG`, e.g. `cgrp,topic,fetch`), logged through
    /// `tracing` at target `librdkafka`.
    pub debug: Option<String>,
    /// librdkafka properties (`KAFKA_PROPERTIES`): security protocol, SASL, TLS files,
    /// client id... The pipeline's own settings (acks, idempotence, the group, offsets)
    /// are not among them: `config` refuses those keys.
    pub properties: Vec<(String, String)>,
}

impl std::fmt::Debug for ClientOptions {
    /// Secret properties (passwords, keys) show as `***`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let properties: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(key, value)| {
                let secret = crate::config::is_secret_kafka_property(key);
                (key.as_str(), if secret { "***" } else { value.as_str() })
            })
            .collect();
        f.debug_struct("ClientOptions")
            .field("debug", &self.debug)
            .field("properties", &properties)
            .finish()
    }
}

/// Settings every client shares: the brokers, then `tuning` (the pipeline's defaults for
/// this kind of client), then `KAFKA_PROPERTIES`, which may change the tuning but never
/// the settings the caller sets after this.
fn base(brokers: &str, options: &ClientOptions, tuning: &[(&str, &str)]) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    if let Some(debug) = options.debug.as_deref().filter(|d| !d.is_empty()) {
        config.set("debug", debug);
    }
    for (key, value) in tuning {
        config.set(*key, *value);
    }
    for (key, value) in &options.properties {
        config.set(key, value);
    }
    config
}

/// The hint an error of creating a client gets when properties were passed.
fn properties_hint(options: &ClientOptions) -> &'static str {
    if options.properties.is_empty() {
        ""
    } else {
        " (check KAFKA_PROPERTIES)"
    }
}

/// The pipeline's producer: its statistics feed [`ProducerStats`].
pub type Producer = FutureProducer<ProducerStats>;

/// The producer's context: publishes librdkafka's messages per produce batch (statistics
/// every 5 s) as [`crate::metrics::PRODUCE_BATCH_MESSAGES`].
pub struct ProducerStats;

impl rdkafka::ClientContext for ProducerStats {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            // Zero until the window saw a batch.
            if stats.batchcnt.cnt > 0 {
                metrics::gauge!(crate::metrics::PRODUCE_BATCH_MESSAGES, "topic" => topic.clone())
                    .set(stats.batchcnt.avg as f64);
            }
        }
    }
}

/// A producer bound to one topic.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: Producer,
    topic: String,
    timeout: Duration,
}

/// The producer's tuning, which `KAFKA_PROPERTIES` may change: no compression (an order
/// is a few hundred bytes), 1 ms linger so concurrent orders share a request (5 ms
/// saved CPU per order but cost a lone client 4 ms per order: docs/BENCHMARKS.md).
pub const PRODUCER_TUNING: [(&str, &str); 2] = [("compression.type", "none"), ("linger.ms", "1")];

/// The producer: [`PRODUCER_TUNING`], and what no property changes: durable (acks=all),
/// idempotent, the produce timeout; statistics every 5 s for the batch-size metric.
pub fn producer(
    brokers: &str,
    options: &ClientOptions,
    timeout: Duration,
) -> anyhow::Result<Producer> {
    base(brokers, options, &PRODUCER_TUNING)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .set("statistics.interval.ms", "5000")
        .create_with_context(ProducerStats)
        .with_context(|| {
            format!(
                "cannot create a Kafka producer for `{brokers}`{}",
                properties_hint(options)
            )
        })
}

impl KafkaPublisher {
    /// Publishes to `topic` with `producer`.
    pub fn new(producer: Producer, topic: &str, timeout: Duration) -> Self {
        Self {
            producer,
            topic: topic.to_string(),
            timeout,
        }
    }

    /// Publishes `payload` keyed by `key` with `headers`; returns once the broker
    /// acknowledged it.
    pub async fn publish(
        &self,
        key: &str,
        payload: &[u8],
        headers: &[(String, String)],
    ) -> anyhow::Result<()> {
        let headers = (!headers.is_empty()).then_some(headers);
        send(
            &self.producer,
            &self.topic,
            key,
            payload,
            headers,
            self.timeout,
        )
        .await
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The underlying producer.
    pub fn producer(&self) -> &Producer {
        &self.producer
    }
}

/// Sends one record and waits for the broker's acknowledgement.
pub(crate) async fn send(
    producer: &Producer,
    topic: &str,
    key: &str,
    payload: &[u8],
    headers: Option<&[(String, String)]>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let mut record = FutureRecord::to(topic).key(key).payload(payload);
    if let Some(headers) = headers {
        let mut owned = OwnedHeaders::new_with_capacity(headers.len());
        for (name, value) in headers {
            owned = owned.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        record = record.headers(owned);
    }
    producer
        .send(record, timeout)
        .await
        .map(|_| ())
        .map_err(|(e, _)| anyhow::Error::new(e).context("the broker did not acknowledge the order"))
}

/// The error code of a produce that no retry can get past: the record is too large for
/// the client or the topic, or the broker refuses the record itself (a policy, a
/// malformed record). `None` for everything else (the broker away, a timeout, a
/// leader election), which passes with time.
pub fn permanent_error(e: &anyhow::Error) -> Option<String> {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode as Code};
    let error = e.chain().find_map(|c| c.downcast_ref::<KafkaError>())?;
    let code = error.rdkafka_error_code()?;
    matches!(
        code,
        Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::InvalidMessage
            | Code::InvalidRecord
            | Code::PolicyViolation
    )
    .then(|| format!("{code:?}"))
}

/// Whether the cluster answers a metadata request for `topic` within `timeout` and
/// knows the topic: the readiness probe of the roles that use Kafka.
pub async fn reachable(producer: &Producer, topic: &str, timeout: Duration) -> anyhow::Result<()> {
    use rdkafka::producer::Producer as _;
    let producer = producer.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), timeout)
            .context("no broker answers")?;
        match metadata.topics().first() {
            Some(found) => match found.error() {
                None => Ok(()),
                Some(error) => Err(anyhow::anyhow!(
                    "topic {topic}: {}",
                    RDKafkaErrorCode::from(error)
                )),
            },
            None => Err(anyhow::anyhow!("the brokers do not know topic {topic}")),
        }
    })
    .await
    .context("the Kafka probe panicked")?
}

/// Creates the topics that do not exist yet, with the configured partitions and
/// replication (production brokers usually do not auto-create topics).
pub async fn ensure_topics(
    brokers: &str,
    options: &ClientOptions,
    topics: &[(&str, i32)],
    replication: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        base(brokers, options, &[]).create().with_context(|| {
            format!(
                "cannot create a Kafka admin client for `{brokers}`{}",
                properties_hint(options)
            )
        })?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|(name, partitions)| {
            NewTopic::new(name, *partitions, TopicReplication::Fixed(replication))
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results =
        tokio::time::timeout(Duration::from_secs(30), admin.create_topics(&new, &options))
            .await
            .map_err(|_| anyhow::anyhow!("the broker at `{brokers}` did not answer within 30 s"))?
            .with_context(|| format!("cannot create topics on `{brokers}`"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("cannot create topic `{topic}`: {code}"),
        }
    }
    Ok(())
}

/// A consumer in `group` that never auto-stores offsets: the worker stores an offset
/// only after the message's result is written, and stored offsets are committed
/// periodically and at shutdown.
/// The worker consumer's context: publishes librdkafka's per-partition consumer lag
/// (statistics every 5 s) as [`crate::metrics::CONSUMER_LAG`].
pub struct LagContext;

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        for (topic, stats) in &statistics.topics {
            for (partition, stats) in &stats.partitions {
                // -1: librdkafka's internal partition, or one this member does not own.
                if *partition >= 0 && stats.consumer_lag >= 0 {
                    metrics::gauge!(
                        crate::metrics::CONSUMER_LAG,
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(stats.consumer_lag as f64);
                }
            }
        }
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {}

/// The worker consumer's tuning, which `KAFKA_PROPERTIES` may change. Kafka answers a
/// fetch as soon as data arrives (fetch.min.bytes 1); the wait only bounds an idle fetch.
/// 100 ms instead of librdkafka's 500 ms: a partition that goes idle and busy again is
/// picked up sooner; 5 ms measured no faster under load and made idle workers poll 200
/// times a second (docs/BENCHMARKS.md).
pub const CONSUMER_TUNING: [(&str, &str); 1] = [("fetch.wait.max.ms", "100")];

fn consumer(
    brokers: &str,
    options: &ClientOptions,
    membership: &Membership<'_>,
) -> anyhow::Result<StreamConsumer<LagContext>> {
    let mut config = base(brokers, options, &CONSUMER_TUNING);
    if let Some(id) = membership.instance_id.filter(|id| !id.is_empty()) {
        config.set("group.instance.id", id);
    }
    config
        .set("group.id", membership.group)
        .set(
            "session.timeout.ms",
            membership.session_timeout.as_millis().to_string(),
        )
        .set(
            "max.poll.interval.ms",
            membership.max_poll_interval.as_millis().to_string(),
        )
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "200")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        .set("statistics.interval.ms", "5000")
        .create_with_context(LagContext)
        .with_context(|| {
            format!(
                "cannot create a Kafka consumer for `{brokers}`{}",
                properties_hint(options)
            )
        })
}

/// The order log's publishing side, on a Kafka topic.
#[async_trait::async_trait]
impl crate::order_log::OrderPublisher for KafkaPublisher {
    fn destination(&self) -> &str {
        &self.topic
    }

    async fn publish(
        &self,
        id: &str,
        payload: Vec<u8>,
        headers: &[(String, String)],
    ) -> anyhow::Result<()> {
        KafkaPublisher::publish(self, id, &payload, headers).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_properties_change_the_tuning_but_not_the_guarantees() {
        let options = ClientOptions {
            debug: None,
            properties: vec![
                ("linger.ms".into(), "5".into()),
                ("client.id".into(), "mine".into()),
            ],
        };
        let config = base("broker:9092", &options, &PRODUCER_TUNING);
        assert_eq!(config.get("linger.ms"), Some("5"));
        assert_eq!(config.get("compression.type"), Some("none"));
        assert_eq!(config.get("client.id"), Some("mine"));
        let defaults = base("broker:9092", &ClientOptions::default(), &CONSUMER_TUNING);
        assert_eq!(defaults.get("fetch.wait.max.ms"), Some("100"));
        assert_eq!(defaults.get("linger.ms"), None);
    }
}
