//! The deploy gate: every change to the live ruleset goes through here, whatever asked
//! for it (the AdminService, the quarantine). A deploy goes live only after the component
//! loads, is signed by a key the trust file allows (when `PLUGIN_TRUST_FILE` is set; every
//! rule of a chain is checked again as it builds), implements the world, takes its config
//! and passes the examples sent with it on its own; then, for a deploy, an activate and a rollback alike, the whole new chain
//! builds, every plugin in it passes the examples bundled in it (`plugin bundle`) and a
//! smoke order does not fail. One compare-and-set then activates the new version in the
//! registry, which every worker follows. The quarantine's take-out skips the examples:
//! it must stop a failing rule even if the version it restores would not pass them now. Also here: where a deployed rule goes in the chain ([`Placement`]).
//! A rollback returns to the version that was active before the current one, following
//! the activation history ([`RulesetRecord::rollback_target`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use order_rules_engine::{
    Isolation, Order, RuleChain, RuleLimits, RuleSpec, Status as EvalStatus, runner,
};

use super::live::{LiveRuleset, rule_ref};

mod placement;
mod rollout;
pub use placement::{Placement, place};
pub use rollout::Candidate;

/// How many basis points more failed or rejected orders than the live version end a
/// canary by itself, by default (5 percentage points).
pub const DEFAULT_CANARY_MARGIN: u32 = 500;
use crate::domain::now_unix_ms;
use crate::domain::ruleset::{
    ActivateError, Collected, Expect, PluginSignature, RuleRef, RulesetBody, RulesetRecord,
};

/// Why a change to the live ruleset did not happen. The gRPC layer maps each kind to one
/// status code (`grpc::status`).
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// The request itself is wrong (the plugin is not a usable component): fix the input.
    #[error("{0}")]
    Invalid(String),
    /// The change was refused by the gate (examples, build, smoke order, placement).
    #[error("{0}")]
    Refused(String),
    /// The version asked for does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Another change won the compare-and-set; look again and retry.
    #[error("the active ruleset changed during this call; look again (plugin list) and retry")]
    Conflict,
    /// The registry could not be reached.
    #[error("registry unavailable: {0:#}")]
    Unavailable(anyhow::Error),
    /// A gate task panicked.
    #[error("the gate failed: {0}")]
    Internal(String),
}

/// An example a deploy must pass: the order and its expectation, as JSON text.
#[derive(Debug, Clone)]
pub struct GateExample {
    /// Its name, for messages.
    pub name: String,
    /// The order (the examples/ format).
    pub order_json: String,
    /// The expectation (subset match, as `plugin test`).
    pub expected_json: String,
}

/// What a deploy asks for.
#[derive(Debug, Clone)]
pub struct Deploy {
    /// The component.
    pub wasm: Vec<u8>,
    /// Its config.
    pub config: BTreeMap<String, String>,
    /// How its instances are used.
    pub isolation: Isolation,
    /// Its own limits.
    pub limits: RuleLimits,
    /// Where it goes.
    pub placement: Placement,
    /// Examples it must pass on its own.
    pub examples: Vec<GateExample>,
    /// Its signature (`plugin sign`); needed when a trust file is configured.
    pub signature: Option<PluginSignature>,
}

/// Changes to the live ruleset, gated.
pub struct Gate {
    live: Arc<LiveRuleset>,
}

impl Gate {
    /// A gate over `live`'s registry and engine.
    pub fn new(live: Arc<LiveRuleset>) -> Self {
        Self { live }
    }

    /// The active version.
    pub async fn active(&self) -> Result<RulesetRecord, GateError> {
        self.live
            .registry()
            .active()
            .await
            .map_err(GateError::Unavailable)?
            .ok_or_else(|| GateError::Refused("no ruleset is active yet".into()))
    }

    /// Every version, newest first, with the active version number.
    pub async fn history(&self) -> Result<(Vec<RulesetRecord>, Option<u64>), GateError> {
        let registry = self.live.registry();
        let active = registry
            .active_version()
            .await
            .map_err(GateError::Unavailable)?;
        let versions = registry.history().await.map_err(GateError::Unavailable)?;
        Ok((versions, active))
    }

    /// Deploys a rule through the gate; answers the active version afterwards (the same
    /// one when the deploy changes nothing).
    pub async fn deploy(&self, deploy: Deploy) -> Result<RulesetRecord, GateError> {
        let (active, body) = self.candidate(vec![deploy], "deploy").await?;
        match body {
            Some(body) => self.switch(body, active.version).await,
            None => Ok(active),
        }
    }

    /// The active version with `deploys` applied in turn, through the gate; `None` when
    /// that changes nothing. Answers the active version it is based on too. `what`
    /// names the operation in refusals and in the new version's reason.
    pub(crate) async fn candidate(
        &self,
        deploys: Vec<Deploy>,
        what: &str,
    ) -> Result<(RulesetRecord, Option<RulesetBody>), GateError> {
        let active = self.active().await?;
        let mut rules = active.body.rules.clone();
        let mut names = Vec::new();
        for deploy in deploys {
            let engine = self.live.engine().clone();
            let wasm = deploy.wasm;
            let plugin = tokio::task::spawn_blocking(move || engine.load(&wasm))
                .await
                .map_err(|e| GateError::Internal(e.to_string()))?
                .map_err(|e| GateError::Invalid(format!("plugin refused: {e}")))?;
            let spec = RuleSpec {
                plugin: Arc::clone(&plugin),
                config: deploy.config.into_iter().collect(),
                isolation: deploy.isolation,
                limits: deploy.limits,
            };
            let rule = RuleRef {
                signature: deploy.signature,
                ..rule_ref(&spec)
            };
            // Gate 0: with a trust file, signed by a key that may sign it.
            if let Some(trust) = self.live.trust() {
                trust
                    .check(&rule)
                    .map_err(|e| GateError::Refused(format!("{what} refused: {e}")))?;
            }

            // Gate 1: the plugin alone takes its config and passes its examples.
            let alone = spec.clone();
            let examples = deploy.examples;
            tokio::task::spawn_blocking(move || passes_examples(alone, &examples))
                .await
                .map_err(|e| GateError::Internal(e.to_string()))?
                .map_err(|message| GateError::Refused(format!("{what} refused: {message}")))?;
            place(&mut rules, rule, &deploy.placement)?;
            self.live
                .registry()
                .put_plugin(plugin.digest(), plugin.bytes())
                .await
                .map_err(GateError::Unavailable)?;
            names.push(format!("{} {}", plugin.name(), plugin.info().version));
        }
        if rules == active.body.rules {
            // Identical digests and config in the same places: nothing to do.
            return Ok((active, None));
        }

        // Gate 2: the whole new chain builds, passes its bundled examples and a smoke
        // order does not fail.
        self.builds_and_decides(&rules, &format!("{what} refused: the new ruleset"))
            .await?;
        let body = RulesetBody {
            rules,
            reason: format!("{what} {}", names.join(", ")),
            based_on: None,
            previous: Some(active.version),
            created_at_unix_ms: now_unix_ms(),
        };
        Ok((active, Some(body)))
    }

    /// Activates the contents of `version` as a new version.
    pub async fn activate(&self, version: u64) -> Result<RulesetRecord, GateError> {
        let active = self.active().await?;
        let target = self.version(version).await?;
        if target.body.rules == active.body.rules {
            return Ok(active);
        }
        let what = format!("activate refused: version {version}");
        self.builds_and_decides(&target.body.rules, &what).await?;
        let body = RulesetBody {
            rules: target.body.rules,
            reason: format!("activate {version}"),
            based_on: Some(version),
            previous: Some(active.version),
            created_at_unix_ms: now_unix_ms(),
        };
        self.switch(body, active.version).await
    }

    /// Returns to the version that was active before the active one
    /// ([`RulesetRecord::rollback_target`]).
    /// While a canary runs, a rollback ends the canary instead: every order goes back
    /// to the active version, which stays as it is.
    pub async fn rollback(&self) -> Result<RulesetRecord, GateError> {
        if let Some(canary) = self.rollout().await?.canary {
            self.end_canary(canary.version, "rolled back by an operator")
                .await?;
            return self.active().await;
        }
        let active = self.active().await?;
        let target = active.rollback_target().ok_or_else(|| {
            GateError::Refused(format!(
                "version {} has no earlier version to roll back to",
                active.version
            ))
        })?;
        let record = self.version(target).await?;
        let what = format!("rollback refused: version {target}");
        self.builds_and_decides(&record.body.rules, &what).await?;
        let body = RulesetBody {
            reason: format!("rollback to {target}"),
            based_on: Some(target),
            previous: Some(record.rollback_target().unwrap_or(0)),
            rules: record.body.rules,
            created_at_unix_ms: now_unix_ms(),
        };
        self.switch(body, active.version).await
    }

    /// Takes a failing rule out (the quarantine): rolls `version` back (to
    /// [`RulesetRecord::rollback_target`]) if `version` is still active; the reason
    /// goes into the history. Answers the new version, or `None` when another change
    /// came first.
    pub async fn take_out(
        &self,
        version: u64,
        digest: &str,
        reason: impl FnOnce(u64) -> String,
    ) -> Result<Option<u64>, GateError> {
        let current = self.version(version).await?;
        let target = current.rollback_target().ok_or_else(|| {
            GateError::Refused(format!(
                "version {version} has no earlier version to restore"
            ))
        })?;
        let restored = self.version(target).await?;
        if restored.body.rules.iter().any(|r| r.digest == digest) {
            return Err(GateError::Refused(format!(
                "version {target} has the same plugin"
            )));
        }
        let body = RulesetBody {
            reason: reason(target),
            based_on: Some(target),
            previous: Some(restored.rollback_target().unwrap_or(0)),
            rules: restored.body.rules,
            created_at_unix_ms: now_unix_ms(),
        };
        match self.switch(body, version).await {
            Ok(record) => Ok(Some(record.version)),
            // Another worker took it out first, or an operator changed the ruleset.
            Err(GateError::Conflict) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub(crate) async fn version(&self, version: u64) -> Result<RulesetRecord, GateError> {
        let registry = self.live.registry();
        if let Some(record) = registry
            .get(version)
            .await
            .map_err(GateError::Unavailable)?
        {
            return Ok(record);
        }
        let oldest = registry
            .oldest_version()
            .await
            .map_err(GateError::Unavailable)?;
        Err(GateError::NotFound(if version < oldest {
            format!(
                "version: ruleset version {version} is no longer kept: the history keeps the \
                 newest {} versions (RULESET_HISTORY), from version {oldest}",
                self.live.history_limits().versions
            )
        } else {
            format!("version: there is no ruleset version {version}")
        }))
    }

    /// Gate 2 (deploy, activate, rollback): the whole chain of `rules` builds here, each
    /// of its plugins passes the examples bundled in it, and a smoke order does not fail.
    /// `what` starts the refusal ("deploy refused: the new ruleset").
    pub(crate) async fn builds_and_decides(
        &self,
        rules: &[RuleRef],
        what: &str,
    ) -> Result<(), GateError> {
        let chain = self
            .live
            .build(rules)
            .await
            .map_err(|e| GateError::Refused(format!("{what} does not build: {e:#}")))?;
        let checked = tokio::task::spawn_blocking(move || {
            for spec in chain.specs() {
                if let Some(bundle) = spec.plugin.bundle() {
                    order_rules_engine::bundle_check::check(bundle, &spec.plugin, spec.limits)?;
                }
            }
            let smoke = chain.evaluate(&Order::single_item("smoke-test", "book", 100, "USD"));
            if smoke.status == EvalStatus::Failed {
                let error = smoke.error.map(|e| e.to_string()).unwrap_or_default();
                return Err(format!("a smoke order failed: {error}"));
            }
            Ok(())
        })
        .await
        .map_err(|e| GateError::Internal(e.to_string()))?;
        checked.map_err(|message| GateError::Refused(format!("{what}: {message}")))
    }

    /// Activates `body` if `expect` is still the active version, and switches this
    /// process at once.
    pub(crate) async fn switch(
        &self,
        body: RulesetBody,
        expect: u64,
    ) -> Result<RulesetRecord, GateError> {
        let registry = self.live.registry();
        // Marked in use first, so that no collection takes a blob while it goes live.
        let digests: Vec<&str> = body.rules.iter().map(|r| r.digest.as_str()).collect();
        let gone = registry
            .pin(&digests)
            .await
            .map_err(GateError::Unavailable)?;
        if let Some(digest) = gone.first() {
            let name = body
                .rules
                .iter()
                .find(|r| &r.digest == digest)
                .map_or("?", |r| r.name.as_str());
            return Err(GateError::Refused(format!(
                "the registry no longer has plugin {name} ({digest}): no kept version used it, \
                 so it was collected; deploy it again"
            )));
        }
        let version = match registry.activate(&body, Expect::Version(expect)).await {
            Ok(version) => version,
            Err(ActivateError::Conflict(_)) => return Err(GateError::Conflict),
            Err(ActivateError::Store(e)) => return Err(GateError::Unavailable(e)),
        };
        tracing::info!(version, reason = %body.reason, "ruleset activated");
        if let Err(e) = self.live.refresh().await {
            tracing::warn!(error = %format!("{e:#}"), "this process could not switch yet; it will retry");
        }
        self.collect().await;
        Ok(RulesetRecord { version, body })
    }

    /// Keeps the registry within its history limits after a change (a failure only
    /// delays the collection to the next change).
    async fn collect(&self) {
        let limits = self.live.history_limits();
        match self.live.registry().collect(limits).await {
            Ok(collected) => {
                let removed = metrics::counter!(crate::metrics::RETENTION_REMOVED, "what" => "ruleset_versions");
                removed.increment(collected.versions);
                let removed =
                    metrics::counter!(crate::metrics::RETENTION_REMOVED, "what" => "plugin_blobs");
                removed.increment(collected.blobs);
                if collected != Collected::default() {
                    tracing::info!(
                        versions = collected.versions,
                        blobs = collected.blobs,
                        keep = limits.versions,
                        "dropped the ruleset versions beyond the history limit and the plugin blobs no kept version uses"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot collect the registry's history; the next change retries");
            }
        }
    }
}

/// Gate 1: `spec` alone takes its config and passes every example.
fn passes_examples(spec: RuleSpec, examples: &[GateExample]) -> Result<(), String> {
    let chain = RuleChain::new(vec![spec]).map_err(|e| e.to_string())?;
    for example in examples {
        let order: Order = serde_json::from_str(&example.order_json)
            .map_err(|e| format!("example `{}`: not an order: {e}", example.name))?;
        let expected: serde_json::Value = serde_json::from_str(&example.expected_json)
            .map_err(|e| format!("example `{}`: expectation is not JSON: {e}", example.name))?;
        let actual = serde_json::to_value(chain.evaluate(&order)).map_err(|e| e.to_string())?;
        if let Some(m) = runner::compare(&expected, &actual).first() {
            let got = m
                .actual
                .as_ref()
                .map_or("(missing)".to_string(), ToString::to_string);
            return Err(format!(
                "example `{}` failed: {}: expected {}, got {got}",
                example.name, m.path, m.expected
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn rollback_follows_the_activation_history() {
        let record = |version, previous| RulesetRecord {
            version,
            body: RulesetBody {
                rules: Vec::new(),
                reason: String::new(),
                based_on: None,
                previous,
                created_at_unix_ms: 0,
            },
        };
        // Activating 3 while on 5 made 6: a rollback returns to 5, not to 2.
        assert_eq!(record(6, Some(5)).rollback_target(), Some(5));
        // The first version has nothing before it.
        assert_eq!(record(1, Some(0)).rollback_target(), None);
        // Versions stored before `previous` was recorded: the one before by number.
        assert_eq!(record(5, None).rollback_target(), Some(4));
        assert_eq!(record(1, None).rollback_target(), None);
    }
}
