//! The Go system's own workflow with the real tool its users use: `grpcurl` (installed by
//! scripts/test.sh at a pinned version) against the real binary, once as
//! `order-pipeline run` and once as the three roles in separate processes. The seed
//! README's steps: `list` shows `order.OrderService` and both reflection services,
//! `CreateOrder` with `{"id":…,"item":"book","price":42}` answers `accepted`,
//! `GetOrderResult` on the cache port reaches `done`, and `describe` shows the messages.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::{free_addr, services, start_role as start, unique};

/// The grpcurl to run: `TEST_GRPCURL` (set by scripts/test.sh), else `grpcurl` on the
/// PATH. Under CI a missing grpcurl fails the test.
fn grpcurl() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TEST_GRPCURL") {
        return Some(PathBuf::from(path));
    }
    let on_path = Command::new("grpcurl")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    match on_path {
        true => Some(PathBuf::from("grpcurl")),
        false if std::env::var_os("CI").is_some() => {
            panic!("CI is set but grpcurl is missing: run the suite with scripts/test.sh")
        }
        false => {
            eprintln!("skipped: grpcurl not found (scripts/test.sh installs it)");
            None
        }
    }
}

/// Runs grpcurl with `args`; returns its stdout, or panics with its stderr.
fn call(grpcurl: &PathBuf, args: &[&str]) -> String {
    let output = Command::new(grpcurl).args(args).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "grpcurl {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `base` plus one more variable.
fn env_with<'a>(base: &[(&'a str, &'a str)], extra: (&'a str, &'a str)) -> Vec<(&'a str, &'a str)> {
    let mut env = base.to_vec();
    env.push(extra);
    env
}

/// The seed README's steps against an OrderService at `orders` and a CacheService at
/// `cache`.
fn seed_readme_workflow(grpcurl: &PathBuf, orders: &str, cache: &str) {
    let listed = call(grpcurl, &["-plaintext", orders, "list"]);
    for service in [
        "order.OrderService",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ] {
        assert!(
            listed.lines().any(|l| l.trim() == service),
            "{service} missing from:\n{listed}"
        );
    }

    let id = unique("grpcurl");
    let request = format!(r#"{{"id":"{id}","item":"book","price":42}}"#);
    let created = call(
        grpcurl,
        &[
            "-plaintext",
            "-d",
            &request,
            orders,
            "order.OrderService/CreateOrder",
        ],
    );
    assert!(created.contains(r#""status": "accepted""#), "{created}");

    let lookup = format!(r#"{{"id":"{id}"}}"#);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let output = Command::new(grpcurl)
            .args([
                "-plaintext",
                "-d",
                &lookup,
                cache,
                "order.CacheService/GetOrderResult",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        if output.status.success() && text.contains(r#""status": "done""#) {
            assert!(text.contains(r#""item": "book""#), "{text}");
            assert!(text.contains(r#""price": 42"#), "{text}");
            break;
        }
        // NotFound until the worker has written the result.
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() || err.contains("NotFound"),
            "GetOrderResult: {err}{text}"
        );
        assert!(Instant::now() < deadline, "no done result within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    let described = call(
        grpcurl,
        &["-plaintext", orders, "describe", "order.OrderRequest"],
    );
    for field in ["string id = 1;", "string item = 2;", "int32 price = 3;"] {
        assert!(
            described.contains(field),
            "{field} missing from:\n{described}"
        );
    }
    let described = call(
        grpcurl,
        &["-plaintext", cache, "describe", "order.CacheService"],
    );
    assert!(
        described.contains(
            "rpc GetOrderResult ( .order.ResultRequest ) returns ( .order.ResultResponse );"
        ),
        "{described}"
    );
}

#[test]
#[ignore = "needs grpcurl: scripts/test.sh installs it and runs this"]
fn grpcurl_workflow_against_order_pipeline_run() {
    let Some(grpcurl) = grpcurl() else { return };
    let data = tempfile::tempdir().unwrap();
    let (orders, cache, admin) = (free_addr(), free_addr(), free_addr());
    let _run = start(
        "run",
        &[
            ("DATA_DIR", data.path().to_str().unwrap()),
            ("ORDER_SERVICE_ADDR", &orders),
            ("CACHE_SERVICE_ADDR", &cache),
            ("ADMIN_ADDR", &admin),
        ],
        Some(&cache),
    );
    seed_readme_workflow(&grpcurl, &orders, &cache);
}

#[test]
#[ignore = "needs grpcurl, Redis and the broker: scripts/test.sh runs it"]
fn grpcurl_workflow_against_the_three_roles_as_processes() {
    let Some(grpcurl) = grpcurl() else { return };
    let Some(services) = services() else { return };
    let (topic, dlq, group) = (
        unique("grpcurl-orders"),
        unique("grpcurl-dlq"),
        unique("grpcurl-group"),
    );
    let (orders, cache) = (free_addr(), free_addr());
    let kafka = [
        ("KAFKA_BROKERS", services.kafka.as_str()),
        ("KAFKA_TOPIC", topic.as_str()),
        ("DLQ_TOPIC", dlq.as_str()),
        ("WORKER_GROUP", group.as_str()),
        ("REDIS_ADDR", services.redis.as_str()),
    ];
    let _receiver = start(
        "order-service",
        &env_with(&kafka, ("ORDER_SERVICE_ADDR", &orders)),
        Some(&orders),
    );
    let _processor = start(
        "worker",
        &env_with(&kafka, ("ADMIN_ADDR", "127.0.0.1:0")),
        None,
    );
    let _cache = start(
        "cache-service",
        &env_with(&kafka, ("CACHE_SERVICE_ADDR", &cache)),
        Some(&cache),
    );
    seed_readme_workflow(&grpcurl, &orders, &cache);
}
