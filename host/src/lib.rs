//! order-pipeline: an order pipeline whose business rules are WebAssembly components
//! that can be tested, deployed and swapped on their own.
//!
//! - [`app`]: starts and stops the roles (OrderService, worker, CacheService).
//! - [`api`]: the gRPC services; [`bus`]: the order log; [`store`]: the result store;
//!   [`embedded`]: the durable embedded log and store; [`worker`]: consume, evaluate,
//!   store, commit.
//! - [`engine`]: the wasmtime host that runs rule plugins within limits.
//! - [`ruleset`]: rulesets (ordered, configured plugins) from TOML, and the built-in plugins.
//! - [`runner`]: the plugin author's tools behind `order-pipeline plugin run|test|bench`.
//! - [`cli`]: the command line.

pub mod api;
pub mod app;
pub mod bench;
pub mod bus;
pub mod cli;
pub mod config;
pub mod embedded;
pub mod engine;
pub mod live;
pub mod order;
pub mod plot;
pub mod proto;
pub mod registry;
pub mod result;
pub mod ruleset;
pub mod runner;
pub mod store;
pub mod worker;
