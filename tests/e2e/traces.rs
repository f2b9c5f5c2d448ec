//! Traces: the three roles run as processes of the real binary on the real broker and
//! Redis, with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a small OTLP receiver in this test
//! (the collector's gRPC service from opentelemetry-proto). One order's spans share one
//! trace across the OrderService and the worker, and continue the client's traceparent.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value::Value};
use tonic::{Request, Response, Status};

use crate::support::{
    RoleProcess, cache_client, cli, free_addr, go_request, order_client, services, start_role,
    unique, wait_result,
};

/// One span as the receiver got it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    name: String,
    attributes: HashMap<String, String>,
}

type Spans = Arc<Mutex<Vec<Received>>>;

/// The OTLP trace service: keeps every span it is sent.
struct Receiver(Spans);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.0.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts the receiver on a free port; returns its URL and what it receives.
async fn receiver() -> (String, Spans) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spans = Spans::default();
    let service = TraceServiceServer::new(Receiver(Arc::clone(&spans)));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    (format!("http://{addr}"), spans)
}

/// Waits up to 30 s until the received spans satisfy `ready`; returns them.
async fn spans_until(spans: &Spans, ready: impl Fn(&[Received]) -> bool) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = spans.lock().unwrap().clone();
        if ready(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "the spans did not arrive within 30 s; received: {:#?}",
            now.iter()
                .map(|s| (&s.service, &s.name, s.attributes.get("order.id")))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn find<'a>(spans: &'a [Received], name: &str, order: &str) -> Option<&'a Received> {
    spans
        .iter()
        .find(|s| s.name == name && s.attributes.get("order.id").map(String::as_str) == Some(order))
}

fn children<'a>(spans: &'a [Received], parent: &Received) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.trace_id == parent.trace_id && s.parent_span_id == parent.span_id)
        .collect()
}

/// A request carrying `traceparent`.
fn traced<T>(message: T, traceparent: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn one_order_is_one_trace_across_the_order_service_and_the_worker() {
    let Some(services) = services() else { return };
    let (endpoint, spans) = receiver().await;
    let (topic, dlq, group) = (
        unique("traced-orders"),
        unique("traced-dlq"),
        unique("traced-group"),
    );
    let (orders, cache) = (free_addr(), free_addr());
    let env: Vec<(&str, &str)> = vec![
        ("KAFKA_BROKERS", &services.kafka),
        ("KAFKA_TOPIC", &topic),
        ("DLQ_TOPIC", &dlq),
        ("WORKER_GROUP", &group),
        ("REDIS_ADDR", &services.redis),
        ("ORDER_SERVICE_ADDR", &orders),
        ("CACHE_SERVICE_ADDR", &cache),
        ("ADMIN_ADDR", "127.0.0.1:0"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        // Export every 100 ms instead of every 5 s.
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    // Starting waits for the ports: off the runtime's async threads.
    let _roles: Vec<RoleProcess> = tokio::task::block_in_place(|| {
        vec![
            start_role("order-service", &env, Some(&orders)),
            start_role("worker", &env, None),
            start_role("cache-service", &env, Some(&cache)),
        ]
    });
    let mut submit = order_client(orders.parse().unwrap()).await;
    let mut read = cache_client(cache.parse().unwrap()).await;

    // An order without a traceparent gets a trace of its own.
    let plain = unique("plain");
    submit
        .create_order(go_request(&plain, "book", 42))
        .await
        .unwrap();
    assert_eq!(
        wait_result(&mut read, &plain, 60).await.unwrap().status,
        "done"
    );
    // An order whose client sends a traceparent continues the client's trace, and so does
    // the client's read of the result.
    let (client_trace, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let traceparent = format!("00-{client_trace}-{client_span}-01");
    let joined = unique("joined");
    submit
        .create_order(traced(go_request(&joined, "pen", 7), &traceparent))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let request = order_pipeline::proto::ResultRequest {
            id: joined.clone(),
            wait_ms: 1000,
        };
        match read.get_order_result(traced(request, &traceparent)).await {
            Ok(found) => {
                assert_eq!(found.into_inner().status, "done");
                break;
            }
            Err(status) if status.code() == tonic::Code::NotFound => {
                assert!(Instant::now() < deadline, "{joined} not done within 60 s");
            }
            Err(status) => panic!("GetOrderResult: {status}"),
        }
    }

    let process = format!("process {topic}");
    let publish = format!("publish {topic}");
    let received = spans_until(&spans, |s| {
        [&plain, &joined].iter().all(|id| {
            find(s, &process, id).is_some_and(|p| {
                children(s, p).iter().any(|c| c.name == "store result")
                    && children(s, p)
                        .iter()
                        .any(|c| c.name.starts_with("evaluate "))
            })
        }) && s
            .iter()
            .any(|r| r.name == "order.CacheService/GetOrderResult" && r.trace_id == client_trace)
    })
    .await;

    for id in [&plain, &joined] {
        let create = find(&received, "order.OrderService/CreateOrder", id).unwrap();
        let published = find(&received, &publish, id).unwrap();
        let processed = find(&received, &process, id).unwrap();
        assert_eq!(create.service, "order-pipeline-order-service");
        assert_eq!(processed.service, "order-pipeline-worker");
        // One trace: CreateOrder -> publish -> (Kafka header) -> process -> rules, store.
        assert_eq!(published.trace_id, create.trace_id, "{id}");
        assert_eq!(published.parent_span_id, create.span_id, "{id}");
        assert_eq!(
            processed.trace_id, create.trace_id,
            "{id}: the worker's span"
        );
        assert_eq!(processed.parent_span_id, published.span_id, "{id}");
        assert_eq!(processed.attributes["order.status"], "done");
        let below = children(&received, processed);
        let rules: Vec<_> = below
            .iter()
            .filter(|s| s.name.starts_with("evaluate "))
            .collect();
        // The default ruleset: every rule accepts these orders.
        let names: Vec<&str> = rules
            .iter()
            .map(|r| r.attributes["rule.name"].as_str())
            .collect();
        assert_eq!(
            names,
            ["rule-validate", "rule-fraud", "rule-discount", "rule-tax"],
            "{id}"
        );
        for rule in rules {
            assert_eq!(
                rule.name,
                format!("evaluate {}", rule.attributes["rule.name"])
            );
            assert!(!rule.attributes["rule.version"].is_empty());
            assert_eq!(rule.attributes["rule.outcome"], "accept");
            let fuel: u64 = rule.attributes["rule.fuel"].parse().unwrap();
            assert!(fuel > 0, "{rule:?}");
        }
        assert_eq!(below.iter().filter(|s| s.name == "store result").count(), 1);
    }
    let plain_trace = &find(&received, &process, &plain).unwrap().trace_id;
    assert_ne!(plain_trace, client_trace);
    let create = find(&received, "order.OrderService/CreateOrder", &joined).unwrap();
    assert_eq!(create.trace_id, client_trace);
    assert_eq!(create.parent_span_id, client_span);
    let read = received
        .iter()
        .find(|r| r.name == "order.CacheService/GetOrderResult" && r.trace_id == client_trace)
        .unwrap();
    assert_eq!(read.service, "order-pipeline-cache-service");
    assert_eq!(read.parent_span_id, client_span);
}

#[test]
fn an_otlp_endpoint_that_is_not_a_url_is_refused_at_start() {
    let (code, _, err) = cli(&["run", "--otlp-endpoint", "127.0.0.1:4317"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && err.contains("http://"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn run_embedded_keeps_one_trace_from_the_order_service_to_the_worker() {
    let (endpoint, spans) = receiver().await;
    let data = tempfile::tempdir().unwrap();
    let (orders, cache) = (free_addr(), free_addr());
    let data_dir = data.path().to_string_lossy().into_owned();
    let env: Vec<(&str, &str)> = vec![
        ("DATA_DIR", &data_dir),
        ("ORDER_SERVICE_ADDR", &orders),
        ("CACHE_SERVICE_ADDR", &cache),
        ("ADMIN_ADDR", "127.0.0.1:0"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let _run = tokio::task::block_in_place(|| start_role("run", &env, Some(&cache)));
    let mut submit = order_client(orders.parse().unwrap()).await;
    let mut read = cache_client(cache.parse().unwrap()).await;
    let (client_trace, client_span) = ("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331");
    let id = unique("embedded-traced");
    submit
        .create_order(traced(
            go_request(&id, "book", 42),
            &format!("00-{client_trace}-{client_span}-01"),
        ))
        .await
        .unwrap();
    assert_eq!(
        wait_result(&mut read, &id, 60).await.unwrap().status,
        "done"
    );
    // The batch read continues the client's trace too.
    let batch = order_pipeline::proto::ResultsRequest {
        ids: vec![id.clone(), unique("unknown")],
        wait_ms: 0,
    };
    read.get_order_results(traced(
        batch,
        &format!("00-{client_trace}-{client_span}-01"),
    ))
    .await
    .unwrap();
    let received = spans_until(&spans, |s| {
        find(s, "process embedded", &id)
            .is_some_and(|p| children(s, p).iter().any(|c| c.name == "store result"))
            && s.iter()
                .any(|r| r.name == "order.CacheService/GetOrderResults")
    })
    .await;
    let batch_read = received
        .iter()
        .find(|r| r.name == "order.CacheService/GetOrderResults")
        .unwrap();
    assert_eq!(batch_read.trace_id, client_trace);
    assert_eq!(batch_read.parent_span_id, client_span);
    assert_eq!(batch_read.attributes["ids"], "2");
    assert_eq!(batch_read.attributes["found"], "1");
    let create = find(&received, "order.OrderService/CreateOrder", &id).unwrap();
    let published = find(&received, "publish embedded", &id).unwrap();
    let processed = find(&received, "process embedded", &id).unwrap();
    assert_eq!(create.service, "order-pipeline-run");
    assert_eq!(create.trace_id, client_trace);
    assert_eq!(create.parent_span_id, client_span);
    assert_eq!(published.parent_span_id, create.span_id);
    assert_eq!(processed.trace_id, client_trace);
    assert_eq!(processed.parent_span_id, published.span_id);
    let rules = children(&received, processed)
        .iter()
        .filter(|s| s.name.starts_with("evaluate "))
        .count();
    assert_eq!(rules, 4, "one span per rule of the default ruleset");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_sdk_sampler_variables_decide_which_orders_are_traced() {
    // The README's advice: sample with OTEL_TRACES_SAMPLER. Sampled off, an order's path
    // exports nothing, while the receiver is the same.
    let (endpoint, spans) = receiver().await;
    let data = tempfile::tempdir().unwrap();
    let (orders, cache) = (free_addr(), free_addr());
    let data_dir = data.path().to_string_lossy().into_owned();
    let env: Vec<(&str, &str)> = vec![
        ("DATA_DIR", &data_dir),
        ("ORDER_SERVICE_ADDR", &orders),
        ("CACHE_SERVICE_ADDR", &cache),
        ("ADMIN_ADDR", "127.0.0.1:0"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
        ("OTEL_TRACES_SAMPLER_ARG", "0"),
    ];
    let run = tokio::task::block_in_place(|| start_role("run", &env, Some(&cache)));
    let mut submit = order_client(orders.parse().unwrap()).await;
    let mut read = cache_client(cache.parse().unwrap()).await;
    let unsampled = unique("unsampled");
    submit
        .create_order(go_request(&unsampled, "book", 42))
        .await
        .unwrap();
    assert_eq!(
        wait_result(&mut read, &unsampled, 60).await.unwrap().status,
        "done"
    );
    // A caller whose traceparent says "sampled" is still traced (parent-based): it shows
    // the exporter works, and that the unsampled order's spans had their chance to go.
    let (client_trace, client_span) = ("5bf92f3577b34da6a3ce929d0e0e4736", "10f067aa0ba902b7");
    let sampled = unique("sampled");
    submit
        .create_order(traced(
            go_request(&sampled, "book", 42),
            &format!("00-{client_trace}-{client_span}-01"),
        ))
        .await
        .unwrap();
    assert_eq!(
        wait_result(&mut read, &sampled, 60).await.unwrap().status,
        "done"
    );
    let received = spans_until(&spans, |s| find(s, "process embedded", &sampled).is_some()).await;
    drop(run);
    assert!(
        received
            .iter()
            .all(|s| s.attributes.get("order.id") != Some(&unsampled)),
        "spans of the unsampled order were exported"
    );
    assert!(received.iter().all(|s| s.trace_id == client_trace));
}
