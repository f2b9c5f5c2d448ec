//! How a command ends: its exit code, and [`Failure`], the error every command returns.

/// Why a command failed: the message printed after `error: ` (exit code 2). Any error
/// that displays converts into it, so commands use `?` on their own error types.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Self(e.to_string())
    }
}

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: an example did not match its expectation.
pub const EXIT_TEST_FAILED: i32 = 1;
/// Exit code: bad usage or input (file missing, plugin refused, invalid JSON...).
pub const EXIT_USAGE: i32 = 2;
