//! The command line as clap parses it ([`Cli`]) and its dispatch to the commands.

use std::ffi::OsString;
use std::io::Write;

use clap::{Parser, Subcommand};

use order_pipeline::app::Role;

use crate::commands;
use crate::commands::client::{
    BenchArgs, GetArgs, HealthArgs, SubmitArgs, get, health, load, submit,
};
use crate::commands::plugin::args::PluginCommand;
use crate::commands::serve::{runtime, serve};
use crate::config_args::ConfigArgs;
use crate::exit::{EXIT_USAGE, Failure};

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
    use crate::shared_args::parse_key_value;

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
