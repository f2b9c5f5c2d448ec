//! The arguments of the `plugin` subcommands.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use crate::commands;
use crate::config_args::LimitArgs;
use crate::shared_args::{AdminArgs, ChainArgs, IsolationArg, RuleLimitArgs, parse_key_value};

#[derive(Debug, Subcommand)]
pub(crate) enum PluginCommand {
    /// Evaluates one order and prints the outcome as JSON, with fuel used and time.
    Run(RunArgs),
    /// Runs every NAME.json order in a directory and compares the outcome with
    /// NAME.expected.json; prints a pass/fail table and exits 1 on any failure.
    Test(TestArgs),
    /// Times the chain on the orders of an examples directory, cycling through them.
    Bench(BenchArgs),
    /// Deploys a plugin to the running pipeline (through the AdminService): it is checked
    /// (world, config, examples, smoke order) and goes live on every worker.
    Deploy(DeployArgs),
    /// Makes an Ed25519 signing key: ID.key (private, 0600; keep it off the servers) and
    /// ID.pub, and prints the trust file entry that lets workers accept its signatures.
    Keygen {
        /// The key's id: signatures name it, the trust file lists it (e.g. team-2026).
        id: String,
        /// Where to write the two files.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Signs a plugin for deploy: writes PLUGIN.sig, a signature over its digest, its
    /// rule name, and the config, limits and isolation it will be deployed with (give
    /// the same --config, --examples, --isolation and limit flags as to `plugin deploy`),
    /// valid for a window.
    Sign(SignArgs),
    /// Shadow runs: a candidate ruleset decides every order too, off the client's path.
    Shadow {
        #[command(subcommand)]
        command: commands::rollout::ShadowCommand,
    },
    /// Activates the canary's candidate and ends the canary.
    Promote {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Fetches a production order and the plugins of the version that decided it, and
    /// decides it here under that version and under candidate plugins.
    Replay(commands::replay::PluginReplayArgs),
    /// The rollout in progress: shadow run, canary, and why the last canary ended.
    Rollout {
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
    /// Lists the live workers (from their heartbeats): the ruleset version each runs,
    /// flagged when it is not the active one, why it could not switch, orders processed,
    /// and each rule's evaluations, failures, p50/p99 duration and fuel. Exits 1 when a
    /// worker is not on the active version, or none is live.
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Loads a plugin and prints its name, version, description, digest and size, and
    /// the examples and config bundled in it.
    Inspect(InspectArgs),
    /// Writes a ready rule project (the WIT, a build command, examples and a README) from
    /// the templates built into this binary; it builds and passes `plugin test` as
    /// written.
    New {
        /// The rule's name, kebab-case (also the project's).
        name: String,
        /// The language to write it in.
        #[arg(long, value_enum)]
        lang: commands::new::Lang,
        /// Where to write it (default: ./NAME); must not exist or be empty.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Embeds examples (and DIR/config.toml, the config they were written for) in a
    /// custom section of the plugin, after checking that they pass. The deploy gate runs
    /// them on deploy, activate and rollback. Writes a new file: the bytes, and so the
    /// digest, change.
    Bundle {
        /// The plugin component (.wasm).
        plugin: PathBuf,
        /// Directory of NAME.json orders and NAME.expected.json expectations.
        #[arg(long)]
        examples: PathBuf,
        /// Where to write the bundled plugin (default: NAME.bundled.wasm beside it).
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// `plugin run --profile`: a guest profile of one rule's evaluation.
#[derive(Debug, Clone, Args)]
pub(crate) struct ProfileArgs {
    /// Write a profile of the rule's `evaluate` (its stack sampled while it runs) to
    /// FILE, in the Firefox profiler's format: open it at https://profiler.firefox.com
    /// or https://www.speedscope.app.
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// The rule to profile (needed when the chain has more than one).
    #[arg(long, value_name = "NAME", requires = "profile")]
    pub profile_rule: Option<String>,
    /// Microseconds between two samples (1 to 10000).
    #[arg(
        long,
        value_name = "US",
        default_value_t = order_rules_engine::profile::DEFAULT_INTERVAL.as_micros() as u64,
        requires = "profile",
        value_parser = clap::value_parser!(u64).range(1..=10_000)
    )]
    pub profile_interval_us: u64,
    /// Evaluate the order this many times (each in a fresh instance) into the one
    /// profile: a call of a fast rule can be shorter than one interval.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 1,
        requires = "profile",
        value_parser = clap::value_parser!(u32).range(1..=100_000)
    )]
    pub profile_runs: u32,
}

// The arguments of `plugin bench` (no doc comment: the variant's is its help).
#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// Directory of NAME.json orders.
    #[arg(long)]
    pub(crate) examples: PathBuf,
    /// How many orders to evaluate.
    #[arg(long, default_value_t = 10_000)]
    pub(crate) count: usize,
    /// Print the figures as JSON.
    #[arg(long)]
    pub(crate) json: bool,
    /// Instead, time the parts of a fresh instance of each rule (store and WASI
    /// context, instantiate, configure, evaluate, drop) on the first order, COUNT
    /// times, and print their medians.
    #[arg(long)]
    pub(crate) breakdown: bool,
}

// The arguments of `plugin deploy` (no doc comment: the variant's is its help).
#[derive(Debug, Args)]
pub(crate) struct DeployArgs {
    /// The plugin component (.wasm).
    pub(crate) plugin: PathBuf,
    /// Its config, as KEY=VALUE (repeatable).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) config: Vec<(String, String)>,
    /// Put it before this rule.
    #[arg(long, conflicts_with_all = ["after", "replace"])]
    pub(crate) before: Option<String>,
    /// Put it after this rule.
    #[arg(long, conflicts_with = "replace")]
    pub(crate) after: Option<String>,
    /// Replace this rule.
    #[arg(long)]
    pub(crate) replace: Option<String>,
    /// Instance isolation.
    #[arg(long, value_enum, default_value = "reuse")]
    pub(crate) isolation: IsolationArg,
    /// Instead of activating the new ruleset, run it as a canary deciding this
    /// percentage of the orders (a stable hash of the order id); end it with
    /// `plugin promote` or `plugin rollback`.
    #[arg(long, value_name = "PERCENT")]
    pub(crate) canary: Option<f64>,
    /// The canary ends by itself when its share of failed or rejected orders exceeds
    /// the live version's by more than this many percentage points.
    #[arg(
        long,
        value_name = "POINTS",
        default_value_t = 5.0,
        requires = "canary"
    )]
    pub(crate) canary_margin: f64,
    /// Examples (NAME.json + NAME.expected.json) the plugin must pass on its own first;
    /// a config.toml there gives the plugin's config (--config overrides it), as for
    /// `plugin test`.
    #[arg(long)]
    pub(crate) examples: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) limits: RuleLimitArgs,
    /// Its signature file (`plugin sign`); default: PLUGIN.sig when it exists. Needed
    /// when the workers have a trust file (PLUGIN_TRUST_FILE).
    #[arg(long, value_name = "FILE")]
    pub(crate) signature: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) admin: AdminArgs,
}

// The arguments of `plugin sign` (no doc comment: the variant's is its help).
#[derive(Debug, Args)]
pub(crate) struct SignArgs {
    /// The plugin component (.wasm).
    pub(crate) plugin: PathBuf,
    /// The private key (`plugin keygen`'s ID.key).
    #[arg(long, value_name = "FILE")]
    pub(crate) key: PathBuf,
    /// The key's id in the trust file (default: the key file's name without .key).
    #[arg(long)]
    pub(crate) key_id: Option<String>,
    /// Its config, as KEY=VALUE (repeatable), as it will be deployed.
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub(crate) config: Vec<(String, String)>,
    /// The examples directory whose config.toml gives config (--config overrides it),
    /// as for `plugin deploy --examples`.
    #[arg(long)]
    pub(crate) examples: Option<PathBuf>,
    /// Instance isolation, as it will be deployed.
    #[arg(long, value_enum, default_value = "reuse")]
    pub(crate) isolation: IsolationArg,
    #[command(flatten)]
    pub(crate) limits: RuleLimitArgs,
    /// How long the signature is valid from now (e.g. 90d, 12h); workers refuse the
    /// rule after that, at deploy and at every load.
    #[arg(long, default_value = "365d", value_parser = humantime::parse_duration)]
    pub(crate) valid_for: std::time::Duration,
    /// Where to write the signature (default: PLUGIN.sig).
    #[arg(long, short)]
    pub(crate) output: Option<PathBuf>,
}

// The arguments of `plugin run` (no doc comment: the variant's is its help).
#[derive(Debug, Args)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// The order, as JSON (see examples/orders/).
    #[arg(long)]
    pub(crate) order: PathBuf,
    #[command(flatten)]
    pub(crate) profile: ProfileArgs,
}

// The arguments of `plugin test` (no doc comment: the variant's is its help).
#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    #[command(flatten)]
    pub(crate) chain: ChainArgs,
    /// Directory of NAME.json orders and NAME.expected.json expectations. With
    /// --plugin, a config.toml there gives the plugin's config (--config overrides it).
    #[arg(long)]
    pub(crate) examples: PathBuf,
}

// The arguments of `plugin inspect` (no doc comment: the variant's is its help).
#[derive(Debug, Args)]
pub(crate) struct InspectArgs {
    /// The plugin component (.wasm).
    pub(crate) plugin: PathBuf,
    #[command(flatten)]
    pub(crate) limits: LimitArgs,
}
