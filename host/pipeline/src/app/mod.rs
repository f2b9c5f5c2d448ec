//! Starting and stopping the pipeline roles: the seam every test and the binary use.
//!
//! [`start`] checks the configuration, opens the backends ([`assembly`], the one place
//! that picks them: Kafka + Redis when configured, the embedded database otherwise), and
//! starts each role of the process ([`roles`]); [`Running::stop`] shuts them down
//! gracefully: servers stop accepting, the worker finishes its in-flight orders and
//! commits, producers flush.

mod assembly;
mod roles;
mod startup;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backends::embedded::EmbeddedDb;
use crate::config::Config;
use crate::grpc;
use crate::readiness::Readiness;
use crate::rules::live::LiveRuleset;
use roles::Context;

/// Which roles a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Every role in one process (`order-pipeline run`).
    All,
    /// The OrderService only.
    OrderService,
    /// The worker only.
    Worker,
    /// The CacheService only.
    CacheService,
    /// The AdminService and the rules supervisor, without a worker: the process that
    /// writes the registry for workers run with `WORKER_ADMIN=false`.
    Admin,
}

impl Role {
    /// The command that runs it: `run`, `order-service`, `worker`, `cache-service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::All => "run",
            Self::OrderService => "order-service",
            Self::Worker => "worker",
            Self::CacheService => "cache-service",
            Self::Admin => "admin",
        }
    }

    fn serves_orders(self) -> bool {
        matches!(self, Self::All | Self::OrderService)
    }
    fn works(self) -> bool {
        matches!(self, Self::All | Self::Worker)
    }
    fn serves_results(self) -> bool {
        matches!(self, Self::All | Self::CacheService)
    }
    /// Whether it serves the AdminService and runs the rules supervisor (a worker does
    /// unless `WORKER_ADMIN=false`).
    fn administers(self, config: &Config) -> bool {
        match self {
            Self::All | Self::Admin => true,
            Self::Worker => config.worker.admin,
            Self::OrderService | Self::CacheService => false,
        }
    }
    /// Whether it follows the registry's ruleset (a worker, or the admin role whose gate
    /// builds chains).
    fn follows_rules(self) -> bool {
        self.works() || self == Self::Admin
    }
}

/// Running roles.
pub struct Running {
    /// Where the OrderService listens, if this process runs it.
    pub order_addr: Option<SocketAddr>,
    /// Where the CacheService listens, if this process runs it.
    pub cache_addr: Option<SocketAddr>,
    /// Where the AdminService listens, if this process runs a worker.
    pub admin_addr: Option<SocketAddr>,
    /// Where `GET /metrics` is served, if METRICS_ADDR is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The worker's live ruleset, if this process runs a worker.
    pub live: Option<Arc<LiveRuleset>>,
    /// The embedded database, in embedded mode.
    pub embedded: Option<Arc<EmbeddedDb>>,
    /// What the process's health service answers.
    pub readiness: Arc<Readiness>,
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

impl Running {
    /// Stops every role gracefully, waits for them, and closes the embedded database.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut first_error = None;
        while let Some(joined) = self.tasks.join_next().await {
            if let Err(e) = joined.map_err(anyhow::Error::from).and_then(|r| r) {
                tracing::error!(error = %format!("{e:#}"), "role failed during shutdown");
                first_error.get_or_insert(e);
            }
        }
        drop(self.live.take());
        if let Some(db) = self.embedded.take()
            && let Err(e) = db.close().await
        {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Kills every role at once, as a crash would: nothing in flight is finished,
    /// stored or committed. For tests of recovery.
    pub fn abort(mut self) {
        self.tasks.abort_all();
    }

    /// Runs until `signal` resolves or a role fails, then stops gracefully.
    pub async fn run_until(
        mut self,
        signal: impl std::future::Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let failure = tokio::select! {
            () = signal => None,
            Some(joined) = self.tasks.join_next() => Some(
                joined
                    .map_err(anyhow::Error::from)
                    .and_then(|r| r)
                    .err()
                    .unwrap_or_else(|| anyhow::anyhow!("a role stopped unexpectedly")),
            ),
        };
        tracing::info!("shutting down");
        let stopped = self.stop().await;
        match failure {
            Some(e) => Err(e),
            None => stopped,
        }
    }
}

/// Starts `role` with `config`.
pub async fn start(role: Role, config: &Config) -> anyhow::Result<Running> {
    config.validate()?;
    // The files first: a bad one fails before anything is opened.
    let tls = config
        .servers
        .tls
        .as_ref()
        .map(grpc::tls_config)
        .transpose()?;
    // So are the admin principals (of a role that serves the AdminService).
    let administers = role.administers(config);
    let principals = administers
        .then(|| startup::admin_principals(config))
        .transpose()?;
    if let Some(files) = &config.servers.tls {
        tracing::info!(
            cert = %files.cert.display(),
            mtls = files.client_ca.is_some(),
            "the gRPC servers take TLS only"
        );
    }
    assembly::check(role, config)?;
    // The recorder goes in first, so that start-up (the first ruleset) is recorded too.
    let metrics_listener = match config.telemetry.metrics_addr {
        Some(addr) => {
            crate::metrics::install()?;
            Some(crate::metrics::bind(addr).await?)
        }
        None => None,
    };
    let backends = assembly::open(role, config).await?;
    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut metrics_addr = None;
    if let Some(listener) = metrics_listener {
        let addr = listener.local_addr()?;
        metrics_addr = Some(addr);
        tasks.spawn(crate::metrics::serve(listener, shutdown.clone()));
        tracing::info!(%addr, "metrics at GET /metrics");
    }
    // What `grpc.health.v1` answers: each dependency of this process, probed.
    let readiness = Arc::new(Readiness::default());
    backends.spawn(role, config, &readiness, &mut tasks, &shutdown);
    let mut cx = Context {
        config,
        backends: &backends,
        readiness: &readiness,
        tls,
        tasks: &mut tasks,
        shutdown: &shutdown,
    };
    let mut running = Addresses::default();
    let live = start_roles(role, administers, principals, &mut cx, &mut running).await?;
    Ok(Running {
        order_addr: running.order,
        cache_addr: running.cache,
        admin_addr: running.admin,
        metrics_addr,
        live,
        embedded: backends.embedded,
        readiness,
        shutdown,
        tasks,
    })
}

/// Where the roles of a process listen.
#[derive(Default)]
struct Addresses {
    order: Option<SocketAddr>,
    cache: Option<SocketAddr>,
    admin: Option<SocketAddr>,
}

/// Starts each role `role` runs; answers the live ruleset, if it follows one.
async fn start_roles(
    role: Role,
    administers: bool,
    principals: Option<grpc::principals::Principals>,
    cx: &mut Context<'_>,
    at: &mut Addresses,
) -> anyhow::Result<Option<Arc<LiveRuleset>>> {
    let mut live = None;
    if role.follows_rules() {
        let (rules, reporter) = roles::start_rules(cx, administers).await?;
        if role.works() {
            roles::start_worker(cx, &rules, reporter)?;
        }
        live = Some(rules);
    }
    if role.serves_orders() {
        at.order = Some(roles::start_order_service(cx).await?);
    }
    if role.serves_results() {
        at.cache = Some(roles::start_cache_service(cx).await?);
    }
    if let Some(rules) = &live {
        at.admin = Some(if administers {
            roles::start_admin(cx, rules, principals).await?
        } else {
            roles::start_worker_health(cx).await?
        });
    }
    Ok(live)
}
