//! Safety limits of plugin execution: every call into a rule runs within a deadline, a
//! fuel budget and a memory cap, so that no plugin can hang, starve or crash the host.

use std::time::Duration;

use serde::{Deserialize, Serialize};

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
/// Default number of evaluations after which a reused instance is recycled.
pub const DEFAULT_REUSE_MAX_USES: u64 = 1000;
/// Default share of its memory cap past which a reused instance is recycled (percent).
pub const DEFAULT_REUSE_HIGH_WATER_PERCENT: u8 = 75;
/// Default share of a reused rule's evaluations checked against a fresh instance: one
/// in this many (besides every instance's second evaluation).
pub const DEFAULT_REUSE_CHECK_EVERY: u64 = 100;
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
    /// A reused instance is recycled (dropped, a fresh one configured when needed) after
    /// this many evaluations.
    pub reuse_max_uses: u64,
    /// A reused instance is recycled once its linear memory has grown past this share
    /// of its cap (percent, 1 to 100).
    pub reuse_high_water_percent: u8,
    /// A reused rule's evaluation is also decided in a fresh instance, to catch state
    /// carried between orders: every instance's second evaluation, and one in this many
    /// after that. 0 turns the checks off.
    pub reuse_check_every: u64,
    /// How much each line of the order adds to `evaluate`'s fuel, in percent of `fuel`
    /// (0: the budget does not grow with the order). See [`Limits::fuel_for`].
    pub fuel_per_line_percent: u32,
    /// The most `evaluate`'s fuel may grow to, as a multiple of `fuel` (at least 1).
    pub fuel_max_scale: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            deadline: DEFAULT_DEADLINE,
            fuel: DEFAULT_FUEL,
            memory_bytes: DEFAULT_MEMORY_BYTES,
            max_instances: DEFAULT_MAX_INSTANCES,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            reuse_max_uses: DEFAULT_REUSE_MAX_USES,
            reuse_high_water_percent: DEFAULT_REUSE_HIGH_WATER_PERCENT,
            reuse_check_every: DEFAULT_REUSE_CHECK_EVERY,
            fuel_per_line_percent: 0,
            fuel_max_scale: 1,
        }
    }
}

/// Largest memory cap one rule may be given ([`RuleLimits::memory_mib`]): the pooling
/// allocator lets no linear memory grow past it.
pub const MAX_RULE_MEMORY_MIB: u32 = 1024;
/// Largest [`RuleLimits::fuel_per_line_percent`]: each line may add at most 100 times the
/// base fuel.
pub const MAX_FUEL_PER_LINE_PERCENT: u32 = 10_000;
/// Largest [`RuleLimits::fuel_max_scale`]: an order's budget is at most 1000 times the
/// base fuel.
pub const MAX_FUEL_SCALE: u32 = 1000;
/// Longest deadline one rule may be given ([`RuleLimits::deadline_ms`]).
pub const MAX_RULE_DEADLINE: Duration = Duration::from_secs(10);

/// One rule's own limits, set in its ruleset entry (`[rule.limits]`) or at deploy: each
/// one given replaces the engine's for that rule's calls; the others stay the engine's.
/// An interpreter guest (JavaScript, Python) needs more fuel than a Rust rule, for example.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RuleLimits {
    /// Linear memory cap of one instance, MiB (2 to [`MAX_RULE_MEMORY_MIB`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// Fuel budget of one call (at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// Wall-clock deadline of one call, milliseconds (one epoch tick to
    /// [`MAX_RULE_DEADLINE`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Fuel that scales with the order, as Shopify's scaled limits: each line adds this
    /// percentage of the base fuel to `evaluate`'s budget (0 to
    /// [`MAX_FUEL_PER_LINE_PERCENT`]), up to `fuel-max-scale` times the base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_per_line_percent: Option<u32>,
    /// The most `evaluate`'s fuel may grow to with the order's lines, as a multiple of
    /// the base fuel (1 to [`MAX_FUEL_SCALE`]; default 10 when `fuel-per-line-percent`
    /// is given, else 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel_max_scale: Option<u32>,
}

/// [`RuleLimits::fuel_max_scale`] when only `fuel-per-line-percent` is given.
pub const DEFAULT_FUEL_MAX_SCALE: u32 = 10;

impl RuleLimits {
    /// Whether no limit is given.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }

    /// Checks each given limit; the message names the one to fix.
    pub fn validate(&self) -> Result<(), LimitsError> {
        if let Some(mib) = self.memory_mib
            && !(2..=MAX_RULE_MEMORY_MIB).contains(&mib)
        {
            return Err(LimitsError(format!(
                "memory-mib {mib} is out of range: give 2 to {MAX_RULE_MEMORY_MIB}"
            )));
        }
        if self.fuel == Some(0) {
            return Err(LimitsError("fuel must be at least 1".into()));
        }
        if let Some(percent) = self.fuel_per_line_percent
            && percent > MAX_FUEL_PER_LINE_PERCENT
        {
            return Err(LimitsError(format!(
                "fuel-per-line-percent {percent} is out of range: give 0 to {MAX_FUEL_PER_LINE_PERCENT}"
            )));
        }
        if let Some(scale) = self.fuel_max_scale
            && !(1..=MAX_FUEL_SCALE).contains(&scale)
        {
            return Err(LimitsError(format!(
                "fuel-max-scale {scale} is out of range: give 1 to {MAX_FUEL_SCALE}"
            )));
        }
        if let Some(ms) = self.deadline_ms {
            let deadline = Duration::from_millis(ms);
            if deadline < EPOCH_TICK || deadline > MAX_RULE_DEADLINE {
                return Err(LimitsError(format!(
                    "deadline-ms {ms} is out of range: give {} to {}",
                    EPOCH_TICK.as_millis(),
                    MAX_RULE_DEADLINE.as_millis()
                )));
            }
        }
        Ok(())
    }

    /// `base` with these limits in place of its own.
    pub fn apply(&self, base: &Limits) -> Result<Limits, LimitsError> {
        self.validate()?;
        Ok(Limits {
            memory_bytes: self
                .memory_mib
                .map_or(base.memory_bytes, |mib| (mib as usize) << 20),
            fuel: self.fuel.unwrap_or(base.fuel),
            deadline: self
                .deadline_ms
                .map_or(base.deadline, Duration::from_millis),
            fuel_per_line_percent: self
                .fuel_per_line_percent
                .unwrap_or(base.fuel_per_line_percent),
            fuel_max_scale: match (self.fuel_max_scale, self.fuel_per_line_percent) {
                (Some(scale), _) => scale,
                (None, Some(_)) => DEFAULT_FUEL_MAX_SCALE.max(base.fuel_max_scale),
                (None, None) => base.fuel_max_scale,
            },
            ..base.clone()
        })
    }
}

impl std::fmt::Display for RuleLimits {
    /// `memory-mib=64 fuel=50000000 deadline-ms=500`, the given ones only; `defaults`
    /// when none is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(v) = self.memory_mib {
            parts.push(format!("memory-mib={v}"));
        }
        if let Some(v) = self.fuel {
            parts.push(format!("fuel={v}"));
        }
        if let Some(v) = self.deadline_ms {
            parts.push(format!("deadline-ms={v}"));
        }
        if let Some(v) = self.fuel_per_line_percent {
            parts.push(format!("fuel-per-line-percent={v}"));
        }
        if let Some(v) = self.fuel_max_scale {
            parts.push(format!("fuel-max-scale={v}"));
        }
        if parts.is_empty() {
            f.write_str("defaults")
        } else {
            f.write_str(&parts.join(" "))
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
        if self.reuse_max_uses == 0 {
            return Err("reuse max uses must be at least 1".into());
        }
        if self.fuel_max_scale == 0 {
            return Err("fuel max scale must be at least 1".into());
        }
        if !(1..=100).contains(&self.reuse_high_water_percent) {
            return Err(format!(
                "reuse high-water mark {}% is out of range: give 1 to 100",
                self.reuse_high_water_percent
            ));
        }
        Ok(())
    }

    /// The fuel of one `evaluate` of an order of `lines` lines:
    /// `fuel × clamp(1 + lines × fuel_per_line_percent / 100, 1, fuel_max_scale)`, so
    /// that a rule whose work grows with the order's lines gets a budget that grows
    /// with it, within a bound. Other calls (`configure`, `describe`) get `fuel`.
    pub fn fuel_for(&self, lines: usize) -> u64 {
        if self.fuel_per_line_percent == 0 {
            return self.fuel;
        }
        let base = u128::from(self.fuel);
        let per_line = u128::from(self.fuel_per_line_percent);
        let grown =
            base.saturating_mul((lines as u128).saturating_mul(per_line).saturating_add(100)) / 100;
        let cap = base * u128::from(self.fuel_max_scale.max(1));
        u64::try_from(grown.clamp(base, cap)).unwrap_or(u64::MAX)
    }

    /// The memory size past which a reused instance is recycled.
    pub fn reuse_high_water_bytes(&self) -> usize {
        self.memory_bytes / 100 * usize::from(self.reuse_high_water_percent)
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
    fn fuel_scales_with_the_lines_within_its_bound() {
        let flat = Limits {
            fuel: 1000,
            ..Limits::default()
        };
        assert_eq!(flat.fuel_for(0), 1000);
        assert_eq!(flat.fuel_for(500), 1000);
        let scaled = RuleLimits {
            fuel: Some(1000),
            fuel_per_line_percent: Some(50),
            fuel_max_scale: Some(4),
            ..RuleLimits::default()
        }
        .apply(&Limits::default())
        .unwrap();
        // base × clamp(1 + lines × 0.5, 1, 4)
        assert_eq!(scaled.fuel_for(0), 1000);
        assert_eq!(scaled.fuel_for(1), 1500);
        assert_eq!(scaled.fuel_for(4), 3000);
        assert_eq!(scaled.fuel_for(6), 4000);
        assert_eq!(scaled.fuel_for(1_000_000), 4000);
        // Only a rate given: the scale is capped at 10.
        let rate_only = RuleLimits {
            fuel: Some(1000),
            fuel_per_line_percent: Some(100),
            ..RuleLimits::default()
        };
        assert_eq!(
            rate_only.apply(&Limits::default()).unwrap().fuel_for(50),
            10_000
        );
        assert_eq!(rate_only.to_string(), "fuel=1000 fuel-per-line-percent=100");
        let huge = Limits {
            fuel: u64::MAX,
            fuel_per_line_percent: 10_000,
            fuel_max_scale: 1000,
            ..Limits::default()
        };
        assert_eq!(huge.fuel_for(usize::MAX), u64::MAX);
        let parsed: RuleLimits =
            toml::from_str("fuel-per-line-percent = 5\nfuel-max-scale = 20").unwrap();
        assert_eq!(
            (parsed.fuel_per_line_percent, parsed.fuel_max_scale),
            (Some(5), Some(20))
        );
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

    #[test]
    fn rule_limits_replace_the_given_ones_only() {
        let base = Limits::default();
        let rule = RuleLimits {
            memory_mib: Some(64),
            fuel: None,
            deadline_ms: Some(500),
            ..RuleLimits::default()
        };
        let limits = rule.apply(&base).unwrap();
        assert_eq!(limits.memory_bytes, 64 << 20);
        assert_eq!(limits.fuel, base.fuel);
        assert_eq!(limits.deadline, Duration::from_millis(500));
        assert_eq!(rule.to_string(), "memory-mib=64 deadline-ms=500");
        assert_eq!(RuleLimits::default().apply(&base).unwrap(), base);
        for (bad, word) in [
            (
                RuleLimits {
                    memory_mib: Some(1),
                    ..RuleLimits::default()
                },
                "memory-mib",
            ),
            (
                RuleLimits {
                    memory_mib: Some(4096),
                    ..RuleLimits::default()
                },
                "memory-mib",
            ),
            (
                RuleLimits {
                    fuel: Some(0),
                    ..RuleLimits::default()
                },
                "fuel",
            ),
            (
                RuleLimits {
                    deadline_ms: Some(1),
                    ..RuleLimits::default()
                },
                "deadline-ms",
            ),
            (
                RuleLimits {
                    deadline_ms: Some(60_000),
                    ..RuleLimits::default()
                },
                "deadline-ms",
            ),
        ] {
            let err = bad.apply(&base).unwrap_err().0;
            assert!(err.starts_with(word), "{err}");
        }
        for (bad, word) in [
            (
                RuleLimits {
                    fuel_per_line_percent: Some(10_001),
                    ..RuleLimits::default()
                },
                "fuel-per-line-percent",
            ),
            (
                RuleLimits {
                    fuel_max_scale: Some(0),
                    ..RuleLimits::default()
                },
                "fuel-max-scale",
            ),
        ] {
            let err = bad.apply(&base).unwrap_err().0;
            assert!(err.starts_with(word), "{err}");
        }
        let parsed: RuleLimits = toml::from_str("memory-mib = 32\nfuel = 7").unwrap();
        assert_eq!(parsed.memory_mib, Some(32));
        assert!(toml::from_str::<RuleLimits>("memory = 32").is_err());
    }
}
