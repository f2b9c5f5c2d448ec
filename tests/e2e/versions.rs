//! Ruleset versions: activate and rollback make new versions with old contents, a
//! rollback follows the activation history, and the history limit drops old versions
//! and the plugins only they used.

use std::time::Duration;

use crate::deploy::{tax_deploy, us_order};
use crate::metrics::{scrape, value};
use crate::support::{
    built_plugin, cache_client, embedded_config, kafka_config, order_client, services, wait_result,
};
use order_pipeline::app::{self, Role};
use order_pipeline::backends::embedded::EmbeddedDb;
use order_pipeline::config::HistoryLimits;
use order_pipeline::metrics as m;
use order_pipeline::proto::admin::admin_service_client::AdminServiceClient;
use order_pipeline::proto::admin::{self, DeployRequest};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_activate_make_new_versions_with_old_contents() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    let mut admin = AdminServiceClient::connect(format!("http://{}", running.admin_addr.unwrap()))
        .await
        .unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;

    let v1 = admin
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();
    let v2 = admin
        .deploy(tax_deploy("US:1000"))
        .await
        .unwrap()
        .into_inner();
    // Deploying the same bytes and config again changes nothing.
    let same = admin
        .deploy(tax_deploy("US:1000"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.version, v2.version);
    orders.create_order(us_order("after-deploy")).await.unwrap();
    assert_eq!(
        wait_result(&mut cache, "after-deploy", 30)
            .await
            .unwrap()
            .totals
            .unwrap()
            .total,
        1100
    );

    let v3 = admin
        .rollback(admin::RollbackRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v3.version, v3.reason.as_str()),
        (v2.version + 1, "rollback to 1")
    );
    assert_eq!(v3.rules, v1.rules);
    orders
        .create_order(us_order("after-rollback"))
        .await
        .unwrap();
    let result = wait_result(&mut cache, "after-rollback", 30).await.unwrap();
    assert_eq!(
        (result.totals.unwrap().total, result.ruleset_version),
        (1000, v3.version)
    );

    let v4 = admin
        .activate(admin::ActivateRequest {
            version: v2.version,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v4.rules, v2.rules);
    let missing = admin
        .activate(admin::ActivateRequest { version: 99 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let history = admin
        .history(admin::HistoryRequest {})
        .await
        .unwrap()
        .into_inner()
        .versions;
    let reasons: Vec<&str> = history.iter().map(|v| v.reason.as_str()).collect();
    assert_eq!(
        reasons[..3],
        ["activate 2", "rollback to 1", "deploy rule-tax 0.1.0"]
    );
    assert!(history[0].active && !history[1].active);
    running.stop().await.unwrap();
}

/// The operator's sequences of issue 12: rollback returns to the version that was
/// active before, following the activation history, however versions were made.
async fn rollback_follows_the_activation_history(admin_addr: std::net::SocketAddr) {
    let mut c = AdminServiceClient::connect(format!("http://{admin_addr}"))
        .await
        .unwrap();
    let base = c
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();
    // Four deploys after the first version, each with other contents.
    let mut v = vec![base.clone()];
    for rate in ["US:1000", "US:2000", "US:3000", "US:4000"] {
        v.push(c.deploy(tax_deploy(rate)).await.unwrap().into_inner());
    }
    let activate = |version| admin::ActivateRequest { version };
    let rollback = || admin::RollbackRequest {};
    // On the last one, activate the second one, then roll back: back to the last one
    // (not to the version before the activated one by number).
    c.activate(activate(v[2].version)).await.unwrap();
    let back = c.rollback(rollback()).await.unwrap().into_inner();
    assert_eq!(back.rules, v[4].rules, "{}", back.reason);
    assert_eq!(back.reason, format!("rollback to {}", v[4].version));
    // Again: to the version that was active before that one.
    let back = c.rollback(rollback()).await.unwrap().into_inner();
    assert_eq!(back.rules, v[3].rules, "{}", back.reason);
    assert_eq!(back.reason, format!("rollback to {}", v[3].version));
    // Activating the very first version, then rolling back, works and undoes it.
    let on = back.version;
    c.activate(activate(base.version)).await.unwrap();
    let back = c.rollback(rollback()).await.unwrap().into_inner();
    assert_eq!(back.rules, v[3].rules);
    assert_eq!(back.reason, format!("rollback to {on}"));
    // Rolling back on and on walks the history down to the first version, then stops.
    for i in (0..3).rev() {
        let back = c.rollback(rollback()).await.unwrap().into_inner();
        assert_eq!(back.rules, v[i].rules, "step {i}: {}", back.reason);
    }
    let none = c.rollback(rollback()).await.unwrap_err();
    assert_eq!(none.code(), tonic::Code::FailedPrecondition, "{none:?}");
    assert!(
        none.message().contains("no earlier version"),
        "{}",
        none.message()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_follows_the_activation_history_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    rollback_follows_the_activation_history(running.admin_addr.unwrap()).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn rollback_follows_the_activation_history_on_kafka_and_redis() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    rollback_follows_the_activation_history(running.admin_addr.unwrap()).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_limit_drops_old_versions_and_the_plugins_only_they_used() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path());
    config.plugins.history = HistoryLimits {
        versions: 3,
        blob_grace: Duration::ZERO,
    };
    config.telemetry.metrics_addr = Some(crate::support::LOOPBACK_ANY_PORT);
    let running = app::start(Role::All, &config).await.unwrap();
    let metrics = running.metrics_addr.unwrap();
    let removed = move || {
        let scrape = scrape(metrics);
        ["ruleset_versions", "plugin_blobs"]
            .map(|what| value(&scrape, m::RETENTION_REMOVED, &[("what", what)]))
    };
    // The recorder is one per process: other tests add to the counts, so compare growth.
    let before = tokio::task::spawn_blocking(removed).await.unwrap();
    let mut admin = AdminServiceClient::connect(format!("http://{}", running.admin_addr.unwrap()))
        .await
        .unwrap();
    let chaos = std::fs::read(built_plugin("rule_chaos")).unwrap();
    let v2 = admin
        .deploy(DeployRequest {
            wasm: chaos,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let chaos_digest = v2.rules.last().unwrap().digest.clone();
    let v3 = admin
        .rollback(admin::RollbackRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(v3.rules.iter().all(|r| r.digest != chaos_digest));
    // Version 2 is still kept, so its plugin is too: it can go live again.
    let v4 = admin
        .activate(admin::ActivateRequest {
            version: v2.version,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v4.rules, v2.rules);
    let v5 = admin
        .activate(admin::ActivateRequest {
            version: v3.version,
        })
        .await
        .unwrap()
        .into_inner();
    let v6 = admin
        .deploy(tax_deploy("US:1000"))
        .await
        .unwrap()
        .into_inner();
    let v7 = admin
        .deploy(tax_deploy("US:2000"))
        .await
        .unwrap()
        .into_inner();
    let kept = [&v5, &v6, &v7];
    assert!(
        kept.iter()
            .flat_map(|v| &v.rules)
            .all(|r| r.digest != chaos_digest)
    );

    let history: Vec<u64> = admin
        .history(admin::HistoryRequest {})
        .await
        .unwrap()
        .into_inner()
        .versions
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(history, [v7.version, v6.version, v5.version]);
    let after = tokio::task::spawn_blocking(removed).await.unwrap();
    assert!(
        after[0] - before[0] >= 4.0,
        "versions {before:?} -> {after:?}"
    );
    assert!(after[1] - before[1] >= 1.0, "blobs {before:?} -> {after:?}");
    let dropped = admin
        .activate(admin::ActivateRequest {
            version: v2.version,
        })
        .await
        .unwrap_err();
    assert_eq!(dropped.code(), tonic::Code::NotFound, "{dropped:?}");
    assert!(
        dropped.message().contains("no longer kept")
            && dropped.message().contains("RULESET_HISTORY"),
        "{}",
        dropped.message()
    );
    running.stop().await.unwrap();

    // No kept version uses rule-chaos: its blob is gone; every kept version's are there.
    let db = EmbeddedDb::open(dir.path()).unwrap();
    assert_eq!(db.plugin(&chaos_digest).await.unwrap(), None);
    for rule in kept.iter().flat_map(|v| &v.rules) {
        assert!(
            db.plugin(&rule.digest).await.unwrap().is_some(),
            "{}",
            rule.name
        );
    }
    db.close().await.unwrap();
}
