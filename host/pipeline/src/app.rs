//! Starting and stopping the pipeline roles: the seam every test and the binary use.
//!
//! `start(role, config)` picks the backends (Kafka + Redis when configured, the embedded
//! database otherwise), loads the ruleset, binds the listeners and spawns the roles;
//! [`Running::stop`] shuts them down gracefully: servers stop accepting, the worker
//! finishes its in-flight orders and commits, producers flush.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;
use tonic::service::Routes;

use order_rules_engine::{Engine, RuleChain};

use crate::backends::embedded::{EmbeddedDb, EmbeddedLog};
use crate::backends::kafka;
use crate::backends::redis::Redis;
use crate::config::Config;
use crate::grpc::admin_service::AdminApi;
use crate::grpc::principals::{self, AdminAuth, Principals};
use crate::grpc::{self, cache_service::CacheApi, order_service::OrderApi};
use crate::order_log::{Consumer, Publisher};
use crate::processor::{Processor, RetryPolicy};
use crate::proto::admin::admin_service_server::AdminServiceServer;
use crate::proto::cache_service_server::CacheServiceServer;
use crate::proto::order_service_server::OrderServiceServer;
use crate::readiness::{self, Readiness};
use crate::rules::live::{LiveRuleset, Seed};
use crate::rules::quarantine::QuarantinePolicy;
use crate::rules::registry::Registry;
use crate::rules::report::Reporter;
use crate::rules::supervisor::Supervisor;
use crate::rules::trust::{SignatureFile, TrustStore};
use crate::store::Store;
use crate::worker;

/// How long the Kafka readiness probe waits for a metadata answer.
const KAFKA_PROBE_TIMEOUT: Duration = Duration::from_millis(2500);

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
            Self::Worker => config.worker_admin,
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
    let tls = config.tls.as_ref().map(grpc::tls_config).transpose()?;
    // So are the admin principals (of a role that serves the AdminService).
    let administers = role.administers(config);
    let mut principals = administers.then(|| admin_principals(config)).transpose()?;
    if let Some(files) = &config.tls {
        tracing::info!(
            cert = %files.cert.display(),
            mtls = files.client_ca.is_some(),
            "the gRPC servers take TLS only"
        );
    }

    let kafka_brokers = config
        .kafka_brokers
        .as_deref()
        .filter(|b| !b.trim().is_empty());
    let redis_addr = config
        .redis_addr
        .as_deref()
        .filter(|a| !a.trim().is_empty());
    match (role, kafka_brokers, redis_addr) {
        (Role::All, Some(_), None) | (Role::All, None, Some(_)) => anyhow::bail!(
            "set both KAFKA_BROKERS and REDIS_ADDR, or neither to use the embedded log and store"
        ),
        (Role::OrderService | Role::Worker, None, _) => anyhow::bail!(
            "this role needs KAFKA_BROKERS; the embedded log only works with `order-pipeline run`"
        ),
        (Role::Worker | Role::CacheService | Role::Admin, _, None) => anyhow::bail!(
            "this role needs REDIS_ADDR; the embedded store only works with `order-pipeline run`"
        ),
        _ => {}
    }
    // The recorder goes in first, so that start-up (the first ruleset) is recorded too.
    let metrics_listener = match config.metrics_addr {
        Some(addr) => {
            crate::metrics::install()?;
            Some(crate::metrics::bind(addr).await?)
        }
        None => None,
    };
    let embedded = match (kafka_brokers, redis_addr) {
        (None, None) => {
            tracing::info!(data_dir = %config.data_dir.display(), "using the embedded log and store");
            Some(EmbeddedDb::open(&config.data_dir)?)
        }
        _ => None,
    };
    let produce_timeout = Duration::from_millis(config.produce_timeout_ms);
    let kafka_options = kafka::ClientOptions {
        debug: config.kafka_debug.clone(),
        properties: config.kafka_properties.clone(),
    };
    let producer = match kafka_brokers {
        Some(brokers) if role.serves_orders() || role.works() => {
            kafka::ensure_topics(
                brokers,
                &kafka_options,
                &[
                    (config.kafka_topic.as_str(), config.kafka_partitions),
                    (config.dlq_topic.as_str(), 1),
                ],
                config.kafka_replication,
            )
            .await?;
            Some(kafka::producer(brokers, &kafka_options, produce_timeout)?)
        }
        _ => None,
    };
    // One Redis connection for the store and the registry, one pub/sub listener.
    let redis = match (&embedded, redis_addr) {
        (None, Some(addr)) if role.follows_rules() || role.serves_results() => Some(
            Redis::connect(
                addr,
                &config.key_prefix,
                &config.redis_tls,
                config.redis_cluster,
            )
            .await?,
        ),
        _ => None,
    };
    if let Some(redis) = redis.as_ref().filter(|_| role.works()) {
        redis.check_durability().await; // logs a warning when not durable
    }
    let redis_registry = redis
        .as_ref()
        .filter(|_| role.follows_rules())
        .map(|r| r.registry(&config.worker_group));
    let store = match (&embedded, &redis) {
        (Some(db), _) => Some(Store::shared(Arc::clone(db) as _)),
        (None, Some(redis)) => Some(Store::new(redis.store().with_ttl(config.result_ttl))),
        _ => None,
    };

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut metrics_addr = None;
    if let Some(listener) = metrics_listener {
        metrics_addr = Some(listener.local_addr()?);
        tasks.spawn(crate::metrics::serve(listener, shutdown.clone()));
        tracing::info!(addr = %metrics_addr.map(|a| a.to_string()).unwrap_or_default(), "metrics at GET /metrics");
    }
    if let Some(db) = embedded.as_ref().filter(|_| role.works()) {
        tasks.spawn(crate::backends::embedded::run_retention(
            Arc::clone(db),
            config.result_ttl,
            shutdown.clone(),
        ));
    }
    let mut live_ruleset: Option<Arc<LiveRuleset>> = None;
    if let Some(redis) = &redis {
        let listener = redis.listener(redis_registry.as_ref());
        tasks.spawn(listener.run(shutdown.clone()));
    }

    // What `grpc.health.v1` answers: each dependency of this process, probed.
    let readiness = Arc::new(Readiness::default());
    if let Some(producer) = &producer {
        let (producer, topic) = (producer.clone(), config.kafka_topic.clone());
        let check = move || {
            let (producer, topic) = (producer.clone(), topic.clone());
            async move { kafka::reachable(&producer, &topic, KAFKA_PROBE_TIMEOUT).await }
        };
        tasks.spawn(readiness::probe(
            Arc::clone(&readiness),
            "kafka",
            check,
            shutdown.clone(),
        ));
    }
    if let Some(redis) = &redis {
        let redis = redis.clone();
        let check = move || {
            let redis = redis.clone();
            async move { redis.ping().await }
        };
        tasks.spawn(readiness::probe(
            Arc::clone(&readiness),
            "redis",
            check,
            shutdown.clone(),
        ));
    }

    let mut reporter = None;
    if role.follows_rules() {
        let trust = config
            .plugin_trust_file
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
        let registry = match (&embedded, redis_registry) {
            (Some(db), _) => Registry::shared(Arc::clone(db) as _),
            (None, Some(registry)) => Registry::new(registry),
            (None, None) => anyhow::bail!("the worker has no registry (a bug in start-up)"),
        };
        let live = LiveRuleset::start(engine, registry, seed, config.history, trust).await?;
        let stop = shutdown.clone();
        tasks.spawn(Arc::clone(&live).follow(Arc::clone(&readiness), stop));
        live_ruleset = Some(Arc::clone(&live));
        // The one writer of the registry's automatic changes: here, or in the admin role.
        let to = if administers {
            Supervisor::new(Arc::clone(&live)).spawn(&mut tasks, &shutdown)
        } else {
            Reporter::Remote(live.registry().clone())
        };
        live.report_to(to.clone(), &worker_name(config));
        reporter = Some(to);
    }
    if let (true, Some(live), Some(reporter)) = (role.works(), &live_ruleset, reporter) {
        let live = Arc::clone(live);
        let processor = Processor::new(
            Arc::clone(&live),
            RetryPolicy {
                max_retries: config.max_retries,
                backoff: Duration::from_millis(config.retry_backoff_ms),
            },
            QuarantinePolicy {
                failures: config.quarantine_failures,
                window: config.quarantine_window,
            },
            &config.default_currency,
            &worker_name(config),
            reporter,
        );
        let processor = Arc::new(match &store {
            Some(store) => crate::shadow::attach(
                processor,
                &live,
                store,
                &worker_name(config),
                &mut tasks,
                &shutdown,
            ),
            None => processor,
        });
        tasks.spawn(crate::rules::status::publish(
            Arc::clone(&live),
            processor.stats(),
            worker_name(config),
            shutdown.clone(),
        ));
        let Some(store) = store.clone() else {
            anyhow::bail!("the worker has no result store (a bug in start-up)");
        };
        let log: Consumer = match (&embedded, &producer, kafka_brokers) {
            (Some(db), _, _) => Box::new(EmbeddedLog::new(Arc::clone(db))),
            (None, Some(producer), Some(brokers)) => {
                let orders = kafka::OrderConsumer::subscribe(
                    brokers,
                    &kafka_options,
                    &kafka::Membership {
                        group: &config.worker_group,
                        instance_id: config.worker_instance_id.as_deref(),
                        session_timeout: Duration::from_millis(config.kafka_session_timeout_ms),
                        max_poll_interval: Duration::from_millis(config.kafka_max_poll_interval_ms),
                    },
                    &config.kafka_topic,
                )?;
                tracing::info!(topic = %config.kafka_topic, group = %config.worker_group, "worker consuming");
                let dead_letters =
                    kafka::DeadLetters::new(producer.clone(), &config.dlq_topic, produce_timeout);
                Box::new(kafka::KafkaLog::new(orders, dead_letters, store))
            }
            _ => anyhow::bail!("the worker has no order log (a bug in start-up)"),
        };
        tasks.spawn(worker::run(log, processor, shutdown.clone()));
    }

    let mut order_addr = None;
    if role.serves_orders() {
        let publisher = match (&embedded, &producer) {
            (Some(db), _) => Publisher::shared(Arc::clone(db) as _),
            (None, Some(producer)) => Publisher::new(kafka::KafkaPublisher::new(
                producer.clone(),
                &config.kafka_topic,
                produce_timeout,
            )),
            _ => anyhow::bail!("the OrderService has no log (a bug in start-up)"),
        };
        let listener = bind("ORDER_SERVICE_ADDR", config.order_service_addr).await?;
        order_addr = Some(listener.local_addr()?);
        let routes = Routes::new(OrderServiceServer::new(OrderApi::new(publisher)));
        let stop = shutdown.clone();
        let readiness = Arc::clone(&readiness);
        let tls = tls.clone();
        let limits = (config.servers, config.servers.request_timeout);
        tasks.spawn(async move {
            grpc::serve(
                listener,
                OrderServiceServer::<OrderApi>::NAME,
                routes,
                &readiness,
                tls,
                limits,
                stop.cancelled_owned(),
            )
            .await
        });
        tracing::info!(addr = %order_addr.map(|a| a.to_string()).unwrap_or_default(), "OrderService listening");
    }

    let mut cache_addr = None;
    if role.serves_results() {
        let Some(store) = store.clone() else {
            anyhow::bail!("the CacheService has no store (a bug in start-up)");
        };
        let listener = bind("CACHE_SERVICE_ADDR", config.cache_service_addr).await?;
        cache_addr = Some(listener.local_addr()?);
        let routes = Routes::new(CacheServiceServer::new(CacheApi::new(store)));
        let stop = shutdown.clone();
        let readiness = Arc::clone(&readiness);
        let tls = tls.clone();
        let limits = (config.servers, config.servers.request_timeout);
        tasks.spawn(async move {
            grpc::serve(
                listener,
                CacheServiceServer::<CacheApi>::NAME,
                routes,
                &readiness,
                tls,
                limits,
                stop.cancelled_owned(),
            )
            .await
        });
        tracing::info!(addr = %cache_addr.map(|a| a.to_string()).unwrap_or_default(), "CacheService listening");
    }

    let mut admin_addr = None;
    if let (false, Some(_)) = (administers, &live_ruleset) {
        // A worker that does not administer: only its health, for its healthcheck.
        let listener = bind("ADMIN_ADDR", config.admin_addr).await?;
        admin_addr = Some(listener.local_addr()?);
        let stop = shutdown.clone();
        let readiness = Arc::clone(&readiness);
        let tls = tls.clone();
        let limits = (config.servers, config.servers.request_timeout);
        tasks.spawn(async move {
            grpc::serve(
                listener,
                "",
                Routes::default(),
                &readiness,
                tls,
                limits,
                stop.cancelled_owned(),
            )
            .await
        });
        tracing::info!(addr = %admin_addr.map(|a| a.to_string()).unwrap_or_default(), "worker health listening (WORKER_ADMIN=false: no AdminService)");
    }
    if let (true, Some(live)) = (administers, &live_ruleset) {
        let addr = config.admin_addr;
        let principals = match principals.take() {
            Some(principals) => principals,
            None => admin_principals(config)?,
        };
        let listener = bind("ADMIN_ADDR", addr).await?;
        admin_addr = Some(listener.local_addr()?);
        let mut api = AdminApi::new(Arc::clone(live), store.clone());
        let log: Option<crate::replay::Log> = match (&embedded, kafka_brokers) {
            (Some(db), _) => Some(Arc::clone(db) as _),
            (None, Some(brokers)) => Some(Arc::new(kafka::reader::KafkaReplayLog::new(
                brokers,
                &kafka_options,
                &config.kafka_topic,
                &config.dlq_topic,
            ))),
            (None, None) => None,
        };
        if let (Some(store), Some(log)) = (&store, log) {
            api = api.with_replayer(Arc::new(crate::replay::Replayer::new(
                Arc::clone(live),
                store.clone(),
                log,
                &config.default_currency,
            )));
        }
        let service = tonic::service::interceptor::InterceptedService::new(
            AdminServiceServer::new(api)
                .max_decoding_message_size(grpc::admin_service::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(grpc::admin_service::MAX_MESSAGE_BYTES),
            AdminAuth::new(principals),
        );
        let routes = Routes::new(service);
        let stop = shutdown.clone();
        let readiness = Arc::clone(&readiness);
        let tls = tls.clone();
        let limits = (config.servers, config.servers.admin_request_timeout);
        tasks.spawn(async move {
            grpc::serve(
                listener,
                AdminServiceServer::<AdminApi>::NAME,
                routes,
                &readiness,
                tls,
                limits,
                stop.cancelled_owned(),
            )
            .await
        });
        tracing::info!(addr = %admin_addr.map(|a| a.to_string()).unwrap_or_default(), "AdminService listening");
    }

    Ok(Running {
        order_addr,
        cache_addr,
        admin_addr,
        metrics_addr,
        live: live_ruleset,
        embedded,
        readiness,
        shutdown,
        tasks,
    })
}

/// How results name this worker: WORKER_INSTANCE_ID, or host:pid.
fn worker_name(config: &Config) -> String {
    match config
        .worker_instance_id
        .as_deref()
        .filter(|id| !id.is_empty())
    {
        Some(id) => id.to_string(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "worker".into());
            format!("{host}:{}", std::process::id())
        }
    }
}

async fn bind(name: &str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} ({name}); is it in use?"))
}

/// Loads the configured ruleset (or the default) with the configured limits.
async fn load_chain(config: &Config) -> anyhow::Result<(Engine, RuleChain)> {
    let limits = config.limits.clone();
    let native = config.native_baseline;
    let path = config.ruleset.clone();
    let cache = config.component_cache.clone();
    tokio::task::spawn_blocking(move || {
        if native {
            tracing::warn!(
                "NATIVE_RULES_BASELINE is on: the built-in rules run compiled into the host, \
                 without Wasm isolation or limits; use this to benchmark, never in production"
            );
        }
        let engine = order_builtin_rules::engine(limits, native)?;
        if let Some(dir) = cache {
            engine
                .cache_compiled_in(dir)
                .context("COMPONENT_CACHE_DIR (set it to a directory of this user's, or `off`)")?;
        }
        let chain = match &path {
            Some(path) => order_builtin_rules::load_file(&engine, path)?,
            None => order_builtin_rules::load_default(&engine)?,
        };
        for spec in chain.specs() {
            tracing::info!(
                rule = spec.plugin.name(),
                version = %spec.plugin.info().version,
                digest = spec.plugin.digest(),
                isolation = %spec.isolation,
                "rule loaded"
            );
        }
        Ok((engine, chain))
    })
    .await
    .context("loading the ruleset panicked")?
}

/// The signatures of the configured ruleset's rules (each `[[rule]]`'s `signature`
/// file, relative to the ruleset's directory), in order.
fn seed_signatures(
    config: &Config,
) -> anyhow::Result<Vec<Option<crate::domain::ruleset::PluginSignature>>> {
    let Some(path) = &config.ruleset else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read RULESET {}", path.display()))?;
    let file = order_rules_engine::ruleset::parse(&text, &path.display().to_string())?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    file.rules
        .iter()
        .map(|rule| {
            rule.signature
                .as_ref()
                .map(|sig| {
                    SignatureFile::read(&dir.join(sig))
                        .map(|f| f.signature)
                        .with_context(|| {
                            format!("RULESET {}: rule {}", path.display(), rule.plugin)
                        })
                })
                .transpose()
        })
        .collect()
}

/// The AdminService's principals from the configuration, checked against where it
/// listens: without any, only a loopback address is allowed; with tokens, an address
/// that is not loopback needs TLS (or `ADMIN_ALLOW_PLAINTEXT`); certificate principals
/// need mTLS (`TLS_CLIENT_CA`).
fn admin_principals(config: &Config) -> anyhow::Result<Principals> {
    let addr = config.admin_addr;
    let tokens = match &config.admin_tokens {
        Some(text) => principals::parse_tokens("ADMIN_TOKENS", text)?,
        None => Vec::new(),
    };
    let subjects = match &config.admin_cert_principals {
        Some(text) => principals::parse_subjects("ADMIN_CERT_PRINCIPALS", text)?,
        None => Vec::new(),
    };
    let principals = Principals::new(tokens, config.admin_token.as_deref(), subjects);
    let mtls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    if principals.by_certificate() && !mtls {
        anyhow::bail!(
            "ADMIN_CERT_PRINCIPALS needs client certificates: set TLS_CERT, TLS_KEY and TLS_CLIENT_CA"
        );
    }
    if principals.is_empty() {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "ADMIN_ADDR {addr} is not a loopback address: set ADMIN_TOKEN or ADMIN_TOKENS, or listen on 127.0.0.1"
            );
        }
        tracing::warn!(%addr, "admin API without ADMIN_TOKEN: anyone on this host can deploy rules");
    } else if !addr.ip().is_loopback() && config.tls.is_none() {
        if !config.admin_allow_plaintext {
            anyhow::bail!(
                "ADMIN_ADDR {addr} is not a loopback address and the servers have no TLS: admin \
                 tokens would cross the network in clear. Set TLS_CERT and TLS_KEY, listen on \
                 127.0.0.1, or set ADMIN_ALLOW_PLAINTEXT=true"
            );
        }
        tracing::warn!(%addr, "admin tokens cross the network in clear (ADMIN_ALLOW_PLAINTEXT)");
    }
    Ok(principals)
}
