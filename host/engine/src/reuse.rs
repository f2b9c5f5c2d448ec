//! Reused instances (`isolation = "reuse"`) that one order's leftovers cannot turn
//! against another: an instance goes back to the pool only after a successful call, and
//! is recycled (dropped; a fresh one is configured when needed) after
//! [`Limits::reuse_max_uses`] evaluations or once its memory has grown past
//! [`Limits::reuse_high_water_bytes`]. An order that fails in an instance that had
//! served earlier orders is decided again, once, in a fresh instance: only that attempt
//! counts (its result is the order's, and the quarantine sees only it).
//!
//! What this does not give: a rule that keeps data from one order on purpose still sees
//! it in the next order of the same instance. Only fresh instances isolate that.

use std::sync::{Mutex, MutexGuard};

use super::bindings::order::rules::types as wit;
use super::instance::{Failure, Instance};
use super::limits::Limits;
use super::wasi::OrderSeed;

/// Idle instances kept per rule with [`crate::Isolation::Reuse`].
pub const REUSE_POOL_SIZE: usize = 16;

/// What running a step did: its result, and whether a fresh instance decided again
/// after a failure in a reused one.
pub(crate) struct Ran {
    pub result: Result<(wit::Outcome, u64), Failure>,
    pub retried_fresh: bool,
}

impl From<Result<(wit::Outcome, u64), Failure>> for Ran {
    fn from(result: Result<(wit::Outcome, u64), Failure>) -> Self {
        Self {
            result,
            retried_fresh: false,
        }
    }
}

/// The idle instances of one reused rule.
pub(crate) struct Pool {
    idle: Mutex<Vec<Instance>>,
}

impl Pool {
    /// A pool holding `first` (the instance the chain configured when it was built).
    pub(crate) fn new(first: Option<Instance>) -> Self {
        Self {
            idle: Mutex::new(first.into_iter().collect()),
        }
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Instance>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Evaluates the order in an idle instance, or in a new one from `fresh` (a new,
    /// configured instance of the rule); see the module's doc.
    pub(crate) fn run(
        &self,
        fresh: impl Fn() -> Result<Instance, Failure>,
        limits: &Limits,
        seed: &OrderSeed,
        order: &wit::Order,
        context: &wit::ChainContext,
    ) -> Ran {
        let pooled = self.idle().pop();
        let (mut instance, served_before) = match pooled {
            Some(instance) => {
                let served = instance.uses() > 0;
                (instance, served)
            }
            None => match fresh() {
                Ok(instance) => (instance, false),
                Err(failure) => return Err(failure).into(),
            },
        };
        let result = instance.evaluate(limits, order, context, seed);
        if result.is_ok() {
            self.put_back(instance, limits);
            return result.into();
        }
        // After a failure the instance is dropped: its state is not trusted.
        drop(instance);
        if !served_before {
            return result.into();
        }
        let again = fresh().and_then(|mut fresh| {
            let result = fresh.evaluate(limits, order, context, seed);
            if result.is_ok() {
                self.put_back(fresh, limits);
            }
            result
        });
        Ran {
            result: again,
            retried_fresh: true,
        }
    }

    /// Keeps `instance` for the next order unless it is due for recycling.
    fn put_back(&self, instance: Instance, limits: &Limits) {
        let worn = instance.uses() >= limits.reuse_max_uses;
        let grown = instance.memory_peak() > limits.reuse_high_water_bytes();
        if worn || grown {
            return;
        }
        let mut idle = self.idle();
        if idle.len() < REUSE_POOL_SIZE {
            idle.push(instance);
        }
    }
}
