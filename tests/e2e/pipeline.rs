//! The pipeline against the real Redis and the real Kafka-compatible broker started by
//! scripts/test.sh: OrderService -> Kafka -> worker (rule chain) -> Redis -> CacheService.

use std::time::Duration;

use crate::support::{
    cache_client, go_request, header, kafka_config, order_client, read_topic, services, unique,
    wait_result,
};
use order_pipeline::app::{self, Role};
use order_pipeline::backends::redis::RedisStore;
use order_pipeline::proto::{CreateOrdersRequest, OrderLine, OrderRequest, ResultRequest};
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn go_e2e_case_reaches_done_with_the_go_redis_shape() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let id = unique("e2e-test-1");

    let answer = orders
        .create_order(go_request(&id, "book", 42))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.status, "accepted");
    let result = wait_result(&mut cache, &id, 30).await.unwrap();
    assert_eq!(
        (result.item.as_str(), result.price, result.status.as_str()),
        ("book", 42, "done")
    );
    assert_eq!(result.id, id);
    assert_eq!(result.rules.len(), 4);
    assert!(
        result
            .rules
            .iter()
            .all(|r| r.digest.len() == 64 && r.outcome == "accept")
    );

    let redis = RedisStore::connect(&services.redis).await.unwrap();
    let go_shape = redis.raw(&format!("order:{id}")).await.unwrap().unwrap();
    assert_eq!(go_shape, r#"{"item":"book","price":42,"status":"done"}"#);
    // Both keys expire together, after the default RESULT_TTL (7 days).
    for key in [format!("order:{id}"), format!("order-result:{id}")] {
        let left = redis.ttl_ms(&key).await.unwrap().unwrap();
        let ttl = order_pipeline::config::DEFAULT_RESULT_TTL.as_millis() as i64;
        assert!(left > ttl - 60_000 && left <= ttl, "{key}: {left} ms left");
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn rejection_is_a_result_with_reasons() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let id = unique("kp");
    let request = OrderRequest {
        id: id.clone(),
        currency: "EUR".into(),
        shipping_country: "KP".into(),
        lines: vec![OrderLine {
            sku: "book".into(),
            quantity: 2,
            unit_price: 1500,
        }],
        ..Default::default()
    };
    orders.create_order(request).await.unwrap();
    let result = wait_result(&mut cache, &id, 30).await.unwrap();
    assert_eq!(result.status, "rejected");
    assert_eq!(result.reasons.len(), 1);
    assert_eq!(
        (
            result.reasons[0].rule.as_str(),
            result.reasons[0].code.as_str()
        ),
        ("rule-fraud", "blocked-country")
    );
    assert_eq!(result.totals.unwrap().total, 3000);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn fail_orders_are_retried_then_failed_and_dead_lettered() {
    let Some(services) = services() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ruleset = dir.path().join("chaos.toml");
    std::fs::write(&ruleset, "[[rule]]\nplugin = \"builtin:rule-validate\"\n\n[[rule]]\nplugin = \"builtin:rule-chaos\"\n").unwrap();
    let mut config = kafka_config(&services);
    config.plugins.ruleset = Some(ruleset);
    config.worker.max_retries = 2;
    let running = app::start(Role::All, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let id = unique("fail");

    orders
        .create_order(go_request(&id, "fail-123", 42))
        .await
        .unwrap();
    let result = wait_result(&mut cache, &id, 30).await.unwrap();
    assert_eq!(result.status, "failed");
    assert_eq!(result.attempts, 3, "the first attempt and 2 retries");
    assert!(
        result.error.contains("simulated-failure"),
        "{}",
        result.error
    );

    let dead = read_topic(&services.kafka, &config.kafka.dlq_topic, 1).await;
    let record = &dead[0];
    assert_eq!(record.key(), Some(id.as_bytes()));
    assert_eq!(header(record, "rule").as_deref(), Some("rule-chaos"));
    assert_eq!(header(record, "attempts").as_deref(), Some("3"));
    assert_eq!(
        header(record, "source-topic").as_deref(),
        Some(config.kafka.topic.as_str())
    );
    assert!(
        header(record, "source-partition").is_some() && header(record, "source-offset").is_some()
    );
    assert!(
        header(record, "reason")
            .unwrap()
            .contains("simulated-failure")
    );
    let original: OrderRequest = prost::Message::decode(record.payload().unwrap()).unwrap();
    assert_eq!(original.id, id);

    // A normal order still goes through.
    let ok = unique("ok");
    orders
        .create_order(go_request(&ok, "book", 1))
        .await
        .unwrap();
    assert_eq!(
        wait_result(&mut cache, &ok, 30).await.unwrap().status,
        "done"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn undecodable_message_is_dead_lettered_and_the_worker_goes_on() {
    let Some(services) = services() else { return };
    let config = kafka_config(&services);
    let running = app::start(Role::All, &config).await.unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &services.kafka)
        .set("compression.type", "none")
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to(&config.kafka.topic)
                .key("garbage")
                .payload(&[0xff_u8, 0xff, 0xff][..]),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let id = unique("after-garbage");
    orders
        .create_order(go_request(&id, "book", 7))
        .await
        .unwrap();
    assert_eq!(
        wait_result(&mut cache, &id, 30).await.unwrap().status,
        "done"
    );

    let dead = read_topic(&services.kafka, &config.kafka.dlq_topic, 1).await;
    assert_eq!(dead[0].payload(), Some(&[0xff_u8, 0xff, 0xff][..]));
    assert!(
        header(&dead[0], "reason")
            .unwrap()
            .contains("not a protobuf OrderRequest")
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn resubmitting_an_id_keeps_the_first_result() {
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.kafka.partitions = 1;
    let running = app::start(Role::All, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let id = unique("twice");
    orders
        .create_order(go_request(&id, "book", 42))
        .await
        .unwrap();
    assert_eq!(wait_result(&mut cache, &id, 30).await.unwrap().price, 42);

    let again = orders
        .create_order(go_request(&id, "book", 99))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.status, "accepted");
    // One partition: once a later order is done, the resubmission was processed too.
    let later = unique("later");
    orders
        .create_order(go_request(&later, "pen", 1))
        .await
        .unwrap();
    wait_result(&mut cache, &later, 30).await.unwrap();
    let result = wait_result(&mut cache, &id, 5).await.unwrap();
    assert_eq!((result.price, result.status.as_str()), (42, "done"));
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn batch_submit_answers_per_order_and_unknown_ids_are_not_found() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let ids: Vec<String> = (0..50).map(|i| unique(&format!("batch{i}"))).collect();
    let mut batch: Vec<OrderRequest> = ids.iter().map(|id| go_request(id, "book", 10)).collect();
    batch.push(go_request("", "book", 1));
    let responses = orders
        .create_orders(CreateOrdersRequest { orders: batch })
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert_eq!(responses.len(), 51);
    assert!(responses[..50].iter().all(|r| r.status == "accepted"));
    assert_eq!(responses[50].status, "invalid");
    assert_eq!(responses[50].error, "orders[50].id: is required");
    for id in &ids {
        assert_eq!(
            wait_result(&mut cache, id, 30).await.unwrap().status,
            "done"
        );
    }
    let started = std::time::Instant::now();
    let missing = cache
        .get_order_result(ResultRequest {
            id: unique("never"),
            wait_ms: 200,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (missing.code(), missing.message()),
        (tonic::Code::NotFound, "order not found")
    );
    assert!(started.elapsed() >= Duration::from_millis(200), "it waited");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn aborted_worker_loses_nothing_when_another_takes_over() {
    let Some(services) = services() else { return };
    let config = kafka_config(&services);
    let front = app::start(Role::OrderService, &config).await.unwrap();
    let reader = app::start(Role::CacheService, &config).await.unwrap();
    // The first worker is slow (a rule that burns CPU), so it is mid-stream when killed.
    let dir = tempfile::tempdir().unwrap();
    let slow = crate::support::slow_ruleset(dir.path(), 1_000_000);
    let mut slow_config = config.clone();
    slow_config.plugins.ruleset = Some(slow);
    slow_config.plugins.limits.fuel = 1_000_000_000;
    slow_config.plugins.limits.deadline = Duration::from_secs(5);
    let worker = app::start(Role::Worker, &slow_config).await.unwrap();
    let mut orders = order_client(front.order_addr.unwrap()).await;
    let mut cache = cache_client(reader.cache_addr.unwrap()).await;
    // More orders per partition than the worker takes in one batch (256): when the first
    // result is visible, its partition still has whole batches to go.
    let ids: Vec<String> = (0..1200).map(|i| unique(&format!("crash{i}"))).collect();
    let batch = ids.iter().map(|id| go_request(id, "book", 5)).collect();
    let responses = orders
        .create_orders(CreateOrdersRequest { orders: batch })
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert!(responses.iter().all(|r| r.status == "accepted"));

    // Let the first worker get going, then kill its tasks mid-stream: no graceful stop,
    // in-flight orders are abandoned with their offsets unstored.
    let first = wait_result(&mut cache, &ids[0], 30).await.unwrap();
    assert_eq!(first.rules[0].name, "fixture-slow");
    worker.abort();
    let aborted_at = order_pipeline::domain::now_unix_ms();
    // The group's registry keeps the slow ruleset active: the new worker uses it too.
    let second = app::start(Role::Worker, &slow_config).await.unwrap();
    let mut by_second = 0;
    for id in &ids {
        let result = wait_result(&mut cache, id, 60).await.unwrap();
        assert_eq!(result.status, "done", "{id}");
        by_second += usize::from(result.processed_at_unix_ms > aborted_at);
    }
    assert!(
        by_second > 0,
        "the second worker took over part of the stream"
    );
    second.stop().await.unwrap();
    front.stop().await.unwrap();
    reader.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn broker_down_is_unavailable_never_accepted() {
    let Some(_services) = services() else { return };
    let broker = crate::support::OwnKafka::start();
    let mut config = kafka_config(&_services);
    config.kafka.brokers = Some(broker.addr.clone());
    config.kafka.produce_timeout_ms = 1500;
    let running = app::start(Role::OrderService, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    // A broker that just opened its port may still be electing the topic's leaders (on a
    // busy CI machine for longer than the 1.5 s produce timeout): retry until it serves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        match orders
            .create_order(go_request(&unique("up"), "book", 1))
            .await
        {
            Ok(up) => {
                assert_eq!(up.into_inner().status, "accepted");
                break;
            }
            Err(status) if status.code() == tonic::Code::Unavailable => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the new broker accepted no order within 60 s: {status:?}"
                );
            }
            Err(status) => panic!("{status:?}"),
        }
    }

    drop(broker); // kills the broker
    let status = orders
        .create_order(go_request(&unique("down"), "book", 1))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("broker"), "{}", status.message());
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn batch_results_are_read_in_one_call_from_redis() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    crate::support::check_batch_results(&running, "kafka-batch").await;
    running.stop().await.unwrap();
}

/// `order-pipeline bench` on Kafka + Redis with the broker's and Redis's PIDs (found by
/// the ports they listen on): the CPU per order of the pipeline, of each server, and of
/// the three together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn the_load_generator_measures_cpu_per_order_with_the_broker_and_redis() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    let pid_of = |addr: &str| {
        let first = addr.split(',').next().unwrap();
        order_pipeline_cli::listener_pid(first)
            .unwrap_or_else(|| panic!("no local process listens on {first}"))
    };
    let (broker, redis) = (pid_of(&services.kafka), pid_of(&services.redis));
    let args: Vec<String> = [
        "bench",
        "--order-addr",
        &format!("http://{}", running.order_addr.unwrap()),
        "--cache-addr",
        &format!("http://{}", running.cache_addr.unwrap()),
        "--orders",
        "400",
        "--concurrency",
        "16",
        "--broker-pid",
        &broker.to_string(),
        "--redis-pid",
        &redis.to_string(),
        "--json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        crate::support::cli(&args)
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["errors"], 0, "{out}");
    let processes = report["cpu"]["processes"].as_array().unwrap();
    let measured: Vec<(&str, i64)> = processes
        .iter()
        .map(|p| (p["role"].as_str().unwrap(), p["pid"].as_i64().unwrap()))
        .collect();
    assert_eq!(
        measured,
        [
            ("pipeline", i64::from(std::process::id())),
            ("broker", i64::from(broker)),
            ("redis", i64::from(redis)),
        ],
        "{out}"
    );
    // Each server worked for these orders (and for the other tests running beside).
    for process in processes {
        let seconds =
            process["user_seconds"].as_f64().unwrap() + process["system_seconds"].as_f64().unwrap();
        assert!(seconds > 0.0, "{process}");
    }
    let pipeline = report["cpu"]["pipeline_us_per_order"].as_f64().unwrap();
    let serving = report["cpu"]["serving_us_per_order"].as_f64().unwrap();
    assert!(pipeline > 0.0 && serving > pipeline, "{out}");
    running.stop().await.unwrap();
}

/// Reads of one order cost Redis reads in proportion to the ids, not to the calls: a
/// burst of reads shares one `MGET`; calls waiting for a result written by another
/// process are handed it from one read when it is announced (and the listener's sweep
/// reads every waited-for id at once, instead of each call polling); calls waiting for a
/// result this process writes get it without a read. Counted with Redis's own `MONITOR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn a_burst_of_reads_costs_redis_reads_per_id_not_per_call() {
    use order_pipeline::backends::redis::Redis;
    use order_pipeline::domain::OrderResult;
    use std::io::{BufRead as _, Write as _};

    let Some(services) = services() else { return };
    let prefix = format!("{}:", unique("burst"));
    let tls = Default::default();
    let connect = || Redis::connect(&services.redis, &prefix, &tls, None);
    let (redis, other_process) = (connect().await.unwrap(), connect().await.unwrap());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listener = tokio::spawn(redis.listener(None).run(shutdown.clone()));
    let store = redis.store();

    // MONITOR: every command Redis runs, one line each, from now on.
    let mut monitor = std::net::TcpStream::connect(&services.redis).unwrap();
    monitor.write_all(b"MONITOR\r\n").unwrap();
    let mut lines = std::io::BufReader::new(monitor.try_clone().unwrap());
    let mut ok = String::new();
    lines.read_line(&mut ok).unwrap();
    assert_eq!(ok.trim(), "+OK");
    let seen = std::thread::spawn(move || {
        lines
            .lines()
            .map_while(Result::ok)
            .filter(|line| line.to_ascii_lowercase().contains("\"mget\""))
            .collect::<Vec<String>>()
    });

    let result = |id: &str| {
        OrderResult::from_go_json(id, r#"{"item":"book","price":42,"status":"done"}"#).unwrap()
    };
    let waits = |id: &'static str| {
        let store = store.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        tokio::spawn(async move {
            let waited =
                futures::future::join_all((0..100).map(|_| store.wait(id, deadline))).await;
            assert!(
                waited
                    .iter()
                    .all(|r| matches!(r, Ok(Some(found)) if found.id == id)),
                "{waited:?}"
            );
        })
    };

    // Written by another process: 100 reads at once before, 100 waits, 100 reads after.
    let reads = futures::future::join_all((0..100).map(|_| store.get("burst-a"))).await;
    assert!(reads.iter().all(|r| matches!(r, Ok(None))), "{reads:?}");
    let waiting = waits("burst-a");
    tokio::time::sleep(Duration::from_millis(250)).await;
    let writer = other_process.store();
    writer.put(&result("burst-a")).await.unwrap();
    writer.announce(&["burst-a"]).await.unwrap();
    waiting.await.unwrap();
    let reads = futures::future::join_all((0..100).map(|_| store.get("burst-a"))).await;
    assert!(reads.iter().all(|r| matches!(r, Ok(Some(_)))), "{reads:?}");

    // Written by this process: 100 waits.
    let waiting = waits("burst-b");
    tokio::time::sleep(Duration::from_millis(250)).await;
    store.put(&result("burst-b")).await.unwrap();
    waiting.await.unwrap();

    // One call waiting for 50 results (GetOrderResults), written by another process.
    let ids: Vec<String> = (0..50).map(|i| format!("burst-c{i}")).collect();
    let waiting = {
        let (store, ids) = (store.clone(), ids.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        tokio::spawn(async move {
            order_pipeline::store::ResultStore::get_many(&store, &ids, Some(deadline)).await
        })
    };
    tokio::time::sleep(Duration::from_millis(250)).await;
    for id in &ids {
        writer.put(&result(id)).await.unwrap();
    }
    let announced: Vec<&str> = ids.iter().map(String::as_str).collect();
    writer.announce(&announced).await.unwrap();
    let found = waiting.await.unwrap().unwrap();
    assert!(
        found
            .iter()
            .zip(&ids)
            .all(|(r, id)| r.as_ref().is_some_and(|r| &r.id == id)),
        "{found:?}"
    );

    tokio::time::sleep(Duration::from_millis(100)).await;
    monitor.shutdown(std::net::Shutdown::Both).unwrap();
    let commands = seen.join().unwrap();
    let reads_of = |id: &str| -> Vec<&String> {
        let key = format!("\"{prefix}order-result:{id}\"");
        commands.iter().filter(|c| c.contains(&key)).collect()
    };
    // 300 calls for `burst-a`: one read for the first burst, one for the waits' first
    // look, a sweep every 100 ms while they wait (2 or 3), one when it is announced, one
    // for the last burst. Each call reading on its own would be 300 reads and more.
    let a = reads_of("burst-a");
    assert!(
        (4..=9).contains(&a.len()),
        "{} reads of burst-a: {a:#?}",
        a.len()
    );
    // 100 waits for `burst-b`: the first look and the sweeps while they wait; the write
    // hands the result over.
    let b = reads_of("burst-b");
    assert!(
        (1..=5).contains(&b.len()),
        "{} reads of burst-b: {b:#?}",
        b.len()
    );
    // The 50 results: one read for all when the call came, the sweeps while it waited,
    // one when they were announced; one read per id would be 50 and more.
    let c = commands
        .iter()
        .filter(|c| c.contains(&format!("\"{prefix}order-result:burst-c")))
        .count();
    assert!(
        (2..=6).contains(&c),
        "{c} reads for 50 results waited for in one call"
    );
    shutdown.cancel();
    listener.await.unwrap().unwrap();
}
