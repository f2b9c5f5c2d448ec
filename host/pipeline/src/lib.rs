//! order-pipeline: the service library of an order pipeline whose business rules are
//! WebAssembly components run by [`order_rules_engine`].
//!
//! An order flows: gRPC ([`grpc`]) -> the order log ([`order_log`]) -> the [`worker`] (a
//! consumer loop handing batches to the [`processor`], which runs the live ruleset of
//! [`rules`]) -> the result store ([`store`]) -> gRPC. [`app`] starts and stops
//! the roles from a typed [`config`].
//!
//! Layout (see docs/ARCHITECTURE.md):
//! - [`domain`]: the order, the result, their wire format;
//! - [`rules`]: the registry, the live ruleset, the deploy gate, the quarantine;
//! - [`processor`]: decode -> evaluate -> retry -> result, writing nothing; [`shadow`]:
//!   a shadow run's candidate decides the same orders again, off the client's path;
//! - [`worker`]: the one loop around it, over the lanes of any order log;
//! - [`order_log`], [`store`], [`rules::registry`], [`replay`]'s log: the seams, traits
//!   that [`backends`] (embedded redb, Kafka, Redis, each in its own folder) implement;
//!   [`app`]'s assembly is the one place that picks them;
//! - [`grpc`]: the tonic services; [`proto`]: the generated code;
//! - [`readiness`]: the probes behind `grpc.health.v1`; [`metrics`]: Prometheus;
//!   [`telemetry`]: traces (OTLP).

pub mod app;
pub mod backends;
pub mod config;
pub mod domain;
pub mod grpc;
pub mod metrics;
pub mod order_log;
pub mod processor;
pub mod proto;
pub mod readiness;
pub mod replay;
pub mod rules;
pub mod shadow;
pub mod store;
pub mod telemetry;
pub mod waiters;
pub mod worker;

pub use order_builtin_rules as builtin_rules;
pub use order_rules_engine as engine;
