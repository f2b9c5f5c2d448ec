//! `order-pipeline replay`, `order-pipeline dlq list|inspect|replay` (through the
//! AdminService) and `plugin replay ORDER_ID`, which fetches a production order and the
//! plugins of the version that decided it, and runs it here under that version and
//! under a candidate.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Subcommand};
use order_builtin_rules as builtin_rules;
use order_pipeline::domain::diff::DiffReport;
use order_pipeline::domain::{OrderResult, now_unix_ms};
use order_pipeline::proto::admin;
use order_rules_engine::{Isolation, RuleChain, RuleLimits, RuleSpec};

use super::admin::client;
use super::serve::runtime;
use crate::config_args::LimitArgs;
use crate::exit::{EXIT_OK, Failure};
use crate::shared_args::AdminArgs;

/// Which orders, with which version, and where the results go.
#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    /// Order ids (repeatable), from their stored results.
    #[arg(long = "id", value_name = "ID")]
    ids: Vec<String>,
    /// Orders from this time: RFC 3339 (2026-12-01T10:00:00Z) or a duration ago (2h).
    #[arg(long, requires = "until")]
    since: Option<String>,
    /// Orders until this time (excluded): RFC 3339 or a duration ago (0s: now).
    #[arg(long, requires = "since")]
    until: Option<String>,
    /// Kafka offsets of the order topic, PARTITION:FROM[-TO] (TO excluded; repeatable).
    #[arg(long = "offsets", value_name = "P:FROM[-TO]", value_parser = parse_offsets)]
    offsets: Vec<admin::OffsetRange>,
    /// Every dead letter.
    #[arg(long)]
    dlq: bool,
    #[command(flatten)]
    how: HowArgs,
}

/// With which version, and whether results are replaced.
#[derive(Debug, Args)]
pub(crate) struct HowArgs {
    /// The ruleset version to decide with (default: the active one).
    #[arg(long)]
    version: Option<u64>,
    /// Replace the stored results (each records what it replaced and --reason).
    #[arg(long, requires = "reason")]
    overwrite: bool,
    /// Why the results are replaced.
    #[arg(long)]
    reason: Option<String>,
    /// Most orders to decide.
    #[arg(long, default_value_t = 10_000)]
    limit: u32,
    /// Print the answer as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// `order-pipeline dlq ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum DlqCommand {
    /// Lists the dead letters, oldest first: where, why, the order id and the status of
    /// its stored result.
    List {
        /// Most letters.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Shows one dead letter in full: its headers and its order.
    Inspect {
        /// Its position, as `dlq list` shows it (partition/offset, or a sequence number).
        position: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Decides every dead letter's order again (as `replay --dlq`).
    Replay(HowArgs),
}

fn parse_offsets(text: &str) -> Result<admin::OffsetRange, String> {
    let bad = || format!("`{text}` is not PARTITION:FROM[-TO], e.g. 0:100-200 or 1:0");
    let (partition, range) = text.split_once(':').ok_or_else(bad)?;
    let (from, to) = match range.split_once('-') {
        Some((from, to)) => (from, Some(to)),
        None => (range, None),
    };
    Ok(admin::OffsetRange {
        partition: partition.trim().parse().map_err(|_| bad())?,
        from: from.trim().parse().map_err(|_| bad())?,
        to: to
            .map(|t| t.trim().parse())
            .transpose()
            .map_err(|_| bad())?
            .unwrap_or(0),
    })
}

/// A time as Unix ms: RFC 3339, or a duration before now.
fn parse_time(name: &str, text: &str) -> Result<i64, Failure> {
    if let Ok(at) = humantime::parse_rfc3339_weak(text) {
        let ms = at
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| format!("--{name} `{text}` is before 1970"))?
            .as_millis();
        return Ok(i64::try_from(ms).unwrap_or(i64::MAX));
    }
    let ago = humantime::parse_duration(text).map_err(|_| {
        format!("--{name} `{text}` is neither an RFC 3339 time (2026-12-01T10:00:00Z) nor a duration ago (2h)")
    })?;
    Ok(now_unix_ms() - i64::try_from(ago.as_millis()).unwrap_or(i64::MAX))
}

/// `order-pipeline replay`.
pub(crate) fn replay(args: ReplayArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let (since, until) = match (&args.since, &args.until) {
        (Some(since), Some(until)) => (parse_time("since", since)?, parse_time("until", until)?),
        _ => (0, 0),
    };
    let request = admin::ReplayRequest {
        ids: args.ids,
        since_unix_ms: since,
        until_unix_ms: until,
        offsets: args.offsets,
        dead_letters: args.dlq,
        ..admin::ReplayRequest::default()
    };
    run_replay(request, args.how, out)
}

fn run_replay(
    mut request: admin::ReplayRequest,
    how: HowArgs,
    out: &mut dyn Write,
) -> Result<i32, Failure> {
    request.version = how.version.unwrap_or(0);
    request.overwrite = how.overwrite;
    request.reason = how.reason.unwrap_or_default();
    request.limit = how.limit;
    let answer = runtime()?.block_on(async {
        client(&how.admin)
            .await?
            .replay(request)
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })?;
    let samples: serde_json::Value = serde_json::from_str(&answer.samples_json).unwrap_or_default();
    if how.json {
        let value = serde_json::json!({
            "run": answer.run,
            "version": answer.version,
            "decided": answer.decided,
            "differing": answer.differing,
            "by_kind": answer.by_kind.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "money": answer.money.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "samples": samples,
            "without_result": answer.without_result,
            "overwritten": answer.overwritten,
            "skipped": answer.skipped,
            "seconds": answer.seconds,
        });
        writeln!(out, "{value:#}")?;
        return Ok(EXIT_OK);
    }
    let rate = answer.decided as f64 / answer.seconds.max(1e-9);
    writeln!(
        out,
        "replay {} with version {}: {} orders decided in {:.3} s ({rate:.0}/s), {} differently from their stored result",
        answer.run, answer.version, answer.decided, answer.seconds, answer.differing
    )?;
    super::rollout::print_diff(
        out,
        &answer.by_kind,
        &answer.money,
        &samples,
        "replay - stored",
    )?;
    if answer.without_result > 0 {
        writeln!(
            out,
            "  {} orders had no stored result",
            answer.without_result
        )?;
    }
    if answer.overwritten > 0 {
        writeln!(out, "  {} stored results replaced", answer.overwritten)?;
    } else {
        writeln!(
            out,
            "  stored results unchanged (scratch namespace {})",
            answer.run
        )?;
    }
    for skipped in &answer.skipped {
        writeln!(out, "  skipped: {skipped}")?;
    }
    Ok(EXIT_OK)
}

/// `order-pipeline dlq ...`.
pub(crate) fn dlq(command: DlqCommand, out: &mut dyn Write) -> Result<i32, Failure> {
    let (admin, position, limit) = match command {
        DlqCommand::Replay(how) => {
            let request = admin::ReplayRequest {
                dead_letters: true,
                ..admin::ReplayRequest::default()
            };
            return run_replay(request, how, out);
        }
        DlqCommand::List { limit, admin } => (admin, None, limit),
        DlqCommand::Inspect { position, admin } => (admin, Some(position), 0),
    };
    let letters = runtime()?.block_on(async {
        client(&admin)
            .await?
            .dead_letters(admin::DeadLettersRequest { limit })
            .await
            .map(|r| r.into_inner().letters)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })?;
    match position {
        None => {
            writeln!(out, "{} dead letter(s)", letters.len())?;
            for letter in &letters {
                let id = serde_json::from_str::<serde_json::Value>(&letter.order_json)
                    .ok()
                    .and_then(|o| o["id"].as_str().map(String::from))
                    .unwrap_or_else(|| "(not an order)".into());
                let result = if letter.result_status.is_empty() {
                    "no result"
                } else {
                    &letter.result_status
                };
                let reason = letter.headers.get("reason").map_or("", String::as_str);
                writeln!(out, "{} {id} [{result}]: {reason}", letter.position)?;
            }
        }
        Some(position) => {
            let letter = letters
                .iter()
                .find(|l| l.position == position)
                .ok_or_else(|| format!("no dead letter at {position}; see `dlq list`"))?;
            let order: serde_json::Value =
                serde_json::from_str(&letter.order_json).unwrap_or(serde_json::Value::Null);
            let value = serde_json::json!({
                "position": letter.position,
                "headers": letter.headers.iter().collect::<std::collections::BTreeMap<_, _>>(),
                "order": order,
                "error": letter.error,
                "result_status": letter.result_status,
            });
            writeln!(out, "{value:#}")?;
        }
    }
    Ok(EXIT_OK)
}

/// `plugin replay ORDER_ID`.
#[derive(Debug, Args)]
pub(crate) struct PluginReplayArgs {
    /// The production order's id.
    id: String,
    /// Candidate plugins (.wasm): each replaces the rule of its name in the version that
    /// decided the order (or is appended).
    #[arg(long = "candidate", value_name = "FILE.wasm")]
    candidates: Vec<PathBuf>,
    /// Config of the candidate plugins, KEY=VALUE (repeatable; default: the config of
    /// the rule each replaces).
    #[arg(long = "config", value_name = "KEY=VALUE", value_parser = crate::shared_args::parse_key_value)]
    config: Vec<(String, String)>,
    #[command(flatten)]
    limits: LimitArgs,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Fetches order `id` and the plugins of the version that decided it, then decides it
/// here under that version and under the candidate, and prints the difference.
pub(crate) fn plugin_replay(args: PluginReplayArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let (stored, version, plugins) = runtime()?.block_on(fetch_decision(&args))?;
    let stored: OrderResult = serde_json::from_str(&stored)?;
    let order = stored
        .order
        .clone()
        .ok_or("the stored result does not keep its order")?;
    let engine =
        builtin_rules::engine(args.limits.limits(), false).map_err(|e| format!("{e:#}"))?;
    let mut specs = Vec::new();
    for (rule, wasm) in version.rules.iter().zip(&plugins) {
        specs.push(RuleSpec {
            plugin: engine
                .load(wasm)
                .map_err(|e| format!("{} of version {}: {e}", rule.name, version.version))?,
            config: rule
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            isolation: rule.isolation.parse().unwrap_or(Isolation::Fresh),
            limits: rule.limits.map(RuleLimits::from).unwrap_or_default(),
        });
    }
    let decided = RuleChain::new(specs.clone())?;
    let candidate = RuleChain::new(with_candidates(&engine, specs, &args)?)?;
    let mut again = OrderResult::from_evaluation(&order, decided.evaluate(&order), 1);
    again.ruleset_version = version.version;
    let mut other = OrderResult::from_evaluation(&order, candidate.evaluate(&order), 1);
    other.ruleset_version = 0;
    print_replay(out, &stored, &again, &other, version.version)?;
    Ok(EXIT_OK)
}

/// The stored result of `args.id` (JSON), the version that decided it, and the bytes of
/// each of its plugins, from the AdminService.
async fn fetch_decision(
    args: &PluginReplayArgs,
) -> Result<(String, admin::RulesetInfo, Vec<Vec<u8>>), String> {
    let mut c = client(&args.admin).await?;
    let status = |s: tonic::Status| format!("{:?}: {}", s.code(), s.message());
    let decision = c
        .decision(admin::DecisionRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(status)?
        .into_inner();
    let version = decision
        .version
        .ok_or("the AdminService answered no version")?;
    let mut plugins = Vec::new();
    for rule in &version.rules {
        let wasm = c
            .plugin(admin::PluginRequest {
                digest: rule.digest.clone(),
            })
            .await
            .map_err(status)?
            .into_inner()
            .wasm;
        plugins.push(wasm);
    }
    Ok((decision.result_json, version, plugins))
}

/// `specs` with each candidate plugin in place of the rule of its name (or last, for a
/// new rule), with `--config` or the config of the rule it replaces.
fn with_candidates(
    engine: &order_rules_engine::Engine,
    mut specs: Vec<RuleSpec>,
    args: &PluginReplayArgs,
) -> Result<Vec<RuleSpec>, Failure> {
    for path in &args.candidates {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let plugin: Arc<_> = engine
            .load(&bytes)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let at = specs.iter().position(|s| s.plugin.name() == plugin.name());
        let config = if args.config.is_empty() {
            at.map(|i| specs[i].config.clone()).unwrap_or_default()
        } else {
            args.config.clone()
        };
        let spec = RuleSpec {
            plugin,
            config,
            isolation: Isolation::Fresh,
            limits: RuleLimits::default(),
        };
        match at {
            Some(i) => specs[i] = spec,
            None => specs.push(spec),
        }
    }
    Ok(specs)
}

/// Prints the stored result, the result decided again under `version`, the candidate's,
/// and how they differ.
fn print_replay(
    out: &mut dyn Write,
    stored: &OrderResult,
    again: &OrderResult,
    other: &OrderResult,
    version: u64,
) -> Result<(), Failure> {
    let mut same_as_stored = DiffReport::default();
    same_as_stored.add(stored, again);
    let mut diff = DiffReport::default();
    diff.add(again, other);
    let show = |r: &OrderResult| {
        let reasons: Vec<String> = r
            .reasons
            .iter()
            .map(|x| format!("{}/{}", x.rule, x.code))
            .collect();
        format!(
            "{} total {} {} {reasons:?}",
            r.status.as_str(),
            r.totals.total,
            r.currency
        )
    };
    writeln!(out, "order {} as stored: {}", stored.id, show(stored))?;
    let matches = if same_as_stored.differing == 0 {
        "as stored"
    } else {
        "NOT as stored"
    };
    writeln!(
        out,
        "here, under version {version} (which decided it): {} ({matches})",
        show(again)
    )?;
    writeln!(out, "here, under the candidate: {}", show(other))?;
    if diff.differing == 0 {
        writeln!(out, "the candidate decides it the same way")?;
    } else {
        let kinds: Vec<&String> = diff.by_kind.keys().collect();
        writeln!(out, "the candidate decides it differently: {kinds:?}")?;
        for (currency, amount) in &diff.money {
            writeln!(
                out,
                "  total {currency} {amount:+} (candidate - version {version})"
            )?;
        }
    }
    Ok(())
}
