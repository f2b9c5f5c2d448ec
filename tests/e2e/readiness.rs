//! Readiness: `grpc.health.v1` answers NOT_SERVING, and `order-pipeline health` says
//! why, while the worker cannot build the registry's active ruleset; SERVING again once
//! it can. (Kafka and Redis going away and coming back: `faults::health_follows_*`.)

use std::time::{Duration, Instant};

use order_pipeline::app::{self, Role};
use order_pipeline::domain::now_unix_ms;
use order_pipeline::domain::ruleset::{Expect, RuleRef, RulesetBody};

use crate::support::{cli, embedded_config};

/// `order-pipeline health --addr URL`: (exit code, the printed line).
pub async fn health(url: &str) -> (i32, String) {
    let url = url.to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || cli(&["health", "--addr", &url]))
        .await
        .unwrap();
    (code, format!("{}{}", out.trim(), err.trim()))
}

/// Asks `url` until its answer satisfies `expected` (at most `limit`); returns it.
pub async fn wait_health(
    url: &str,
    limit: Duration,
    expected: impl Fn(i32, &str) -> bool,
) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let (code, line) = health(url).await;
        if expected(code, &line) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "{url} still answers `{line}` (exit {code}) after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// SERVING, exit 0.
pub fn serving(code: i32, line: &str) -> bool {
    code == 0 && line == "SERVING"
}

/// NOT_SERVING because of `check`, with `words` in the reason; exit 1.
pub fn not_serving<'a>(check: &'a str, words: &'a str) -> impl Fn(i32, &str) -> bool + 'a {
    move |code, line| {
        code == 1
            && line.starts_with("NOT_SERVING (")
            && line.contains(&format!("{check}: "))
            && line.contains(words)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_cannot_build_the_active_ruleset_is_not_ready_and_says_why() {
    let data = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(data.path()))
        .await
        .unwrap();
    let order_url = format!("http://{}", running.order_addr.unwrap());
    let admin_url = format!("http://{}", running.admin_addr.unwrap());
    wait_health(&order_url, Duration::from_secs(10), serving).await;

    // A version whose plugin is not in the registry: no worker can build it.
    let live = running.live.clone().unwrap();
    let registry = live.registry();
    let good = registry.active().await.unwrap().unwrap();
    let mut rules = good.body.rules.clone();
    rules[0] = RuleRef {
        digest: "0".repeat(64),
        ..rules[0].clone()
    };
    let broken = registry
        .activate(
            &RulesetBody {
                rules,
                reason: "a test: a plugin that is not stored".into(),
                based_on: None,
                previous: Some(good.version),
                created_at_unix_ms: now_unix_ms(),
            },
            Expect::Version(good.version),
        )
        .await
        .unwrap();

    for url in [&order_url, &admin_url] {
        let line = wait_health(
            url,
            Duration::from_secs(20),
            not_serving("ruleset", "is not in the registry"),
        )
        .await;
        assert!(
            line.contains(&format!("still on version {}", good.version)),
            "{line}"
        );
    }
    assert_eq!(
        live.current().version,
        good.version,
        "it keeps deciding with the last good version"
    );
    assert!(
        live.last_error()
            .unwrap()
            .contains("is not in the registry")
    );

    // The good rules again, as a new version: ready again.
    registry
        .activate(
            &RulesetBody {
                based_on: Some(good.version),
                reason: "a test: back to the good rules".into(),
                ..good.body.clone()
            },
            Expect::Version(broken),
        )
        .await
        .unwrap();
    wait_health(&order_url, Duration::from_secs(20), serving).await;
    assert_eq!(live.last_error(), None);
    drop(live); // it holds the embedded database, which stop closes
    running.stop().await.unwrap();
}
