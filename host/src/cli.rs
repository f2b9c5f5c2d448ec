//! The command line: the pipeline roles (`run`, the default, and `order-service`,
//! `worker`, `cache-service`), the `submit`/`get` clients, and the plugin tools
//! (`plugin run|test|bench|inspect`). Kept in the library (with the output streams passed
//! in) so that tests can run commands and check their output and exit codes.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::app::{self, Role};
use crate::config::{Config, LimitArgs};
use crate::engine::{Engine, Isolation, RuleChain, RuleSpec};
use crate::order::Order;
use crate::ruleset;
use crate::runner;

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: an example did not match its expectation.
pub const EXIT_TEST_FAILED: i32 = 1;
/// Exit code: bad usage or input (file missing, plugin refused, invalid JSON...).
pub const EXIT_USAGE: i32 = 2;

/// Order pipeline with business rules as hot-swappable WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "order-pipeline", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

/// The pipeline's configuration alone, for `order-pipeline` without a command.
#[derive(Debug, Parser)]
struct RunOnly {
    #[command(flatten)]
    config: Config,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every role in one process (the default). Without KAFKA_BROKERS and REDIS_ADDR
    /// it uses the embedded log and store in DATA_DIR.
    Run(Config),
    /// Runs the OrderService (gRPC, ORDER_SERVICE_ADDR) publishing to Kafka.
    OrderService(Config),
    /// Runs a worker: consumes Kafka, applies the ruleset, writes results to Redis.
    Worker(Config),
    /// Runs the CacheService (gRPC, CACHE_SERVICE_ADDR) reading results from Redis.
    CacheService(Config),
    /// Submits one order to the OrderService and prints the answer.
    Submit(SubmitArgs),
    /// Prints the result of an order from the CacheService.
    Get(GetArgs),
    /// Checks a server's grpc.health.v1 status; exits 0 when SERVING (for healthchecks).
    Health(HealthArgs),
    /// Load generator: concurrent clients submit orders and wait for their results;
    /// prints throughput and latency percentiles.
    Bench(BenchArgs),
    /// Tools for rule plugins: run, test, benchmark and inspect them.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Service to ask about; empty asks about the server as a whole.
    #[arg(long, default_value = "")]
    service: String,
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// OrderService URL.
    #[arg(
        long,
        env = "ORDER_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    order_addr: String,
    /// CacheService URL.
    #[arg(
        long,
        env = "CACHE_SERVICE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    cache_addr: String,
    /// Orders to submit [default: 10000, or no limit with --duration].
    #[arg(long)]
    orders: Option<usize>,
    /// Stop submitting after this many seconds.
    #[arg(long, value_parser = parse_seconds)]
    duration: Option<std::time::Duration>,
    /// Submit at this fixed rate (orders/s over all clients) instead of as fast as
    /// possible; latencies then count from when each order was due.
    #[arg(long)]
    rate: Option<f64>,
    /// Concurrent clients.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Orders per CreateOrders call; 0 submits one by one with CreateOrder.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    json: bool,
    /// Also draw the latency distribution (CDF and latency over time) into this PNG.
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
}

fn parse_seconds(raw: &str) -> Result<std::time::Duration, String> {
    let seconds: f64 = raw
        .trim_end_matches('s')
        .parse()
        .map_err(|_| format!("`{raw}` is not a number of seconds (e.g. 30 or 2.5)"))?;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("`{raw}`: the duration must be more than 0 seconds"));
    }
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[derive(Debug, Args)]
struct SubmitArgs {
    /// OrderService URL.
    #[arg(
        long,
        env = "ORDER_SERVICE_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    addr: String,
    /// Order id.
    #[arg(long, required_unless_present = "order")]
    id: Option<String>,
    /// Single-item order: the item.
    #[arg(long, requires = "id")]
    item: Option<String>,
    /// Single-item order: the price in minor units.
    #[arg(long, requires = "id", allow_negative_numbers = true)]
    price: Option<i32>,
    /// Currency (ISO 4217); the server's default when not given.
    #[arg(long)]
    currency: Option<String>,
    /// A full order as JSON (see examples/orders/) instead of --id/--item/--price.
    #[arg(long, conflicts_with_all = ["id", "item", "price"])]
    order: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct GetArgs {
    /// CacheService URL.
    #[arg(
        long,
        env = "CACHE_SERVICE_URL",
        default_value = "http://127.0.0.1:50052"
    )]
    addr: String,
    /// Order id.
    #[arg(long)]
    id: String,
    /// Wait up to this long for the result, in ms (at most 30000).
    #[arg(long, default_value_t = 5000)]
    wait_ms: u32,
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Evaluates one order and prints the outcome as JSON, with fuel used and time.
    Run {
        #[command(flatten)]
        chain: ChainArgs,
        /// The order, as JSON (see examples/orders/).
        #[arg(long)]
        order: PathBuf,
    },
    /// Runs every NAME.json order in a directory and compares the outcome with
    /// NAME.expected.json; prints a pass/fail table and exits 1 on any failure.
    Test {
        #[command(flatten)]
        chain: ChainArgs,
        /// Directory of NAME.json orders and NAME.expected.json expectations. With
        /// --plugin, a config.toml there gives the plugin's config (--config overrides it).
        #[arg(long)]
        examples: PathBuf,
    },
    /// Times the chain on the orders of an examples directory, cycling through them.
    Bench {
        #[command(flatten)]
        chain: ChainArgs,
        /// Directory of NAME.json orders.
        #[arg(long)]
        examples: PathBuf,
        /// How many orders to evaluate.
        #[arg(long, default_value_t = 10_000)]
        count: usize,
        /// Print the figures as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deploys a plugin to the running pipeline (through the AdminService): it is checked
    /// (world, config, examples, smoke order) and goes live on every worker.
    Deploy {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// Its config, as KEY=VALUE (repeatable).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
        config: Vec<(String, String)>,
        /// Put it before this rule.
        #[arg(long, conflicts_with_all = ["after", "replace"])]
        before: Option<String>,
        /// Put it after this rule.
        #[arg(long, conflicts_with = "replace")]
        after: Option<String>,
        /// Replace this rule.
        #[arg(long)]
        replace: Option<String>,
        /// Instance isolation.
        #[arg(long, value_enum, default_value = "fresh")]
        isolation: IsolationArg,
        /// Examples (NAME.json + NAME.expected.json) the plugin must pass on its own first.
        #[arg(long)]
        examples: Option<PathBuf>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Shows the active ruleset of the running pipeline.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Shows every ruleset version, newest first.
    History {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Makes an earlier ruleset version active again.
    Activate {
        /// The version to activate.
        version: u64,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Activates the version that was active before the current one.
    Rollback {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Loads a plugin and prints its name, version, description, digest and size.
    Inspect {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// Which chain to use: one plugin, a ruleset file, or the default ruleset.
#[derive(Debug, Args)]
struct ChainArgs {
    /// A single plugin component (.wasm) to run as a chain of one.
    #[arg(long, conflicts_with = "ruleset")]
    plugin: Option<PathBuf>,
    /// A ruleset file (TOML); without --plugin or --ruleset, the default ruleset.
    #[arg(long)]
    ruleset: Option<PathBuf>,
    /// Config of the plugin given with --plugin, as KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value, requires = "plugin")]
    config: Vec<(String, String)>,
    /// Instance isolation of the plugin given with --plugin.
    #[arg(long, value_enum, default_value = "fresh", requires = "plugin")]
    isolation: IsolationArg,
    #[command(flatten)]
    limits: LimitArgs,
}

/// Where the AdminService is and how to authenticate.
#[derive(Debug, Args)]
struct AdminArgs {
    /// AdminService URL.
    #[arg(long, env = "ADMIN_URL", default_value = "http://127.0.0.1:50053")]
    admin_addr: String,
    /// Bearer token (ADMIN_TOKEN).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum IsolationArg {
    Fresh,
    Reuse,
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("`{raw}` is not KEY=VALUE")),
    }
}

/// Runs the command line `args` (program name first), writing to `out` and `err`;
/// returns the process exit code.
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let code = e.exit_code();
            let text = e.render().to_string();
            let _ = if code == 0 {
                write!(out, "{text}")
            } else {
                write!(err, "{text}")
            };
            return code;
        }
    };
    match execute(cli, out) {
        Ok(code) => code,
        Err(message) => {
            let _ = writeln!(err, "error: {message}");
            EXIT_USAGE
        }
    }
}

fn execute(cli: Cli, out: &mut dyn Write) -> Result<i32, String> {
    let command = match cli.command {
        Some(command) => command,
        None => {
            let run = RunOnly::try_parse_from(["order-pipeline"]).map_err(|e| e.to_string())?;
            Command::Run(run.config)
        }
    };
    let command = match command {
        Command::Run(config) => return serve(Role::All, &config),
        Command::OrderService(config) => return serve(Role::OrderService, &config),
        Command::Worker(config) => return serve(Role::Worker, &config),
        Command::CacheService(config) => return serve(Role::CacheService, &config),
        Command::Submit(args) => return runtime()?.block_on(submit(args, out)),
        Command::Get(args) => return runtime()?.block_on(get(args, out)),
        Command::Bench(args) => return runtime()?.block_on(load(args, out)),
        Command::Health(args) => return runtime()?.block_on(health(args, out)),
        Command::Plugin(command) => command,
    };
    match command {
        PluginCommand::Run { chain, order } => {
            let chain = build_chain(&chain, None)?;
            let order = read_order(&order)?;
            let evaluation = chain.evaluate(&order);
            let json = serde_json::to_string_pretty(&evaluation).map_err(|e| e.to_string())?;
            writeln!(out, "{json}").map_err(|e| e.to_string())?;
            Ok(EXIT_OK)
        }
        PluginCommand::Test { chain, examples } => {
            let chain = build_chain(&chain, Some(&examples))?;
            let loaded = runner::load_examples(&examples)
                .map_err(|e| format!("cannot read examples in {}: {e}", examples.display()))?;
            if loaded.is_empty() {
                return Err(format!(
                    "no NAME.json examples in {}; add orders with NAME.expected.json beside them",
                    examples.display()
                ));
            }
            let results = runner::run_examples(&chain, &loaded);
            let (_, failed) = runner::print_report(out, &results).map_err(|e| e.to_string())?;
            Ok(if failed == 0 {
                EXIT_OK
            } else {
                EXIT_TEST_FAILED
            })
        }
        PluginCommand::Bench {
            chain,
            examples,
            count,
            json,
        } => {
            let chain = build_chain(&chain, Some(&examples))?;
            let orders: Vec<Order> = runner::load_examples(&examples)
                .map_err(|e| format!("cannot read examples in {}: {e}", examples.display()))?
                .into_iter()
                .filter_map(|e| e.order.ok())
                .collect();
            if orders.is_empty() {
                return Err(format!("no valid orders in {}", examples.display()));
            }
            let report = runner::bench(&chain, &orders, count, count.min(1000));
            let text = if json {
                serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n"
            } else {
                report.summary()
            };
            write!(out, "{text}").map_err(|e| e.to_string())?;
            Ok(EXIT_OK)
        }
        PluginCommand::Deploy {
            plugin,
            config,
            before,
            after,
            replace,
            isolation,
            examples,
            admin,
        } => {
            use crate::proto::admin::{DeployRequest, Example, deploy_request::Position};
            let wasm = std::fs::read(&plugin)
                .map_err(|e| format!("cannot read {}: {e}", plugin.display()))?;
            let examples = match examples {
                Some(dir) => runner::load_examples(&dir)
                    .map_err(|e| format!("cannot read examples in {}: {e}", dir.display()))?
                    .into_iter()
                    .map(|e| {
                        let read = |suffix: &str| {
                            let path = dir.join(format!("{}{suffix}", e.name));
                            std::fs::read_to_string(&path)
                                .map_err(|err| format!("{}: {err}", path.display()))
                        };
                        Ok(Example {
                            order_json: read(".json")?,
                            expected_json: read(runner::EXPECTED_SUFFIX)?,
                            name: e.name,
                        })
                    })
                    .collect::<Result<Vec<_>, String>>()?,
                None => Vec::new(),
            };
            let request = DeployRequest {
                wasm,
                config: config.into_iter().collect(),
                position: before
                    .map(Position::Before)
                    .or(after.map(Position::After))
                    .or(replace.map(Position::Replace)),
                isolation: match isolation {
                    IsolationArg::Fresh => "fresh".into(),
                    IsolationArg::Reuse => "reuse".into(),
                },
                examples,
            };
            admin_call(&admin, out, |mut c| async move {
                c.deploy(request).await.map(|r| vec![r.into_inner()])
            })
        }
        PluginCommand::List { admin } => admin_call(&admin, out, |mut c| async move {
            c.active(crate::proto::admin::ActiveRequest {})
                .await
                .map(|r| vec![r.into_inner()])
        }),
        PluginCommand::History { admin } => admin_call(&admin, out, |mut c| async move {
            c.history(crate::proto::admin::HistoryRequest {})
                .await
                .map(|r| r.into_inner().versions)
        }),
        PluginCommand::Activate { version, admin } => admin_call(&admin, out, |mut c| async move {
            c.activate(crate::proto::admin::ActivateRequest { version })
                .await
                .map(|r| vec![r.into_inner()])
        }),
        PluginCommand::Rollback { admin } => admin_call(&admin, out, |mut c| async move {
            c.rollback(crate::proto::admin::RollbackRequest {})
                .await
                .map(|r| vec![r.into_inner()])
        }),
        PluginCommand::Inspect { plugin, limits } => {
            let engine = Engine::new(limits.limits()).map_err(|e| format!("{e:#}"))?;
            let bytes = std::fs::read(&plugin)
                .map_err(|e| format!("cannot read {}: {e}", plugin.display()))?;
            let loaded = engine
                .load(&bytes)
                .map_err(|e| format!("{}: {e}", plugin.display()))?;
            let json = serde_json::json!({
                "name": loaded.info().name,
                "version": loaded.info().version,
                "description": loaded.info().description,
                "digest": loaded.digest(),
                "size": loaded.size(),
            });
            writeln!(out, "{json:#}").map_err(|e| e.to_string())?;
            Ok(EXIT_OK)
        }
    }
}

type AdminClient = crate::proto::admin::admin_service_client::AdminServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// Adds `authorization: Bearer <token>` to every admin call.
#[derive(Clone)]
struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Connects to the AdminService, runs `call`, prints the rulesets it answers.
fn admin_call<F, Fut>(admin: &AdminArgs, out: &mut dyn Write, call: F) -> Result<i32, String>
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<crate::proto::admin::RulesetInfo>, tonic::Status>>,
{
    let token =
        match &admin.token {
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                "ADMIN_TOKEN has characters that cannot go in a header".to_string()
            })?),
            None => None,
        };
    let rulesets = runtime()?.block_on(async {
        let channel = tonic::transport::Channel::from_shared(admin.admin_addr.clone())
            .map_err(|e| format!("bad URL {}: {e}", admin.admin_addr))?
            .connect()
            .await
            .map_err(|e| format!("cannot reach the AdminService at {}: {e}", admin.admin_addr))?;
        let client =
            crate::proto::admin::admin_service_client::AdminServiceClient::with_interceptor(
                channel,
                BearerToken(token),
            );
        call(client)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })?;
    for ruleset in rulesets {
        let active = if ruleset.active { " (active)" } else { "" };
        writeln!(
            out,
            "version {}{active}: {}",
            ruleset.version, ruleset.reason
        )
        .map_err(|e| e.to_string())?;
        for (i, rule) in ruleset.rules.iter().enumerate() {
            let mut config: Vec<String> = rule
                .config
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            config.sort();
            writeln!(
                out,
                "  {}. {} {} {} {} {}",
                i + 1,
                rule.name,
                rule.version,
                &rule.digest[..rule.digest.len().min(12)],
                rule.isolation,
                config.join(" ")
            )
            .map_err(|e| e.to_string())?;
        }
    }
    Ok(EXIT_OK)
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// Runs `role` until ctrl-c or SIGTERM, then shuts down gracefully.
fn serve(role: Role, config: &Config) -> Result<i32, String> {
    runtime()?.block_on(async {
        let running = app::start(role, config)
            .await
            .map_err(|e| format!("{e:#}"))?;
        running
            .run_until(shutdown_signal())
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok(EXIT_OK)
    })
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

async fn submit(args: SubmitArgs, out: &mut dyn Write) -> Result<i32, String> {
    let request = match &args.order {
        Some(path) => crate::api::convert::request_from_order(&read_order(path)?),
        None => crate::proto::OrderRequest {
            id: args.id.clone().unwrap_or_default(),
            item: args.item.clone().unwrap_or_default(),
            price: args.price.unwrap_or_default(),
            currency: args.currency.clone().unwrap_or_default(),
            ..Default::default()
        },
    };
    let mut client =
        crate::proto::order_service_client::OrderServiceClient::connect(args.addr.clone())
            .await
            .map_err(|e| format!("cannot reach the OrderService at {}: {e}", args.addr))?;
    let response = client
        .create_order(request)
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    writeln!(
        out,
        "{}",
        serde_json::json!({"id": response.id, "status": response.status})
    )
    .map_err(|e| e.to_string())?;
    Ok(EXIT_OK)
}

async fn health(args: HealthArgs, out: &mut dyn Write) -> Result<i32, String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    let channel = tonic::transport::Channel::from_shared(args.addr.clone())
        .map_err(|e| format!("bad URL {}: {e}", args.addr))?
        .connect_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("cannot reach {}: {e}", args.addr))?;
    let answer = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service,
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let status = answer.status();
    writeln!(out, "{}", status.as_str_name()).map_err(|e| e.to_string())?;
    Ok(if status == ServingStatus::Serving {
        EXIT_OK
    } else {
        EXIT_TEST_FAILED
    })
}

async fn load(args: BenchArgs, out: &mut dyn Write) -> Result<i32, String> {
    use std::io::IsTerminal as _;
    if let Some(path) = &args.plot
        && path.extension().and_then(|e| e.to_str()) != Some("png")
    {
        return Err(format!(
            "--plot {}: the plot is a PNG; give a file name ending in .png",
            path.display()
        ));
    }
    if let Some(rate) = args.rate
        && !(rate.is_finite() && rate > 0.0)
    {
        return Err(format!(
            "--rate {rate}: give a positive number of orders per second"
        ));
    }
    let plan = crate::bench::BenchPlan {
        order_url: args.order_addr,
        cache_url: args.cache_addr,
        orders: args.orders.unwrap_or(match args.duration {
            Some(_) => usize::MAX,
            None => 10_000,
        }),
        concurrency: args.concurrency,
        batch: args.batch,
        rate: args.rate,
        duration: args.duration,
    };
    let total = plan.orders;
    let duration = plan.duration;
    let tty = std::io::stderr().is_terminal();
    let started = std::time::Instant::now();
    let last = std::sync::Mutex::new(started);
    let report = crate::bench::run(&plan, move |done| {
        let mut last = last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tty && (last.elapsed() >= std::time::Duration::from_millis(100) || done >= total) {
            *last = std::time::Instant::now();
            eprint!(
                "\r{}",
                crate::bench::progress_line(done, total, started.elapsed(), duration)
            );
        }
    })
    .await
    .map_err(|e| format!("{e:#}"))?;
    if tty {
        eprintln!();
    }
    let text = if args.json {
        serde_json::to_string_pretty(&report).map_err(|e| e.to_string())? + "\n"
    } else {
        report.summary()
    };
    write!(out, "{text}").map_err(|e| e.to_string())?;
    if let Some(path) = &args.plot {
        crate::plot::latency_png(path, &report).map_err(|e| format!("{e:#}"))?;
        if !args.json {
            writeln!(out, "latency plot: {}", path.display()).map_err(|e| e.to_string())?;
        }
    }
    Ok(if report.errors == 0 {
        EXIT_OK
    } else {
        EXIT_TEST_FAILED
    })
}

async fn get(args: GetArgs, out: &mut dyn Write) -> Result<i32, String> {
    let mut client =
        crate::proto::cache_service_client::CacheServiceClient::connect(args.addr.clone())
            .await
            .map_err(|e| format!("cannot reach the CacheService at {}: {e}", args.addr))?;
    let response = client
        .get_order_result(crate::proto::ResultRequest {
            id: args.id.clone(),
            wait_ms: args.wait_ms,
        })
        .await
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
        .into_inner();
    let json = serde_json::to_string_pretty(&result_json(&response)).map_err(|e| e.to_string())?;
    writeln!(out, "{json}").map_err(|e| e.to_string())?;
    Ok(EXIT_OK)
}

/// A `ResultResponse` as JSON for people.
fn result_json(r: &crate::proto::ResultResponse) -> serde_json::Value {
    let totals = r.totals.unwrap_or_default();
    serde_json::json!({
        "id": r.id,
        "status": r.status,
        "item": r.item,
        "price": r.price,
        "currency": r.currency,
        "totals": {
            "subtotal": totals.subtotal,
            "discounts": totals.discounts,
            "surcharges": totals.surcharges,
            "tax": totals.tax,
            "total": totals.total,
        },
        "adjustments": r.adjustments.iter().map(|a| serde_json::json!({
            "rule": a.rule, "kind": a.kind, "label": a.label, "amount": a.amount,
        })).collect::<Vec<_>>(),
        "reasons": r.reasons.iter().map(|x| serde_json::json!({
            "rule": x.rule, "code": x.code, "message": x.message,
        })).collect::<Vec<_>>(),
        "rules": r.rules.iter().map(|x| serde_json::json!({
            "name": x.name, "version": x.version, "digest": x.digest, "outcome": x.outcome,
            "fuel_used": x.fuel_used, "duration_us": x.duration_us,
        })).collect::<Vec<_>>(),
        "error": r.error,
        "attempts": r.attempts,
        "ruleset_version": r.ruleset_version,
        "processed_by": r.processed_by,
        "processed_at_unix_ms": r.processed_at_unix_ms,
    })
}

/// The chain the arguments name. With --plugin, `examples_dir/config.toml` (if any) gives
/// the config, overridden key by key by --config.
fn build_chain(args: &ChainArgs, examples_dir: Option<&Path>) -> Result<RuleChain, String> {
    let engine = Engine::new(args.limits.limits()).map_err(|e| format!("{e:#}"))?;
    if let Some(path) = &args.plugin {
        let plugin = ruleset::load_plugin(&engine, &path.to_string_lossy(), None)
            .map_err(|e| e.to_string())?;
        let mut config = match examples_dir {
            Some(dir) => runner::load_examples_config(dir)?,
            None => Vec::new(),
        };
        for (key, value) in &args.config {
            config.retain(|(k, _)| k != key);
            config.push((key.clone(), value.clone()));
        }
        let isolation = match args.isolation {
            IsolationArg::Fresh => Isolation::Fresh,
            IsolationArg::Reuse => Isolation::Reuse,
        };
        return RuleChain::new(vec![RuleSpec {
            plugin,
            config,
            isolation,
        }])
        .map_err(|e| e.to_string());
    }
    match &args.ruleset {
        Some(path) => ruleset::load_file(&engine, path),
        None => ruleset::load_default(&engine),
    }
    .map_err(|e| e.to_string())
}

fn read_order(path: &Path) -> Result<Order, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a valid order: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_parsing() {
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=x").is_err());
    }

    #[test]
    fn usage_errors_exit_2_with_a_message() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run(["order-pipeline", "plugin", "test"], &mut out, &mut err);
        assert_eq!(code, EXIT_USAGE);
        assert!(String::from_utf8_lossy(&err).contains("--examples"));
    }

    #[test]
    fn config_requires_a_plugin() {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let args = [
            "order-pipeline",
            "plugin",
            "run",
            "--order",
            "o.json",
            "--config",
            "a=b",
        ];
        assert_eq!(run(args, &mut out, &mut err), EXIT_USAGE);
    }
}
