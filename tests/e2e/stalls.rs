//! No input stalls a partition (issue 21): ids with braces on a Redis Cluster and on a
//! single Redis, a result Redis refuses for good, a dead letter too large for its topic.
//! Each sends the hostile input first and ordinary orders after it on the same (only)
//! partition: every one must end final.

use std::time::Duration;

use crate::support::{
    cache_client, go_request, kafka_config, order_client, read_topic_until, redis_cluster,
    services, unique, wait_result,
};
use order_pipeline::app::{self, Role};
use order_pipeline::backends::redis::{Keys, RedisStore};
use order_pipeline::proto::CreateOrdersRequest;
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The ids of the issue: each holds a `}` or `{` that is no hash tag of the Go key, or one
/// that is.
const BRACE_IDS: [&str; 6] = ["a}", "}", "{}x}", "x{", "{a}b", "}{"];

/// Submits `count` plain orders in one call and waits for each to end `done`.
async fn plain_orders_end_done(
    order_addr: std::net::SocketAddr,
    cache: &mut order_pipeline::proto::cache_service_client::CacheServiceClient<
        tonic::transport::Channel,
    >,
    prefix: &str,
    count: usize,
) {
    let ids: Vec<String> = (0..count)
        .map(|i| unique(&format!("{prefix}-{i}")))
        .collect();
    let requests = ids.iter().map(|id| go_request(id, "pen", 3)).collect();
    let answer = order_client(order_addr)
        .await
        .create_orders(CreateOrdersRequest { orders: requests })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.responses.iter().all(|r| r.status == "accepted"));
    for id in &ids {
        let result = wait_result(cache, id, 60).await;
        assert_eq!(result.unwrap().status, "done", "{id}");
    }
}

/// Brace ids, then 200 plain orders, on one partition: every one ends final, and the Go
/// key of each brace id is readable with a plain GET.
async fn brace_ids_then_plain_orders(redis_addr: String) {
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.kafka.partitions = 1;
    config.redis.addr = Some(redis_addr.clone());
    // A prefix of its own: the ids are the issue's, literally, in every run.
    config.redis.key_prefix = format!("{}:", unique("braces"));
    let running = app::start(Role::All, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    for id in BRACE_IDS {
        let answer = orders.create_order(go_request(id, "brace", 5)).await;
        assert_eq!(answer.unwrap().into_inner().status, "accepted", "{id}");
    }
    plain_orders_end_done(running.order_addr.unwrap(), &mut cache, "plain", 200).await;
    // One partition, in order: the brace ids were decided before the plain orders.
    let go = RedisStore::connect(&redis_addr).await.unwrap();
    let keys = Keys::new(&config.redis.key_prefix, false);
    for id in BRACE_IDS {
        let result = wait_result(&mut cache, id, 5).await;
        assert_eq!(result.unwrap().status, "done", "{id}");
        let json = go.raw(&keys.go(id)).await.unwrap();
        assert_eq!(
            json.as_deref(),
            Some(r#"{"item":"brace","price":5,"status":"done"}"#),
            "GET {}",
            keys.go(id)
        );
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster and the broker: scripts/test.sh runs it"]
async fn brace_ids_never_stall_a_partition_on_a_redis_cluster() {
    let Some(nodes) = redis_cluster() else { return };
    brace_ids_then_plain_orders(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn brace_ids_never_stall_a_partition_on_a_single_redis() {
    let Some(services) = services() else { return };
    brace_ids_then_plain_orders(services.redis).await;
}

/// The first record of `topic` whose key is `key`, waiting up to 30 s.
async fn read_key(brokers: &str, topic: &str, key: &str) -> OwnedMessage {
    let has = |m: &OwnedMessage| m.key() == Some(key.as_bytes());
    let read = read_topic_until(brokers, topic, |read| read.iter().any(has)).await;
    read.into_iter().find(has).unwrap()
}

fn header(message: &OwnedMessage, name: &str) -> String {
    crate::support::header(message, name).unwrap_or_else(|| panic!("no header {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn a_result_redis_refuses_for_good_ends_failed_and_the_partition_goes_on() {
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.kafka.partitions = 1;
    config.redis.key_prefix = format!("{}:", unique("refused"));
    // The fault: a value of another type under the order's result key, so that the write
    // fails with WRONGTYPE, a real Redis error no retry gets past.
    let poison = unique("poison");
    let keys = Keys::new(&config.redis.key_prefix, false);
    let client = redis::Client::open(format!("redis://{}", services.redis)).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let _: i64 = redis::cmd("RPUSH")
        .arg(keys.full(&poison))
        .arg("not a result")
        .query_async(&mut connection)
        .await
        .unwrap();

    let running = app::start(Role::All, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let answer = orders.create_order(go_request(&poison, "book", 9)).await;
    assert_eq!(answer.unwrap().into_inner().status, "accepted");
    plain_orders_end_done(running.order_addr.unwrap(), &mut cache, "next", 100).await;
    let failed = wait_result(&mut cache, &poison, 5).await.unwrap();
    assert_eq!(failed.status, "failed");
    assert!(
        failed.error.contains("refused") && failed.error.contains("WRONGTYPE"),
        "{}",
        failed.error
    );
    let dead = read_key(&services.kafka, &config.kafka.dlq_topic, &poison).await;
    assert!(header(&dead, "reason").contains("WRONGTYPE"));
    assert_eq!(header(&dead, "stored-as"), "failed");
    assert!(
        dead.payload().is_some_and(|p| !p.is_empty()),
        "the order itself, to replay"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn a_dead_letter_too_large_for_its_topic_goes_without_its_payload() {
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.kafka.partitions = 1;
    // A dead-letter topic that takes records of at most 1 KiB.
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &services.kafka)
        .create()
        .unwrap();
    let topic = NewTopic::new(&config.kafka.dlq_topic, 1, TopicReplication::Fixed(1))
        .set("max.message.bytes", "1024");
    let created = admin
        .create_topics(&[topic], &AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let running = app::start(Role::All, &config).await.unwrap();
    // 4 KiB that are not an order: dead-lettered, and too large for that topic.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &services.kafka)
        .create()
        .unwrap();
    let garbage = vec![0xff_u8; 4096];
    producer
        .send(
            FutureRecord::to(&config.kafka.topic)
                .key("too-large")
                .payload(&garbage),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let after = unique("after-too-large");
    orders
        .create_order(go_request(&after, "book", 7))
        .await
        .unwrap();
    assert_eq!(
        wait_result(&mut cache, &after, 60).await.unwrap().status,
        "done"
    );
    let dead = read_key(&services.kafka, &config.kafka.dlq_topic, "too-large").await;
    assert!(dead.payload().is_none_or(<[u8]>::is_empty));
    assert!(header(&dead, "payload-omitted").starts_with("4096 bytes"));
    assert!(header(&dead, "reason").contains("not a protobuf OrderRequest"));
    running.stop().await.unwrap();
}
