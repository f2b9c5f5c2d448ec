//! The Kafka worker's behaviour on the real broker: a partition that retries in place
//! does not stall the others, and KAFKA_PROPERTIES reach every Kafka client.

use std::time::Duration;

use crate::support::{cache_client, go_request, kafka_config, services, unique, wait_result};
use order_pipeline::app::{self, Role};
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn a_partition_that_retries_in_place_does_not_stall_the_others() {
    // Partition 0 gets orders that retry in place for ~30 s in all, then more than its
    // queue in the worker holds; partition 1 gets orders afterwards. The worker must keep
    // polling (the max poll interval here is 6 s) and decide partition 1's orders while
    // partition 0 still waits, instead of blocking on partition 0's full queue.
    let Some(services) = services() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ruleset = dir.path().join("chaos.toml");
    std::fs::write(&ruleset, "[[rule]]\nplugin = \"builtin:rule-chaos\"\n").unwrap();
    let mut config = kafka_config(&services);
    config.plugins.ruleset = Some(ruleset);
    config.worker.max_retries = 2;
    // 0.25 + 0.5 s of backoff per retried order: partition 0 waits ~30 s, five times the
    // max poll interval, and partition 1 has ample time even on a busy machine.
    config.worker.retry_backoff_ms = 250;
    config.kafka.session_timeout_ms = 6_000;
    config.kafka.max_poll_interval_ms = 6_000;
    let running = app::start(Role::All, &config).await.unwrap();
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &services.kafka)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let send = |id: String, item: &'static str, partition: i32| {
        let producer = producer.clone();
        let topic = config.kafka.topic.clone();
        async move {
            let payload = prost::Message::encode_to_vec(&go_request(&id, item, 1));
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&id)
                        .payload(&payload)
                        .partition(partition),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    let slow: Vec<String> = (0..40).map(|i| unique(&format!("slow-{i}"))).collect();
    for id in &slow {
        send(id.clone(), "fail-1", 0).await;
    }
    let behind: Vec<String> = (0..1500).map(|i| unique(&format!("behind-{i}"))).collect();
    futures::future::join_all(behind.iter().map(|id| send(id.clone(), "book", 0))).await;
    // Partition 0 is now stuck for ~30 s: its lane retries the slow orders in place (a
    // batch's results are stored together, so none of them is visible before the last),
    // and its queue is full behind them. Partition 1's orders come in meanwhile.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let other: Vec<String> = (0..50).map(|i| unique(&format!("other-{i}"))).collect();
    futures::future::join_all(other.iter().map(|id| send(id.clone(), "book", 1))).await;

    let mut latest_other = 0;
    for id in &other {
        let result = wait_result(&mut cache, id, 120).await.unwrap();
        assert_eq!(result.status, "done", "{id}");
        latest_other = latest_other.max(result.processed_at_unix_ms);
    }
    let last_slow = wait_result(&mut cache, slow.last().unwrap(), 120)
        .await
        .unwrap();
    assert_eq!(last_slow.status, "failed");
    assert!(
        latest_other < last_slow.processed_at_unix_ms,
        "partition 1 waited for partition 0: its last order at {latest_other}, partition 0's last retried order at {}",
        last_slow.processed_at_unix_ms
    );
    for id in &behind {
        assert_eq!(
            wait_result(&mut cache, id, 120).await.unwrap().status,
            "done"
        );
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn kafka_properties_reach_every_client() {
    let Some(services) = services() else { return };
    // librdkafka checks every property: a wrong one stops the start, naming the variable.
    let mut config = kafka_config(&services);
    config.kafka.properties = vec![("no.such.property".into(), "1".into())];
    let error = format!("{:#}", app::start(Role::All, &config).await.err().unwrap());
    assert!(
        error.contains("KAFKA_PROPERTIES") && error.contains("no.such.property"),
        "{error}"
    );
    // Accepted ones go to the producer, the consumer and the admin client alike.
    config.kafka.properties = vec![
        ("client.id".into(), "order-pipeline-props-test".into()),
        ("security.protocol".into(), "plaintext".into()),
    ];
    let running = app::start(Role::All, &config).await.unwrap();
    crate::support::decide_one(&running, "props").await;
    running.stop().await.unwrap();
}
