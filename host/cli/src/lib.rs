//! The command line: the pipeline roles (`run`, the default, and `order-service`,
//! `worker`, `cache-service`), the `submit`/`get` clients, and the plugin tools
//! (`plugin run|test|bench|inspect`). Kept in the library (with the output streams passed
//! in) so that tests can run commands and check their output and exit codes.

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use order_pipeline::app::Role;

mod commands;
mod config_args;
mod loadgen;
mod plugin_args;
mod tls;

use config_args::{ConfigArgs, LimitArgs};
use plugin_args::PluginCommand;

use commands::client::{get, health, load, submit};
pub use commands::serve::shutdown_signal;
use commands::serve::{runtime, serve};

/// Why a command failed: the message printed after `error: ` (exit code 2). Any error
/// that displays converts into it, so commands use `?` on their own error types.
#[derive(Debug)]
pub(crate) struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

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
    /// Log format on stderr: `text`, or `json` for machines (`RUST_LOG` filters).
    #[arg(long, global = true, env = "LOG_FORMAT", value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs go to stderr; `RUST_LOG` filters (default `info`).
fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// The pipeline's configuration alone, for `order-pipeline` without a command.
#[derive(Debug, Parser)]
struct RunOnly {
    #[command(flatten)]
    config: ConfigArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs every role in one process (the default). Without KAFKA_BROKERS and REDIS_ADDR
    /// it uses the embedded log and store in DATA_DIR.
    Run(ConfigArgs),
    /// Runs the OrderService (gRPC, ORDER_SERVICE_ADDR) publishing to Kafka.
    OrderService(ConfigArgs),
    /// Runs a worker: consumes Kafka, applies the ruleset, writes results to Redis.
    Worker(ConfigArgs),
    /// Runs the CacheService (gRPC, CACHE_SERVICE_ADDR) reading results from Redis.
    CacheService(ConfigArgs),
    /// Runs the AdminService (ADMIN_ADDR) and the rules supervisor without a worker: the
    /// one process that writes the registry, for workers started with
    /// WORKER_ADMIN=false (needs REDIS_ADDR).
    Admin(ConfigArgs),
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
    /// Decides orders again with a chosen ruleset version (through the AdminService):
    /// by id, time range, Kafka offsets or the dead letters; into a scratch namespace
    /// with a diff against the stored results, or replacing them with --overwrite.
    Replay(commands::replay::ReplayArgs),
    /// The dead letters: list, inspect, replay.
    #[command(subcommand)]
    Dlq(commands::replay::DlqCommand),
    /// The audit trail of the AdminService: every admin call and automatic action (who,
    /// what, how it ended), oldest first; exits 1 when its hash chain is broken.
    Audit(commands::audit::AuditArgs),
}

#[derive(Debug, Args)]
struct HealthArgs {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    addr: String,
    /// Service to ask about; empty asks about the server as a whole.
    #[arg(long, default_value = "")]
    service: String,
    /// TLS.
    #[command(flatten)]
    tls: tls::TlsArgs,
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
    /// TrueType font of the plot's labels [default: the first of the usual system fonts].
    #[arg(long, env = "PLOT_FONT", value_name = "FONT.ttf")]
    plot_font: Option<PathBuf>,
    /// TLS.
    #[command(flatten)]
    tls: tls::TlsArgs,
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
    /// TLS.
    #[command(flatten)]
    tls: tls::TlsArgs,
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
    /// TLS.
    #[command(flatten)]
    tls: tls::TlsArgs,
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
    #[arg(long, value_enum, default_value = "reuse", requires = "plugin")]
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
    /// TLS.
    #[command(flatten)]
    tls: tls::TlsArgs,
}

/// `--isolation`: clap's side of [`Isolation`](order_rules_engine::Isolation).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum IsolationArg {
    Fresh,
    Reuse,
}

impl From<IsolationArg> for order_rules_engine::Isolation {
    fn from(arg: IsolationArg) -> Self {
        match arg {
            IsolationArg::Fresh => Self::Fresh,
            IsolationArg::Reuse => Self::Reuse,
        }
    }
}

pub(crate) fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    match raw.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_string(), value.to_string()))
        }
        _ => Err(format!("`{raw}` is not KEY=VALUE")),
    }
}

/// Runs the command line `args` (program name first), writing to `out` and `err`;
/// returns the process exit code. Sets up no logging (tests call it many times): the
/// binary calls [`main`].
pub fn run<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(args, out, err, false)
}

/// [`run`] for the binary: logs go to stderr as `--log-format` (`LOG_FORMAT`) says.
pub fn main<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    run_with(args, out, err, true)
}

fn run_with<I, T>(args: I, out: &mut dyn Write, err: &mut dyn Write, logging: bool) -> i32
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
    if logging {
        init_tracing(cli.log_format);
    }
    match execute(cli, out) {
        Ok(code) => code,
        Err(Failure(message)) => {
            let _ = writeln!(err, "error: {message}");
            EXIT_USAGE
        }
    }
}

fn execute(cli: Cli, out: &mut dyn Write) -> Result<i32, Failure> {
    let command = match cli.command {
        Some(command) => command,
        None => {
            let run = RunOnly::try_parse_from(["order-pipeline"])?;
            Command::Run(run.config)
        }
    };
    let command = match command {
        Command::Run(config) => return serve(Role::All, config),
        Command::OrderService(config) => return serve(Role::OrderService, config),
        Command::Worker(config) => return serve(Role::Worker, config),
        Command::CacheService(config) => return serve(Role::CacheService, config),
        Command::Admin(config) => return serve(Role::Admin, config),
        Command::Submit(args) => return runtime()?.block_on(submit(args, out)),
        Command::Get(args) => return runtime()?.block_on(get(args, out)),
        Command::Bench(args) => return runtime()?.block_on(load(args, out)),
        Command::Health(args) => return runtime()?.block_on(health(args, out)),
        Command::Plugin(command) => command,
        Command::Replay(args) => return commands::replay::replay(args, out),
        Command::Dlq(command) => return commands::replay::dlq(command, out),
        Command::Audit(args) => return commands::audit::audit(args, out),
    };
    commands::plugin::run(command, out)
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
        // Refused for the missing --plugin (not for o.json, which does not exist either).
        let err = String::from_utf8_lossy(&err);
        assert!(err.contains("--plugin"), "{err}");
        assert!(!err.contains("o.json"), "{err}");
    }
}
