//! End-to-end tests: the engine on the real compiled plugins, hostile plugins, and the
//! plugin author's CLI. Plugins are built from source by the host's build script.

// Test code: a failed unwrap is a failed test with its location.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod engine;
mod hostile;
