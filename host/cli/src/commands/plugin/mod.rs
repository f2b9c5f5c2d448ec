//! `plugin run|test|bench|inspect|bundle` (the plugin author's tools, no server) and the admin
//! calls `plugin deploy|list|history|activate|rollback`.

pub(crate) mod args;

use std::io::Write;
use std::path::Path;

use order_builtin_rules as builtin_rules;
use order_pipeline::proto;
use order_rules_engine::bundle::{Bundle, BundledExample};
use order_rules_engine::{Engine, Isolation, Order, RuleChain, RuleSpec, runner};

use order_rules_engine::RuleLimits;

use super::admin::admin_call;
use crate::exit::{EXIT_OK, EXIT_TEST_FAILED, Failure};
use crate::shared_args::ChainArgs;
use args::{BenchArgs, DeployArgs, InspectArgs, PluginCommand, RunArgs, TestArgs};

/// Runs one `plugin` subcommand.
pub(crate) fn run(command: PluginCommand, out: &mut dyn Write) -> Result<i32, Failure> {
    match command {
        PluginCommand::Run(args) => run_order(args, out),
        PluginCommand::Test(args) => test(args, out),
        PluginCommand::Bench(args) => bench(args, out),
        PluginCommand::Deploy(args) => deploy(args, out),
        PluginCommand::List { admin } => admin_call(&admin, out, |mut c| async move {
            c.active(proto::admin::ActiveRequest {})
                .await
                .map(|r| vec![r.into_inner()])
        }),
        PluginCommand::History { admin } => admin_call(&admin, out, |mut c| async move {
            c.history(proto::admin::HistoryRequest {})
                .await
                .map(|r| r.into_inner().versions)
        }),
        PluginCommand::Activate { version, admin } => admin_call(&admin, out, |mut c| async move {
            c.activate(proto::admin::ActivateRequest { version })
                .await
                .map(|r| vec![r.into_inner()])
        }),
        PluginCommand::Status { admin } => super::admin::workers(&admin, out),
        PluginCommand::Shadow { command } => super::rollout::shadow(command, out),
        PluginCommand::Replay(args) => super::replay::plugin_replay(args, out),
        PluginCommand::Promote { admin } => admin_call(&admin, out, |mut c| async move {
            c.promote(proto::admin::PromoteRequest {})
                .await
                .map(|r| vec![r.into_inner()])
        }),
        PluginCommand::Rollout { admin } => {
            super::rollout::rollout_call(&admin, out, |mut c| async move {
                c.rollout(proto::admin::RolloutRequest {})
                    .await
                    .map(tonic::Response::into_inner)
            })
        }
        PluginCommand::Rollback { admin } => admin_call(&admin, out, |mut c| async move {
            c.rollback(proto::admin::RollbackRequest {})
                .await
                .map(|r| vec![r.into_inner()])
        }),
        PluginCommand::New { name, lang, dir } => super::new::new(&name, lang, dir, out),
        PluginCommand::Inspect(args) => inspect(args, out),
        PluginCommand::Bundle {
            plugin,
            examples,
            output,
            limits,
        } => bundle(&plugin, &examples, output, &limits, out),
        PluginCommand::Keygen { id, dir } => super::signing::keygen(&id, &dir, out),
        PluginCommand::Sign(args) => {
            let config = deploy_config(args.config, args.examples.as_deref())?;
            super::signing::sign(
                &args.plugin,
                &args.key,
                args.key_id,
                &config,
                args.isolation.into(),
                args.limits,
                args.valid_for,
                args.output,
                out,
            )
        }
    }
}

/// `plugin run`.
fn run_order(args: RunArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let RunArgs {
        chain,
        order,
        profile,
    } = args;
    let chain = build_chain(&chain, None)?;
    let order = read_order(&order)?;
    let evaluation = match &profile.profile {
        None => chain.evaluate(&order),
        Some(file) => profiled(&chain, &order, &profile, file)?,
    };
    let json = serde_json::to_string_pretty(&evaluation)?;
    writeln!(out, "{json}")?;
    Ok(EXIT_OK)
}

/// `plugin test`.
fn test(args: TestArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let TestArgs { chain, examples } = args;
    let chain = build_chain(&chain, Some(&examples))?;
    let loaded = read_examples(&examples)?;
    if loaded.is_empty() {
        return Err(format!(
            "no NAME.json examples in {}; add orders with NAME.expected.json beside them",
            examples.display()
        )
        .into());
    }
    let results = runner::run_examples(&chain, &loaded);
    let (_, failed) = runner::print_report(out, &results)?;
    Ok(if failed == 0 {
        EXIT_OK
    } else {
        EXIT_TEST_FAILED
    })
}

/// `plugin bench`.
fn bench(args: BenchArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let BenchArgs {
        chain,
        examples,
        count,
        json,
        breakdown,
    } = args;
    let chain = build_chain(&chain, Some(&examples))?;
    let orders: Vec<Order> = read_examples(&examples)?
        .into_iter()
        .filter_map(|e| e.order.ok())
        .collect();
    if orders.is_empty() {
        return Err(format!("no valid orders in {}", examples.display()).into());
    }
    if breakdown {
        return print_breakdown(&chain, &orders[0], count, json, out);
    }
    let report = runner::bench(&chain, &orders, count, count.min(1000));
    let text = if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        report.summary()
    };
    write!(out, "{text}")?;
    Ok(EXIT_OK)
}

/// `plugin bench --breakdown`: the parts of a fresh instance of each rule.
fn print_breakdown(
    chain: &RuleChain,
    order: &Order,
    count: usize,
    json: bool,
    out: &mut dyn Write,
) -> Result<i32, Failure> {
    let costs = chain.fresh_costs(order, count)?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&costs)?)?;
        return Ok(EXIT_OK);
    }
    writeln!(
        out,
        "fresh instance, median µs over {count} rounds:\n{:<24} {:>7} {:>12} {:>10} {:>9} {:>6} {:>7}",
        "rule", "store", "instantiate", "configure", "evaluate", "drop", "total"
    )?;
    for c in &costs {
        writeln!(
            out,
            "{:<24} {:>7.2} {:>12.2} {:>10.2} {:>9.2} {:>6.2} {:>7.2}",
            c.rule,
            c.store_us,
            c.instantiate_us,
            c.configure_us,
            c.evaluate_us,
            c.drop_us,
            c.total_us
        )?;
    }
    Ok(EXIT_OK)
}

/// `plugin deploy`.
fn deploy(args: DeployArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    use proto::admin::{DeployRequest, deploy_request::Position};
    let DeployArgs {
        plugin,
        config,
        before,
        after,
        replace,
        isolation,
        examples,
        canary,
        canary_margin,
        limits,
        signature,
        admin,
    } = args;
    let wasm =
        std::fs::read(&plugin).map_err(|e| format!("cannot read {}: {e}", plugin.display()))?;
    let config = deploy_config(config, examples.as_deref())?;
    let signature = super::signing::deploy_signature(
        &plugin,
        signature.as_deref(),
        &wasm,
        &config,
        isolation.into(),
        limits.request().map(RuleLimits::from).unwrap_or_default(),
    )?;
    let examples = match examples {
        Some(dir) => deploy_examples(&dir)?,
        None => Vec::new(),
    };
    let request = DeployRequest {
        wasm,
        config: config.into_iter().collect(),
        position: before
            .map(Position::Before)
            .or(after.map(Position::After))
            .or(replace.map(Position::Replace)),
        isolation: String::new(),
        isolation_mode: match Isolation::from(isolation) {
            Isolation::Fresh => proto::admin::IsolationMode::Fresh,
            Isolation::Reuse => proto::admin::IsolationMode::Reuse,
        }
        .into(),
        examples,
        canary_percent: canary.unwrap_or(0.0),
        canary_margin_percent: canary_margin,
        limits: limits.request(),
        signature,
    };
    admin_call(&admin, out, |mut c| async move {
        c.deploy(request).await.map(|r| vec![r.into_inner()])
    })
}

/// The examples of `dir`, as a deploy sends them (the files as the author wrote them).
fn deploy_examples(dir: &Path) -> Result<Vec<proto::admin::Example>, Failure> {
    let examples = read_examples(dir)?
        .into_iter()
        .map(|e| {
            let read = |suffix: &str| {
                let path = dir.join(format!("{}{suffix}", e.name));
                std::fs::read_to_string(&path).map_err(|err| format!("{}: {err}", path.display()))
            };
            Ok(proto::admin::Example {
                order_json: read(".json")?,
                expected_json: read(runner::EXPECTED_SUFFIX)?,
                name: e.name,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(examples)
}

/// `plugin inspect`.
fn inspect(args: InspectArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let InspectArgs { plugin, limits } = args;
    let engine = Engine::new(limits.limits()).map_err(|e| format!("{e:#}"))?;
    let bytes =
        std::fs::read(&plugin).map_err(|e| format!("cannot read {}: {e}", plugin.display()))?;
    let loaded = engine
        .load(&bytes)
        .map_err(|e| format!("{}: {e}", plugin.display()))?;
    let json = serde_json::json!({
        "name": loaded.info().name,
        "version": loaded.info().version,
        "description": loaded.info().description,
        "digest": loaded.digest(),
        "size": loaded.size(),
        // What its calls are held to unless its rule sets its own.
        "limits": {
            "memory_mib": loaded.limits().memory_bytes >> 20,
            "fuel": loaded.limits().fuel,
            "deadline_ms": loaded.limits().deadline.as_millis(),
        },
        "bundle": loaded.bundle().map(|b| serde_json::json!({
            "config": b.config.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            "examples": b.examples,
        })),
    });
    writeln!(out, "{json:#}")?;
    Ok(EXIT_OK)
}

/// A deploy's config: `--config`, and the examples' config.toml for the keys it does not
/// give (as `plugin test`). `plugin sign` resolves it the same way.
fn deploy_config(
    mut config: Vec<(String, String)>,
    examples: Option<&Path>,
) -> Result<Vec<(String, String)>, Failure> {
    if let Some(dir) = examples {
        for (key, value) in runner::load_examples_config(dir)? {
            if !config.iter().any(|(k, _)| *k == key) {
                config.push((key, value));
            }
        }
    }
    Ok(config)
}

/// `plugin bundle`: embeds the examples of `dir` (which must pass) in `plugin`.
fn bundle(
    plugin: &Path,
    dir: &Path,
    output: Option<std::path::PathBuf>,
    limits: &crate::config_args::LimitArgs,
    out: &mut dyn Write,
) -> Result<i32, Failure> {
    let engine = Engine::new(limits.limits()).map_err(|e| format!("{e:#}"))?;
    let bytes =
        std::fs::read(plugin).map_err(|e| format!("cannot read {}: {e}", plugin.display()))?;
    let loaded = engine
        .load(&bytes)
        .map_err(|e| format!("{}: {e}", plugin.display()))?;
    let config = runner::load_examples_config(dir)?;
    let read = |path: std::path::PathBuf| -> Result<serde_json::Value, Failure> {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| format!("{} is not valid JSON: {e}", path.display()).into())
    };
    let mut examples = Vec::new();
    for example in read_examples(dir)? {
        examples.push(BundledExample {
            order: read(dir.join(format!("{}.json", example.name)))?,
            expected: read(dir.join(format!("{}{}", example.name, runner::EXPECTED_SUFFIX)))?,
            name: example.name,
        });
    }
    if examples.is_empty() {
        return Err(format!(
            "no NAME.json examples in {}; add orders with NAME.expected.json beside them",
            dir.display()
        )
        .into());
    }
    let bundle = Bundle { config, examples };
    let passed = order_rules_engine::bundle_check::check(&bundle, &loaded, RuleLimits::default())
        .map_err(|e| format!("not bundled: {e} (bundle only examples that pass)"))?;
    let bundled = order_rules_engine::bundle::embed(&bytes, &bundle)
        .map_err(|e| format!("{}: {e}", plugin.display()))?;
    // What the gate will load: check the result reads back as the same plugin.
    let reloaded = engine
        .load(&bundled)
        .map_err(|e| format!("the bundled plugin does not load: {e}"))?;
    let output = output.unwrap_or_else(|| {
        let stem = plugin.file_stem().unwrap_or_default().to_string_lossy();
        plugin.with_file_name(format!("{stem}.bundled.wasm"))
    });
    std::fs::write(&output, &bundled)
        .map_err(|e| format!("cannot write {}: {e}", output.display()))?;
    let json = serde_json::json!({
        "output": output.display().to_string(),
        "name": reloaded.info().name,
        "digest": reloaded.digest(),
        "size": reloaded.size(),
        "examples": passed,
    });
    writeln!(out, "{json:#}")?;
    Ok(EXIT_OK)
}

/// Evaluates `order` with a profile of one rule written to `file`.
fn profiled(
    chain: &RuleChain,
    order: &Order,
    args: &args::ProfileArgs,
    file: &Path,
) -> Result<order_rules_engine::Evaluation, Failure> {
    let names: Vec<&str> = chain.specs().map(|s| s.plugin.name()).collect();
    let rule = match (&args.profile_rule, names.as_slice()) {
        (Some(rule), _) => rule.as_str(),
        (None, [only]) => only,
        (None, _) => {
            return Err(format!(
                "the chain has {} rules: name the one to profile with --profile-rule ({})",
                names.len(),
                names.join(", ")
            )
            .into());
        }
    };
    let interval = std::time::Duration::from_micros(args.profile_interval_us);
    let (evaluation, profile) = chain.evaluate_profiled(order, rule, interval, args.profile_runs);
    let profile = profile.map_err(|e| format!("no profile of `{rule}`: {e:#}"))?;
    std::fs::write(file, &profile.json)
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    eprintln!(
        "profile of rule `{}`: {} samples every {} µs over {} evaluation(s), written to {}; open it at https://profiler.firefox.com",
        profile.rule,
        profile.samples,
        args.profile_interval_us,
        args.profile_runs,
        file.display()
    );
    if profile.samples < 10 {
        eprintln!(
            "few samples: the rule's evaluate is short; add --profile-runs 1000 (or a smaller --profile-interval-us)"
        );
    }
    Ok(evaluation)
}

/// The chain the arguments name. With --plugin, `examples_dir/config.toml` (if any) gives
/// the config, overridden key by key by --config.
fn build_chain(args: &ChainArgs, examples_dir: Option<&Path>) -> Result<RuleChain, Failure> {
    let engine = builtin_rules::engine(args.limits.limits(), args.limits.native_baseline)
        .map_err(|e| format!("{e:#}"))?;
    if let Some(path) = &args.plugin {
        let plugin = builtin_rules::load_plugin(&engine, &path.to_string_lossy(), None)?;
        let mut config = match examples_dir {
            Some(dir) => runner::load_examples_config(dir)?,
            None => Vec::new(),
        };
        for (key, value) in &args.config {
            config.retain(|(k, _)| k != key);
            config.push((key.clone(), value.clone()));
        }
        let isolation = Isolation::from(args.isolation);
        // The engine's limits are --fuel, --memory-mib and --deadline-ms already.
        return RuleChain::new(vec![RuleSpec {
            plugin,
            config,
            isolation,
            limits: order_rules_engine::RuleLimits::default(),
        }])
        .map_err(Failure::from);
    }
    match &args.ruleset {
        Some(path) => builtin_rules::load_file(&engine, path),
        None => builtin_rules::load_default(&engine),
    }
    .map_err(Failure::from)
}

pub(crate) fn read_order(path: &Path) -> Result<Order, Failure> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a valid order: {e}", path.display()).into())
}

/// The examples of `dir` (`runner::load_examples`), or an error naming the directory.
fn read_examples(dir: &Path) -> Result<Vec<runner::Example>, Failure> {
    runner::load_examples(dir)
        .map_err(|e| format!("cannot read examples in {}: {e}", dir.display()).into())
}
