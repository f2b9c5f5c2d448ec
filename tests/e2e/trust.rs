//! Trusted rules (issue 22, item 1): every plugin blob read from the registry is checked
//! against the digest its version names before it is compiled or taken from the compiled
//! cache. A substituted blob refuses the whole version; the worker keeps deciding with
//! the last verified one and says why (`plugin status`, readiness).

use std::time::{Duration, Instant};

use order_pipeline::app::{self, Role};
use order_pipeline::config::Config;
use order_pipeline::domain::now_unix_ms;
use order_pipeline::domain::ruleset::{Expect, RuleRef, RulesetBody};
use order_rules_engine::Isolation;

use crate::support::{
    admin_cli, built_plugin, cache_client, embedded_config, go_request, kafka_config, order_client,
    services, unique, wait_result,
};

/// Stores another valid component under a plugin's digest (what someone with write
/// access to the registry could do) and activates a version naming that digest: the
/// worker refuses it, keeps its version, and the substituted component decides nothing.
async fn a_substituted_blob_is_refused(config: Config) {
    let running = app::start(Role::All, &config).await.unwrap();
    let live = running.live.clone().unwrap();
    let registry = live.registry();
    let good = registry.active().await.unwrap().unwrap();

    // The version names rule-chaos by its digest; the registry holds rule-tax's bytes
    // under it.
    let declared = std::fs::read(built_plugin("rule_chaos")).unwrap();
    let substitute = std::fs::read(built_plugin("rule_tax")).unwrap();
    let digest = order_rules_engine::digest(&declared);
    registry.put_plugin(&digest, &substitute).await.unwrap();
    // Without rule-tax of its own, so that the substitute alone would build and decide.
    let mut rules = good.body.rules.clone();
    rules.retain(|r| r.name != "rule-tax");
    rules.push(RuleRef {
        name: "rule-chaos".into(),
        version: "0.1.0".into(),
        digest: digest.clone(),
        config: Vec::new(),
        isolation: Isolation::Fresh,
        limits: Default::default(),
        signature: None,
    });
    let substituted = registry
        .activate(
            &RulesetBody {
                rules,
                reason: "a test: a substituted blob".into(),
                based_on: None,
                previous: Some(good.version),
                created_at_unix_ms: now_unix_ms(),
            },
            Expect::Version(good.version),
        )
        .await
        .unwrap();

    // Refused: the worker stays on the verified version and says why.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !live
        .last_error()
        .is_some_and(|e| e.contains("not the digest the version names"))
    {
        assert!(
            Instant::now() < deadline,
            "not refused: {:?}",
            live.last_error()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live.current().version, good.version);
    // The refusal is in the audit trail, once.
    let refusals: Vec<_> = registry
        .audit(0, 10_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.action == "ruleset-refused")
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].outcome.contains("substituted or corrupted"));
    let admin_url = format!("http://{}", running.admin_addr.unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        // Exit 1: a worker is not on the active version (this one, on purpose).
        let (code, out, err) = admin_cli(&admin_url, &["plugin", "status"]).await;
        if out.contains("NOT ON THE ACTIVE VERSION")
            && out.contains("last error:")
            && out.contains("substituted or corrupted")
        {
            assert_eq!(code, 1, "{out}{err}");
            break;
        }
        assert!(Instant::now() < deadline, "plugin status: {out}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Orders are decided by the verified version, never by the substitute.
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let id = unique("after-substitution");
    orders
        .create_order(go_request(&id, "book", 42))
        .await
        .unwrap();
    let result = wait_result(&mut cache, &id, 60).await.unwrap();
    assert_eq!(result.status, "done");
    assert_eq!(result.ruleset_version, good.version);
    assert_ne!(result.ruleset_version, substituted);
    assert!(
        result.rules.iter().all(|r| r.digest != digest),
        "{:?}",
        result.rules
    );
    drop(live);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_substituted_blob_is_refused_embedded() {
    let data = tempfile::tempdir().unwrap();
    a_substituted_blob_is_refused(embedded_config(data.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn a_substituted_blob_is_refused_on_kafka_and_redis() {
    let Some(services) = services() else { return };
    a_substituted_blob_is_refused(kafka_config(&services)).await;
}
