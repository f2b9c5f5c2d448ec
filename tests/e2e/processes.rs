//! Worker processes (the real binary) against the real Redis and broker started by
//! scripts/test.sh: one killed with SIGKILL mid-stream and restarted loses no order
//! (offsets are stored only after results); two of them converge on a newly deployed
//! ruleset; a whole pipeline process runs one producer and one consumer.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use order_pipeline::app::{self, Role};
use order_pipeline::config::Config;

use crate::faults::harness::wait_port;
use crate::support::{LOOPBACK_ANY_PORT, free_port};
use order_pipeline::proto::cache_service_client::CacheServiceClient;
use order_pipeline::proto::order_service_client::OrderServiceClient;
use order_pipeline::proto::{CreateOrdersRequest, OrderRequest, ResultRequest};

/// A config with topics and group of its own (named after `prefix` and the time), on
/// free loopback ports; returns the time stamp too, for unique order ids.
fn config_for(prefix: &str, redis: String, kafka: String) -> (u128, Config) {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut config = Config::default();
    config.kafka.brokers = Some(kafka);
    config.redis.addr = Some(redis);
    config.kafka.topic = format!("{prefix}-orders-{stamp}");
    config.kafka.dlq_topic = format!("{prefix}-dlq-{stamp}");
    config.kafka.group = format!("{prefix}-group-{stamp}");
    config.kafka.partitions = 2;
    config.servers.order = LOOPBACK_ANY_PORT;
    config.servers.cache = LOOPBACK_ANY_PORT;
    // Not Config's `data/component-cache`, relative to the tests' directory.
    config.plugins.component_cache = Some(crate::support::component_cache());
    (stamp, config)
}

/// A child process that is killed when dropped, so a failing test leaves none behind.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `order-pipeline worker` as a child process with `config`'s Kafka and Redis.
fn worker_process(config: &Config, ruleset: Option<&std::path::Path>) -> KillOnDrop {
    worker_process_with(config, ruleset, "127.0.0.1:0", "worker-1")
}

fn worker_process_with(
    config: &Config,
    ruleset: Option<&std::path::Path>,
    admin_addr: &str,
    instance: &str,
) -> KillOnDrop {
    let mut command = pipeline_command("worker", config);
    command
        .env(
            "WORKER_INSTANCE_ID",
            format!("{}-{instance}", config.kafka.group),
        )
        .env("ADMIN_ADDR", admin_addr);
    if let Some(ruleset) = ruleset {
        command.env("RULESET", ruleset);
    }
    KillOnDrop(command.spawn().expect("start the worker binary"))
}

/// `order-pipeline <subcommand>` with `config`'s Kafka, Redis, topics and group, the
/// tests' component cache and generous plugin limits; logs at warn (`WORKER_LOG`).
fn pipeline_command(subcommand: &str, config: &Config) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_order-pipeline"));
    command
        .arg(subcommand)
        .env("KAFKA_BROKERS", config.kafka.brokers.as_deref().unwrap())
        .env("REDIS_ADDR", config.redis.addr.as_deref().unwrap())
        .env("KAFKA_TOPIC", &config.kafka.topic)
        .env("DLQ_TOPIC", &config.kafka.dlq_topic)
        .env("WORKER_GROUP", &config.kafka.group)
        .env("COMPONENT_CACHE_DIR", crate::support::component_cache())
        .env("PLUGIN_FUEL", "1000000000")
        .env("PLUGIN_DEADLINE_MS", "5000")
        .env(
            "RUST_LOG",
            std::env::var("WORKER_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn sigkilled_worker_loses_nothing() {
    let Some(crate::support::Services { redis, kafka }) = crate::support::services() else {
        return;
    };
    let (stamp, config) = config_for("kill", redis, kafka);
    let front = app::start(Role::OrderService, &config).await.unwrap();
    let reader = app::start(Role::CacheService, &config).await.unwrap();
    let mut orders = OrderServiceClient::connect(format!("http://{}", front.order_addr.unwrap()))
        .await
        .unwrap();
    let mut cache = CacheServiceClient::connect(format!("http://{}", reader.cache_addr.unwrap()))
        .await
        .unwrap();

    // A slow first worker (a rule that burns CPU), so that it is mid-stream when killed.
    let dir = tempfile::tempdir().unwrap();
    let slow = crate::support::slow_ruleset(dir.path(), 2_000_000);
    let mut first = worker_process(&config, Some(&slow));

    // More orders per partition than a worker takes in one batch (256): when the first
    // result is visible, its partition still has whole batches to go.
    let ids: Vec<String> = (0..1200).map(|i| format!("kill-{stamp}-{i}")).collect();
    let batch = ids
        .iter()
        .map(|id| OrderRequest {
            id: id.clone(),
            item: "book".into(),
            price: 3,
            ..Default::default()
        })
        .collect();
    let responses = orders
        .create_orders(CreateOrdersRequest { orders: batch })
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert!(responses.iter().all(|r| r.status == "accepted"));

    // Once the first worker has written a result, kill it without warning.
    let get = |id: String, wait_ms: u32| ResultRequest { id, wait_ms };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if cache
            .get_order_result(get(ids[0].clone(), 1000))
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first worker wrote nothing within 60 s"
        );
    }
    first.0.kill().unwrap();
    first.0.wait().unwrap();
    let killed_at = order_pipeline::domain::now_unix_ms();

    // The registry keeps the group's active ruleset (the slow one): the new process
    // uses it too, as any worker of the group would.
    let second = worker_process(&config, None);
    let mut by_second = 0;
    for id in &ids {
        let deadline = Instant::now() + Duration::from_secs(90);
        let result = loop {
            match cache.get_order_result(get(id.clone(), 5000)).await {
                Ok(result) => break result.into_inner(),
                Err(status)
                    if status.code() == tonic::Code::NotFound && Instant::now() < deadline => {}
                Err(status) => panic!("{id}: {status:?}"),
            }
        };
        assert_eq!(result.status, "done", "{id}");
        by_second += usize::from(result.processed_at_unix_ms > killed_at);
    }
    assert!(
        by_second > 0,
        "the restarted worker finished what the killed one left"
    );
    drop(second);
    front.stop().await.unwrap();
    reader.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn two_worker_processes_converge_on_a_deployed_ruleset() {
    use order_pipeline::proto::OrderLine;
    use order_pipeline::proto::admin::admin_service_client::AdminServiceClient;
    use order_pipeline::proto::admin::{DeployRequest, deploy_request::Position};

    let Some(crate::support::Services { redis, kafka }) = crate::support::services() else {
        return;
    };
    let (stamp, config) = config_for("converge", redis, kafka);
    let front = app::start(Role::OrderService, &config).await.unwrap();
    let reader = app::start(Role::CacheService, &config).await.unwrap();
    let admin_port = free_port();
    let _first = worker_process_with(&config, None, &format!("127.0.0.1:{admin_port}"), "a");
    let _second = worker_process_with(&config, None, "127.0.0.1:0", "b");
    let mut orders = OrderServiceClient::connect(format!("http://{}", front.order_addr.unwrap()))
        .await
        .unwrap();
    let mut cache = CacheServiceClient::connect(format!("http://{}", reader.cache_addr.unwrap()))
        .await
        .unwrap();
    let us_order = |id: String| OrderRequest {
        id,
        currency: "USD".into(),
        shipping_country: "US".into(),
        lines: vec![OrderLine {
            sku: "book".into(),
            quantity: 1,
            unit_price: 1000,
        }],
        ..Default::default()
    };
    let read = |id: String| ResultRequest { id, wait_ms: 5000 };

    // Both processes are up and consuming once an order of each batch is done.
    let warmup = format!("warm-{stamp}");
    orders.create_order(us_order(warmup.clone())).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while cache.get_order_result(read(warmup.clone())).await.is_err() {
        assert!(Instant::now() < deadline, "the workers did not start");
    }

    let mut admin = loop {
        match AdminServiceClient::connect(format!("http://127.0.0.1:{admin_port}")).await {
            Ok(client) => break client,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("admin of the first worker: {e}"),
        }
    };
    let deployed = admin
        .deploy(DeployRequest {
            wasm: std::fs::read(
                std::path::Path::new(order_builtin_rules::PLUGIN_BUILD_DIR).join("rule_tax.wasm"),
            )
            .unwrap(),
            config: [("rates".to_string(), "US:1000".to_string())]
                .into_iter()
                .collect(),
            position: Some(Position::Replace("rule-tax".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let returned = Instant::now();

    // Orders on both partitions (so both processes) are decided by the new version.
    let mut round = 0;
    loop {
        round += 1;
        let ids: Vec<String> = (0..20)
            .map(|i| format!("converge-{stamp}-{round}-{i}"))
            .collect();
        let batch = ids.iter().map(|id| us_order(id.clone())).collect();
        orders
            .create_orders(CreateOrdersRequest { orders: batch })
            .await
            .unwrap();
        let mut all_new = true;
        for id in &ids {
            let result = cache
                .get_order_result(read(id.clone()))
                .await
                .unwrap()
                .into_inner();
            all_new &=
                result.ruleset_version == deployed.version && result.totals.unwrap().total == 1100;
        }
        if all_new {
            break;
        }
        assert!(
            returned.elapsed() < Duration::from_secs(10),
            "the workers did not converge within 10 s"
        );
    }
    println!(
        "both worker processes on version {} within {:?} of deploy returning ({round} round(s) of orders)",
        deployed.version,
        returned.elapsed()
    );
    front.stop().await.unwrap();
    reader.stop().await.unwrap();
}

/// The names of the threads of process `pid` (`/proc/PID/task/*/comm`).
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

/// A whole pipeline process (`order-pipeline run`: OrderService, worker, CacheService) runs
/// one Kafka producer, which the OrderService and the worker's dead letters share, and one
/// consumer: two librdkafka clients, each with a main thread of its own (`rdk:main`), so
/// their broker threads and wake-ups are not doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn a_pipeline_process_runs_one_producer_and_one_consumer() {
    let Some(crate::support::Services { redis, kafka }) = crate::support::services() else {
        return;
    };
    let (stamp, config) = config_for("clients", redis, kafka);
    let (order_addr, cache_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let process = KillOnDrop(
        pipeline_command("run", &config)
            .env("ORDER_SERVICE_ADDR", &order_addr)
            .env("CACHE_SERVICE_ADDR", &cache_addr)
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .spawn()
            .expect("start the pipeline binary"),
    );
    let pid = process.0.id();

    // Up, consuming and storing once an order is done.
    for addr in [&order_addr, &cache_addr] {
        wait_port(addr, Duration::from_secs(60), "order-pipeline run");
    }
    let mut orders = crate::support::order_client(order_addr.parse().unwrap()).await;
    let mut cache = crate::support::cache_client(cache_addr.parse().unwrap()).await;
    let id = format!("clients-{stamp}");
    let answer = orders
        .create_order(crate::support::go_request(&id, "book", 42))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().status, "accepted");
    let result = crate::support::wait_result(&mut cache, &id, 60).await;
    assert_eq!(result.unwrap().status, "done");

    let names = thread_names(pid);
    let count = |name: &str| names.iter().filter(|n| *n == name).count();
    // rdkafka's FutureProducer polls its delivery reports on a thread of its own.
    assert_eq!(
        (count("rdk:main"), count("producer pollin")),
        (2, 1),
        "{names:?}"
    );
    drop(process);
}
