//! One live instance of a plugin: its `Store` (limits, the `log` import, the empty WASI
//! context of [`super::wasi`]), the calls into it, and the classification of everything that can go wrong
//! in a call into a [`FailureKind`].

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wasmtime::{ResourceLimiter, Store, Trap};

use super::bindings::RulePre;
use super::bindings::{self, order::rules::log, order::rules::types as wit};
use super::limits::Limits;
use super::limits::{MAX_LOG_LINE_BYTES, MAX_LOG_LINES_PER_CALL};
use super::sampling::{Sampling, Ticker, locked};
use super::wasi::{OrderSeed, Wasi};

/// What kind of infrastructure failure stopped a rule. Business outcomes (reject,
/// retryable) are not failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The plugin trapped: a panic, `unreachable`, an out-of-bounds access.
    Trap,
    /// The call used up its fuel budget.
    FuelExhausted,
    /// The call ran past its wall-clock deadline.
    DeadlineExceeded,
    /// The plugin tried to grow its memory beyond the cap.
    MemoryLimit,
    /// The plugin answered something the contract forbids (too large, negative amounts...).
    MalformedOutput,
    /// No instance could be created (instance slots exhausted, memory too small...).
    Instantiate,
    /// The plugin refused its configuration.
    Configure,
}

impl FailureKind {
    /// The kind as named in JSON, the API and metrics (`fuel-exhausted`, ...).
    pub fn code(self) -> &'static str {
        match self {
            Self::Trap => "trap",
            Self::FuelExhausted => "fuel-exhausted",
            Self::DeadlineExceeded => "deadline-exceeded",
            Self::MemoryLimit => "memory-limit",
            Self::MalformedOutput => "malformed-output",
            Self::Instantiate => "instantiate",
            Self::Configure => "configure",
        }
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Trap => "trapped",
            Self::FuelExhausted => "ran out of fuel",
            Self::DeadlineExceeded => "exceeded its deadline",
            Self::MemoryLimit => "hit its memory limit",
            Self::MalformedOutput => "returned a malformed outcome",
            Self::Instantiate => "could not be instantiated",
            Self::Configure => "refused its configuration",
        })
    }
}

/// A classified failure of one rule, naming the rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("rule `{rule}` {kind}: {message}")]
pub struct RuleFailure {
    /// Name of the rule that failed.
    pub rule: String,
    /// What went wrong.
    pub kind: FailureKind,
    /// Details for people.
    pub message: String,
}

/// A failure before the rule's name is attached.
#[derive(Debug)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub(crate) fn named(self, rule: &str) -> RuleFailure {
        RuleFailure {
            rule: rule.to_string(),
            kind: self.kind,
            message: self.message,
        }
    }
}

/// Store data of one plugin instance.
pub(crate) struct HostState {
    rule: Arc<str>,
    limiter: MemoryCap,
    log_lines: u32,
    /// The message of a guest panic, as reported by rule-common's panic hook.
    panic: Option<String>,
    /// The WASI context, made on the first WASI call: most rules make none (the
    /// built-in ones import no WASI), and making one costs every fresh instance.
    wasi: Option<Wasi>,
    /// What the WASI randomness is seeded from, and the order of the current call.
    seed: OrderSeed,
    order_id: Option<String>,
    /// The deadline of the current call, named when the call runs past it.
    deadline: Duration,
}

impl HostState {
    /// The WASI context, made now if it was not yet.
    #[cfg_attr(not(feature = "wasi"), allow(dead_code))]
    fn wasi(&mut self) -> &mut Wasi {
        let (seed, order_id) = (&self.seed, &self.order_id);
        self.wasi.get_or_insert_with(|| {
            let wasi = Wasi::new(seed);
            if let Some(id) = order_id {
                wasi.seed_for(seed, id);
            }
            wasi
        })
    }

    /// Seeds the randomness of the next call for order `id`.
    fn seed_for(&mut self, seed: &OrderSeed, id: &str) {
        self.seed = *seed;
        self.order_id = Some(id.to_string());
        if let Some(wasi) = &self.wasi {
            wasi.seed_for(seed, id);
        }
    }

    /// What the plugin wrote to stderr, if it made a WASI context.
    fn stderr(&self) -> String {
        self.wasi.as_ref().map(Wasi::stderr).unwrap_or_default()
    }
}

#[cfg(feature = "wasi")]
impl wasmtime_wasi::WasiView for HostState {
    fn ctx(&mut self) -> wasmtime_wasi::WasiCtxView<'_> {
        self.wasi().view()
    }
}

impl bindings::order::rules::log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) {
        if level == log::Level::Error && message.starts_with("panic: ") {
            // rule-common's panic hook: kept for the trap report that follows.
            self.panic = Some(truncate(&message["panic: ".len()..], 1024).to_string());
        }
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            if self.log_lines == MAX_LOG_LINES_PER_CALL + 1 {
                tracing::warn!(rule = %self.rule, "plugin log limit reached, dropping further lines of this call");
            }
            return;
        }
        let message = truncate(&message, MAX_LOG_LINE_BYTES);
        let rule = &*self.rule;
        match level {
            log::Level::Trace => tracing::trace!(target: "plugin", rule, "{message}"),
            log::Level::Debug => tracing::debug!(target: "plugin", rule, "{message}"),
            log::Level::Info => tracing::info!(target: "plugin", rule, "{message}"),
            log::Level::Warn => tracing::warn!(target: "plugin", rule, "{message}"),
            log::Level::Error => tracing::error!(target: "plugin", rule, "{message}"),
        }
    }
}

impl wit::Host for HostState {}

/// Caps linear memory and remembers whether the cap was hit, so that the trap that
/// follows (Rust aborts when allocation fails) is reported as a memory limit.
struct MemoryCap {
    max_bytes: usize,
    hit: bool,
    /// The largest size a linear memory of the instance has grown to (its initial size
    /// included): what a reused instance is recycled by.
    peak: usize,
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.hit = true;
            return Ok(false);
        }
        self.peak = self.peak.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// A live, configured or not, instance of a plugin.
pub(crate) struct Instance {
    store: Store<HostState>,
    rule: bindings::Rule,
    /// How many times `evaluate` was called.
    uses: u64,
}

impl Instance {
    /// Instantiates the plugin pre-instantiated as `pre` (named `rule`) in a fresh store
    /// of `engine` held to `limits`.
    pub(crate) fn new(
        engine: &wasmtime::Engine,
        limits: &Limits,
        pre: &RulePre<HostState>,
        rule: Arc<str>,
        seed: &OrderSeed,
    ) -> Result<Self, Failure> {
        let store = Self::store(engine, limits, rule, seed)?;
        Self::instantiate_in(store, pre)
    }

    /// A fresh store held to `limits`, with its host state (WASI context, limiter),
    /// armed for the instantiation.
    pub(crate) fn store(
        engine: &wasmtime::Engine,
        limits: &Limits,
        rule: Arc<str>,
        seed: &OrderSeed,
    ) -> Result<Store<HostState>, Failure> {
        let state = HostState {
            rule,
            limiter: MemoryCap {
                max_bytes: limits.memory_bytes,
                hit: false,
                peak: 0,
            },
            log_lines: 0,
            panic: None,
            wasi: None,
            seed: *seed,
            order_id: None,
            deadline: limits.deadline,
        };
        let mut store = Store::new(engine, state);
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        arm(&mut store, limits.fuel, limits)?;
        Ok(store)
    }

    /// Instantiates `pre` in `store` (from [`Instance::store`]).
    pub(crate) fn instantiate_in(
        mut store: Store<HostState>,
        pre: &RulePre<HostState>,
    ) -> Result<Self, Failure> {
        let rule = pre
            .instantiate(&mut store)
            .map_err(|e| classify(&store, e, FailureKind::Instantiate))?;
        Ok(Self {
            store,
            rule,
            uses: 0,
        })
    }

    /// Calls `describe`.
    pub(crate) fn describe(&mut self, limits: &Limits) -> Result<wit::PluginInfo, Failure> {
        self.arm(limits)?;
        self.rule
            .call_describe(&mut self.store)
            .map_err(|e| classify(&self.store, e, FailureKind::Trap))
    }

    /// Calls `configure`; the plugin's own refusal is a [`FailureKind::Configure`].
    pub(crate) fn configure(
        &mut self,
        limits: &Limits,
        config: &[(String, String)],
    ) -> Result<(), Failure> {
        self.arm(limits)?;
        self.rule
            .call_configure(&mut self.store, config)
            .map_err(|e| classify(&self.store, e, FailureKind::Trap))?
            .map_err(|message| Failure::new(FailureKind::Configure, message))
    }

    /// Calls `evaluate`; returns the outcome and the fuel it used.
    pub(crate) fn evaluate(
        &mut self,
        limits: &Limits,
        order: &wit::Order,
        context: &wit::ChainContext,
        seed: &OrderSeed,
    ) -> Result<(wit::Outcome, u64), Failure> {
        // The budget may grow with the order's lines (`Limits::fuel_for`).
        let budget = self.arm_with(limits, limits.fuel_for(order.lines.len()))?;
        self.uses += 1;
        self.store.data_mut().seed_for(seed, &order.id);
        let outcome = self
            .rule
            .call_evaluate(&mut self.store, order, context)
            .map_err(|e| classify(&self.store, e, FailureKind::Trap))?;
        let left = self.store.get_fuel().unwrap_or(0);
        Ok((outcome, budget.saturating_sub(left)))
    }

    /// Calls `evaluate` while `sampling` samples the rule's stack every `interval`; the
    /// rule's fuel, memory and deadline hold as in [`Instance::evaluate`]. The instance
    /// is spent: drop it afterwards.
    pub(crate) fn evaluate_profiled(
        &mut self,
        limits: &Limits,
        order: &wit::Order,
        context: &wit::ChainContext,
        seed: &OrderSeed,
        sampling: &Arc<Mutex<Sampling>>,
        interval: Duration,
    ) -> Result<(wit::Outcome, u64), Failure> {
        locked(sampling).restart(limits.deadline);
        let shared = Arc::clone(sampling);
        self.store
            .epoch_deadline_callback(move |store| locked(&shared).tick(&store));
        // A deadline of one tick: every tick samples, and the callback enforces the
        // rule's own deadline.
        let every_tick = Limits {
            deadline: super::limits::EPOCH_TICK,
            ..limits.clone()
        };
        let _ticker = Ticker::start(self.store.engine().clone(), interval);
        self.evaluate(&every_tick, order, context, seed)
            .map_err(|failure| match failure.kind {
                // The callback stopped it at the rule's deadline, not at the tick's.
                FailureKind::DeadlineExceeded => deadline_exceeded(limits.deadline),
                _ => failure,
            })
    }

    /// How many times `evaluate` was called.
    pub(crate) fn uses(&self) -> u64 {
        self.uses
    }

    /// The largest size its linear memory has grown to, in bytes.
    pub(crate) fn memory_peak(&self) -> usize {
        self.store.data().limiter.peak
    }

    /// Gives the next call a fresh fuel budget and deadline; returns the budget.
    fn arm(&mut self, limits: &Limits) -> Result<u64, Failure> {
        self.arm_with(limits, limits.fuel)
    }

    /// Like [`Instance::arm`], with `fuel` instead of the limits' own.
    fn arm_with(&mut self, limits: &Limits, fuel: u64) -> Result<u64, Failure> {
        self.store.data_mut().log_lines = 0;
        arm(&mut self.store, fuel, limits)?;
        Ok(fuel)
    }
}

/// Gives the next call `fuel` and the deadline of `limits`.
fn arm(store: &mut Store<HostState>, fuel: u64, limits: &Limits) -> Result<(), Failure> {
    store.data_mut().deadline = limits.deadline;
    store.set_epoch_deadline(limits.deadline_ticks());
    store
        .set_fuel(fuel)
        .map_err(|e| Failure::new(FailureKind::Instantiate, format!("setting fuel: {e}")))
}

/// The failure of a call that ran past `deadline`.
fn deadline_exceeded(deadline: Duration) -> Failure {
    Failure::new(
        FailureKind::DeadlineExceeded,
        format!(
            "ran past its {} ms deadline; make the rule faster or raise the deadline",
            deadline.as_millis()
        ),
    )
}

/// Turns a wasmtime error from a call into a classified failure. `other` is the kind of
/// an error that is not a trap (a host-side error of instantiation, say).
fn classify(store: &Store<HostState>, error: wasmtime::Error, other: FailureKind) -> Failure {
    let state = store.data();
    let limits_hit = state.limiter.hit;
    let max_mib = state.limiter.max_bytes >> 20;
    match error.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => Failure::new(
            FailureKind::FuelExhausted,
            "used its whole fuel budget; make the rule cheaper or raise the fuel limit",
        ),
        Some(Trap::Interrupt) => deadline_exceeded(state.deadline),
        Some(_) if limits_hit => Failure::new(
            FailureKind::MemoryLimit,
            format!("tried to grow its memory beyond {max_mib} MiB"),
        ),
        Some(trap) => {
            let stderr = state.stderr();
            let message = if let Some(panic) = &state.panic {
                format!("wasm trap: {trap}; plugin panicked: {panic}")
            } else if stderr.is_empty() {
                format!("wasm trap: {trap}")
            } else {
                format!(
                    "wasm trap: {trap}; plugin stderr: {}",
                    truncate(&stderr, 1024)
                )
            };
            Failure::new(FailureKind::Trap, message)
        }
        None if limits_hit => Failure::new(
            FailureKind::MemoryLimit,
            format!("needs more memory than the {max_mib} MiB cap: {error:#}"),
        ),
        // A host function refused the call (a WASI random request above
        // MAX_RANDOM_BYTES, say): its own words, without wasmtime's backtrace.
        None if other == FailureKind::Trap => Failure::new(
            other,
            format!("the host refused a call: {}", error.root_cause()),
        ),
        None => Failure::new(other, format!("{error:#}")),
    }
}

/// `text` cut to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }

    #[test]
    fn failure_names_the_rule() {
        let failure = Failure::new(FailureKind::FuelExhausted, "used it all").named("rule-x");
        assert_eq!(
            failure.to_string(),
            "rule `rule-x` ran out of fuel: used it all"
        );
        let json = serde_json::to_value(&failure).unwrap();
        assert_eq!(json["kind"], "fuel-exhausted");
    }
}
