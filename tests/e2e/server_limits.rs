//! The gRPC servers' limits (issue 21, item 4), on the embedded pipeline: requests served
//! at once per connection, the request timeout, and the CacheService's id rules.

use std::time::{Duration, Instant};

use crate::support::{cache_client, embedded_config, unique};
use order_pipeline::app::{self, Role};
use order_pipeline::proto::ResultRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_connection_is_held_to_its_limits() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path());
    config.servers.limits.concurrency_per_connection = 1;
    config.servers.limits.request_timeout = Duration::from_secs(1);
    let running = app::start(Role::All, &config).await.unwrap();
    let cache = cache_client(running.cache_addr.unwrap()).await;

    // Four calls on one connection, each waiting 300 ms for a result that never comes:
    // served one at a time, they take at least 1.2 s together (at once: 0.3 s).
    let started = Instant::now();
    let calls = (0..4).map(|_| {
        let mut cache = cache.clone();
        async move {
            let missing = cache
                .get_order_result(ResultRequest {
                    id: unique("never"),
                    wait_ms: 300,
                })
                .await
                .unwrap_err();
            assert_eq!(missing.code(), tonic::Code::NotFound);
        }
    });
    futures::future::join_all(calls).await;
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "4 calls served at once on one connection: {:?}",
        started.elapsed()
    );

    // A call longer than the request timeout is ended by the server.
    let mut cache = cache.clone();
    let ended = cache
        .get_order_result(ResultRequest {
            id: unique("never"),
            wait_ms: 5000,
        })
        .await
        .unwrap_err();
    assert_eq!(ended.code(), tonic::Code::Cancelled, "{ended:?}");
    assert_eq!(ended.message(), "Timeout expired");

    // Every id read follows the OrderService's id rules.
    for (id, message) in [
        ("x".repeat(4096), "id: is 4096 bytes, at most 128 allowed"),
        (
            "a\nb".to_string(),
            "id: must not contain control characters",
        ),
        (String::new(), "id: is required"),
    ] {
        let refused = cache
            .get_order_result(ResultRequest { id, wait_ms: 0 })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(refused.message(), message);
    }
    running.stop().await.unwrap();
}
