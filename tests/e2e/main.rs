//! End-to-end tests: the engine on the real compiled plugins, hostile plugins, the
//! plugin author's CLI, and the pipeline in embedded mode and against real Redis and Kafka. Plugins are built from source by the host's build script.

// Test code: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod deploy;
mod embedded;
mod engine;
mod hostile;
mod pipeline;
