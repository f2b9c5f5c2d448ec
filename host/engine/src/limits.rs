//! Safety limits of plugin execution: every call into a rule runs within a deadline, a
//! fuel budget and a memory cap, so that no plugin can hang, starve or crash the host.

use std::time::Duration;

/// Default wall-clock deadline of one call into a rule (`configure` or `evaluate`).
pub const DEFAULT_DEADLINE: Duration = Duration::from_millis(100);
/// Default fuel (about one unit per WebAssembly instruction) of one call into a rule.
pub const DEFAULT_FUEL: u64 = 10_000_000;
/// Default cap on the linear memory of one rule instance.
pub const DEFAULT_MEMORY_BYTES: usize = 16 << 20;
/// Default number of rule instances that may be alive at once (the pooling allocator's
/// slots, shared by every rule and thread of the process).
pub const DEFAULT_MAX_INSTANCES: u32 = 256;
/// Default largest outcome a rule may return, counted in bytes of text.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 64 << 10;
/// Most log lines one call may emit; the rest are dropped with one warning.
pub const MAX_LOG_LINES_PER_CALL: u32 = 32;
/// Longest log line kept; longer ones are cut.
pub const MAX_LOG_LINE_BYTES: usize = 1024;
/// How much a rule's stderr (where a Rust panic message goes) is kept for error reports.
pub const MAX_STDERR_BYTES: usize = 4096;

/// Most bytes one WASI `get-random-bytes` (or `get-insecure-random-bytes`) call may ask
/// for: the host builds the answer before the guest's memory limit applies, so a larger
/// request traps instead of allocating it. 64 KiB is far more than any rule needs (a
/// UUID takes 16 bytes, a hash seed 16-32); wasmtime-wasi's own bound is 64 MiB.
pub const MAX_RANDOM_BYTES: u64 = 64 << 10;
/// Most adjustments one rule may return.
pub const MAX_ADJUSTMENTS: usize = 32;
/// Most reasons one rejection may carry.
pub const MAX_REASONS: usize = 32;
/// How often the epoch ticker advances; deadlines are enforced to within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The limits an engine enforces on every plugin call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Wall-clock deadline of one call.
    pub deadline: Duration,
    /// Fuel budget of one call.
    pub fuel: u64,
    /// Linear memory cap of one instance.
    pub memory_bytes: usize,
    /// Instances alive at once across the process.
    pub max_instances: u32,
    /// Largest outcome, in bytes of text.
    pub max_output_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: DEFAULT_DEADLINE,
            fuel: DEFAULT_FUEL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            max_instances: DEFAULT_MAX_INSTANCES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// Limits that cannot work; the message says which one to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LimitsError(pub String);

impl Limits {
    /// Checks that the limits can work; the message says which one to fix.
    pub fn validate(&self) -> Result<(), LimitsError> {
        self.check().map_err(LimitsError)
    }

    fn check(&self) -> Result<(), String> {
        if self.deadline < EPOCH_TICK {
            return Err(format!(
                "deadline {:?} is shorter than the epoch tick {EPOCH_TICK:?}",
                self.deadline
            ));
        }
        if self.fuel == 0 {
            return Err("fuel must be at least 1".into());
        }
        if self.memory_bytes < (2 << 20) {
            return Err(format!(
                "memory cap {} bytes is below 2 MiB, too small for a Rust plugin",
                self.memory_bytes
            ));
        }
        if self.max_instances == 0 {
            return Err("max instances must be at least 1".into());
        }
        Ok(())
    }

    /// The deadline in epoch ticks, rounded up.
    pub fn deadline_ticks(&self) -> u64 {
        let tick = EPOCH_TICK.as_micros().max(1);
        u64::try_from(self.deadline.as_micros().div_ceil(tick)).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_ticks_round_up() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let limits = Limits {
            deadline: Duration::from_millis(12),
            ..Limits::default()
        };
        assert_eq!(limits.deadline_ticks(), 3);
    }

    #[test]
    fn invalid_limits_name_the_problem() {
        let bad = Limits {
            memory_bytes: 1024,
            ..Limits::default()
        };
        assert!(bad.validate().unwrap_err().0.contains("memory cap"));
        let bad = Limits {
            deadline: Duration::ZERO,
            ..Limits::default()
        };
        assert!(bad.validate().unwrap_err().0.contains("deadline"));
    }
}
