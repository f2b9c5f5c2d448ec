//! Deploying, swapping and rolling back rules while orders flow (AdminService).

use std::time::{Duration, Instant};

use crate::support::{
    built_plugin, cache_client, embedded_config, kafka_config, order_client, services, unique,
    wait_result,
};
use order_pipeline::app::{self, Role};
use order_pipeline::config::Config;
use order_pipeline::proto::admin::admin_service_client::AdminServiceClient;
use order_pipeline::proto::admin::{self, DeployRequest, deploy_request::Position};
use order_pipeline::proto::{CreateOrdersRequest, OrderLine, OrderRequest};
use tonic::Request;

const TOKEN: &str = "test-token-123";

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

pub(crate) fn tax_deploy(rates: &str) -> DeployRequest {
    DeployRequest {
        wasm: std::fs::read(built_plugin("rule_tax")).unwrap(),
        config: [("rates".to_string(), rates.to_string())]
            .into_iter()
            .collect(),
        position: Some(Position::Replace("rule-tax".into())),
        ..Default::default()
    }
}

pub(crate) fn us_order(id: &str) -> OrderRequest {
    OrderRequest {
        id: id.to_string(),
        currency: "USD".into(),
        shipping_country: "US".into(),
        lines: vec![OrderLine {
            sku: "book".into(),
            quantity: 1,
            unit_price: 1000,
        }],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn deploy_under_load_switches_versions_and_loses_nothing() {
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.admin.token = Some(TOKEN.into());
    let running = app::start(Role::All, &config).await.unwrap();
    let mut admin = AdminServiceClient::connect(format!("http://{}", running.admin_addr.unwrap()))
        .await
        .unwrap();
    let before = admin
        .active(authed(admin::ActiveRequest {}, TOKEN))
        .await
        .unwrap()
        .into_inner()
        .version;

    // Orders keep flowing in the background while the tax rule is swapped.
    let order_addr = running.order_addr.unwrap();
    let ids: Vec<String> = (0..600).map(|i| unique(&format!("swap{i}"))).collect();
    let submit_ids = ids.clone();
    let submitter = tokio::spawn(async move {
        let mut orders = order_client(order_addr).await;
        for chunk in submit_ids.chunks(10) {
            let batch = chunk.iter().map(|id| us_order(id)).collect();
            let responses = orders
                .create_orders(CreateOrdersRequest { orders: batch })
                .await
                .unwrap()
                .into_inner()
                .responses;
            assert!(responses.iter().all(|r| r.status == "accepted"));
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Swap once the worker is busy with the stream.
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    wait_result(&mut cache, &ids[0], 60).await.unwrap();
    let deployed = admin
        .deploy(authed(tax_deploy("US:1000"), TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(deployed.version, before + 1);
    assert!(deployed.active);
    submitter.await.unwrap();
    // Orders submitted after the deploy returned must be decided by the new version.
    let mut orders = order_client(order_addr).await;
    let after: Vec<String> = (0..20).map(|i| unique(&format!("after-swap{i}"))).collect();
    let batch = after.iter().map(|id| us_order(id)).collect();
    orders
        .create_orders(CreateOrdersRequest { orders: batch })
        .await
        .unwrap();

    for id in &after {
        let result = wait_result(&mut cache, id, 60).await.unwrap();
        assert_eq!(
            (result.ruleset_version, result.totals.unwrap().total),
            (deployed.version, 1100),
            "{id}"
        );
    }
    let (mut old, mut new) = (0, 0);
    for id in &ids {
        let result = wait_result(&mut cache, id, 60).await.unwrap();
        assert_eq!(
            result.status, "done",
            "{id}: no order may fail during a swap"
        );
        let total = result.totals.unwrap().total;
        // Every result is attributable to exactly one version: US tax 0% before, 10% after.
        match result.ruleset_version {
            v if v == before => {
                assert_eq!(total, 1000, "{id}");
                old += 1;
            }
            v if v == deployed.version => {
                assert_eq!(total, 1100, "{id}");
                new += 1;
            }
            v => panic!("{id}: unexpected ruleset version {v}"),
        }
        let tax = result.rules.iter().find(|r| r.name == "rule-tax").unwrap();
        assert_eq!(
            tax.digest,
            deployed
                .rules
                .iter()
                .find(|r| r.name == "rule-tax")
                .unwrap()
                .digest
        );
    }
    println!("during the swap: {old} orders on the old version, {new} on the new one");
    assert!(old > 0, "the first order was decided before the deploy");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn a_second_worker_converges_on_the_new_version() {
    let Some(services) = services() else { return };
    let mut config = kafka_config(&services);
    config.admin.token = Some(TOKEN.into());
    let first = app::start(Role::All, &config).await.unwrap();
    let second = app::start(Role::Worker, &config).await.unwrap();
    let mut admin = AdminServiceClient::connect(format!("http://{}", first.admin_addr.unwrap()))
        .await
        .unwrap();
    let deployed = admin
        .deploy(authed(tax_deploy("US:500"), TOKEN))
        .await
        .unwrap()
        .into_inner();
    let returned = Instant::now();
    let live = second.live.as_ref().unwrap();
    while live.current().version != deployed.version {
        assert!(
            returned.elapsed() < Duration::from_secs(10),
            "the second worker did not switch within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    println!(
        "second worker on version {} {:?} after deploy returned",
        deployed.version,
        returned.elapsed()
    );
    assert_eq!(
        first.live.as_ref().unwrap().current().version,
        deployed.version
    );
    second.stop().await.unwrap();
    first.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_deploys_leave_the_live_ruleset_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path());
    config.admin.token = Some(TOKEN.into());
    let running = app::start(Role::All, &config).await.unwrap();
    let mut admin = AdminServiceClient::connect(format!("http://{}", running.admin_addr.unwrap()))
        .await
        .unwrap();
    let active = || admin::ActiveRequest {};
    let before = admin
        .active(authed(active(), TOKEN))
        .await
        .unwrap()
        .into_inner();

    let missing = admin.active(Request::new(active())).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    let wrong = admin
        .deploy(authed(tax_deploy("US:1000"), "nope"))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);

    let not_wasm = DeployRequest {
        wasm: b"hello".to_vec(),
        ..Default::default()
    };
    let status = admin.deploy(authed(not_wasm, TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().contains("not a WebAssembly file"),
        "{}",
        status.message()
    );

    let wrong_world = DeployRequest {
        wasm: std::fs::read(built_plugin("fixture_wrong_world")).unwrap(),
        ..Default::default()
    };
    let status = admin.deploy(authed(wrong_world, TOKEN)).await.unwrap_err();
    assert!(
        status.message().contains("order:rules/rule@0.1.0"),
        "{}",
        status.message()
    );

    let mut failing = tax_deploy("DE:1900");
    failing.examples = vec![admin::Example {
        name: "de".into(),
        order_json: r#"{"id":"x","currency":"EUR","shipping_country":"DE","lines":[{"sku":"a","quantity":1,"unit_price":1000}]}"#.into(),
        expected_json: r#"{"totals":{"tax":200}}"#.into(),
    }];
    let status = admin.deploy(authed(failing, TOKEN)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(
        status
            .message()
            .contains("totals.tax: expected 200, got 190"),
        "{}",
        status.message()
    );

    let bad_config = tax_deploy("DE:19%");
    let status = admin.deploy(authed(bad_config, TOKEN)).await.unwrap_err();
    assert!(
        status.message().contains("refused its configuration"),
        "{}",
        status.message()
    );

    let panics = DeployRequest {
        wasm: std::fs::read(built_plugin("fixture_panic")).unwrap(),
        ..Default::default()
    };
    let status = admin.deploy(authed(panics, TOKEN)).await.unwrap_err();
    assert!(
        status.message().contains("smoke order failed"),
        "{}",
        status.message()
    );

    let after = admin
        .active(authed(active(), TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after, before, "the live ruleset is untouched");
    assert_eq!(
        running.live.as_ref().unwrap().current().version,
        before.version
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refuses_a_public_address_without_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path());
    config.servers.admin = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    let err = app::start(Role::All, &config).await.err().unwrap();
    assert!(format!("{err:#}").contains("ADMIN_TOKEN"), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_rule_is_quarantined_and_its_orders_retried_embedded() {
    let dir = tempfile::tempdir().unwrap();
    a_failing_rule_is_quarantined_and_its_orders_retried(embedded_config(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn a_failing_rule_is_quarantined_and_its_orders_retried_on_kafka_and_redis() {
    let Some(services) = crate::support::services() else {
        return;
    };
    a_failing_rule_is_quarantined_and_its_orders_retried(crate::support::kafka_config(&services))
        .await;
}

/// The rules supervisor of the process takes a rule that fails too often out of the
/// live version (a new version without it), from what the processor reported.
async fn a_failing_rule_is_quarantined_and_its_orders_retried(mut config: Config) {
    config.worker.quarantine_failures = 3;
    config.worker.quarantine_window = 10;
    config.telemetry.metrics_addr = Some(crate::support::LOOPBACK_ANY_PORT);
    let running = app::start(Role::All, &config).await.unwrap();
    let mut admin = AdminServiceClient::connect(format!("http://{}", running.admin_addr.unwrap()))
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;

    // It passes the deploy gate (the smoke order has no `boom` SKU)...
    let trap = DeployRequest {
        wasm: std::fs::read(built_plugin("fixture_trap_on")).unwrap(),
        position: Some(Position::After("rule-validate".into())),
        ..Default::default()
    };
    let deployed = admin.deploy(trap).await.unwrap().into_inner();
    // ...then fails on real orders.
    let run = crate::support::unique("boom");
    let batch = (0..20)
        .map(|i| crate::support::go_request(&format!("{run}-{i}"), &format!("boom-{i}"), 10))
        .collect();
    orders
        .create_orders(CreateOrdersRequest { orders: batch })
        .await
        .unwrap();
    let mut done = 0;
    for i in 0..20 {
        let result = wait_result(&mut cache, &format!("{run}-{i}"), 30)
            .await
            .unwrap();
        if result.status == "done" {
            assert!(
                result.ruleset_version > deployed.version,
                "done under the restored version"
            );
            assert!(result.rules.iter().all(|r| r.name != "fixture-trap-on"));
            done += 1;
        }
    }
    let history = admin
        .history(admin::HistoryRequest {})
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert!(
        history[0]
            .reason
            .starts_with("quarantine: rule fixture-trap-on"),
        "{:?}",
        history[0].reason
    );
    assert!(history[0].active);
    assert!(history[0].rules.iter().all(|r| r.name != "fixture-trap-on"));
    // The audit trail has the deploy (by the local caller) and the quarantine (by the
    // worker), once each.
    let trail = running
        .live
        .as_ref()
        .unwrap()
        .registry()
        .audit(0, 10_000)
        .await
        .unwrap();
    let actions: Vec<(&str, &str)> = trail
        .iter()
        .map(|e| (e.principal.as_str(), e.action.as_str()))
        .filter(|(_, a)| *a == "Deploy" || *a == "quarantine")
        .collect();
    assert_eq!(actions.len(), 2, "{actions:?}");
    assert_eq!(actions[0], ("local", "Deploy"));
    assert!(
        actions[1].0.starts_with("worker:") && actions[1].1 == "quarantine",
        "{actions:?}"
    );
    let quarantine = trail.iter().find(|e| e.action == "quarantine").unwrap();
    assert_eq!(quarantine.args["rule"], "fixture-trap-on");
    assert!(
        done >= 16,
        "orders failed by the rule before it was taken out are at most a few: {done} done of 20"
    );
    // The metrics say what happened: failures by kind, the quarantine, the switches.
    use crate::metrics::{scrape_until, value};
    use order_pipeline::metrics as m;
    let addr = running.metrics_addr.unwrap();
    let trap = [("rule", "fixture-trap-on"), ("kind", "trap")];
    let scraped = tokio::task::spawn_blocking(move || {
        scrape_until(addr, std::time::Duration::from_secs(10), |s| {
            value(s, m::QUARANTINES, &[("rule", "fixture-trap-on")]) >= 1.0
        })
    })
    .await
    .unwrap();
    assert!(value(&scraped, m::RULE_FAILURES, &trap) >= 3.0);
    assert!(
        value(
            &scraped,
            m::RULE_EVALUATIONS,
            &[("rule", "fixture-trap-on"), ("outcome", "failed")]
        ) >= 3.0
    );
    assert!(value(&scraped, m::QUARANTINES, &[("rule", "fixture-trap-on")]) >= 1.0);
    assert!(
        value(&scraped, m::RULESET_SWITCHES, &[]) >= 3.0,
        "initial, deploy, restore"
    );
    running.stop().await.unwrap();
}
