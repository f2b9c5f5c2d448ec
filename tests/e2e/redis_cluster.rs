//! The Redis backend on a real three-master Redis Cluster (started by scripts/test.sh):
//! the whole backend contract (scripts keep their keys in one slot, the registry's
//! compare-and-set, pub/sub notifications and waits, heartbeats without SCAN), the key
//! layout (`order:<id>` as the Go clients read it, `{order:<id>}:result` in its slot),
//! and the pipeline deciding orders through the cluster.

use order_pipeline::app::{self, Role};
use order_pipeline::backends::redis::{Redis, RedisStore, hash_tag};
use order_pipeline::domain::ResultStatus;

use crate::contract::{RedisUnderTest, result, run_contract};
use crate::support::{
    cache_client, go_request, kafka_config, order_client, redis_cluster, services, unique,
    wait_result,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster: scripts/test.sh runs it"]
async fn contract_redis_cluster() {
    let Some(nodes) = redis_cluster() else { return };
    // Detected from the node itself, given one node of the cluster.
    let first = nodes.split(',').next().unwrap();
    let one = Redis::connect(first, "", &Default::default(), None)
        .await
        .unwrap();
    assert!(one.is_cluster(), "a cluster node is detected as such");
    drop(one);
    // REDIS_CLUSTER=false: taken as a single Redis, whatever the node says.
    let forced = Redis::connect(first, "", &Default::default(), Some(false))
        .await
        .unwrap();
    assert!(!forced.is_cluster());
    drop(forced);

    let prefix = format!("{}:", unique("cluster-prefix"));
    let redis = Redis::connect(&nodes, &prefix, &Default::default(), None)
        .await
        .unwrap();
    assert!(redis.is_cluster());
    let under_test = RedisUnderTest::start("redis cluster", &redis, &unique("cluster-group"));
    let backend = &under_test.backend;
    run_contract(backend).await;

    // The Go key as it always was, and the full result in its slot.
    let plain = RedisStore::connect(&nodes).await.unwrap();
    for id in [unique("layout"), format!("{}{{tagged}}", unique("braces"))] {
        backend
            .store
            .put(&result(&id, ResultStatus::Done, "book"))
            .await
            .unwrap();
        let go = format!("{prefix}order:{id}");
        let full = if hash_tag(&go) == go {
            format!("{{{go}}}:result")
        } else {
            format!("{go}:result")
        };
        assert_eq!(
            hash_tag(&full),
            hash_tag(&go),
            "{full} and {go} share a slot"
        );
        let json = plain.raw(&go).await.unwrap().expect("the Go key");
        assert!(json.contains("\"status\":\"done\""), "{json}");
        assert!(plain.raw(&full).await.unwrap().is_some(), "{full}");
    }
    under_test.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster and the broker: scripts/test.sh runs it"]
async fn the_pipeline_decides_orders_through_a_redis_cluster() {
    let Some(nodes) = redis_cluster() else { return };
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.redis.addr = Some(nodes);
    let running = app::start(Role::All, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    // Enough ids to land in every master's slots.
    let ids: Vec<String> = (0..30).map(|i| unique(&format!("cluster-{i}"))).collect();
    for id in &ids {
        orders
            .create_order(go_request(id, "book", 42))
            .await
            .unwrap();
    }
    for id in &ids {
        assert_eq!(
            wait_result(&mut cache, id, 60).await.unwrap().status,
            "done",
            "{id}"
        );
    }
    running.stop().await.unwrap();
}
