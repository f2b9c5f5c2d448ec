//! The audit trail (issue 22, item 4): every admin call, allowed or refused, appears once
//! with its principal; automatic actions (a refused ruleset) appear too; `order-pipeline
//! audit` reads it and checks its hash chain, which a removed event breaks.

use order_pipeline::app::{self, Role};
use order_pipeline::config::Config;
use order_pipeline::domain::audit::{GENESIS, verify};
use order_pipeline::proto::admin::admin_service_client::AdminServiceClient;
use order_pipeline::proto::admin::{ActivateRequest, ActiveRequest};
use sha2::{Digest as _, Sha256};

use crate::support::{admin_cli, embedded_config, kafka_config, services};

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Runs the calls, checks the trail; returns the running pipeline for more.
async fn every_call_appears_once(mut config: Config) -> app::Running {
    config.admin.tokens = Some(format!(
        "dana:deployer:{},rita:reader:{}",
        hash("dana-token"),
        hash("rita-token")
    ));
    let running = app::start(Role::All, &config).await.unwrap();
    let url = format!("http://{}", running.admin_addr.unwrap());
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = |token: &str| {
        let bearer: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {token}").parse().unwrap();
        AdminServiceClient::with_interceptor(channel.clone(), move |mut r: tonic::Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        })
    };
    let registry = running.live.as_ref().unwrap().registry().clone();
    let before = registry.audit(0, 100_000).await.unwrap().len();
    client("dana-token").active(ActiveRequest {}).await.unwrap();
    let missing = client("dana-token")
        .activate(ActivateRequest { version: 999_999 })
        .await
        .unwrap_err();
    let denied = client("rita-token")
        .activate(ActivateRequest { version: 1 })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);

    let events = registry.audit(0, 100_000).await.unwrap();
    assert_eq!(verify(&events, GENESIS), Ok(()));
    let new: Vec<(&str, &str, &str)> = events[before..]
        .iter()
        .map(|e| (e.principal.as_str(), e.action.as_str(), e.outcome.as_str()))
        .collect();
    assert_eq!(new.len(), 3, "{new:?}");
    assert_eq!(new[0], ("dana", "Active", "ok"));
    assert_eq!((new[1].0, new[1].1), ("dana", "Activate"));
    assert!(new[1].2.contains(missing.message()), "{new:?}");
    assert_eq!((new[2].0, new[2].1), ("rita", "Activate"));
    assert!(new[2].2.starts_with("PermissionDenied"), "{new:?}");
    assert_eq!(events[before + 1].args["version"], "999999");

    // The CLI reads it, checks the chain, and its own call is the next event.
    let (code, out, err) = admin_cli(&url, &["audit", "--token", "rita-token"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("rita Activate [version=1] PermissionDenied"),
        "{out}"
    );
    assert!(
        out.contains(&format!("chain intact: {} events", events.len())),
        "{out}"
    );
    let last = registry.audit(0, 100_000).await.unwrap();
    let audit = last.last().unwrap();
    assert_eq!(
        (audit.principal.as_str(), audit.action.as_str()),
        ("rita", "Audit")
    );
    running
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_call_is_audited_once_embedded() {
    let data = tempfile::tempdir().unwrap();
    let running = every_call_appears_once(embedded_config(data.path())).await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn every_admin_call_is_audited_once_and_a_removed_event_shows_on_kafka_and_redis() {
    let Some(services) = services() else { return };
    let config = kafka_config(&services);
    let group = config.kafka.group.clone();
    let running = every_call_appears_once(config).await;
    let url = format!("http://{}", running.admin_addr.unwrap());

    // Someone with write access to Redis removes an event: the chain shows it.
    let client = redis::Client::open(format!("redis://{}", services.redis)).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let removed: i64 = redis::cmd("XDEL")
        .arg(format!("pipeline:{group}:audit"))
        .arg("0-2")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let (code, out, _) = admin_cli(&url, &["audit", "--token", "dana-token"]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("CHAIN BROKEN: event 3 follows 1: events are missing"),
        "{out}"
    );
    running.stop().await.unwrap();
}
