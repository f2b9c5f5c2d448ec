//! The gRPC services: a thin translation between the proto messages and the domain.
//! Each server carries its own service plus `grpc.health.v1` (from the process's
//! [`Readiness`]) and gRPC reflection (v1 and v1alpha, as the Go servers did), advertising
//! only what it serves.

mod admin_convert;
pub mod admin_service;
pub mod cache_service;
pub mod health;
pub mod order_service;
pub mod principals;
mod status;

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::{ServerLimits, TlsFiles};
use crate::proto;
use crate::readiness::Readiness;

/// The servers' TLS from its PEM files, checked: a file that cannot be read or parsed is
/// an error naming its variable.
pub fn tls_config(files: &TlsFiles) -> anyhow::Result<ServerTlsConfig> {
    let read = |name: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("{name} {}: cannot read it", path.display()))
    };
    let mut config = ServerTlsConfig::new().identity(Identity::from_pem(
        read("TLS_CERT", &files.cert)?,
        read("TLS_KEY", &files.key)?,
    ));
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(Certificate::from_pem(read("TLS_CLIENT_CA", ca)?));
    }
    tonic::transport::Server::builder()
        .tls_config(config.clone())
        .with_context(|| {
            format!(
                "TLS_CERT {} / TLS_KEY {}{}: not a usable PEM certificate and key",
                files.cert.display(),
                files.key.display(),
                files
                    .client_ca
                    .as_ref()
                    .map(|ca| format!(" / TLS_CLIENT_CA {}", ca.display()))
                    .unwrap_or_default()
            )
        })?;
    Ok(config)
}

/// Serves `routes` (one service, named `service_name`) plus health and reflection on
/// `listener` until `shutdown`, each connection held to `limits` (streams open at once,
/// requests served at once) and each call to `timeout`.
pub async fn serve(
    listener: TcpListener,
    service_name: &'static str,
    routes: Routes,
    readiness: &Arc<Readiness>,
    tls: Option<ServerTlsConfig>,
    (limits, timeout): (ServerLimits, std::time::Duration),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let health = health::HealthApi::server(service_name, readiness);
    let names = [
        service_name,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    let builder = || {
        names.iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET),
            // An empty name: a server of the health service alone.
            |b, name| {
                if name.is_empty() {
                    b
                } else {
                    b.with_service_name(*name)
                }
            },
        )
    };
    let reflection_v1 = builder()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;
    let reflection_v1alpha = builder()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building the reflection service")?;
    let routes = routes
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);
    let mut server = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(limits.max_streams))
        .concurrency_limit_per_connection(limits.concurrency_per_connection)
        .timeout(timeout);
    if let Some(tls) = tls {
        server = server.tls_config(tls).context("TLS of the gRPC server")?;
    }
    server
        .add_routes(routes)
        .serve_with_incoming_shutdown(
            // No Nagle: small gRPC frames would otherwise wait for delayed ACKs (~40 ms).
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
        .context("gRPC server failed")
}
