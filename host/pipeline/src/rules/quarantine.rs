//! The quarantine policy: a rule that fails (trap, fuel, deadline, memory, malformed
//! outcome) on more than `failures` of its last `window` evaluations is taken out of the
//! live ruleset through the [gate](super::gate::Gate::take_out), which restores the
//! version before it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use order_rules_engine::{Evaluation, RuleOutcome};

/// When a rule is taken out of the live ruleset: more than `failures` of its last
/// `window` evaluations failed (trap, fuel, deadline, memory, malformed outcome).
#[derive(Debug, Clone, Copy)]
pub struct QuarantinePolicy {
    /// Failures tolerated within the window.
    pub failures: usize,
    /// How many of a rule's latest evaluations are looked at.
    pub window: usize,
}

/// A rule that broke the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breach {
    /// Rule name.
    pub rule: String,
    /// sha256 of its component.
    pub digest: String,
    /// Failures within the window.
    pub failed: usize,
}

/// The latest outcomes of every rule (by digest), held to a [`QuarantinePolicy`].
pub struct FailureWindows {
    policy: QuarantinePolicy,
    /// Latest outcomes (true = failed) per plugin digest.
    windows: Mutex<HashMap<String, VecDeque<bool>>>,
}

impl FailureWindows {
    /// Empty windows for `policy`.
    pub fn new(policy: QuarantinePolicy) -> Self {
        Self {
            policy,
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// The policy.
    pub fn policy(&self) -> QuarantinePolicy {
        self.policy
    }

    /// Records what each rule did; returns a rule that broke the policy, if one did
    /// (and forgets its window, so that it is reported once).
    pub fn observe<'a>(
        &self,
        evaluations: impl IntoIterator<Item = &'a Evaluation>,
    ) -> Option<Breach> {
        let mut windows = self
            .windows
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut broken = None;
        for trace in evaluations.into_iter().flat_map(|e| &e.rules) {
            let window = windows.entry(trace.digest.clone()).or_default();
            window.push_back(trace.outcome == RuleOutcome::Failed);
            while window.len() > self.policy.window {
                window.pop_front();
            }
            let failed = window.iter().filter(|f| **f).count();
            if failed > self.policy.failures {
                broken = Some(Breach {
                    rule: trace.name.clone(),
                    digest: trace.digest.clone(),
                    failed,
                });
            }
        }
        if let Some(breach) = &broken {
            windows.remove(&breach.digest);
        }
        broken
    }
}
