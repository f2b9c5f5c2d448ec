//! Safe rollout: a shadow run decides every order again with a candidate and reports the
//! differences without touching what clients read; a canary decides a stable share of
//! the orders, ends with promote or rollback, and rolls back by itself when its candidate
//! does worse than the live version. Each runs embedded and on Kafka + Redis.

use std::time::{Duration, Instant};

use crate::deploy::{tax_deploy, us_order};
use crate::support::{
    built_plugin, cache_client, embedded_config, kafka_config, order_client, services, unique,
    wait_result,
};
use order_pipeline::app::{self, Role, Running};
use order_pipeline::domain::ruleset::Canary;
use order_pipeline::proto::admin::admin_service_client::AdminServiceClient;
use order_pipeline::proto::admin::{self, DeployRequest, deploy_request::Position};
use order_pipeline::proto::{OrderLine, OrderRequest};

type Admin = AdminServiceClient<tonic::transport::Channel>;

async fn admin_of(running: &Running) -> Admin {
    AdminServiceClient::connect(format!("http://{}", running.admin_addr.unwrap()))
        .await
        .unwrap()
}

fn de_order(id: &str) -> OrderRequest {
    OrderRequest {
        currency: "EUR".into(),
        shipping_country: "DE".into(),
        ..us_order(id)
    }
}

/// Answers the shadow run's id and one order it compared.
async fn shadow_run_reports_differences_and_touches_no_result(
    running: &Running,
) -> (String, String) {
    let mut admin = admin_of(running).await;
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let live = admin
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();

    // The candidate taxes US orders at 10%; the live version does not tax them.
    let started = admin
        .shadow_start(admin::ShadowStartRequest {
            version: 0,
            plugins: vec![tax_deploy("US:1000,DE:1900")],
        })
        .await
        .unwrap()
        .into_inner();
    assert!(started.shadow_version > live.version);
    assert!(started.shadow_run.starts_with("shadow-"));
    let still = admin
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        still.version, live.version,
        "a shadow run activates nothing"
    );

    let run = unique("shadow");
    let us: Vec<String> = (0..6).map(|i| format!("{run}-us-{i}")).collect();
    let de: Vec<String> = (0..4).map(|i| format!("{run}-de-{i}")).collect();
    for id in &us {
        orders.create_order(us_order(id)).await.unwrap();
    }
    for id in &de {
        orders.create_order(de_order(id)).await.unwrap();
    }
    for id in us.iter().chain(&de) {
        let result = wait_result(&mut cache, id, 30).await.unwrap();
        assert_eq!(result.ruleset_version, live.version, "{id}");
        let expected = if id.contains("-us-") { 1000 } else { 1190 };
        assert_eq!(
            result.totals.unwrap().total,
            expected,
            "{id}: the live decision"
        );
    }

    // The shadow task runs beside the worker: wait for it to have compared them all.
    let deadline = Instant::now() + Duration::from_secs(30);
    let diff = loop {
        let diff = admin
            .shadow_diff(admin::ShadowDiffRequest {})
            .await
            .unwrap()
            .into_inner();
        if diff.orders >= 10 || Instant::now() > deadline {
            break diff;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(diff.run, started.shadow_run);
    assert!(diff.on);
    // The orders of this test (an embedded run has only them; others may share Kafka's).
    assert!(diff.orders >= 10, "{diff:?}");
    assert_eq!(diff.differing, 6, "{diff:?}");
    assert_eq!(diff.by_kind.get("total"), Some(&6));
    assert_eq!(diff.by_kind.get("status"), None);
    assert_eq!(
        diff.money.get("USD"),
        Some(&600),
        "6 orders, +100 cents each"
    );
    let samples: serde_json::Value = serde_json::from_str(&diff.samples_json).unwrap();
    let sample = &samples["total"][0];
    assert!(
        us.contains(&sample["id"].as_str().unwrap().to_string()),
        "{sample}"
    );
    assert_eq!(sample["live"]["total"], 1000);
    assert_eq!(sample["candidate"]["total"], 1100);
    assert_eq!(sample["candidate"]["version"], started.shadow_version);

    // Promote: the candidate's contents go live; the diff stays readable.
    let promoted = admin
        .shadow_promote(admin::ShadowPromoteRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(promoted.active && promoted.version > started.shadow_version);
    let id = format!("{run}-after");
    orders.create_order(us_order(&id)).await.unwrap();
    let after = wait_result(&mut cache, &id, 30).await.unwrap();
    assert_eq!(after.totals.unwrap().total, 1100);
    let rollout = admin
        .rollout(admin::RolloutRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(rollout.shadow_run.is_empty(), "{rollout:?}");
    let diff = admin
        .shadow_diff(admin::ShadowDiffRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(!diff.on && diff.differing == 6, "{diff:?}");
    let none = admin
        .shadow_stop(admin::ShadowStopRequest {})
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::FailedPrecondition);
    (started.shadow_run, us[0].clone())
}

fn canary_deploy(wasm: DeployRequest, percent: f64) -> DeployRequest {
    DeployRequest {
        canary_percent: percent,
        ..wasm
    }
}

async fn canary_decides_its_share_until_promote_or_rollback(running: &Running) {
    let mut admin = admin_of(running).await;
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let live = admin
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();

    let candidate = admin
        .deploy(canary_deploy(tax_deploy("US:1000"), 30.0))
        .await
        .unwrap()
        .into_inner();
    assert!(!candidate.active && candidate.version > live.version);
    let rollout = admin
        .rollout(admin::RolloutRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            rollout.canary_version,
            rollout.canary_percent,
            rollout.canary_margin_percent
        ),
        (candidate.version, 30.0, 5.0)
    );
    let selects = |id: &str| {
        Canary {
            version: candidate.version,
            basis_points: 3000,
            margin_basis_points: 500,
            started_at_unix_ms: 0,
        }
        .selects(id)
    };
    let run = unique("canary");
    // The share is the selection's (a hash of the id): about 30% of many ids. The orders
    // sent are 20 it selects and 20 it does not, so that the check below cannot be
    // skewed by a small sample.
    let many = (0..10_000)
        .filter(|i| selects(&format!("{run}-share-{i}")))
        .count();
    assert!((2_700..=3_300).contains(&many), "{many} of 10000 at 30%");
    let picked: Vec<String> = (0..)
        .map(|i| format!("{run}-{i}"))
        .filter(|id| selects(id))
        .take(20)
        .collect();
    let passed: Vec<String> = (0..)
        .map(|i| format!("{run}-{i}"))
        .filter(|id| !selects(id))
        .take(20)
        .collect();
    let ids: Vec<String> = picked.into_iter().chain(passed).collect();
    for id in &ids {
        orders.create_order(us_order(id)).await.unwrap();
    }
    for id in &ids {
        let result = wait_result(&mut cache, id, 30).await.unwrap();
        let (version, total) = (result.ruleset_version, result.totals.unwrap().total);
        if selects(id) {
            assert_eq!((version, total), (candidate.version, 1100), "{id}");
        } else {
            assert_eq!((version, total), (live.version, 1000), "{id}");
        }
    }

    // A rollback ends the canary and leaves the active version as it is.
    let back = admin
        .rollback(admin::RollbackRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(back.version, live.version);
    let rollout = admin
        .rollout(admin::RolloutRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rollout.canary_version, 0);
    assert_eq!(rollout.last_canary_end, "rolled back by an operator");
    let picked = (0..200)
        .map(|i| format!("{run}-again-{i}"))
        .find(|id| selects(id))
        .unwrap();
    orders.create_order(us_order(&picked)).await.unwrap();
    let result = wait_result(&mut cache, &picked, 30).await.unwrap();
    assert_eq!(result.ruleset_version, live.version, "no canary any more");

    // Again, then promote: the candidate's contents become the active version.
    let candidate = admin
        .deploy(canary_deploy(tax_deploy("US:1000"), 30.0))
        .await
        .unwrap()
        .into_inner();
    let promoted = admin
        .promote(admin::PromoteRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(promoted.active);
    assert_eq!(promoted.rules, candidate.rules);
    let rollout = admin
        .rollout(admin::RolloutRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rollout.canary_version, 0);
    let none = admin.promote(admin::PromoteRequest {}).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::FailedPrecondition);
}

fn boom_order(id: &str) -> OrderRequest {
    OrderRequest {
        lines: vec![OrderLine {
            sku: "boom-1".into(),
            quantity: 1,
            unit_price: 1000,
        }],
        ..us_order(id)
    }
}

async fn a_failing_canary_rolls_back_by_itself(running: &Running) {
    let mut admin = admin_of(running).await;
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let live = admin
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();
    // A candidate that traps on every `boom` order, on half of the orders.
    let candidate = admin
        .deploy(canary_deploy(
            DeployRequest {
                wasm: std::fs::read(built_plugin("fixture_trap_on")).unwrap(),
                position: Some(Position::After("rule-validate".into())),
                ..DeployRequest::default()
            },
            50.0,
        ))
        .await
        .unwrap()
        .into_inner();
    let run = unique("bad-canary");
    let ids: Vec<String> = (0..80).map(|i| format!("{run}-{i}")).collect();
    for id in &ids {
        orders.create_order(boom_order(id)).await.unwrap();
    }
    // Every order ends decided: the candidate's failures are retried under the live
    // version once the canary is gone, or stay failed if they were final before.
    let selects = |id: &str| {
        Canary {
            version: candidate.version,
            basis_points: 5000,
            margin_basis_points: 500,
            started_at_unix_ms: 0,
        }
        .selects(id)
    };
    let mut rescued = 0;
    for id in &ids {
        let result = wait_result(&mut cache, id, 30).await.unwrap();
        assert!(["done", "failed"].contains(&result.status.as_str()), "{id}");
        if selects(id) && result.status == "done" && result.attempts >= 2 {
            // Failed under the candidate in the batch that ended the canary, retried
            // under the live version. (Later orders are simply decided by it.)
            assert_eq!(result.ruleset_version, live.version);
            rescued += 1;
        }
    }
    assert!(
        rescued >= 1,
        "the breaking batch's failures are retried under the live version"
    );
    let rollout = admin
        .rollout(admin::RolloutRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rollout.canary_version, 0, "{rollout:?}");
    assert!(
        rollout
            .last_canary_end
            .starts_with(&format!("canary of version {} ended", candidate.version)),
        "{rollout:?}"
    );
    let active = admin
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(active.version, live.version, "the live version stays");
    // The automatic rollback is in the audit trail once, by the worker.
    let rollbacks: Vec<_> = running
        .live
        .as_ref()
        .unwrap()
        .registry()
        .audit(0, 100_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| {
            e.action == "canary-rollback" && e.args["version"] == candidate.version.to_string()
        })
        .collect();
    assert_eq!(rollbacks.len(), 1, "{rollbacks:?}");
    assert!(
        rollbacks[0].principal.starts_with("worker:"),
        "{rollbacks:?}"
    );
    let id = format!("{run}-after");
    orders.create_order(boom_order(&id)).await.unwrap();
    let result = wait_result(&mut cache, &id, 30).await.unwrap();
    assert_eq!(
        (result.status.as_str(), result.ruleset_version),
        ("done", live.version)
    );
}

async fn embedded() -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    (dir, running)
}

async fn on_kafka() -> Option<Running> {
    let services = services()?;
    Some(
        app::start(Role::All, &kafka_config(&services))
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_run_embedded() {
    let (_dir, running) = embedded().await;
    let (first, id) = shadow_run_reports_differences_and_touches_no_result(&running).await;
    let db = running.embedded.clone().unwrap();
    assert!(db.shadow_result(&first, &id).await.unwrap().is_some());
    // The next run's first batch replaces the earlier run's data.
    let mut admin = admin_of(&running).await;
    let active = admin
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();
    let next = admin
        .shadow_start(admin::ShadowStartRequest {
            version: active.version,
            plugins: Vec::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let another = unique("next-shadow");
    orders.create_order(us_order(&another)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while db.shadow_report(&next.shadow_run).await.unwrap().orders == 0 {
        assert!(
            Instant::now() < deadline,
            "the next shadow run compared nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(db.shadow_report(&first).await.unwrap().orders, 0);
    assert!(db.shadow_result(&first, &id).await.unwrap().is_none());
    drop(db);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn shadow_run_on_kafka_and_redis() {
    let Some(running) = on_kafka().await else {
        return;
    };
    let (run, id) = shadow_run_reports_differences_and_touches_no_result(&running).await;
    // The candidate's result is under the run's own key, expiring with the results.
    let plain = order_pipeline::backends::redis::RedisStore::connect(&services().unwrap().redis)
        .await
        .unwrap();
    let key = format!("pipeline:{{shadow:{run}}}:result:{id}");
    assert!(plain.raw(&key).await.unwrap().is_some(), "{key}");
    let ttl = plain.ttl_ms(&key).await.unwrap().unwrap();
    let week = order_pipeline::config::DEFAULT_RESULT_TTL.as_millis() as i64;
    assert!(ttl > week - 600_000 && ttl <= week, "{key}: {ttl} ms");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_embedded() {
    let (_dir, running) = embedded().await;
    canary_decides_its_share_until_promote_or_rollback(&running).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn canary_on_kafka_and_redis() {
    let Some(running) = on_kafka().await else {
        return;
    };
    canary_decides_its_share_until_promote_or_rollback(&running).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_canary_embedded() {
    let (_dir, running) = embedded().await;
    a_failing_canary_rolls_back_by_itself(&running).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn failing_canary_on_kafka_and_redis() {
    let Some(running) = on_kafka().await else {
        return;
    };
    a_failing_canary_rolls_back_by_itself(&running).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Redis Cluster and the broker: scripts/test.sh runs it"]
async fn shadow_run_on_a_redis_cluster() {
    let Some(nodes) = crate::support::redis_cluster() else {
        return;
    };
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.redis.addr = Some(nodes);
    let running = app::start(Role::All, &config).await.unwrap();
    shadow_run_reports_differences_and_touches_no_result(&running).await;
    running.stop().await.unwrap();
}

/// The operator's commands, as a shell would run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_commands_of_the_cli() {
    let (_dir, running) = embedded().await;
    let url = format!("http://{}", running.admin_addr.unwrap());
    let tax = built_plugin("rule_tax").display().to_string();
    let (code, out, err) = crate::support::admin_cli(
        &url,
        &[
            "plugin",
            "shadow",
            "start",
            &tax,
            "--config",
            "rates=US:1000",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.starts_with("shadow: shadow-"), "{out}");
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let id = unique("cli-shadow");
    orders.create_order(us_order(&id)).await.unwrap();
    wait_result(&mut cache, &id, 30).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let diff = loop {
        let (code, out, err) =
            crate::support::admin_cli(&url, &["plugin", "shadow", "diff", "--json"]).await;
        assert_eq!(code, 0, "{out}{err}");
        let diff: serde_json::Value = serde_json::from_str(&out).unwrap();
        if diff["orders"] == 1 || Instant::now() > deadline {
            break diff;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(diff["money"]["USD"], 100, "{diff}");
    let (_, text, _) = crate::support::admin_cli(&url, &["plugin", "shadow", "diff"]).await;
    assert!(
        text.contains("1 orders compared, 1 decided differently"),
        "{text}"
    );
    assert!(text.contains("money    USD +100"), "{text}");
    let (code, out, _) = crate::support::admin_cli(&url, &["plugin", "shadow", "stop"]).await;
    assert_eq!((code, out.lines().next()), (0, Some("shadow: none")));

    let (code, out, err) = crate::support::admin_cli(
        &url,
        &[
            "plugin",
            "deploy",
            &tax,
            "--replace",
            "rule-tax",
            "--config",
            "rates=US:1000",
            "--canary",
            "25",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let (_, out, _) = crate::support::admin_cli(&url, &["plugin", "rollout"]).await;
    assert!(out.contains("on 25% of the orders"), "{out}");
    let (code, out, err) = crate::support::admin_cli(&url, &["plugin", "promote"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("(active)"), "{out}");
    let (code, _, err) = crate::support::admin_cli(&url, &["plugin", "promote"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no canary is running"), "{err}");
    running.stop().await.unwrap();
}
