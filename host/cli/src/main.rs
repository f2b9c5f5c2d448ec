//! The `order-pipeline` binary: reads `.env` and hands the command line to
//! [`order_pipeline_cli`], which sets up logging (`LOG_FORMAT`, `RUST_LOG`).

use std::io;
use std::process::ExitCode;

// Measured: glibc malloc took ~20% of the embedded pipeline's CPU under load (per-order
// stores, strings and JSON across many threads); mimalloc is cheaper there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A .env file, if present, sets variables that are not already set.
    if let Err(e) = dotenvy::dotenv()
        && !e.not_found()
    {
        eprintln!("warning: ignoring an unreadable .env file: {e}");
    }
    let code = order_pipeline_cli::main(std::env::args_os(), &mut io::stdout(), &mut io::stderr());
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
