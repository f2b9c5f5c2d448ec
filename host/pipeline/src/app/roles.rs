//! One starter per role: the rules (a live ruleset and its supervisor), the worker, the
//! OrderService, the CacheService, the AdminService (or a worker's health alone). Each
//! takes the seams from the [`assembly`](super::assembly) and spawns its tasks; the gRPC
//! ones go through one helper, [`serve_grpc`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;
use tonic::transport::ServerTlsConfig;

use super::assembly::Backends;
use super::startup::{admin_principals, load_chain, seed_signatures, worker_name};
use crate::config::Config;
use crate::grpc::admin_service::AdminApi;
use crate::grpc::principals::{AdminAuth, Principals};
use crate::grpc::{self, cache_service::CacheApi, order_service::OrderApi};
use crate::processor::{Processor, RetryPolicy};
use crate::proto::admin::admin_service_server::AdminServiceServer;
use crate::proto::cache_service_server::CacheServiceServer;
use crate::proto::order_service_server::OrderServiceServer;
use crate::readiness::Readiness;
use crate::rules::live::{LiveRuleset, Seed};
use crate::rules::quarantine::QuarantinePolicy;
use crate::rules::report::Reporter;
use crate::rules::supervisor::Supervisor;
use crate::rules::trust::TrustStore;
use crate::worker;

/// What every role of one process shares while it starts.
pub(super) struct Context<'a> {
    pub config: &'a Config,
    pub backends: &'a Backends,
    pub readiness: &'a Arc<Readiness>,
    pub tls: Option<ServerTlsConfig>,
    pub tasks: &'a mut JoinSet<anyhow::Result<()>>,
    pub shutdown: &'a CancellationToken,
}

/// One gRPC server to start: where, what, and how long a call may take.
struct Server {
    /// The variable of its address, for the error when it cannot listen.
    variable: &'static str,
    addr: SocketAddr,
    /// The service's gRPC name; empty: health alone.
    name: &'static str,
    routes: Routes,
    timeout: Duration,
    /// What the log line says listens.
    what: &'static str,
}

/// Binds `server`'s address and serves it (with health and reflection) until shutdown;
/// answers where it listens.
async fn serve_grpc(cx: &mut Context<'_>, server: Server) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(server.addr).await.with_context(|| {
        format!(
            "cannot listen on {} ({}); is it in use?",
            server.addr, server.variable
        )
    })?;
    let addr = listener.local_addr()?;
    let stop = cx.shutdown.clone();
    let readiness = Arc::clone(cx.readiness);
    let tls = cx.tls.clone();
    let limits = (cx.config.servers.limits, server.timeout);
    cx.tasks.spawn(async move {
        grpc::serve(
            listener,
            server.name,
            server.routes,
            &readiness,
            tls,
            limits,
            stop.cancelled_owned(),
        )
        .await
    });
    tracing::info!(%addr, "{} listening", server.what);
    Ok(addr)
}

/// The live ruleset (of a worker, or of the admin role whose gate builds chains) and
/// where its observations go: the supervisor in this process when it `administers`,
/// else the reports stream of the admin role.
pub(super) async fn start_rules(
    cx: &mut Context<'_>,
    administers: bool,
) -> anyhow::Result<(Arc<LiveRuleset>, Reporter)> {
    let config = cx.config;
    let trust = config
        .plugins
        .trust_file
        .as_deref()
        .map(TrustStore::open)
        .transpose()?;
    let (engine, chain) = load_chain(config).await?;
    let seed = Seed {
        signatures: seed_signatures(config)?,
        chain,
        // A worker that does not administer never writes the registry.
        store: administers,
    };
    let registry = cx.backends.registry()?;
    let live = LiveRuleset::start(engine, registry, seed, config.plugins.history, trust).await?;
    cx.tasks
        .spawn(Arc::clone(&live).follow(Arc::clone(cx.readiness), cx.shutdown.clone()));
    // The one writer of the registry's automatic changes: here, or in the admin role.
    let reporter = if administers {
        Supervisor::new(Arc::clone(&live)).spawn(cx.tasks, cx.shutdown)
    } else {
        Reporter::Remote(live.registry().clone())
    };
    live.report_to(reporter.clone(), &worker_name(config));
    Ok((live, reporter))
}

/// The worker: a processor over `live`, its shadow runs and status, and the worker loop
/// over the order log.
pub(super) fn start_worker(
    cx: &mut Context<'_>,
    live: &Arc<LiveRuleset>,
    reporter: Reporter,
) -> anyhow::Result<()> {
    let config = cx.config;
    let name = worker_name(config);
    let processor = Processor::new(
        Arc::clone(live),
        RetryPolicy {
            max_retries: config.worker.max_retries,
            backoff: Duration::from_millis(config.worker.retry_backoff_ms),
        },
        QuarantinePolicy {
            failures: config.worker.quarantine_failures,
            window: config.worker.quarantine_window,
        },
        &config.worker.default_currency,
        &name,
        reporter,
    );
    let store = cx.backends.store("worker")?;
    let processor = Arc::new(crate::shadow::attach(
        processor,
        live,
        &store,
        &name,
        cx.tasks,
        cx.shutdown,
    ));
    cx.tasks.spawn(crate::rules::status::publish(
        Arc::clone(live),
        processor.stats(),
        name,
        cx.shutdown.clone(),
    ));
    let log = cx.backends.consumer(config, store)?;
    cx.tasks
        .spawn(worker::run(log, processor, cx.shutdown.clone()));
    Ok(())
}

/// The OrderService.
pub(super) async fn start_order_service(cx: &mut Context<'_>) -> anyhow::Result<SocketAddr> {
    let publisher = cx.backends.publisher(cx.config)?;
    let server = Server {
        variable: "ORDER_SERVICE_ADDR",
        addr: cx.config.servers.order,
        name: OrderServiceServer::<OrderApi>::NAME,
        routes: Routes::new(OrderServiceServer::new(OrderApi::new(publisher))),
        timeout: cx.config.servers.limits.request_timeout,
        what: "OrderService",
    };
    serve_grpc(cx, server).await
}

/// The CacheService.
pub(super) async fn start_cache_service(cx: &mut Context<'_>) -> anyhow::Result<SocketAddr> {
    let store = cx.backends.store("CacheService")?;
    let server = Server {
        variable: "CACHE_SERVICE_ADDR",
        addr: cx.config.servers.cache,
        name: CacheServiceServer::<CacheApi>::NAME,
        routes: Routes::new(CacheServiceServer::new(CacheApi::new(store))),
        timeout: cx.config.servers.limits.request_timeout,
        what: "CacheService",
    };
    serve_grpc(cx, server).await
}

/// A worker that does not administer: only its health, for its healthcheck.
pub(super) async fn start_worker_health(cx: &mut Context<'_>) -> anyhow::Result<SocketAddr> {
    let server = Server {
        variable: "ADMIN_ADDR",
        addr: cx.config.servers.admin,
        name: "",
        routes: Routes::default(),
        timeout: cx.config.servers.limits.request_timeout,
        what: "worker health (WORKER_ADMIN=false: no AdminService)",
    };
    serve_grpc(cx, server).await
}

/// The AdminService over `live`, its calls held to `principals`.
pub(super) async fn start_admin(
    cx: &mut Context<'_>,
    live: &Arc<LiveRuleset>,
    principals: Option<Principals>,
) -> anyhow::Result<SocketAddr> {
    let config = cx.config;
    let principals = match principals {
        Some(principals) => principals,
        None => admin_principals(config)?,
    };
    let store = cx.backends.store.clone();
    let mut api = AdminApi::new(Arc::clone(live), store.clone());
    if let (Some(store), Some(log)) = (store, cx.backends.replay_log(config)) {
        api = api.with_replayer(Arc::new(crate::replay::Replayer::new(
            Arc::clone(live),
            store,
            log,
            &config.worker.default_currency,
        )));
    }
    let service = tonic::service::interceptor::InterceptedService::new(
        AdminServiceServer::new(api)
            .max_decoding_message_size(grpc::admin_service::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(grpc::admin_service::MAX_MESSAGE_BYTES),
        AdminAuth::new(principals),
    );
    let server = Server {
        variable: "ADMIN_ADDR",
        addr: config.servers.admin,
        name: AdminServiceServer::<AdminApi>::NAME,
        routes: Routes::new(service),
        timeout: config.servers.limits.admin_request_timeout,
        what: "AdminService",
    };
    serve_grpc(cx, server).await
}
