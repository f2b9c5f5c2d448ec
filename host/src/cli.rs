//! The command line: `order-pipeline plugin run|test|bench|inspect`. Kept in the library
//! (with the output streams passed in) so that tests can run commands and check their
//! output and exit codes.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::engine::{Engine, Isolation, Limits, RuleChain, RuleSpec, limits};
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
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Tools for rule plugins: run, test, benchmark and inspect them.
    #[command(subcommand)]
    Plugin(PluginCommand),
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

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum IsolationArg {
    Fresh,
    Reuse,
}

/// Limits every plugin call is held to.
#[derive(Debug, Args)]
struct LimitArgs {
    /// Fuel (about one unit per wasm instruction) per plugin call.
    #[arg(long, env = "PLUGIN_FUEL", default_value_t = limits::DEFAULT_FUEL)]
    fuel: u64,
    /// Wall-clock deadline per plugin call, in milliseconds.
    #[arg(long, env = "PLUGIN_DEADLINE_MS", default_value_t = limits::DEFAULT_DEADLINE.as_millis() as u64)]
    deadline_ms: u64,
    /// Memory cap per plugin instance, in MiB.
    #[arg(long, env = "PLUGIN_MEMORY_MIB", default_value_t = limits::DEFAULT_MEMORY_BYTES >> 20)]
    memory_mib: usize,
}

impl LimitArgs {
    fn limits(&self) -> Limits {
        Limits {
            fuel: self.fuel,
            deadline: Duration::from_millis(self.deadline_ms),
            memory_bytes: self.memory_mib.saturating_mul(1 << 20),
            ..Limits::default()
        }
    }
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
    let Command::Plugin(command) = cli.command;
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
