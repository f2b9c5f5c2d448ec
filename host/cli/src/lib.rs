//! The command line: the pipeline roles (`run`, the default, and `order-service`,
//! `worker`, `cache-service`, `admin`), the `submit`/`get` clients, and the plugin tools
//! (`plugin run|test|bench|inspect|deploy|...`). Kept in the library (with the output
//! streams passed in) so that tests can run commands and check their output and exit
//! codes.
//!
//! - [`entry`]: the command line as clap parses it, and its dispatch;
//! - `commands`: one module per command, owning its arguments; `shared_args`: the
//!   arguments several take; `config_args`: the pipeline's configuration;
//! - `exit`: the exit codes and the error every command returns.
//!
//! This root only declares the modules and re-exports their faces; no module imports it
//! back (`scripts/module-cycles.py`).

mod commands;
mod config_args;
pub mod entry;
mod exit;
mod loadgen;
mod shared_args;
mod tls;

pub use commands::serve::shutdown_signal;
pub use entry::{Cli, main, run};
pub use exit::{EXIT_OK, EXIT_TEST_FAILED, EXIT_USAGE};
pub use loadgen::cpu::listener_pid;
