//! A rollout beside the live ruleset, as a worker runs it: the chains of the shadow
//! candidate and of the canary candidate (built when the registry's rollout changes),
//! which chain decides an order (the canary's share, by a stable hash of its id), and
//! the canary's watch, which ends the canary when the candidate fails or rejects more
//! orders than the live version by the configured margin, as the quarantine takes out a
//! failing rule.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use order_rules_engine::{Evaluation, RuleChain, Status};

use crate::domain::ruleset::{Canary, Rollout, ShadowRun};

/// A ruleset version with its ready chain.
pub struct ActiveChain {
    /// The registry version.
    pub version: u64,
    /// The chain.
    pub chain: RuleChain,
}

/// The rollout this worker runs, with its chains.
#[derive(Default)]
pub struct RolloutChains {
    /// The registry's rollout these chains are of.
    pub rollout: Rollout,
    /// The shadow run and its candidate's chain.
    pub shadow: Option<(ShadowRun, Arc<ActiveChain>)>,
    /// The canary and its candidate's chain.
    pub canary: Option<(Canary, Arc<ActiveChain>)>,
}

/// Who decides orders now: the live chain, and a canary's candidate for its share.
#[derive(Clone)]
pub struct Deciders {
    /// The active version's chain.
    pub live: Arc<ActiveChain>,
    /// The canary, if one runs.
    pub canary: Option<(Canary, Arc<ActiveChain>)>,
}

impl Deciders {
    /// The chain that decides order `id`.
    pub fn for_order(&self, id: &str) -> &Arc<ActiveChain> {
        match &self.canary {
            Some((canary, chain)) if canary.selects(id) => chain,
            _ => &self.live,
        }
    }

    /// Whether `version` is the canary's candidate.
    pub fn is_canary(&self, version: u64) -> bool {
        self.canary
            .as_ref()
            .is_some_and(|(_, chain)| chain.version == version && version != self.live.version)
    }
}

/// Orders of each side a canary's watch looks at.
pub const CANARY_WINDOW: usize = 200;
/// Candidate orders needed before the watch judges.
pub const CANARY_MIN_ORDERS: usize = 20;

/// The latest outcomes (failed or rejected: bad) of the live version and of a canary's
/// candidate.
#[derive(Default)]
pub struct CanaryWatch {
    state: Mutex<Windows>,
}

#[derive(Default)]
struct Windows {
    version: u64,
    live: VecDeque<bool>,
    candidate: VecDeque<bool>,
}

fn push(window: &mut VecDeque<bool>, bad: bool) {
    window.push_back(bad);
    while window.len() > CANARY_WINDOW {
        window.pop_front();
    }
}

fn rate(window: &VecDeque<bool>) -> f64 {
    if window.is_empty() {
        return 0.0;
    }
    window.iter().filter(|b| **b).count() as f64 / window.len() as f64
}

impl CanaryWatch {
    /// Records the evaluations of a batch (with the version that made each); returns why
    /// the canary must end, when its candidate's rate of failed or rejected orders exceeds
    /// the live version's by more than its margin.
    pub fn observe(&self, canary: &Canary, evaluated: &[(u64, &Evaluation)]) -> Option<String> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if state.version != canary.version {
            *state = Windows {
                version: canary.version,
                ..Windows::default()
            };
        }
        for (version, evaluation) in evaluated {
            let bad = matches!(evaluation.status, Status::Failed | Status::Rejected);
            if *version == canary.version {
                push(&mut state.candidate, bad);
            } else {
                push(&mut state.live, bad);
            }
        }
        if state.candidate.len() < CANARY_MIN_ORDERS {
            return None;
        }
        let (live, candidate) = (rate(&state.live), rate(&state.candidate));
        let margin = f64::from(canary.margin_basis_points) / 10_000.0;
        (candidate - live > margin).then(|| {
            let n = state.candidate.len();
            *state = Windows::default();
            format!(
                "canary of version {} ended: {:.1}% of its last {n} orders failed or were rejected, \
                 against {:.1}% on the live version (margin {:.1} points)",
                canary.version,
                candidate * 100.0,
                live * 100.0,
                margin * 100.0
            )
        })
    }
}
