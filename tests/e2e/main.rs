//! End-to-end tests, all of them: the engine on the real compiled plugins, hostile
//! plugins, the plugin author's CLI, the pipeline in embedded mode and against real Redis
//! and Kafka, and the real binary as separate processes. Plugins are built from source by
//! the build script of `host/builtin-rules`. This is the `e2e` test target of `host/cli`
//! (so that it gets the built binary); `support` holds the shared helpers.

// Test code: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod audit;
mod bundle;
mod cli;
mod compose;
mod contract;
mod deploy;
mod embedded;
mod engine;
mod faults;
mod go_workflow;
mod grpc_api;
mod hostile;
mod kafka_worker;
mod languages;
mod metrics;
mod pipeline;
mod principals;
mod processes;
mod readiness;
mod redis_cluster;
mod redis_users;
mod replay;
mod reuse;
mod rollout;
mod server_limits;
mod signing;
mod stalls;
mod status;
mod support;
mod tls;
mod traces;
mod trust;
mod versions;
