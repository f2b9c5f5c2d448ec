//! The Prometheus endpoint: scraped over HTTP and parsed with a real parser of the text
//! format (prometheus-parse), after orders went through the embedded pipeline and the
//! Kafka + Redis one.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use order_pipeline::app::{self, Role};
use order_pipeline::metrics as m;
use order_rules_engine::{Isolation, Order};
use prometheus_parse::{Scrape, Value};

use crate::support::{
    cache_client, chain_with, embedded_config, engine_with, go_request, kafka_config, order_client,
    services, unique, wait_result,
};

/// `GET /metrics` at `addr`, parsed.
pub(crate) fn scrape(addr: SocketAddr) -> Scrape {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/plain"),
        "{head}"
    );
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of metric `name` with all of `labels` (summed over the other labels); a
/// histogram counts its observations.
pub(crate) fn value(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => panic!("{name} is a summary, not a histogram"),
        })
        .sum()
}

/// The gauge `name` of `topic`, if scraped.
fn topic_gauge(scrape: &Scrape, name: &str, topic: &str) -> Option<f64> {
    scrape.samples.iter().find_map(|s| match s.value {
        Value::Gauge(v) if s.metric == name && s.labels.get("topic") == Some(topic) => Some(v),
        _ => None,
    })
}

/// Scrapes until `ready` holds (at most `limit`): recording and rendering race the test.
pub(crate) fn scrape_until(
    addr: SocketAddr,
    limit: Duration,
    ready: impl Fn(&Scrape) -> bool,
) -> Scrape {
    let deadline = Instant::now() + limit;
    loop {
        let scraped = scrape(addr);
        if ready(&scraped) || Instant::now() > deadline {
            return scraped;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_pipeline_metrics_are_scraped_and_parse() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path());
    config.telemetry.metrics_addr = Some(crate::support::LOOPBACK_ANY_PORT);
    let running = app::start(Role::All, &config).await.unwrap();
    let addr = running.metrics_addr.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    // The recorder is one per process: other tests add to the counts, so compare growth.
    let before = scrape(addr);
    let ids: Vec<String> = (0..3).map(|i| unique(&format!("metrics-{i}"))).collect();
    for id in &ids {
        orders
            .create_order(go_request(id, "book", 42))
            .await
            .unwrap();
    }
    let invalid = orders.create_order(go_request("", "book", 42)).await;
    assert_eq!(invalid.unwrap_err().code(), tonic::Code::InvalidArgument);
    for id in &ids {
        assert_eq!(
            wait_result(&mut cache, id, 30).await.unwrap().status,
            "done"
        );
    }

    let grew = |after: &Scrape, name: &str, labels: &[(&str, &str)], by: f64| {
        value(after, name, labels) - value(&before, name, labels) >= by
    };
    let after = tokio::task::spawn_blocking(move || {
        scrape_until(addr, Duration::from_secs(10), |s| {
            value(s, m::RESULTS, &[("status", "done")]) >= 3.0
        })
    })
    .await
    .unwrap();
    assert!(grew(&after, m::ORDERS, &[("outcome", "accepted")], 3.0));
    assert!(grew(&after, m::ORDERS, &[("outcome", "invalid")], 1.0));
    assert!(grew(&after, m::PUBLISH_SECONDS, &[], 3.0));
    assert!(value(&after, m::RESULTS, &[("status", "done")]) >= 3.0);
    assert!(value(&after, m::STORE_SECONDS, &[]) >= 1.0);
    for rule in ["rule-validate", "rule-fraud", "rule-discount", "rule-tax"] {
        assert!(
            grew(
                &after,
                m::RULE_EVALUATIONS,
                &[("rule", rule), ("outcome", "accept")],
                3.0
            ),
            "{rule} evaluations"
        );
        assert!(
            value(
                &after,
                m::RULE_SECONDS,
                &[("rule", rule), ("version", "0.1.0")]
            ) >= 3.0,
            "{rule} durations"
        );
        assert!(
            value(&after, m::RULE_FUEL, &[("rule", rule)]) >= 3.0,
            "{rule} fuel"
        );
    }
    assert!(value(&after, m::RULESET_VERSION, &[]) >= 1.0);
    assert!(value(&after, m::RULESET_SWITCHES, &[]) >= 1.0);
    // A rule caught carrying state between orders (its instance's 2nd order, checked
    // against a fresh instance) is counted.
    let engine = engine_with(crate::support::test_limits());
    let carry = chain_with(&engine, &[("fixture_carry", &[])], Isolation::Reuse).unwrap();
    for id in ["leak-1", "leak-2", "leak-3"] {
        m::record_evaluation(&carry.evaluate(&Order::single_item(id, "book", 42, "EUR")));
    }
    let leaks = scrape(addr);
    let carried = [("rule", "fixture-carry"), ("version", "0.1.0")];
    assert!(grew(&leaks, m::RULE_STATE_LEAKS, &carried, 1.0));
    assert!(
        !grew(&leaks, m::RULE_STATE_LEAKS, &carried, 2.0),
        "fresh after"
    );
    // Histograms are real Prometheus histograms with our buckets.
    let buckets = after
        .samples
        .iter()
        .find(|s| s.metric == m::RULE_SECONDS)
        .map(|s| match &s.value {
            Value::Histogram(buckets) => buckets.len(),
            _ => 0,
        })
        .unwrap();
    assert!(buckets > 10, "{buckets} buckets");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn kafka_pipeline_reports_consumer_lag_batch_size_and_end_to_end_latency() {
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.telemetry.metrics_addr = Some(crate::support::LOOPBACK_ANY_PORT);
    let running = app::start(Role::All, &config).await.unwrap();
    let addr = running.metrics_addr.unwrap();
    crate::support::decide_one(&running, "metrics-kafka").await;
    let topic = config.kafka.topic.clone();
    let scraped = tokio::task::spawn_blocking(move || {
        // librdkafka reports its statistics every 5 s.
        scrape_until(addr, Duration::from_secs(20), |s| {
            let of_topic = |metric: &str| {
                s.samples
                    .iter()
                    .any(|x| x.metric == metric && x.labels.get("topic") == Some(&topic))
            };
            of_topic(m::CONSUMER_LAG) && of_topic(m::PRODUCE_BATCH_MESSAGES)
        })
    })
    .await
    .unwrap();
    let lags: Vec<_> = scraped
        .samples
        .iter()
        .filter(|s| {
            s.metric == m::CONSUMER_LAG && s.labels.get("topic") == Some(&config.kafka.topic)
        })
        .collect();
    assert!(
        !lags.is_empty(),
        "no consumer lag for {}",
        config.kafka.topic
    );
    for lag in lags {
        assert!(lag.labels.get("partition").is_some());
        assert!(matches!(lag.value, Value::Gauge(v) if v >= 0.0), "{lag:?}");
    }
    assert!(value(&scraped, m::END_TO_END_SECONDS, &[]) >= 1.0);
    // The one order went out in a batch of its own.
    let topic = &config.kafka.topic;
    let batch = topic_gauge(&scraped, m::PRODUCE_BATCH_MESSAGES, topic)
        .unwrap_or_else(|| panic!("no produce batch size for {topic}"));
    assert!(batch >= 1.0, "{batch}");
    running.stop().await.unwrap();
}

/// Concurrent unary `CreateOrder` calls share produce batches, as
/// `order_pipeline_kafka_produce_batch_messages` shows: with the shipped tuning (1 ms
/// linger), orders that arrive while a batch waits or while the partition's request is in
/// flight go out together. Every call still answers `accepted` only after the broker's
/// ack, and every order is decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn concurrent_unary_submits_share_produce_batches() {
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.telemetry.metrics_addr = Some(crate::support::LOOPBACK_ANY_PORT);
    let running = app::start(Role::All, &config).await.unwrap();
    let addr = running.metrics_addr.unwrap();
    let topic = config.kafka.topic.clone();
    let batch_size = move |s: &Scrape| topic_gauge(s, m::PRODUCE_BATCH_MESSAGES, &topic);
    let scrape_for = |ready: fn(Option<f64>) -> bool| {
        let batch_size = batch_size.clone();
        tokio::task::spawn_blocking(move || {
            // librdkafka reports its statistics every 5 s.
            let scraped = scrape_until(addr, Duration::from_secs(20), |s| ready(batch_size(s)));
            batch_size(&scraped)
        })
    };

    // One order alone first: the producer has its id and the topic's leaders, and its
    // statistics have reported that batch (of one) before the burst.
    crate::support::decide_one(&running, "coalesce-alone").await;
    let alone = scrape_for(|size| size.is_some()).await.unwrap();
    assert_eq!(alone, Some(1.0));

    const CALLS: usize = 40;
    let orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let ids: Vec<String> = (0..CALLS)
        .map(|i| unique(&format!("coalesce-{i}")))
        .collect();
    let calls = ids.iter().map(|id| {
        let mut orders = orders.clone();
        let request = go_request(id, "book", 42);
        tokio::spawn(async move { orders.create_order(request).await })
    });
    for answer in futures::future::join_all(calls).await {
        assert_eq!(answer.unwrap().unwrap().into_inner().status, "accepted");
    }
    for id in &ids {
        assert_eq!(
            wait_result(&mut cache, id, 30).await.unwrap().status,
            "done"
        );
    }

    // 40 orders at once over the topic's 2 partitions: not a request per order (8 to 20
    // per batch measured here; at least about 3 even if each partition's first 5 orders
    // went alone, which idempotence's 5 in flight allows).
    let size = scrape_for(|size| size.is_some_and(|s| s > 1.0))
        .await
        .unwrap()
        .expect("no produce batch size for the topic");
    assert!(size >= 2.0, "{size} orders per produce batch");
    running.stop().await.unwrap();
}
