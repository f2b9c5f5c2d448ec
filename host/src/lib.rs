//! order-pipeline: an order pipeline whose business rules are WebAssembly components
//! that can be tested, deployed and swapped on their own.
//!
//! - [`engine`]: the wasmtime host that runs rule plugins within limits.
//! - [`ruleset`]: rulesets (ordered, configured plugins) from TOML, and the built-in plugins.
//! - [`runner`]: the plugin author's tools behind `order-pipeline plugin run|test|bench`.
//! - [`cli`]: the command line.

pub mod cli;
pub mod engine;
pub mod order;
pub mod ruleset;
pub mod runner;
