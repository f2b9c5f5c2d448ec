//! Arguments that several commands take: where the AdminService is, which chain to run,
//! a rule's own limits, `--isolation`, `KEY=VALUE`.

use std::path::PathBuf;

use clap::Args;
use order_pipeline::proto::admin;

use crate::config_args::LimitArgs;
use crate::tls;

/// Which chain to use: one plugin, a ruleset file, or the default ruleset.
#[derive(Debug, Args)]
pub(crate) struct ChainArgs {
    /// A single plugin component (.wasm) to run as a chain of one.
    #[arg(long, conflicts_with = "ruleset")]
    pub(crate) plugin: Option<PathBuf>,
    /// A ruleset file (TOML); without --plugin or --ruleset, the default ruleset.
    #[arg(long)]
    pub(crate) ruleset: Option<PathBuf>,
    /// Config of the plugin given with --plugin, as KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value, requires = "plugin")]
    pub(crate) config: Vec<(String, String)>,
    /// Instance isolation of the plugin given with --plugin.
    #[arg(long, value_enum, default_value = "reuse", requires = "plugin")]
    pub(crate) isolation: IsolationArg,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}

/// Where the AdminService is and how to authenticate.
#[derive(Debug, Args)]
pub(crate) struct AdminArgs {
    /// AdminService URL.
    #[arg(long, env = "ADMIN_URL", default_value = "http://127.0.0.1:50053")]
    pub(crate) admin_addr: String,
    /// Bearer token (ADMIN_TOKEN).
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// TLS.
    #[command(flatten)]
    pub(crate) tls: tls::TlsArgs,
}

/// `--isolation`: clap's side of [`Isolation`](order_rules_engine::Isolation).
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum IsolationArg {
    /// A fresh instance per call.
    Fresh,
    /// Instances reused between calls, checked.
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

/// One rule's own limits at deploy, in place of the workers' defaults (an interpreter
/// guest, JavaScript or Python, needs more fuel than a Rust rule).
#[derive(Debug, Clone, Copy, Args)]
pub(crate) struct RuleLimitArgs {
    /// This rule's memory cap per instance, MiB, 2 to 1024 (default: the workers'
    /// PLUGIN_MEMORY_MIB).
    #[arg(long, value_name = "MIB")]
    pub memory_mib: Option<u32>,
    /// This rule's fuel per call (default: the workers' PLUGIN_FUEL).
    #[arg(long)]
    pub fuel: Option<u64>,
    /// This rule's deadline per call, milliseconds, 5 to 10000 (default: the workers'
    /// PLUGIN_DEADLINE_MS).
    #[arg(long, value_name = "MS")]
    pub deadline_ms: Option<u64>,
    /// Fuel that grows with the order: each line adds this percentage of the rule's fuel
    /// to an evaluation's budget, 1 to 10000 (e.g. 5: a 20-line order gets twice the fuel).
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub fuel_per_line_percent: Option<u32>,
    /// The most an evaluation's fuel grows to, as a multiple of the rule's fuel, 1 to 1000
    /// (default 10 with --fuel-per-line-percent).
    #[arg(long, value_name = "TIMES", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub fuel_max_scale: Option<u32>,
}

impl RuleLimitArgs {
    /// As the AdminService takes them (none given: unset).
    pub(crate) fn request(self) -> Option<admin::RuleLimits> {
        let given = self.memory_mib.is_some()
            || self.fuel.is_some()
            || self.deadline_ms.is_some()
            || self.fuel_per_line_percent.is_some()
            || self.fuel_max_scale.is_some();
        given.then(|| admin::RuleLimits {
            memory_mib: self.memory_mib.unwrap_or(0),
            fuel: self.fuel.unwrap_or(0),
            deadline_ms: self.deadline_ms.unwrap_or(0),
            fuel_per_line_percent: self.fuel_per_line_percent.unwrap_or(0),
            fuel_max_scale: self.fuel_max_scale.unwrap_or(0),
        })
    }
}
