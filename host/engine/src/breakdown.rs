//! Where a fresh instance's time goes (`plugin bench --breakdown`): for each rule of a
//! chain, the store with its host state (WASI context, limiter, fuel and epoch set-up),
//! the instantiation, the `configure` call, the `evaluate` call, and dropping the store
//! (the pooling allocator resets the instance's memory and tables), timed apart over
//! many rounds. Each rule evaluates the order with an empty chain context.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::chain::{RuleChain, to_wit_order, to_wit_totals};
use crate::order::{Order, Totals};

/// The median time of each part of a fresh instance of one rule, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct FreshCost {
    /// The rule.
    pub rule: String,
    /// A new store: host state (WASI context, limiter), fuel and epoch deadline.
    pub store_us: f64,
    /// Instantiating the component in it.
    pub instantiate_us: f64,
    /// The `configure` call.
    pub configure_us: f64,
    /// The `evaluate` call.
    pub evaluate_us: f64,
    /// Dropping the store (the instance's memory and tables are reset for reuse).
    pub drop_us: f64,
    /// The sum of the medians.
    pub total_us: f64,
}

impl RuleChain {
    /// Times the parts of a fresh instance of every rule over `rounds` rounds with
    /// `order`; an error names a rule that failed.
    pub fn fresh_costs(&self, order: &Order, rounds: usize) -> Result<Vec<FreshCost>, String> {
        let wit_order = to_wit_order(order);
        let context = crate::bindings::order::rules::types::ChainContext {
            totals: to_wit_totals(&Totals::of(order)),
            adjustments: Vec::new(),
        };
        let mut costs = Vec::new();
        for step in self.steps() {
            let (spec, limits, seed) = (step.spec(), step.limits(), step.seed());
            let mut parts: [Vec<Duration>; 5] = Default::default();
            for _ in 0..rounds.max(1) {
                let (stored, instantiated, instance) = spec.plugin.instantiate_timed(limits, seed);
                let mut instance =
                    instance.map_err(|f| format!("{}: {}", step.name(), f.message))?;
                let started = Instant::now();
                instance
                    .configure(limits, &spec.config)
                    .map_err(|f| format!("{}: {}", step.name(), f.message))?;
                let configured = started.elapsed();
                let started = Instant::now();
                let outcome = instance.evaluate(limits, &wit_order, &context, seed);
                let evaluated = started.elapsed();
                outcome.map_err(|f| format!("{}: {}", step.name(), f.message))?;
                let started = Instant::now();
                drop(instance);
                let dropped = started.elapsed();
                for (part, time) in
                    parts
                        .iter_mut()
                        .zip([stored, instantiated, configured, evaluated, dropped])
                {
                    part.push(time);
                }
            }
            let [store_us, instantiate_us, configure_us, evaluate_us, drop_us] =
                parts.map(median_us);
            costs.push(FreshCost {
                rule: step.name().to_string(),
                store_us,
                instantiate_us,
                configure_us,
                evaluate_us,
                drop_us,
                total_us: store_us + instantiate_us + configure_us + evaluate_us + drop_us,
            });
        }
        Ok(costs)
    }
}

fn median_us(mut times: Vec<Duration>) -> f64 {
    times.sort_unstable();
    times
        .get(times.len() / 2)
        .map_or(0.0, |t| t.as_secs_f64() * 1e6)
}
