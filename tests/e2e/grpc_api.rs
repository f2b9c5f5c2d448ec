//! The gRPC API as clients meet it, against the real Redis and broker started by
//! scripts/test.sh: every invalid order is refused naming its field, and each server
//! serves its own service, health and reflection (v1 and v1alpha).

use crate::support::{cache_client, go_request, kafka_config, order_client, services};
use order_pipeline::app::{self, Role};
use order_pipeline::proto::{OrderLine, OrderRequest, ResultRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn invalid_orders_are_refused_naming_the_field() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let line = |sku: &str, quantity: u32, unit_price: i64| OrderLine {
        sku: sku.into(),
        quantity,
        unit_price,
    };
    let cases: Vec<(OrderRequest, &str)> = vec![
        (go_request("", "book", 1), "id"),
        (go_request(&"x".repeat(300), "book", 1), "id"),
        (go_request("o", "", 1), "item"),
        (go_request("o", "book", -1), "price"),
        (
            OrderRequest {
                currency: "euro".into(),
                ..go_request("o", "book", 1)
            },
            "currency",
        ),
        (
            OrderRequest {
                shipping_country: "Germany".into(),
                ..go_request("o", "book", 1)
            },
            "shipping_country",
        ),
        (
            OrderRequest {
                lines: vec![line("a", 0, 1)],
                ..go_request("o", "", 0)
            },
            "lines[0].quantity",
        ),
        (
            OrderRequest {
                lines: vec![line("a", 1, -1)],
                ..go_request("o", "", 0)
            },
            "lines[0].unit_price",
        ),
        (
            OrderRequest {
                lines: vec![line("", 1, 1)],
                ..go_request("o", "", 0)
            },
            "lines[0].sku",
        ),
        (
            OrderRequest {
                lines: vec![line("a", 1, 1)],
                ..go_request("o", "book", 1)
            },
            "item",
        ),
        (
            OrderRequest {
                lines: (0..1001).map(|i| line(&format!("s{i}"), 1, 1)).collect(),
                ..go_request("o", "", 0)
            },
            "lines",
        ),
        (
            OrderRequest {
                coupon_codes: vec![String::new()],
                ..go_request("o", "book", 1)
            },
            "coupon_codes[0]",
        ),
    ];
    for (request, field) in cases {
        let status = orders.create_order(request).await.unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().starts_with(&format!("{field}: ")),
            "{field}: {}",
            status.message()
        );
    }
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let status = cache
        .get_order_result(ResultRequest {
            id: String::new(),
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    let status = cache
        .get_order_result(ResultRequest {
            id: "x".into(),
            wait_ms: 60_000,
        })
        .await
        .unwrap_err();
    assert!(
        status.message().starts_with("wait_ms: "),
        "{}",
        status.message()
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn reflection_v1_and_v1alpha_and_health_are_served() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient as V1;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as V1Request;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as V1Response;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient as V1Alpha;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest as AlphaRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse as AlphaResponse;

    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    for (addr, mine, other) in [
        (
            running.order_addr.unwrap(),
            "order.OrderService",
            "order.CacheService",
        ),
        (
            running.cache_addr.unwrap(),
            "order.CacheService",
            "order.OrderService",
        ),
    ] {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = tonic_reflection::pb::v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(V1Request::ListServices(String::new())),
        };
        let mut v1 = V1::new(channel.clone());
        let mut stream = v1
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(V1Response::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("no service list");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(names.contains(&mine.to_string()), "{names:?}");
        assert!(
            names.contains(&"grpc.health.v1.Health".to_string()),
            "{names:?}"
        );
        assert!(
            !names.contains(&other.to_string()),
            "each server lists only its own service: {names:?}"
        );

        let request = tonic_reflection::pb::v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(AlphaRequest::ListServices(String::new())),
        };
        let mut alpha = V1Alpha::new(channel.clone());
        let mut stream = alpha
            .server_reflection_info(futures::stream::iter([request]))
            .await
            .unwrap()
            .into_inner();
        let Some(AlphaResponse::ListServicesResponse(list)) =
            stream.message().await.unwrap().unwrap().message_response
        else {
            panic!("no v1alpha service list");
        };
        assert!(list.service.iter().any(|s| s.name == mine));

        let mut health = HealthClient::new(channel);
        let answer = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: mine.to_string(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving
        );
    }
    running.stop().await.unwrap();
}
