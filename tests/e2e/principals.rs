//! Named principals of the AdminService (issue 22, item 3): each role is allowed exactly
//! its calls, tokens are configured as hashes, a principal may be known by its mTLS
//! certificate's subject, and tokens never cross the network in clear unless allowed.
//! The roles are checked on embedded and on Kafka + Redis.

use std::path::PathBuf;

use order_pipeline::app::{self, Role};
use order_pipeline::config::{Config, TlsFiles};
use order_pipeline::proto::admin::admin_service_client::AdminServiceClient;
use order_pipeline::proto::admin::{
    ActivateRequest, ActiveRequest, DecisionRequest, ReplayRequest, RollbackRequest,
};
use sha2::{Digest as _, Sha256};
use tonic::Code;

use crate::support::{embedded_config, kafka_config, services, unique};
use crate::tls::{args, path, pki, run};

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Whether the call was let through (it may still fail for its own reasons).
fn let_through<T>(answer: &Result<T, tonic::Status>) -> bool {
    !matches!(answer, Err(s) if matches!(s.code(), Code::PermissionDenied | Code::Unauthenticated))
}

async fn each_role_is_allowed_exactly_its_calls(mut config: Config) {
    let principals = [
        ("rita", "reader", "rita-token"),
        ("oscar", "operator", "oscar-token"),
        ("dana", "deployer", "dana-token"),
        ("xena", "reader+data", "xena-token"),
    ];
    config.admin.tokens = Some(
        principals
            .iter()
            .map(|(name, role, token)| format!("{name}:{role}:{}", hash(token)))
            .collect::<Vec<_>>()
            .join(","),
    );
    config.admin.token = Some("the-plain-token".into());
    let running = app::start(Role::All, &config).await.unwrap();
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", running.admin_addr.unwrap()))
            .unwrap()
            .connect()
            .await
            .unwrap();
    let client = |token: Option<&str>| {
        let bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> =
            token.map(|t| format!("Bearer {t}").parse().unwrap());
        AdminServiceClient::with_interceptor(channel.clone(), move |mut r: tonic::Request<()>| {
            if let Some(bearer) = &bearer {
                r.metadata_mut().insert("authorization", bearer.clone());
            }
            Ok(r)
        })
    };

    // (token, Active: reader, Rollback: operator, Activate: deployer, Decision: data,
    //  Replay with overwrite: operator + data)
    let expected = [
        ("rita-token", [true, false, false, false, false]),
        ("oscar-token", [true, true, false, false, false]),
        ("dana-token", [true, true, true, false, false]),
        ("xena-token", [true, false, false, true, false]),
        // The plain ADMIN_TOKEN: a deployer with the data grant, as it always could.
        ("the-plain-token", [true, true, true, true, true]),
    ];
    for (token, allowed) in expected {
        let mut admin = client(Some(token));
        let got = [
            let_through(&admin.active(ActiveRequest {}).await),
            let_through(&admin.rollback(RollbackRequest {}).await),
            let_through(&admin.activate(ActivateRequest { version: 999_999 }).await),
            let_through(
                &admin
                    .decision(DecisionRequest {
                        id: unique("nobody"),
                    })
                    .await,
            ),
            let_through(
                &admin
                    .replay(ReplayRequest {
                        overwrite: true,
                        reason: "a test".into(),
                        ids: vec![unique("nobody")],
                        ..Default::default()
                    })
                    .await,
            ),
        ];
        assert_eq!(got, allowed, "{token}");
    }
    let denied = client(Some("rita-token"))
        .activate(ActivateRequest { version: 1 })
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(
        denied.message(),
        "Activate: `rita` has role reader; it needs deployer"
    );
    for token in [None, Some("not-a-token")] {
        let refused = client(token).active(ActiveRequest {}).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{token:?}");
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_is_allowed_exactly_its_calls_embedded() {
    let data = tempfile::tempdir().unwrap();
    each_role_is_allowed_exactly_its_calls(embedded_config(data.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn each_role_is_allowed_exactly_its_calls_on_kafka_and_redis() {
    let Some(services) = services() else { return };
    each_role_is_allowed_exactly_its_calls(kafka_config(&services)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_never_cross_the_network_in_clear_unless_allowed() {
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(data.path());
    config.servers.admin = std::net::SocketAddr::from(([0, 0, 0, 0], 0));
    config.admin.tokens = Some(format!("dana:deployer:{}", hash("dana-token")));
    let err = format!("{:#}", app::start(Role::All, &config).await.err().unwrap());
    assert!(
        err.contains("ADMIN_ALLOW_PLAINTEXT") && err.contains("TLS_CERT"),
        "{err}"
    );
    config.admin.allow_plaintext = true;
    let running = app::start(Role::All, &config).await.unwrap();
    running.stop().await.unwrap();

    // A bad entry stops the start naming the variable, and never shows a token.
    config.admin.tokens = Some("dana:deployer:dana-secret-token".into());
    let err = format!("{:#}", app::start(Role::All, &config).await.err().unwrap());
    assert!(
        err.contains("ADMIN_TOKENS") && !err.contains("dana-secret"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_subject_can_be_the_principal() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(
        d,
        "ca",
        &[
            ("server", &["localhost", "127.0.0.1"]),
            ("ops-robot", &["ops-robot"]),
            ("somebody", &["somebody"]),
        ],
    );
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(data.path());
    config.admin.cert_principals = Some("ops-robot:operator".into());
    // Without client certificates there is no subject to know a principal by.
    let err = format!("{:#}", app::start(Role::All, &config).await.err().unwrap());
    assert!(err.contains("TLS_CLIENT_CA"), "{err}");
    config.servers.tls = Some(TlsFiles {
        cert: PathBuf::from(path(d, "server.pem")),
        key: PathBuf::from(path(d, "server.key")),
        client_ca: Some(PathBuf::from(path(d, "ca.pem"))),
    });
    let running = app::start(Role::All, &config).await.unwrap();
    let url = format!("https://127.0.0.1:{}", running.admin_addr.unwrap().port());
    let ca = path(d, "ca.pem");
    let as_cert = |name: &str, command: &[&str]| {
        let (cert, key) = (
            path(d, &format!("{name}.pem")),
            path(d, &format!("{name}.key")),
        );
        let mut all: Vec<String> = args(command);
        all.extend(args(&[
            "--admin-addr",
            &url,
            "--ca",
            &ca,
            "--cert",
            &cert,
            "--key",
            &key,
        ]));
        all
    };
    let (code, out) = run(as_cert("ops-robot", &["plugin", "list"])).await;
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(as_cert("ops-robot", &["plugin", "activate", "1"])).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("`ops-robot` has role operator; it needs deployer"),
        "{out}"
    );
    let (code, out) = run(as_cert("somebody", &["plugin", "list"])).await;
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("subject `somebody` is no principal"), "{out}");
    running.stop().await.unwrap();
}
