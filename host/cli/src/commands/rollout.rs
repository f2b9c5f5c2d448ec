//! `plugin shadow start|diff|promote|stop`, `plugin promote` and `plugin rollout`: the
//! rollout of a candidate ruleset beside the live one, through the AdminService.

use std::io::Write;
use std::path::PathBuf;

use clap::Subcommand;
use order_pipeline::proto::admin::{self, DeployRequest};

use super::admin::{admin_call, client};
use super::serve::runtime;
use crate::exit::{EXIT_OK, Failure};
use crate::shared_args::AdminArgs;

/// `plugin shadow ...`.
#[derive(Debug, Subcommand)]
pub(crate) enum ShadowCommand {
    /// Starts a shadow run: every order is also decided by a candidate, off the client's
    /// path, and its results go where clients never read. The candidate is an existing
    /// version (--version) or the active ruleset with these plugins deployed into it
    /// (each replaces the rule of its name, or is appended).
    Start {
        /// Plugin components (.wasm) to deploy into the candidate.
        #[arg(required_unless_present = "version")]
        plugins: Vec<PathBuf>,
        /// An existing ruleset version as the candidate.
        #[arg(long, conflicts_with = "plugins")]
        version: Option<u64>,
        /// Config of the plugins, as KEY=VALUE (repeatable; given to each plugin).
        #[arg(long = "config", value_name = "KEY=VALUE", value_parser = crate::shared_args::parse_key_value)]
        config: Vec<(String, String)>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// How the candidate decided differently so far: orders whose status, total or
    /// reasons differ, the totals' difference in money per currency, and samples.
    Diff {
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Activates the candidate (as `plugin activate`) and ends the shadow run.
    Promote {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Ends the shadow run (its diff stays readable).
    Stop {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Runs a `plugin shadow` subcommand.
pub(crate) fn shadow(command: ShadowCommand, out: &mut dyn Write) -> Result<i32, Failure> {
    match command {
        ShadowCommand::Start {
            plugins,
            version,
            config,
            admin,
        } => {
            let mut request = admin::ShadowStartRequest {
                version: version.unwrap_or(0),
                plugins: Vec::new(),
            };
            for plugin in plugins {
                let wasm = std::fs::read(&plugin)
                    .map_err(|e| format!("cannot read {}: {e}", plugin.display()))?;
                // PLUGIN.sig, when it exists (needed with a trust file).
                let signature = super::signing::deploy_signature(
                    &plugin,
                    None,
                    &wasm,
                    &config,
                    order_rules_engine::Isolation::Reuse,
                    order_rules_engine::RuleLimits::default(),
                )?;
                request.plugins.push(DeployRequest {
                    wasm,
                    config: config.iter().cloned().collect(),
                    signature,
                    ..DeployRequest::default()
                });
            }
            rollout_call(&admin, out, |mut c| async move {
                c.shadow_start(request)
                    .await
                    .map(tonic::Response::into_inner)
            })
        }
        ShadowCommand::Diff { json, admin } => diff(&admin, json, out),
        ShadowCommand::Promote { admin } => admin_call(&admin, out, |mut c| async move {
            c.shadow_promote(admin::ShadowPromoteRequest {})
                .await
                .map(|r| vec![r.into_inner()])
        }),
        ShadowCommand::Stop { admin } => rollout_call(&admin, out, |mut c| async move {
            c.shadow_stop(admin::ShadowStopRequest {})
                .await
                .map(tonic::Response::into_inner)
        }),
    }
}

/// Connects, runs `call` and prints the rollout it answers.
pub(crate) fn rollout_call<F, Fut>(
    admin: &AdminArgs,
    out: &mut dyn Write,
    call: F,
) -> Result<i32, Failure>
where
    F: FnOnce(super::admin::AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<admin::RolloutInfo, tonic::Status>>,
{
    let info = runtime()?.block_on(async {
        call(client(admin).await?)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })?;
    if info.shadow_run.is_empty() {
        writeln!(out, "shadow: none")?;
    } else {
        writeln!(
            out,
            "shadow: {} (candidate version {})",
            info.shadow_run, info.shadow_version
        )?;
    }
    if info.canary_version == 0 {
        writeln!(out, "canary: none")?;
    } else {
        writeln!(
            out,
            "canary: version {} on {}% of the orders (ends itself beyond {} points more failed or rejected)",
            info.canary_version, info.canary_percent, info.canary_margin_percent
        )?;
    }
    if !info.last_canary_end.is_empty() {
        writeln!(out, "last canary: {}", info.last_canary_end)?;
    }
    Ok(EXIT_OK)
}

fn diff(admin: &AdminArgs, json: bool, out: &mut dyn Write) -> Result<i32, Failure> {
    let answer = runtime()?.block_on(async {
        client(admin)
            .await?
            .shadow_diff(admin::ShadowDiffRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })?;
    let samples: serde_json::Value = serde_json::from_str(&answer.samples_json).unwrap_or_default();
    if json {
        let value = serde_json::json!({
            "run": answer.run,
            "candidate_version": answer.candidate_version,
            "on": answer.on,
            "orders": answer.orders,
            "differing": answer.differing,
            "by_kind": answer.by_kind.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "money": answer.money.iter().collect::<std::collections::BTreeMap<_, _>>(),
            "samples": samples,
        });
        writeln!(out, "{value:#}")?;
        return Ok(EXIT_OK);
    }
    let state = if answer.on { "on" } else { "stopped" };
    writeln!(
        out,
        "shadow run {} ({state}), candidate version {}: {} orders compared, {} decided differently",
        answer.run, answer.candidate_version, answer.orders, answer.differing
    )?;
    print_diff(
        out,
        &answer.by_kind,
        &answer.money,
        &samples,
        "candidate - live",
    )?;
    Ok(EXIT_OK)
}

/// The body of a diff as people read it (`shadow diff`, `replay`): the count of each
/// kind of difference, the money per currency (`sides` names the subtraction), and the
/// samples.
pub(crate) fn print_diff(
    out: &mut dyn Write,
    by_kind: &std::collections::HashMap<String, u64>,
    money: &std::collections::HashMap<String, i64>,
    samples: &serde_json::Value,
    sides: &str,
) -> std::io::Result<()> {
    for kind in order_pipeline::domain::diff::KINDS {
        let n = by_kind.get(kind).copied().unwrap_or(0);
        writeln!(out, "  {kind:<8} {n}")?;
    }
    let mut money: Vec<_> = money.iter().collect();
    money.sort();
    for (currency, amount) in money {
        writeln!(
            out,
            "  money    {currency} {amount:+} ({sides}, minor units)"
        )?;
    }
    if let Some(kinds) = samples.as_object() {
        for (kind, list) in kinds {
            for sample in list.as_array().into_iter().flatten() {
                writeln!(out, "  {kind}: {sample}")?;
            }
        }
    }
    Ok(())
}
