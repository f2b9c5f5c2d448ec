//! Replay: orders decided again with a chosen version, by ids, a time range, Kafka
//! offsets or the dead letters; into a scratch namespace with a diff by default, or
//! replacing the stored results with `overwrite`, each recording what it replaced.

use std::time::Duration;

use crate::deploy::{tax_deploy, us_order};
use crate::support::{
    built_plugin, cache_client, embedded_config, kafka_config, order_client, services, unique,
    wait_result,
};
use order_pipeline::app::{self, Role, Running};
use order_pipeline::domain::OrderResult;
use order_pipeline::proto::admin::admin_service_client::AdminServiceClient;
use order_pipeline::proto::admin::{self, DeployRequest, deploy_request::Position};
use order_pipeline::proto::{OrderLine, OrderRequest};

fn chaos_order(id: &str) -> OrderRequest {
    OrderRequest {
        lines: vec![OrderLine {
            sku: "fail-1".into(),
            quantity: 1,
            unit_price: 1000,
        }],
        ..us_order(id)
    }
}

fn ids(ids: &[&String]) -> admin::ReplayRequest {
    admin::ReplayRequest {
        ids: ids.iter().map(|s| s.to_string()).collect(),
        ..admin::ReplayRequest::default()
    }
}

async fn replay_decides_again(running: &Running, kafka: bool) {
    let mut admin = AdminServiceClient::connect(format!("http://{}", running.admin_addr.unwrap()))
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let since = order_pipeline::domain::now_unix_ms() - 1;
    let run = unique("replay");
    let (us1, us2, failing) = (
        format!("{run}-us-1"),
        format!("{run}-us-2"),
        format!("{run}-fail"),
    );

    // rule-chaos makes `fail` orders retryable until they fail and are dead-lettered.
    let chaos = admin
        .deploy(DeployRequest {
            wasm: std::fs::read(built_plugin("rule_chaos")).unwrap(),
            position: Some(Position::After("rule-validate".into())),
            ..DeployRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    for id in [&us1, &us2] {
        orders.create_order(us_order(id)).await.unwrap();
    }
    orders.create_order(chaos_order(&failing)).await.unwrap();
    for id in [&us1, &us2] {
        assert_eq!(
            wait_result(&mut cache, id, 30).await.unwrap().status,
            "done"
        );
    }
    assert_eq!(
        wait_result(&mut cache, &failing, 30).await.unwrap().status,
        "failed"
    );
    let without_chaos = admin
        .rollback(admin::RollbackRequest {})
        .await
        .unwrap()
        .into_inner();

    // Under the active version (no chaos), into the scratch namespace: only the failed
    // order is decided differently, and nothing a client reads changes.
    let answer = admin
        .replay(ids(&[&us1, &us2, &failing]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.version, answer.decided), (without_chaos.version, 3));
    assert_eq!(answer.differing, 1, "{answer:?}");
    assert_eq!(answer.by_kind.get("status"), Some(&1));
    assert!(answer.run.starts_with("replay-"));
    assert_eq!(
        wait_result(&mut cache, &failing, 5).await.unwrap().status,
        "failed",
        "a replay without overwrite changes no result"
    );

    // Under a chosen version: a tax of 10% on US orders, +100 cents each.
    let taxing = admin
        .deploy(tax_deploy("US:1000"))
        .await
        .unwrap()
        .into_inner();
    let answer = admin
        .replay(admin::ReplayRequest {
            version: taxing.version,
            ..ids(&[&us1, &us2])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.money.get("USD"), Some(&200), "{answer:?}");
    let answer = admin
        .replay(admin::ReplayRequest {
            version: chaos.version,
            ..ids(&[&failing])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.differing, 0,
        "the version that decided it decides the same"
    );

    // The dead letters: the failed order, with why.
    let letters = admin
        .dead_letters(admin::DeadLettersRequest { limit: 0 })
        .await
        .unwrap()
        .into_inner()
        .letters;
    let letter = letters
        .iter()
        .find(|l| l.order_json.contains(&failing))
        .unwrap_or_else(|| panic!("{letters:?}"));
    assert_eq!(letter.result_status, "failed");
    assert!(
        letter.headers["reason"].contains("simulated-failure"),
        "{letter:?}"
    );

    // Replay the dead letters over their results, with a reason.
    let refused = admin
        .replay(admin::ReplayRequest {
            dead_letters: true,
            overwrite: true,
            ..admin::ReplayRequest::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().starts_with("reason:"),
        "{}",
        refused.message()
    );
    let answer = admin
        .replay(admin::ReplayRequest {
            dead_letters: true,
            overwrite: true,
            reason: "the chaos rule was removed".into(),
            version: without_chaos.version,
            ..admin::ReplayRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.overwritten >= 1, "{answer:?}");
    let now = wait_result(&mut cache, &failing, 5).await.unwrap();
    assert_eq!(
        (now.status.as_str(), now.ruleset_version),
        ("done", without_chaos.version)
    );
    let decision = admin
        .decision(admin::DecisionRequest {
            id: failing.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let stored: OrderResult = serde_json::from_str(&decision.result_json).unwrap();
    let replaced = stored.replaced.unwrap();
    assert_eq!(replaced.status.as_str(), "failed");
    assert_eq!(replaced.ruleset_version, chaos.version);
    assert_eq!(replaced.reason, "the chaos rule was removed");
    assert_eq!(replaced.run, answer.run);
    assert_eq!(decision.version.unwrap().version, without_chaos.version);

    // By time: every order of this test (and, on a shared broker, maybe others).
    let until = order_pipeline::domain::now_unix_ms() + 1;
    let answer = admin
        .replay(admin::ReplayRequest {
            since_unix_ms: since,
            until_unix_ms: until,
            ..admin::ReplayRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.decided >= 3, "{answer:?}");

    // By Kafka offsets: partition 0 of this test's topic from its start.
    let offsets = admin::ReplayRequest {
        offsets: vec![admin::OffsetRange {
            partition: 0,
            from: 0,
            to: 0,
        }],
        ..admin::ReplayRequest::default()
    };
    if kafka {
        let answer = admin.replay(offsets.clone()).await.unwrap().into_inner();
        let answer2 = admin
            .replay(admin::ReplayRequest {
                offsets: vec![
                    offsets.offsets[0],
                    admin::OffsetRange {
                        partition: 1,
                        from: 0,
                        to: 0,
                    },
                ],
                ..admin::ReplayRequest::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            answer2.decided, 3,
            "both partitions hold this test's 3 orders"
        );
        assert!(answer.decided <= 3);
    } else {
        let refused = admin.replay(offsets).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }
    let none = admin
        .replay(admin::ReplayRequest::default())
        .await
        .unwrap_err();
    assert_eq!(none.code(), tonic::Code::InvalidArgument);
    tokio::time::sleep(Duration::from_millis(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    replay_decides_again(&running, false).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn replay_on_kafka_and_redis() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    replay_decides_again(&running, true).await;
    running.stop().await.unwrap();
}

/// The operator's and the plugin author's commands, as a shell would run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_commands_of_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    let url = format!("http://{}", running.admin_addr.unwrap());
    let mut admin = AdminServiceClient::connect(url.clone()).await.unwrap();
    let chaos = admin
        .deploy(DeployRequest {
            wasm: std::fs::read(built_plugin("rule_chaos")).unwrap(),
            position: Some(Position::After("rule-validate".into())),
            ..DeployRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let (good, failing) = (unique("cli-good"), unique("cli-fail"));
    orders.create_order(us_order(&good)).await.unwrap();
    orders.create_order(chaos_order(&failing)).await.unwrap();
    wait_result(&mut cache, &good, 30).await.unwrap();
    assert_eq!(
        wait_result(&mut cache, &failing, 30).await.unwrap().status,
        "failed"
    );

    let (code, out, err) =
        crate::support::admin_cli(&url, &["replay", "--id", &good, "--id", &failing, "--json"])
            .await;
    assert_eq!(code, 0, "{out}{err}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (answer["decided"].as_u64(), answer["differing"].as_u64()),
        (Some(2), Some(0))
    );
    let (code, out, err) =
        crate::support::admin_cli(&url, &["replay", "--since", "10m", "--until", "0s"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("2 orders decided"), "{out}");
    assert!(out.contains("stored results unchanged"), "{out}");

    let (code, list, err) = crate::support::admin_cli(&url, &["dlq", "list"]).await;
    assert_eq!(code, 0, "{list}{err}");
    let line = list
        .lines()
        .find(|l| l.contains(&failing))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        line.contains("[failed]") && line.contains("simulated-failure"),
        "{line}"
    );
    let position = line.split_whitespace().next().unwrap().to_string();
    let (code, out, err) = crate::support::admin_cli(&url, &["dlq", "inspect", &position]).await;
    assert_eq!(code, 0, "{out}{err}");
    let letter: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(letter["order"]["id"], failing.as_str());

    // The plugin author's view: the order here, under the version that decided it and
    // under a candidate tax rule.
    let tax = built_plugin("rule_tax").display().to_string();
    let (code, out, err) = crate::support::admin_cli(
        &url,
        &[
            "plugin",
            "replay",
            &good,
            "--candidate",
            &tax,
            "--config",
            "rates=US:1000",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("under version {}", chaos.version)),
        "{out}"
    );
    assert!(out.contains("(as stored)"), "{out}");
    assert!(out.contains("total USD +100"), "{out}");

    // Without the chaos rule, then the dead letters replayed over their results.
    admin.rollback(admin::RollbackRequest {}).await.unwrap();
    let (code, _, err) = crate::support::admin_cli(&url, &["dlq", "replay", "--overwrite"]).await;
    assert_eq!(code, 2, "--overwrite needs --reason: {err}");
    let (code, out, err) = crate::support::admin_cli(
        &url,
        &[
            "dlq",
            "replay",
            "--overwrite",
            "--reason",
            "chaos rule removed",
        ],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("1 stored results replaced"), "{out}");
    assert_eq!(
        wait_result(&mut cache, &failing, 5).await.unwrap().status,
        "done"
    );
    running.stop().await.unwrap();
}

/// A rule that draws WASI randomness decides an order the same way on replay: the
/// randomness is seeded per order, not live.
async fn random_rules_replay_exactly(running: &Running) {
    let mut admin = AdminServiceClient::connect(format!("http://{}", running.admin_addr.unwrap()))
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    admin
        .deploy(DeployRequest {
            wasm: std::fs::read(built_plugin("fixture_random")).unwrap(),
            ..DeployRequest::default()
        })
        .await
        .unwrap();
    let run = unique("random");
    let ids: Vec<String> = (0..10).map(|i| format!("{run}-{i}")).collect();
    for id in &ids {
        orders.create_order(us_order(id)).await.unwrap();
    }
    let mut totals = std::collections::BTreeSet::new();
    for id in &ids {
        totals.insert(
            wait_result(&mut cache, id, 30)
                .await
                .unwrap()
                .totals
                .unwrap()
                .total,
        );
    }
    assert!(totals.len() > 1, "the surcharges are random: {totals:?}");
    let answer = admin
        .replay(admin::ReplayRequest {
            ids: ids.clone(),
            ..admin::ReplayRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((answer.decided, answer.differing), (10, 0), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_rules_replay_exactly_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    random_rules_replay_exactly(&running).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn random_rules_replay_exactly_on_kafka_and_redis() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    random_rules_replay_exactly(&running).await;
    running.stop().await.unwrap();
}
