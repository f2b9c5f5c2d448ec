//! The `order-pipeline` binary: reads `./.env` and hands the command line to
//! [`order_pipeline_cli`], which sets up logging (`LOG_FORMAT`, `RUST_LOG`).

use std::io;
use std::process::ExitCode;

// Measured: glibc malloc took ~20% of the embedded pipeline's CPU under load (per-order
// stores, strings and JSON across many threads); mimalloc is cheaper there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A .env file in the working directory, if present, sets variables that are not
    // already set. Only there: a .env in a parent directory (another project's, or one
    // planted above a shared working directory) is never read.
    if let Err(e) = dotenvy::from_path(".env")
        && !e.not_found()
    {
        eprintln!("warning: ignoring ./.env, which cannot be read: {e}");
    }
    let code = order_pipeline_cli::main(std::env::args_os(), &mut io::stdout(), &mut io::stderr());
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}
