//! Backend assembly: the one place that picks the backends (Kafka + Redis when configured,
//! the embedded database otherwise) and hands the roles the seams they use ([`Store`],
//! [`Registry`], [`Publisher`], [`Consumer`], the replay [`Log`](crate::replay::Log)).
//! Adding a backend means a folder in `backends/`, a branch here, and the contract tests.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::Role;
use crate::backends::embedded::{EmbeddedDb, EmbeddedLog};
use crate::backends::kafka;
use crate::backends::redis::{Redis, RedisRegistry};
use crate::config::Config;
use crate::order_log::{Consumer, Publisher};
use crate::readiness::{self, Readiness};
use crate::rules::registry::Registry;
use crate::store::Store;

/// How long the Kafka readiness probe waits for a metadata answer.
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_millis(2500);

/// The backends one process opened for its roles.
pub(super) struct Backends {
    /// The embedded database, in embedded mode.
    pub embedded: Option<Arc<EmbeddedDb>>,
    kafka_brokers: Option<String>,
    kafka_options: kafka::ClientOptions,
    producer: Option<kafka::Producer>,
    produce_timeout: Duration,
    redis: Option<Redis>,
    redis_registry: Option<RedisRegistry>,
    /// The result store, for the roles that write or read results.
    pub store: Option<Store>,
}

/// Checks that `role` has the backends it needs in `config`.
pub(super) fn check(role: Role, config: &Config) -> anyhow::Result<()> {
    match (role, brokers(config), redis_addr(config)) {
        (Role::All, Some(_), None) | (Role::All, None, Some(_)) => anyhow::bail!(
            "set both KAFKA_BROKERS and REDIS_ADDR, or neither to use the embedded log and store"
        ),
        (Role::OrderService | Role::Worker, None, _) => anyhow::bail!(
            "this role needs KAFKA_BROKERS; the embedded log only works with `order-pipeline run`"
        ),
        (Role::Worker | Role::CacheService | Role::Admin, _, None) => anyhow::bail!(
            "this role needs REDIS_ADDR; the embedded store only works with `order-pipeline run`"
        ),
        _ => Ok(()),
    }
}

fn brokers(config: &Config) -> Option<&str> {
    config
        .kafka
        .brokers
        .as_deref()
        .filter(|b| !b.trim().is_empty())
}

fn redis_addr(config: &Config) -> Option<&str> {
    config
        .redis
        .addr
        .as_deref()
        .filter(|a| !a.trim().is_empty())
}

/// Opens what `role` needs: the embedded database, or the Kafka topics and producer and
/// one Redis connection (shared by the store and the registry).
pub(super) async fn open(role: Role, config: &Config) -> anyhow::Result<Backends> {
    let kafka_brokers = brokers(config);
    let embedded = match (kafka_brokers, redis_addr(config)) {
        (None, None) => {
            tracing::info!(data_dir = %config.data_dir.display(), "using the embedded log and store");
            Some(EmbeddedDb::open(&config.data_dir)?)
        }
        _ => None,
    };
    let produce_timeout = Duration::from_millis(config.kafka.produce_timeout_ms);
    let kafka_options = kafka::ClientOptions {
        debug: config.kafka.debug.clone(),
        properties: config.kafka.properties.clone(),
    };
    let producer = match kafka_brokers {
        Some(brokers) if role.serves_orders() || role.works() => {
            let topics = [
                (config.kafka.topic.as_str(), config.kafka.partitions),
                (config.kafka.dlq_topic.as_str(), 1),
            ];
            kafka::ensure_topics(brokers, &kafka_options, &topics, config.kafka.replication)
                .await?;
            Some(kafka::producer(brokers, &kafka_options, produce_timeout)?)
        }
        _ => None,
    };
    let redis = match (&embedded, redis_addr(config)) {
        (None, Some(addr)) if role.follows_rules() || role.serves_results() => {
            let redis = &config.redis;
            Some(Redis::connect(addr, &redis.key_prefix, &redis.tls, redis.cluster).await?)
        }
        _ => None,
    };
    if let Some(redis) = redis.as_ref().filter(|_| role.works()) {
        redis.check_durability().await; // logs a warning when not durable
    }
    let redis_registry = redis
        .as_ref()
        .filter(|_| role.follows_rules())
        .map(|r| r.registry(&config.kafka.group));
    let store = match (&embedded, &redis) {
        (Some(db), _) => Some(Store::shared(Arc::clone(db) as _)),
        (None, Some(redis)) => Some(Store::new(redis.store().with_ttl(config.result_ttl))),
        _ => None,
    };
    Ok(Backends {
        embedded,
        kafka_brokers: kafka_brokers.map(str::to_string),
        kafka_options,
        producer,
        produce_timeout,
        redis,
        redis_registry,
        store,
    })
}

impl Backends {
    /// Spawns what the backends run beside the roles: the embedded retention, the Redis
    /// change listener, and a readiness probe per dependency.
    pub(super) fn spawn(
        &self,
        role: Role,
        config: &Config,
        readiness: &Arc<Readiness>,
        tasks: &mut JoinSet<anyhow::Result<()>>,
        shutdown: &CancellationToken,
    ) {
        if let Some(db) = self.embedded.as_ref().filter(|_| role.works()) {
            tasks.spawn(crate::backends::embedded::run_retention(
                Arc::clone(db),
                config.result_ttl,
                shutdown.clone(),
            ));
        }
        if let Some(redis) = &self.redis {
            let listener = redis.listener(self.redis_registry.as_ref());
            tasks.spawn(listener.run(shutdown.clone()));
            let redis = redis.clone();
            let check = move || {
                let redis = redis.clone();
                async move { redis.ping().await }
            };
            let probe = readiness::probe(Arc::clone(readiness), "redis", check, shutdown.clone());
            tasks.spawn(probe);
        }
        if let Some(producer) = &self.producer {
            let (producer, topic) = (producer.clone(), config.kafka.topic.clone());
            let check = move || {
                let (producer, topic) = (producer.clone(), topic.clone());
                async move { kafka::reachable(&producer, &topic, KAFKA_PROBE_TIMEOUT).await }
            };
            let probe = readiness::probe(Arc::clone(readiness), "kafka", check, shutdown.clone());
            tasks.spawn(probe);
        }
    }

    /// The registry of the ruleset, for a role that follows it.
    pub(super) fn registry(&self) -> anyhow::Result<Registry> {
        match (&self.embedded, &self.redis_registry) {
            (Some(db), _) => Ok(Registry::shared(Arc::clone(db) as _)),
            (None, Some(registry)) => Ok(Registry::new(registry.clone())),
            (None, None) => anyhow::bail!("the worker has no registry (a bug in start-up)"),
        }
    }

    /// The result store, for a role that needs it.
    pub(super) fn store(&self, role: &str) -> anyhow::Result<Store> {
        match &self.store {
            Some(store) => Ok(store.clone()),
            None => anyhow::bail!("the {role} has no result store (a bug in start-up)"),
        }
    }

    /// Where the OrderService publishes.
    pub(super) fn publisher(&self, config: &Config) -> anyhow::Result<Publisher> {
        match (&self.embedded, &self.producer) {
            (Some(db), _) => Ok(Publisher::shared(Arc::clone(db) as _)),
            (None, Some(producer)) => Ok(Publisher::new(kafka::KafkaPublisher::new(
                producer.clone(),
                &config.kafka.topic,
                self.produce_timeout,
            ))),
            _ => anyhow::bail!("the OrderService has no log (a bug in start-up)"),
        }
    }

    /// Where the worker consumes, writing its results to `store`.
    pub(super) fn consumer(&self, config: &Config, store: Store) -> anyhow::Result<Consumer> {
        match (&self.embedded, &self.producer, &self.kafka_brokers) {
            (Some(db), _, _) => Ok(Box::new(EmbeddedLog::new(Arc::clone(db)))),
            (None, Some(producer), Some(brokers)) => {
                let kafka = &config.kafka;
                let membership = kafka::Membership {
                    group: &kafka.group,
                    instance_id: kafka.instance_id.as_deref(),
                    session_timeout: Duration::from_millis(kafka.session_timeout_ms),
                    max_poll_interval: Duration::from_millis(kafka.max_poll_interval_ms),
                };
                let orders = kafka::OrderConsumer::subscribe(
                    brokers,
                    &self.kafka_options,
                    &membership,
                    &kafka.topic,
                )?;
                tracing::info!(topic = %kafka.topic, group = %kafka.group, "worker consuming");
                let dead_letters = kafka::DeadLetters::new(
                    producer.clone(),
                    &kafka.dlq_topic,
                    self.produce_timeout,
                );
                Ok(Box::new(kafka::KafkaLog::new(orders, dead_letters, store)))
            }
            _ => anyhow::bail!("the worker has no order log (a bug in start-up)"),
        }
    }

    /// Where a replay reads the worker's orders back.
    pub(super) fn replay_log(&self, config: &Config) -> Option<crate::replay::Log> {
        match (&self.embedded, &self.kafka_brokers) {
            (Some(db), _) => Some(Arc::clone(db) as _),
            (None, Some(brokers)) => Some(Arc::new(kafka::reader::KafkaReplayLog::new(
                brokers,
                &self.kafka_options,
                &config.kafka.topic,
                &config.kafka.dlq_topic,
            ))),
            (None, None) => None,
        }
    }
}
