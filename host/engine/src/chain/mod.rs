//! A rule chain: an ordered list of configured plugins run on one order. A rejection,
//! a retryable outcome or a failure stops the chain; adjustments accumulate into the
//! totals that later rules see. The [`Evaluation`] records, per rule, the name, version,
//! digest, outcome, fuel used and time taken.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::bindings::order::rules::types as wit;
use super::instance::{Failure, FailureKind, Instance, RuleFailure};
use super::limits::{Limits, RuleLimits};
use super::native::{self, NativeRule};
use super::plugin::{Isolation, Plugin};
use super::reuse::{Pool, Ran};
use super::wasi::OrderSeed;
use crate::order::{AdjustmentKind, Order, Totals};

mod outcome;

use outcome::{check_outcome, conclude, outcome_label};
pub(crate) use outcome::{to_wit_order, to_wit_totals};

/// A plugin with its configuration, as one step of a chain.
#[derive(Debug, Clone)]
pub struct RuleSpec {
    /// The loaded plugin.
    pub plugin: Arc<Plugin>,
    /// Its key/value configuration.
    pub config: Vec<(String, String)>,
    /// How its instances are used.
    pub isolation: Isolation,
    /// Its own limits, in place of the engine's where given.
    pub limits: RuleLimits,
}

/// Why a chain could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// Two steps have the same rule name.
    #[error("rule `{0}` appears twice in the ruleset; each rule may appear once")]
    DuplicateRule(String),
    /// A plugin refused its config or could not start.
    #[error(transparent)]
    Rule(#[from] RuleFailure),
    /// A rule's own limits cannot work.
    #[error("rule `{rule}`, limits: {message}")]
    Limits {
        /// The rule.
        rule: String,
        /// Which limit to fix.
        message: String,
    },
}

/// The overall decision about an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Every rule accepted.
    Accepted,
    /// A rule rejected the order.
    Rejected,
    /// A rule asked for the order to be retried later.
    Retryable,
    /// A rule failed (trap, limit, malformed outcome).
    Failed,
}

/// An adjustment with the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedAdjustment {
    /// Rule that made it.
    pub rule: String,
    /// Discount, surcharge or tax.
    pub kind: AdjustmentKind,
    /// Label for people.
    pub label: String,
    /// Amount in minor units, >= 0.
    pub amount: i64,
}

/// A rejection reason with the rule that gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleReason {
    /// Rule that rejected.
    pub rule: String,
    /// Machine-readable code.
    pub code: String,
    /// Message for people.
    pub message: String,
}

/// A retry request with the rule that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRetry {
    /// Rule that asked.
    pub rule: String,
    /// Machine-readable code.
    pub code: String,
    /// Message for people.
    pub message: String,
}

/// What one rule answered (`accept`, `reject`, `retryable` in JSON), or `failed` when it
/// trapped, hit a limit or answered something the contract forbids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleOutcome {
    /// The rule accepted (with its adjustments).
    Accept,
    /// The rule rejected the order.
    Reject,
    /// The rule asked for a retry later.
    Retryable,
    /// The rule failed.
    Failed,
}

impl RuleOutcome {
    /// The name used in JSON and in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "accept",
            Self::Reject => "reject",
            Self::Retryable => "retryable",
            Self::Failed => "failed",
        }
    }
}

/// What one rule did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTrace {
    /// Rule name.
    pub name: String,
    /// Rule version.
    pub version: String,
    /// sha256 of the component.
    pub digest: String,
    /// What it answered, or that it failed.
    pub outcome: RuleOutcome,
    /// Fuel the evaluation used (0 when it failed before evaluating).
    pub fuel_used: u64,
    /// Wall time of the rule, instantiation included, in microseconds.
    pub duration_us: u64,
    /// The rule failed in a reused instance and decided again in a fresh one: this
    /// trace is the fresh attempt's.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retried_fresh: bool,
    /// A check decided the order in a fresh instance too, and the reused instance's
    /// outcome differed: the rule carries state between orders. This trace is the fresh
    /// attempt's, and the rule runs in fresh instances from now on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub state_leak: bool,
}

/// The result of running a chain on an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evaluation {
    /// The decision.
    pub status: Status,
    /// Totals after every applied adjustment.
    pub totals: Totals,
    /// Adjustments of the rules that accepted, in order.
    pub adjustments: Vec<AppliedAdjustment>,
    /// Reasons of the rejecting rule.
    pub reasons: Vec<RuleReason>,
    /// The retry request, when `status` is `retryable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RuleRetry>,
    /// The failure, when `status` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RuleFailure>,
    /// One entry per rule that ran.
    pub rules: Vec<RuleTrace>,
}

/// An ordered list of configured rules, ready to evaluate orders from many threads.
pub struct RuleChain {
    steps: Vec<Step>,
    /// Whether any step runs natively (benchmark baseline).
    any_native: bool,
}

/// What runs one Wasm step of a chain on an order, given the context so far.
pub(crate) type StepRunner<'a> = dyn FnMut(&Step, &wit::Order, &wit::ChainContext) -> Ran + 'a;

pub(crate) struct Step {
    spec: RuleSpec,
    /// The engine's limits with the rule's own in place.
    limits: Limits,
    /// What its WASI randomness is seeded from.
    seed: OrderSeed,
    /// Its idle instances, when they are reused.
    pool: Option<Pool>,
    /// The rule compiled natively, in the benchmark baseline only.
    native: Option<NativeRule>,
}

impl RuleChain {
    /// Builds a chain; every rule is instantiated and configured once here so that a bad
    /// config is refused now, not on the first order.
    pub fn new(specs: Vec<RuleSpec>) -> Result<Self, ChainError> {
        let mut steps: Vec<Step> = Vec::with_capacity(specs.len());
        for spec in specs {
            let name = spec.plugin.name();
            if steps.iter().any(|s| s.spec.plugin.name() == name) {
                return Err(ChainError::DuplicateRule(name.to_string()));
            }
            let limits =
                spec.limits
                    .apply(spec.plugin.limits())
                    .map_err(|e| ChainError::Limits {
                        rule: name.to_string(),
                        message: e.0,
                    })?;
            let seed = OrderSeed::of_rule(spec.plugin.digest(), &spec.config);
            let instance = configured(&spec, &limits, &seed).map_err(|f| f.named(name))?;
            let pool = match spec.isolation {
                Isolation::Reuse => Some(Pool::new(spec.plugin.engine().clone(), Some(instance))),
                Isolation::Fresh => None,
            };
            let native = match spec.plugin.engine().native_twins() {
                Some(twins) => twins
                    .twin(name, spec.plugin.digest(), &spec.config)
                    .transpose()
                    .map_err(|e| {
                        Failure::new(FailureKind::Configure, format!("{e:#}")).named(name)
                    })?
                    .map(NativeRule::new),
                None => None,
            };
            steps.push(Step {
                spec,
                limits,
                seed,
                pool,
                native,
            });
        }
        let any_native = steps.iter().any(|s| s.native.is_some());
        Ok(Self { steps, any_native })
    }

    /// The rules in order.
    pub fn specs(&self) -> impl Iterator<Item = &RuleSpec> {
        self.steps.iter().map(|s| &s.spec)
    }

    /// Runs every rule on `order` until one rejects, asks for a retry or fails.
    pub fn evaluate(&self, order: &Order) -> Evaluation {
        self.evaluate_with(order, &mut |step, order, context| step.run(order, context))
    }

    /// [`RuleChain::evaluate`], with `run` calling each Wasm step.
    pub(crate) fn evaluate_with(&self, order: &Order, run: &mut StepRunner<'_>) -> Evaluation {
        let wit_order = to_wit_order(order);
        let native_order = self.any_native.then(|| native::to_native_order(&wit_order));
        let mut evaluation = Evaluation {
            status: Status::Accepted,
            totals: Totals::of(order),
            adjustments: Vec::new(),
            reasons: Vec::new(),
            retry: None,
            error: None,
            rules: Vec::with_capacity(self.steps.len()),
        };
        let mut context = wit::ChainContext {
            totals: to_wit_totals(&evaluation.totals),
            adjustments: Vec::new(),
        };
        for step in &self.steps {
            let plugin = &step.spec.plugin;
            let _span = tracing::debug_span!(
                "plugin.evaluate",
                order_id = %order.id,
                rule = plugin.name(),
                rule_digest = plugin.digest()
            )
            .entered();
            let started = Instant::now();
            let Ran {
                result,
                retried_fresh,
                state_leak,
            } = match (&step.native, &native_order) {
                (Some(rule), Some(order)) => Ok((rule.evaluate(order, &context), 0)).into(),
                _ => run(step, &wit_order, &context),
            };
            let duration_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            if state_leak {
                tracing::error!(
                    rule = plugin.name(),
                    version = %plugin.info().version,
                    order_id = %order.id,
                    "the rule's outcome in a reused instance differed from a fresh instance's: \
                     it carries state between orders; this order takes the fresh outcome, and \
                     the rule runs in fresh instances until it is deployed again"
                );
            }
            let (outcome, fuel_used) = match result {
                Ok((outcome, fuel)) => (check_outcome(outcome, plugin), fuel),
                Err(failure) => (Err(failure), 0),
            };
            evaluation.rules.push(RuleTrace {
                name: plugin.name().to_string(),
                version: step_version(step),
                digest: plugin.digest().to_string(),
                outcome: outcome_label(&outcome),
                fuel_used,
                duration_us,
                retried_fresh,
                state_leak,
            });
            if !conclude(&mut evaluation, &mut context, plugin.name(), outcome) {
                break;
            }
        }
        evaluation
    }
}

/// The version a step's trace names (a native twin says so).
fn step_version(step: &Step) -> String {
    let version = &step.spec.plugin.info().version;
    match step.native {
        Some(_) => format!("{version} (native baseline)"),
        None => version.clone(),
    }
}

impl RuleChain {
    /// The steps, for the engine's own tools (profile, breakdown).
    pub(crate) fn steps(&self) -> &[Step] {
        &self.steps
    }
}

impl Step {
    /// The rule, its plugin and config.
    pub(crate) fn spec(&self) -> &RuleSpec {
        &self.spec
    }

    /// The engine's limits with the rule's own in place.
    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// What its randomness is seeded from.
    pub(crate) fn seed(&self) -> &OrderSeed {
        &self.seed
    }

    /// The rule's name.
    pub(crate) fn name(&self) -> &str {
        self.spec.plugin.name()
    }

    /// A new instance of the rule, configured.
    pub(crate) fn fresh_instance(&self) -> Result<Instance, Failure> {
        configured(&self.spec, &self.limits, &self.seed)
    }

    pub(crate) fn run(&self, order: &wit::Order, context: &wit::ChainContext) -> Ran {
        let limits = &self.limits;
        match (&self.spec.isolation, &self.pool) {
            (Isolation::Reuse, Some(pool)) => {
                let fresh = || configured(&self.spec, limits, &self.seed);
                pool.run(fresh, limits, &self.seed, order, context)
            }
            _ => configured(&self.spec, limits, &self.seed)
                .and_then(|mut instance| instance.evaluate(limits, order, context, &self.seed))
                .into(),
        }
    }
}

pub(crate) fn configured(
    spec: &RuleSpec,
    limits: &Limits,
    seed: &OrderSeed,
) -> Result<Instance, Failure> {
    let mut instance = spec.plugin.instantiate(limits, seed)?;
    instance.configure(limits, &spec.config)?;
    Ok(instance)
}
