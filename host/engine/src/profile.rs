//! Guest profiles of one evaluation (`plugin run --profile`): wasmtime's
//! [`wasmtime::GuestProfiler`] samples the rule's stack while its `evaluate` runs. Samples are
//! taken at epoch ticks: for the profiled call a thread of its own advances the engine's
//! epoch every `interval` (default [`DEFAULT_INTERVAL`]), far more often than the
//! deadline ticker, and the store's epoch callback samples instead of trapping, and
//! enforces the rule's deadline itself. The output is the Firefox profiler's processed
//! format (JSON), which <https://profiler.firefox.com> and speedscope open.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bindings::order::rules::types as wit;
use crate::chain::Step;
use crate::instance::{Failure, FailureKind};
use crate::sampling::Sampling;
pub use crate::sampling::{DEFAULT_INTERVAL, Profile};

impl crate::RuleChain {
    /// Evaluates `order` as [`crate::RuleChain::evaluate`] does, sampling the stack of
    /// rule `rule` every `interval` while it evaluates the order `runs` times, each in
    /// a fresh instance (one call of a fast rule may take less than an interval).
    /// Answers the evaluation (of the last run) and the rule's profile, or why there is
    /// none (no such rule, the chain stopped before it, it failed before its
    /// `evaluate`).
    pub fn evaluate_profiled(
        &self,
        order: &crate::Order,
        rule: &str,
        interval: Duration,
        runs: u32,
    ) -> (crate::Evaluation, anyhow::Result<Profile>) {
        if !self.specs().any(|s| s.plugin.name() == rule) {
            let names: Vec<&str> = self.specs().map(|s| s.plugin.name()).collect();
            let evaluation = self.evaluate(order);
            let error = anyhow::anyhow!(
                "the chain has no rule `{rule}`; it has: {}",
                names.join(", ")
            );
            return (evaluation, Err(error));
        }
        let mut profile = None;
        let evaluation = self.evaluate_with(order, &mut |step, order, context| {
            if step.name() != rule {
                return step.run(order, context);
            }
            let (result, recorded) = run_profiled(step, order, context, interval, runs.max(1));
            profile = Some(recorded);
            result.into()
        });
        let profile = profile.unwrap_or_else(|| {
            Err(anyhow::anyhow!(
                "the chain stopped before rule `{rule}` ran"
            ))
        });
        (evaluation, profile)
    }
}

/// Runs the step `runs` times, each in a fresh instance, while a guest profiler
/// samples its `evaluate`; answers the last run's result and the profile.
pub(crate) fn run_profiled(
    step: &Step,
    order: &wit::Order,
    context: &wit::ChainContext,
    interval: std::time::Duration,
    runs: u32,
) -> (
    Result<(wit::Outcome, u64), Failure>,
    anyhow::Result<Profile>,
) {
    let plugin = &step.spec().plugin;
    let profiler = match wasmtime::GuestProfiler::new_component(
        plugin.engine().wasmtime(),
        plugin.name(),
        interval,
        plugin.component().clone(),
        [],
    ) {
        Ok(profiler) => profiler,
        Err(e) => {
            let failure = Failure::new(FailureKind::Instantiate, format!("no profiler: {e}"));
            return (Err(failure), Err(e.into()));
        }
    };
    let sampling = Arc::new(Mutex::new(Sampling::new(profiler)));
    let mut result = Err(Failure::new(FailureKind::Instantiate, "not run"));
    for _ in 0..runs {
        let mut instance = match step.fresh_instance() {
            Ok(instance) => instance,
            Err(failure) => {
                let why = anyhow::anyhow!("the rule failed before its evaluate was called");
                return (Err(failure), Err(why));
            }
        };
        let limits = step.limits();
        let run =
            instance.evaluate_profiled(limits, order, context, step.seed(), &sampling, interval);
        drop(instance);
        let failed = run.is_err();
        result = run;
        if failed {
            break;
        }
    }
    let profile = match Arc::try_unwrap(sampling) {
        Ok(sampling) => sampling
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .finish(plugin.name()),
        Err(_) => Err(anyhow::anyhow!("the profile is still in use")),
    };
    (result, profile)
}
