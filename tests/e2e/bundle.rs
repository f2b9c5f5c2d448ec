//! Examples that travel with the plugin: `plugin bundle` embeds them, `plugin inspect`
//! shows them, and the deploy gate runs them on deploy, activate and rollback.

use std::path::Path;

use crate::deploy::tax_deploy;
use crate::support::{built_plugin, cli, embedded_config, kafka_config, repo_root, services};
use order_pipeline::app::{self, Role, Running};
use order_pipeline::domain::now_unix_ms;
use order_pipeline::domain::ruleset::{Expect, RulesetBody};
use order_pipeline::proto::admin::admin_service_client::AdminServiceClient;
use order_pipeline::proto::admin::{self, DeployRequest, deploy_request::Position};
use order_pipeline_cli::{EXIT_OK, EXIT_USAGE};
use order_rules_engine::bundle::{self, Bundle, BundledExample};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn plugin_bundle_embeds_examples_that_inspect_shows() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built_plugin("rule_tax");
    let examples = repo_root().join("plugins/rule-tax/examples");
    let first = dir.path().join("tax.bundled.wasm");
    let (code, out, err) = cli(&[
        "plugin",
        "bundle",
        path(&plugin),
        "--examples",
        path(&examples),
        "--output",
        path(&first),
    ]);
    assert_eq!(code, EXIT_OK, "{out}{err}");
    let made: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(made["examples"], 4);

    let (code, out, err) = cli(&["plugin", "inspect", path(&first)]);
    assert_eq!(code, EXIT_OK, "{err}");
    let inspected: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(inspected["digest"], made["digest"]);
    assert_eq!(inspected["bundle"]["config"]["label"], "VAT");
    let names: Vec<&str> = inspected["bundle"]["examples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["germany", "no-country", "rounding", "zero-rate"]);
    assert_eq!(
        inspected["bundle"]["examples"][0]["expected"]["totals"]["tax"],
        190
    );
    let (_, plain, _) = cli(&["plugin", "inspect", path(&plugin)]);
    let plain: serde_json::Value = serde_json::from_str(&plain).unwrap();
    assert!(plain["bundle"].is_null(), "{plain}");
    assert_ne!(plain["digest"], made["digest"]);

    // Bundling the bundled plugin again replaces its section: the same bytes.
    let second = dir.path().join("again.wasm");
    let (code, _, err) = cli(&[
        "plugin",
        "bundle",
        path(&first),
        "--examples",
        path(&examples),
        "-o",
        path(&second),
    ]);
    assert_eq!(code, EXIT_OK, "{err}");
    assert_eq!(
        std::fs::read(&first).unwrap(),
        std::fs::read(&second).unwrap()
    );

    // Examples that fail are not bundled.
    let wrong = repo_root().join("plugins/rule-discount/examples");
    let refused = dir.path().join("refused.wasm");
    let (code, _, err) = cli(&[
        "plugin",
        "bundle",
        path(&plugin),
        "--examples",
        path(&wrong),
        "-o",
        path(&refused),
    ]);
    assert_eq!(code, EXIT_USAGE, "{err}");
    assert!(err.contains("not bundled"), "{err}");
    assert!(!refused.exists());
}

/// rule-tax with one bundled example about a German order, expecting `tax`.
fn tax_bundled_expecting(tax: i64) -> Vec<u8> {
    let examples = repo_root().join("plugins/rule-tax/examples");
    let read = |file: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(examples.join(file)).unwrap()).unwrap()
    };
    let bundle = Bundle {
        config: vec![
            ("rates".into(), "DE:1900".into()),
            ("label".into(), "VAT".into()),
        ],
        examples: vec![BundledExample {
            name: "germany".into(),
            order: read("germany.json"),
            expected: serde_json::json!({ "totals": { "tax": tax } }),
        }],
    };
    bundle::embed(&std::fs::read(built_plugin("rule_tax")).unwrap(), &bundle).unwrap()
}

fn deploy_tax(wasm: Vec<u8>, rates: &str) -> DeployRequest {
    DeployRequest {
        wasm,
        position: Some(Position::Replace("rule-tax".into())),
        ..tax_deploy(rates)
    }
}

/// The gate runs bundled examples on deploy, and, for a version stored without them
/// passing (before the gate ran them), on activate and rollback.
async fn the_gate_runs_bundled_examples(running: &Running) {
    let mut admin = AdminServiceClient::connect(format!("http://{}", running.admin_addr.unwrap()))
        .await
        .unwrap();
    let good = admin
        .deploy(deploy_tax(tax_bundled_expecting(190), "US:1000"))
        .await
        .unwrap()
        .into_inner();
    let refused = admin
        .deploy(deploy_tax(tax_bundled_expecting(7), "US:1000"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains(
            "bundled example `germany` of rule-tax failed: totals.tax: expected 7, got 190"
        ),
        "{}",
        refused.message()
    );

    // A version whose plugin fails its bundled example, stored past the gate.
    let registry = running.live.as_ref().unwrap().registry();
    let bad = tax_bundled_expecting(7);
    let bad_digest = order_rules_engine::digest(&bad);
    registry.put_plugin(&bad_digest, &bad).await.unwrap();
    let active = registry.active().await.unwrap().unwrap();
    assert_eq!(active.version, good.version);
    let mut rules = active.body.rules.clone();
    let tax = rules.iter_mut().find(|r| r.name == "rule-tax").unwrap();
    tax.digest = bad_digest;
    let stored = registry
        .activate(
            &RulesetBody {
                rules,
                reason: "a test: stored without the bundle gate".into(),
                based_on: None,
                previous: Some(active.version),
                created_at_unix_ms: now_unix_ms(),
            },
            Expect::Version(active.version),
        )
        .await
        .unwrap();
    let after = admin
        .deploy(deploy_tax(tax_bundled_expecting(190), "US:2000"))
        .await
        .unwrap()
        .into_inner();
    assert!(after.version > stored);

    let activate = admin
        .activate(admin::ActivateRequest { version: stored })
        .await
        .unwrap_err();
    assert_eq!(activate.code(), tonic::Code::FailedPrecondition);
    assert!(
        activate.message().starts_with(&format!(
            "activate refused: version {stored}: bundled example `germany`"
        )),
        "{}",
        activate.message()
    );
    let rollback = admin.rollback(admin::RollbackRequest {}).await.unwrap_err();
    assert_eq!(rollback.code(), tonic::Code::FailedPrecondition);
    assert!(
        rollback.message().starts_with(&format!(
            "rollback refused: version {stored}: bundled example `germany`"
        )),
        "{}",
        rollback.message()
    );
    let live = admin
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(live.version, after.version, "refusals change nothing");
    // Activating a version whose bundled examples pass works as before.
    admin
        .activate(admin::ActivateRequest {
            version: good.version,
        })
        .await
        .unwrap();

    // `plugin deploy --examples DIR` takes DIR/config.toml, as `plugin test` does: the
    // examples expect its rates and label, and the deployed version has them.
    let url = format!("http://{}", running.admin_addr.unwrap());
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        let plugin = built_plugin("rule_tax");
        let examples = repo_root().join("plugins/rule-tax/examples");
        cli(&[
            "plugin",
            "deploy",
            path(&plugin),
            "--examples",
            path(&examples),
            "--replace",
            "rule-tax",
            "--admin-addr",
            &url,
        ])
    })
    .await
    .unwrap();
    assert_eq!(code, EXIT_OK, "{out}{err}");
    let live = admin
        .active(admin::ActiveRequest {})
        .await
        .unwrap()
        .into_inner();
    let tax = live.rules.iter().find(|r| r.name == "rule-tax").unwrap();
    assert_eq!(tax.config["rates"], "DE:1900,FR:2000,US:0");
    assert_eq!(tax.config["label"], "VAT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_runs_bundled_examples_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    the_gate_runs_bundled_examples(&running).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn the_gate_runs_bundled_examples_on_kafka_and_redis() {
    let Some(services) = services() else { return };
    let running = app::start(Role::All, &kafka_config(&services))
        .await
        .unwrap();
    the_gate_runs_bundled_examples(&running).await;
    running.stop().await.unwrap();
}
