//! Reused instances (`isolation = "reuse"`, the default) that one order's leftovers
//! cannot turn against another:
//!
//! - an instance goes back to the pool only after a successful call, and is recycled
//!   (dropped; a fresh one is configured when needed) after [`Limits::reuse_max_uses`]
//!   evaluations or once its memory has grown past [`Limits::reuse_high_water_bytes`];
//! - an order that fails in an instance that had served earlier orders is decided
//!   again, once, in a fresh instance: only that attempt counts (its result is the
//!   order's, and the quarantine sees only it);
//! - **checks**: the second order of every instance (the first one that could see
//!   another order's leftovers), and one evaluation in [`Limits::reuse_check_every`]
//!   after that, is also decided in a fresh instance. When the two outcomes differ, the
//!   rule's outcome depends on what an earlier order left behind: the fresh outcome is
//!   the order's, and the rule runs in fresh instances from then on (until it is built
//!   again, by a deploy or a restart);
//! - idle instances are kept up to [`REUSE_POOL_SIZE`] per rule and, across the
//!   engine, to half its instance slots, so that they never take the slots new
//!   instances need.
//!
//! What this does not give: a rule that keeps data from one order on purpose can still
//! show it in an order that is not checked, until a check catches it. Only fresh
//! instances rule that out.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::Engine;
use super::bindings::order::rules::types as wit;
use super::instance::{Failure, FailureKind, Instance};
use super::limits::Limits;
use super::wasi::OrderSeed;

/// Idle instances kept per rule with [`crate::Isolation::Reuse`].
pub const REUSE_POOL_SIZE: usize = 16;

/// What running a step did: its result, whether a fresh instance decided again after a
/// failure in a reused one, and whether a check found that the reused instance's outcome
/// depended on an earlier order.
pub(crate) struct Ran {
    pub result: Result<(wit::Outcome, u64), Failure>,
    pub retried_fresh: bool,
    pub state_leak: bool,
}

impl From<Result<(wit::Outcome, u64), Failure>> for Ran {
    fn from(result: Result<(wit::Outcome, u64), Failure>) -> Self {
        Self {
            result,
            retried_fresh: false,
            state_leak: false,
        }
    }
}

/// The idle instances of one reused rule.
pub(crate) struct Pool {
    /// Whose idle-instance budget the pool draws on.
    engine: Engine,
    idle: Mutex<Vec<Instance>>,
    /// Evaluations in instances that had served before, for the 1-in-N checks.
    served: AtomicU64,
    /// A check found state carried between orders: every order runs fresh.
    leaked: AtomicBool,
}

impl Pool {
    /// A pool of `engine`'s instances holding `first` (the instance the chain configured
    /// when it was built) if the engine's idle budget allows.
    pub(crate) fn new(engine: Engine, first: Option<Instance>) -> Self {
        let pool = Self {
            engine,
            idle: Mutex::new(Vec::new()),
            served: AtomicU64::new(0),
            leaked: AtomicBool::new(false),
        };
        if let Some(first) = first {
            pool.keep(first);
        }
        pool
    }

    fn idle(&self) -> MutexGuard<'_, Vec<Instance>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// An idle instance, if there is one.
    fn take(&self) -> Option<Instance> {
        let taken = self.idle().pop();
        if taken.is_some() {
            self.engine.release_idle(1);
        }
        taken
    }

    /// Keeps `instance` idle if the pool and the engine's budget have room (and no
    /// check found the rule carrying state); drops it otherwise.
    fn keep(&self, instance: Instance) {
        let mut idle = self.idle();
        if !self.leaked() && idle.len() < REUSE_POOL_SIZE && self.engine.reserve_idle() {
            idle.push(instance);
        }
    }

    /// Drops every idle instance.
    fn clear(&self) {
        let dropped = std::mem::take(&mut *self.idle());
        self.engine.release_idle(dropped.len());
    }

    /// Whether a check found the rule carrying state between orders.
    fn leaked(&self) -> bool {
        self.leaked.load(Ordering::Relaxed)
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
        let in_fresh = || fresh().and_then(|mut i| i.evaluate(limits, order, context, seed));
        if self.leaked() {
            return in_fresh().into();
        }
        let pooled = self.take();
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
        let check = served_before && self.due_for_check(&instance, limits);
        let result = instance.evaluate(limits, order, context, seed);
        match &result {
            Ok((outcome, _)) if check => {
                let checked = in_fresh();
                let reused_stands = match &checked {
                    Ok((fresh_outcome, _)) => fresh_outcome == outcome,
                    // No slot for the check's instance: nothing is known of the rule.
                    Err(failure) => failure.kind == FailureKind::Instantiate,
                };
                if reused_stands {
                    self.put_back(instance, limits);
                    return result.into();
                }
                // The outcome depended on what earlier orders left in the instance.
                self.leaked.store(true, Ordering::Relaxed);
                self.clear();
                return Ran {
                    result: checked,
                    retried_fresh: false,
                    state_leak: true,
                };
            }
            Ok(_) => {
                self.put_back(instance, limits);
                return result.into();
            }
            Err(_) => {}
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
            state_leak: false,
        }
    }

    /// Whether this evaluation in `instance` (which served before) is checked against a
    /// fresh instance: its second one, and one in [`Limits::reuse_check_every`].
    fn due_for_check(&self, instance: &Instance, limits: &Limits) -> bool {
        let every = limits.reuse_check_every;
        let served = self.served.fetch_add(1, Ordering::Relaxed) + 1;
        every > 0 && (instance.uses() == 1 || served.is_multiple_of(every))
    }

    /// Keeps `instance` for the next order unless it is due for recycling.
    fn put_back(&self, instance: Instance, limits: &Limits) {
        let worn = instance.uses() >= limits.reuse_max_uses;
        let grown = instance.memory_peak() > limits.reuse_high_water_bytes();
        if !(worn || grown) {
            self.keep(instance);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.clear();
    }
}
