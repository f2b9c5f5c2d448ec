//! One contract, every backend: the same cases run against the embedded backend (redb)
//! and against Kafka + Redis, through the seams the pipeline uses (`Publisher`,
//! `LogConsumer` and its lanes, `Store`, `Registry`): the order log hands back what was
//! published, in order and intact, and does not hand back what a lane committed; put, first result wins, get and batch reads,
//! waits, the registry's compare-and-set and history, plugin blobs, change notifications,
//! and worker heartbeats.

use std::sync::Arc;
use std::time::Duration;

use order_pipeline::backends::embedded::{EmbeddedDb, EmbeddedLog};
use order_pipeline::backends::kafka::reader::KafkaReplayLog;
use order_pipeline::backends::kafka::{self, DeadLetters, KafkaLog, KafkaPublisher, OrderConsumer};
use order_pipeline::backends::redis::Redis;
use order_pipeline::domain::{Order, OrderResult, PutOutcome, ResultStatus, Totals};
use order_pipeline::order_log::{BatchOutcome, Committed, Consumer, Lane, Publisher};
use order_pipeline::replay::Log;
use order_pipeline::rules::registry::Registry;
use order_pipeline::store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::support::{services, unique};

mod registry;

/// A backend under test.
pub(crate) struct Backend {
    pub(crate) name: &'static str,
    pub(crate) store: Store,
    pub(crate) registry: Registry,
}

pub(crate) fn result(id: &str, status: ResultStatus, item: &str) -> OrderResult {
    let order = Order::single_item(id, item, 4200, "EUR");
    OrderResult {
        id: id.to_string(),
        status,
        item: item.to_string(),
        currency: "EUR".into(),
        totals: Totals::of(&order),
        adjustments: Vec::new(),
        reasons: Vec::new(),
        rules: Vec::new(),
        error: if status == ResultStatus::Failed {
            "boom".into()
        } else {
            String::new()
        },
        attempts: 1,
        ruleset_version: 1,
        processed_by: "contract".into(),
        processed_at_unix_ms: 1,
        order: Some(order),
        replaced: None,
    }
}

async fn put_and_first_final_result_wins(b: &Backend) {
    let id = unique("contract-put");
    assert_eq!(b.store.get(&id).await.unwrap(), None, "{}", b.name);
    let failed = result(&id, ResultStatus::Failed, "book");
    assert_eq!(b.store.put(&failed).await.unwrap(), PutOutcome::Written);
    // A failed result may be replaced by a later attempt...
    let done = result(&id, ResultStatus::Done, "book");
    assert_eq!(b.store.put(&done).await.unwrap(), PutOutcome::Written);
    // ...but a final one is never replaced.
    let other = result(&id, ResultStatus::Rejected, "pen");
    assert_eq!(
        b.store.put(&other).await.unwrap(),
        PutOutcome::KeptExisting,
        "{}",
        b.name
    );
    assert_eq!(b.store.get(&id).await.unwrap(), Some(done), "{}", b.name);
}

async fn batch_reads_keep_the_order_of_ids(b: &Backend) {
    let ids: Vec<String> = (0..5)
        .map(|i| unique(&format!("contract-batch{i}")))
        .collect();
    for id in ids.iter().step_by(2) {
        b.store
            .put(&result(id, ResultStatus::Done, id))
            .await
            .unwrap();
    }
    let found = b.store.get_many(&ids, None).await.unwrap();
    let items: Vec<Option<&str>> = found
        .iter()
        .map(|r| r.as_ref().map(|r| r.item.as_str()))
        .collect();
    let want: Vec<Option<&str>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (i % 2 == 0).then_some(id.as_str()))
        .collect();
    assert_eq!(items, want, "{}", b.name);
}

async fn a_wait_returns_a_result_written_meanwhile(b: &Backend) {
    let id = unique("contract-wait");
    let waiting = {
        let (store, id) = (b.store.clone(), id.clone());
        tokio::spawn(async move { store.wait(&id, Duration::from_secs(20)).await })
    };
    let ids = [id.clone()];
    let batch = {
        let store = b.store.clone();
        let ids = ids.to_vec();
        tokio::spawn(async move { store.get_many(&ids, Some(Duration::from_secs(20))).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let written = result(&id, ResultStatus::Done, "book");
    b.store.put(&written).await.unwrap();
    b.store.announce(&[id.as_str()]).await.unwrap();
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        Some(written.clone()),
        "{}",
        b.name
    );
    assert_eq!(batch.await.unwrap().unwrap(), vec![Some(written)]);
    // A wait for an id nobody writes ends empty at its deadline.
    let missing = b
        .store
        .wait(&unique("contract-never"), Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(missing, None, "{}", b.name);
}

/// The payloads the order-log case publishes: distinct bytes, one key (one partition).
fn log_payloads(run: &str) -> Vec<Vec<u8>> {
    (0..20)
        .map(|i| format!("{run}-{i}\0\u{1}\u{ff}").into_bytes())
        .collect()
}

/// Starts feeding `consumer` on a task; answers the lanes it opens, the token that stops
/// it, and the task (which closes the consumer once the feed ends).
fn feed(
    mut consumer: Consumer,
) -> (
    mpsc::UnboundedReceiver<Box<dyn Lane>>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let (lanes, opened) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let feeding = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut open = move |lane: Box<dyn Lane>| {
                let _ = lanes.send(lane);
            };
            consumer.feed(&mut open, &stop).await.unwrap();
            consumer.close().await;
        })
    };
    (opened, stop, feeding)
}

/// The order log, through its seams (`Publisher`, `LogConsumer`, `Lane`, `ReplayLog`):
/// what is published comes back in order and intact; what a lane committed is not handed
/// to the next consumer of the log; an entry committed as a dead letter is read back from
/// the dead letters with its headers; reading by offsets gives the entries in order, or
/// nothing from a log without offsets.
async fn order_log_contract(
    name: &str,
    publisher: Publisher,
    consumer: impl Fn() -> Consumer,
    replay: Log,
) {
    let sent = log_payloads(name);
    for payload in &sent {
        publisher
            .publish("same-key", payload.clone(), &[])
            .await
            .unwrap();
    }
    let (mut opened, stop, feeding) = feed(consumer());
    let mut lane = tokio::time::timeout(Duration::from_secs(30), opened.recv())
        .await
        .expect("a lane opens within 30 s")
        .unwrap();
    let mut got = Vec::new();
    while got.len() < sent.len() {
        let batch = tokio::time::timeout(Duration::from_secs(30), lane.take())
            .await
            .expect("the published orders come back within 30 s")
            .unwrap()
            .unwrap();
        // The first entry of all is dead-lettered, with a header saying why.
        let mut outcome = BatchOutcome::default();
        if got.is_empty() {
            let why = vec![("reason".to_string(), format!("{name} contract"))];
            outcome.dead_letters.push((0, why));
        }
        let (partition, first_offset) = (batch[0].partition, batch[0].offset);
        got.extend(batch.iter().map(|e| e.payload.clone()));
        let committed = lane.commit(&batch, &mut outcome).await.unwrap();
        assert_eq!(committed, Committed::Done, "{name}");
        if got.len() == batch.len() {
            let read = replay
                .offsets(partition, first_offset, None, sent.len())
                .await
                .unwrap();
            if let Some(read) = read {
                let read: Vec<Vec<u8>> = read.into_iter().map(|r| r.payload).collect();
                assert_eq!(read, sent, "{name}: by offsets, in order");
            }
        }
    }
    assert_eq!(got, sent, "{name}: in order, byte for byte");
    let letters = replay.dead_letters(100).await.unwrap();
    assert_eq!(letters.len(), 1, "{name}: one dead letter");
    assert_eq!(letters[0].payload, sent[0], "{name}");
    assert!(
        letters[0]
            .headers
            .contains(&("reason".to_string(), format!("{name} contract"))),
        "{name}: {:?}",
        letters[0].headers
    );
    stop.cancel();
    drop(lane);
    feeding.await.unwrap();

    publisher
        .publish("same-key", b"marker".to_vec(), &[])
        .await
        .unwrap();
    let (mut opened, stop, feeding) = feed(consumer());
    let mut lane = tokio::time::timeout(Duration::from_secs(60), opened.recv())
        .await
        .expect("a lane opens within 60 s")
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(60), lane.take())
        .await
        .expect("the marker comes within 60 s")
        .unwrap()
        .unwrap();
    assert_eq!(
        first[0].payload, b"marker",
        "{name}: nothing committed was handed back"
    );
    stop.cancel();
    drop(lane);
    feeding.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_log_contract_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let publisher = Publisher::shared(Arc::clone(&db) as _);
    let consumer = || -> Consumer { Box::new(EmbeddedLog::new(Arc::clone(&db))) };
    order_log_contract("embedded", publisher, consumer, Arc::clone(&db) as _).await;
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn order_log_contract_kafka() {
    let Some(services) = services() else { return };
    let (topic, group) = (unique("contract-log"), unique("contract-group"));
    let dlq = unique("contract-dlq");
    kafka::ensure_topics(
        &services.kafka,
        &Default::default(),
        &[(topic.as_str(), 2), (dlq.as_str(), 1)],
        1,
    )
    .await
    .unwrap();
    let timeout = Duration::from_secs(10);
    let producer = kafka::producer(&services.kafka, &Default::default(), timeout).unwrap();
    let publisher = Publisher::new(KafkaPublisher::new(producer.clone(), &topic, timeout));
    let redis = Redis::connect(&services.redis, "", &Default::default(), None)
        .await
        .unwrap();
    let store = Store::new(redis.store());
    let consumer = || -> Consumer {
        let membership = kafka::Membership {
            group: &group,
            instance_id: None,
            session_timeout: Duration::from_secs(10),
            max_poll_interval: Duration::from_secs(300),
        };
        let orders =
            OrderConsumer::subscribe(&services.kafka, &Default::default(), &membership, &topic)
                .unwrap();
        let dead_letters = DeadLetters::new(producer.clone(), &dlq, timeout);
        Box::new(KafkaLog::new(orders, dead_letters, store.clone()))
    };
    let replay = KafkaReplayLog::new(&services.kafka, &Default::default(), &topic, &dlq);
    order_log_contract("kafka", publisher, consumer, Arc::new(replay)).await;
}

pub(crate) async fn run_contract(b: &Backend) {
    put_and_first_final_result_wins(b).await;
    batch_reads_keep_the_order_of_ids(b).await;
    a_wait_returns_a_result_written_meanwhile(b).await;
    registry::compare_and_set_history_and_blobs(b).await;
    registry::changes_are_notified(b).await;
    registry::heartbeats_are_listed_until_they_expire(b).await;
    registry::collects_beyond_the_history_limit(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let backend = Backend {
        name: "embedded",
        store: Store::shared(Arc::clone(&db) as _),
        registry: Registry::shared(Arc::clone(&db) as _),
    };
    run_contract(&backend).await;
    drop(backend);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn contract_redis() {
    let Some(services) = services() else { return };
    // Under a key prefix of its own, as a second pipeline sharing the Redis would be.
    let prefix = format!("{}:", unique("contract-prefix"));
    let redis = Redis::connect(&services.redis, &prefix, &Default::default(), None)
        .await
        .unwrap();
    let under_test = RedisUnderTest::start("redis", &redis, &unique("contract-group"));
    let backend = &under_test.backend;
    run_contract(backend).await;
    // A plugin stored before each worker group kept its own (under the prefix, shared by
    // the groups) is still read, and counts as present when a version goes live.
    let old = unique("shared-digest");
    let (host, port) = services.redis.rsplit_once(':').unwrap();
    let set = std::process::Command::new("redis-cli")
        .args(["-h", host, "-p", port, "SET"])
        .arg(format!("{prefix}pipeline:plugin:{old}"))
        .arg("old-bytes")
        .output()
        .unwrap();
    assert!(set.status.success(), "{set:?}");
    assert_eq!(
        backend.registry.plugin(&old).await.unwrap().as_deref(),
        Some(&b"old-bytes"[..])
    );
    assert_eq!(
        backend.registry.pin(&[&old]).await.unwrap(),
        Vec::<String>::new()
    );
    // Its keys are under the prefix, and nothing is written under the Go names.
    let id = unique("prefixed");
    backend
        .store
        .put(&result(&id, ResultStatus::Done, "book"))
        .await
        .unwrap();
    let plain = order_pipeline::backends::redis::RedisStore::connect(&services.redis)
        .await
        .unwrap();
    for key in [format!("order:{id}"), format!("order-result:{id}")] {
        assert!(
            plain
                .raw(&format!("{prefix}{key}"))
                .await
                .unwrap()
                .is_some()
        );
        assert_eq!(plain.raw(&key).await.unwrap(), None, "{key}");
    }
    under_test.stop().await;
}

/// A Redis backend under test, with its pub/sub listener running.
pub(crate) struct RedisUnderTest {
    pub(crate) backend: Backend,
    shutdown: CancellationToken,
    listener: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RedisUnderTest {
    /// The store and the registry of worker group `group` of `redis`, and its listener.
    pub(crate) fn start(name: &'static str, redis: &Redis, group: &str) -> Self {
        let registry = redis.registry(group);
        let shutdown = CancellationToken::new();
        let listener = tokio::spawn(redis.listener(Some(&registry)).run(shutdown.clone()));
        Self {
            backend: Backend {
                name,
                store: Store::new(redis.store()),
                registry: Registry::new(registry),
            },
            shutdown,
            listener,
        }
    }

    /// Stops the listener: it must stop on the shutdown signal, like every task of the
    /// process.
    pub(crate) async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.listener)
            .await
            .expect("the listener did not stop on shutdown")
            .unwrap()
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn redis_results_expire_after_the_result_ttl() {
    let Some(services) = services() else { return };
    let redis = Redis::connect(&services.redis, "", &Default::default(), None)
        .await
        .unwrap();
    let short = redis.store().with_ttl(Some(Duration::from_secs(1)));
    let id = unique("ttl");
    short
        .put(&result(&id, ResultStatus::Done, "book"))
        .await
        .unwrap();
    for key in [format!("order:{id}"), format!("order-result:{id}")] {
        let left = short.ttl_ms(&key).await.unwrap().unwrap();
        assert!((1..=1000).contains(&left), "{key}: {left} ms left");
    }
    assert!(short.get(&id).await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(short.get(&id).await.unwrap(), None);
    assert_eq!(short.raw(&format!("order:{id}")).await.unwrap(), None);

    // RESULT_TTL=0: kept forever.
    let forever = redis.store().with_ttl(None);
    let id = unique("ttl-forever");
    forever
        .put(&result(&id, ResultStatus::Done, "book"))
        .await
        .unwrap();
    for key in [format!("order:{id}"), format!("order-result:{id}")] {
        assert_eq!(forever.ttl_ms(&key).await.unwrap(), Some(-1), "{key}");
    }
}
