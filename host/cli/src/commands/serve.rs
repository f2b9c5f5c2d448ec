//! `run`, `order-service`, `worker`, `cache-service`: a role until ctrl-c or SIGTERM.

use order_pipeline::app::{self, Role};
use order_pipeline::telemetry;

use crate::config_args::ConfigArgs;
use crate::exit::{EXIT_OK, Failure};

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}").into())
}

/// Runs `role` until ctrl-c or SIGTERM, then shuts down gracefully; exports traces when
/// `--otlp-endpoint` (OTEL_EXPORTER_OTLP_ENDPOINT) is set.
pub(crate) fn serve(role: Role, config: ConfigArgs) -> Result<i32, Failure> {
    let otlp = config.otlp_endpoint.clone();
    let service_name = config
        .otel_service_name
        .clone()
        .unwrap_or_else(|| format!("order-pipeline-{}", role.as_str()));
    let config = config.into_config()?;
    let runtime = runtime()?;
    let telemetry = match otlp {
        Some(endpoint) => Some(
            runtime
                .block_on(async { telemetry::init(&endpoint, &service_name) })
                .map_err(|e| e.to_string())?,
        ),
        None => None,
    };
    let served = runtime.block_on(async {
        let running = app::start(role, &config)
            .await
            .map_err(|e| format!("{e:#}"))?;
        running
            .run_until(shutdown_signal())
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(EXIT_OK)
    });
    // The runtime still runs: the exporter sends what is left through it.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    served
}

/// Resolves on ctrl-c or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
