//! TLS and mTLS of the gRPC servers, with certificates made in the test (rcgen): the CLI's
//! clients reach them with `--ca` (and `--cert`/`--key` where a client certificate is
//! required); plaintext clients, clients without a certificate and clients trusting
//! another CA are refused. And the pipeline's connection to a `rediss://` Redis that
//! requires client certificates.

use std::path::{Path, PathBuf};

use order_pipeline::app::{self, Role};
use order_pipeline::config::{RedisTls, TlsFiles};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

use crate::support::{OwnKafka, cli, embedded_config, free_addr, kafka_config, services};

/// A CA, and a certificate it signed for each of `names`, as PEM files in `dir`:
/// `NAME.pem` and `NAME.key` (the CA is `ca`).
pub(crate) fn pki(dir: &Path, ca_name: &str, names: &[(&str, &[&str])]) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    // Each certificate its own subject: OpenSSL (Redis) takes a certificate whose subject
    // is its issuer's for a self-signed one.
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join(format!("{ca_name}.pem")), ca_cert.pem()).unwrap();
    let issuer = Issuer::from_params(&ca, &ca_key);
    for (name, subject_alt_names) in names {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(
            subject_alt_names
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
        )
        .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, *name);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

pub(crate) fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_string_lossy().into_owned()
}

/// `order-pipeline ARGS...` off the test's runtime: (exit code, stdout + stderr).
pub(crate) async fn run(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, out, err) = cli(&args);
        (code, format!("{out}{err}"))
    })
    .await
    .unwrap()
}

pub(crate) fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(ToString::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_take_tls_and_mtls_and_refuse_what_they_cannot_trust() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(
        d,
        "ca",
        &[
            ("server", &["localhost", "127.0.0.1"]),
            ("client", &["order-client"]),
        ],
    );
    pki(d, "other-ca", &[("stranger", &["stranger"])]);

    // mTLS: clients must present a certificate of the CA.
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(data.path());
    config.servers.tls = Some(TlsFiles {
        cert: PathBuf::from(path(d, "server.pem")),
        key: PathBuf::from(path(d, "server.key")),
        client_ca: Some(PathBuf::from(path(d, "ca.pem"))),
    });
    let running = app::start(Role::All, &config).await.unwrap();
    let order = format!("https://127.0.0.1:{}", running.order_addr.unwrap().port());
    let cache = format!("https://127.0.0.1:{}", running.cache_addr.unwrap().port());
    let (ca, cert, key) = (
        path(d, "ca.pem"),
        path(d, "client.pem"),
        path(d, "client.key"),
    );
    let mtls = ["--ca", &ca, "--cert", &cert, "--key", &key];

    let (code, out) = run(args(&[&["health", "--addr", &order], &mtls[..]].concat())).await;
    assert_eq!((code, out.trim()), (0, "SERVING"));
    let submit = [
        &[
            "submit", "--addr", &order, "--id", "tls-1", "--item", "book", "--price", "42",
        ],
        &mtls[..],
    ]
    .concat();
    let (code, out) = run(args(&submit)).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(r#""status":"accepted""#), "{out}");
    let get = [&["get", "--addr", &cache, "--id", "tls-1"], &mtls[..]].concat();
    let (code, out) = run(args(&get)).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(r#""status": "done""#) || out.contains(r#""status":"done""#),
        "{out}"
    );

    // Refused: no client certificate, a plaintext client, a client of another CA.
    let plain_url = order.replace("https://", "http://");
    let (stranger_cert, stranger_key) = (path(d, "stranger.pem"), path(d, "stranger.key"));
    for refused in [
        vec!["health", "--addr", &order, "--ca", &ca],
        vec!["health", "--addr", &plain_url],
        vec![
            "health",
            "--addr",
            &order,
            "--ca",
            &ca,
            "--cert",
            &stranger_cert,
            "--key",
            &stranger_key,
        ],
    ] {
        let (code, out) = run(args(&refused)).await;
        assert_ne!(code, 0, "{refused:?} was served: {out}");
        assert!(!out.contains("SERVING"), "{refused:?}: {out}");
    }
    running.stop().await.unwrap();

    // TLS without client certificates: the server's CA is enough; another CA is not.
    let data = tempfile::tempdir().unwrap();
    let mut config = embedded_config(data.path());
    config.servers.tls = Some(TlsFiles {
        cert: PathBuf::from(path(d, "server.pem")),
        key: PathBuf::from(path(d, "server.key")),
        client_ca: None,
    });
    let running = app::start(Role::All, &config).await.unwrap();
    let url = format!("http://127.0.0.1:{}", running.cache_addr.unwrap().port());
    let (code, out) = run(args(&["health", "--addr", &url, "--ca", &ca])).await;
    assert_eq!(
        (code, out.trim()),
        (0, "SERVING"),
        "http:// with --ca means TLS"
    );
    let other = path(d, "other-ca.pem");
    let (code, out) = run(args(&["health", "--addr", &url, "--ca", &other])).await;
    assert_ne!(code, 0, "a server of another CA was trusted: {out}");
    assert!(out.contains("cannot reach"), "{out}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_files_are_refused_at_start_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("junk.pem"), "not a certificate").unwrap();
    let mut config = embedded_config(d);
    config.servers.tls = Some(TlsFiles {
        cert: d.join("junk.pem"),
        key: d.join("junk.pem"),
        client_ca: None,
    });
    let error = app::start(Role::All, &config).await.err().unwrap();
    assert!(format!("{error:#}").contains("TLS_CERT"), "{error:#}");
    config.servers.tls = Some(TlsFiles {
        cert: d.join("missing.pem"),
        key: d.join("junk.pem"),
        client_ca: None,
    });
    let error = app::start(Role::All, &config).await.err().unwrap();
    assert!(
        format!("{error:#}").contains("TLS_CERT") && format!("{error:#}").contains("missing.pem"),
        "{error:#}"
    );
    let (code, _, err) = cli(&["run", "--tls-client-ca", "ca.pem"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("TLS_CLIENT_CA needs TLS_CERT"), "{err}");
}

/// A `redis-server` that takes TLS only (on a free port) and requires client
/// certificates of `ca`; killed on drop.
struct TlsRedis {
    child: std::process::Child,
    port: u16,
}

impl TlsRedis {
    fn start(dir: &Path) -> Self {
        let port: u16 = free_addr().rsplit(':').next().unwrap().parse().unwrap();
        let child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(["--tls-port", &port.to_string()])
            .args(["--tls-cert-file", &path(dir, "redis.pem")])
            .args(["--tls-key-file", &path(dir, "redis.key")])
            .args(["--tls-ca-cert-file", &path(dir, "ca.pem")])
            .args(["--tls-auth-clients", "yes"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--dir", &dir.to_string_lossy()])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (scripts/test.sh installs it)");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "TLS Redis did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn the_pipeline_reaches_redis_over_tls_with_a_client_certificate() {
    let Some(services) = services() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(
        d,
        "ca",
        &[
            ("redis", &["localhost", "127.0.0.1"]),
            ("pipeline", &["order-pipeline"]),
        ],
    );
    pki(d, "other-ca", &[("stranger", &["stranger"])]);
    let redis = TlsRedis::start(d);
    let mut config = kafka_config(&services);
    config.redis.addr = Some(format!("rediss://127.0.0.1:{}", redis.port));
    let tls = |ca: &str, client: Option<&str>| RedisTls {
        ca: Some(PathBuf::from(path(d, &format!("{ca}.pem")))),
        client: client.map(|c| {
            (
                PathBuf::from(path(d, &format!("{c}.pem"))),
                PathBuf::from(path(d, &format!("{c}.key"))),
            )
        }),
    };

    // Refused: no client certificate; a certificate of another CA; a server certificate
    // this client does not trust.
    for (case, redis_tls) in [
        ("no client certificate", tls("ca", None)),
        ("a foreign client certificate", tls("ca", Some("stranger"))),
        ("Redis's CA not trusted", tls("other-ca", Some("pipeline"))),
    ] {
        config.redis.tls = redis_tls;
        let error = app::start(Role::All, &config).await.err();
        let error = format!("{:#}", error.unwrap_or_else(|| panic!("{case}: started")));
        assert!(error.contains("cannot connect to Redis"), "{case}: {error}");
    }

    // The whole path through the TLS Redis: result written, announced, read.
    config.redis.tls = tls("ca", Some("pipeline"));
    let running = app::start(Role::All, &config).await.unwrap();
    crate::support::decide_one(&running, "tls-redis").await;
    running.stop().await.unwrap();
}

#[test]
fn redis_certificates_need_a_rediss_url() {
    let (code, _, err) = cli(&[
        "run",
        "--redis-addr",
        "127.0.0.1:6379",
        "--kafka-brokers",
        "127.0.0.1:9092",
        "--redis-ca",
        "/etc/ca.pem",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("REDIS_CA") && err.contains("rediss://"),
        "{err}"
    );
    let (code, _, err) = cli(&["run", "--redis-cert", "/etc/c.pem"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("REDIS_CERT and REDIS_KEY"), "{err}");
}

/// An Apache Kafka broker whose only listener is `protocol` (SSL or SASL_SSL with
/// SCRAM-SHA-512, creating the user `scram`), with `tls`'s certificates:
/// `scripts/kafka.sh secure`. Killed on drop.
fn secure_kafka(protocol: &str, tls: &Path, scram: Option<(&str, &str)>) -> OwnKafka {
    OwnKafka::start_with(|dir, port, controller| {
        let mut args: Vec<std::ffi::OsString> = vec![
            "secure".into(),
            dir.as_os_str().to_owned(),
            port.to_string().into(),
            controller.to_string().into(),
            protocol.into(),
            tls.as_os_str().to_owned(),
        ];
        if let Some((user, password)) = scram {
            args.extend([user.into(), password.into()]);
        }
        args
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker script: scripts/test.sh runs it"]
async fn the_pipeline_runs_over_kafka_ssl_and_sasl_ssl_with_scram() {
    let Some(services) = services() else { return };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki(d, "ca", &[("broker", &["localhost", "127.0.0.1"])]);
    pki(d, "other-ca", &[("stranger", &["stranger"])]);
    let ca = path(d, "ca.pem");
    let properties = |text: &str| order_pipeline::config::parse_kafka_properties(text).unwrap();

    // SSL: the only listener takes TLS. A client that trusts another CA, or speaks
    // plaintext, is refused at start; one that trusts the broker's CA runs the pipeline.
    let ssl = secure_kafka("SSL", d, None);
    let mut config = kafka_config(&services);
    config.kafka.brokers = Some(ssl.addr.clone());
    config.kafka.produce_timeout_ms = 3000;
    config.kafka.properties = properties(&format!(
        "security.protocol=SSL;ssl.ca.location={}",
        path(d, "other-ca.pem")
    ));
    let refused = app::start(Role::All, &config).await.err();
    assert!(refused.is_some(), "a broker of an untrusted CA was taken");
    config.kafka.properties = properties(&format!("security.protocol=SSL;ssl.ca.location={ca}"));
    let running = app::start(Role::All, &config).await.unwrap();
    crate::support::decide_one(&running, "kafka-ssl").await;
    running.stop().await.unwrap();
    drop(ssl);

    // SASL_SSL with SCRAM-SHA-512: a wrong password is refused; the right one runs it.
    let sasl = secure_kafka("SASL_SSL", d, Some(("pipeline", "pipeline-s3cret")));
    let mut config = kafka_config(&services);
    config.kafka.brokers = Some(sasl.addr.clone());
    config.kafka.produce_timeout_ms = 3000;
    let scram = |password: &str| {
        properties(&format!(
            "security.protocol=SASL_SSL;ssl.ca.location={ca};sasl.mechanisms=SCRAM-SHA-512;\
             sasl.username=pipeline;sasl.password={password}"
        ))
    };
    config.kafka.properties = scram("wrong");
    let refused = app::start(Role::All, &config).await.err();
    let refused = format!("{:#}", refused.expect("a wrong SCRAM password was taken"));
    assert!(
        !refused.contains("wrong"),
        "the password is shown: {refused}"
    );
    config.kafka.properties = scram("pipeline-s3cret");
    let running = app::start(Role::All, &config).await.unwrap();
    crate::support::decide_one(&running, "kafka-sasl").await;
    running.stop().await.unwrap();
}
