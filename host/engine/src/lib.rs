//! order-rules-engine: runs business rules compiled to WebAssembly components (the
//! `order:rules@0.1.0` world in `wit/`) with wasmtime. It knows nothing of Kafka, Redis or
//! gRPC: the pipeline, the benches and the plugin author's tools all use it alone.
//!
//! - [`Engine`] owns the wasmtime engine (component model, fuel, epoch interruption, the
//!   pooling allocator) and the linker that grants plugins their only capability, `log`.
//! - [`Engine::load`] compiles and checks a plugin once: [`Plugin`] keeps its
//!   pre-instantiated form, name, version and sha256 digest.
//! - [`RuleChain`] runs an ordered list of configured plugins on an [`Order`]; each call
//!   gets a deadline, a fuel budget and a memory cap ([`Limits`]).
//! - [`ruleset`] reads rulesets (TOML) into chains; [`runner`] holds the example loader and
//!   comparison shared by `plugin test` and the deploy gate, and the timing of a chain.
//! - [`bundle`]: the examples a plugin carries (its byte format, below [`Plugin`]);
//!   [`bundle_check`] runs them (above [`RuleChain`]).
//! - [`NativeTwins`]: the same rules compiled natively, a benchmark baseline only.
//!
//! Errors: callers branch on [`LoadError`], [`ChainError`] and [`RuleFailure`]; plumbing
//! uses `anyhow` (wasmtime's errors convert into it).

//!
//! This root only declares the modules and re-exports their faces; no module imports it
//! back (`scripts/module-cycles.py`).

mod bindings;
mod breakdown;
pub mod bundle;
pub mod bundle_check;
mod cache;
mod chain;
mod engine;
mod instance;
pub mod limits;
mod native;
pub mod order;
mod plugin;
pub mod profile;
mod reuse;
pub mod ruleset;
pub mod runner;
mod sampling;
mod wasi;

pub use breakdown::FreshCost;
pub use chain::{
    AppliedAdjustment, ChainError, Evaluation, RuleChain, RuleOutcome, RuleReason, RuleRetry,
    RuleSpec, RuleTrace, Status,
};
pub use engine::Engine;
pub use instance::{FailureKind, RuleFailure};
pub use limits::{Limits, LimitsError, RuleLimits};
pub use native::{NativeDecide, NativeTwins};
pub use order::{AdjustmentKind, Order, OrderLine, Totals};
pub use plugin::{Isolation, LoadError, Plugin, PluginInfo, digest};
