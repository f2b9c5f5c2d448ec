//! The `order-pipeline` binary: sets up logging and hands the command line to
//! [`order_pipeline_cli`].

use std::io;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

// Measured: glibc malloc took ~20% of the embedded pipeline's CPU under load (per-order
// stores, strings and JSON across many threads); mimalloc is cheaper there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A .env file, if present, sets variables that are not already set.
    let dotenv = dotenvy::dotenv();
    init_tracing();
    if let Err(e) = dotenv
        && !e.not_found()
    {
        tracing::warn!(error = %e, "ignoring an unreadable .env file");
    }
    let code = order_pipeline_cli::run(std::env::args_os(), &mut io::stdout(), &mut io::stderr());
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// Logs go to stderr; `RUST_LOG` filters (default `info`), `LOG_FORMAT=json` for machines.
fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(io::stderr);
    if std::env::var("LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}
