//! Per-worker status: every worker publishes a heartbeat to the registry (its instance
//! id, the ruleset version it runs, why it could not switch to the active one, how many
//! orders it processed, and each rule's recent durations, fuel and failures), and
//! `order-pipeline plugin status` lists the live ones through the AdminService.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use order_rules_engine::{Evaluation, RuleOutcome};
use tokio_util::sync::CancellationToken;

use super::live::LiveRuleset;
pub use crate::domain::heartbeat::{RuleStatus, WorkerStatus};
use crate::domain::now_unix_ms;

/// How often a worker publishes its heartbeat.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// How long a heartbeat counts: a worker silent for longer is not listed.
pub const HEARTBEAT_TTL: Duration = Duration::from_secs(15);
/// The latest evaluations of a rule version its percentiles are taken over.
const WINDOW: usize = 1024;

#[derive(Default)]
struct Window {
    evaluations: u64,
    failures: u64,
    /// (duration µs, fuel or None when failed), the latest [`WINDOW`], oldest overwritten.
    samples: Vec<(u64, Option<u64>)>,
    next: usize,
}

/// Collects what the heartbeat reports, as the worker evaluates.
#[derive(Default)]
pub struct WorkerStats {
    orders: AtomicU64,
    /// By rule name, then version: looked up by `&str`, so that recording allocates
    /// nothing once a rule version is known (it runs for every rule of every order).
    rules: Mutex<HashMap<String, HashMap<String, Window>>>,
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl WorkerStats {
    /// Counts `count` processed orders.
    pub fn processed(&self, count: usize) {
        self.orders.fetch_add(count as u64, Ordering::Relaxed);
    }

    /// Records every rule of one evaluation.
    pub fn record(&self, evaluation: &Evaluation) {
        let mut rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        for rule in &evaluation.rules {
            let versions = match rules.get_mut(rule.name.as_str()) {
                Some(versions) => versions,
                None => rules.entry(rule.name.clone()).or_default(),
            };
            let window = match versions.get_mut(rule.version.as_str()) {
                Some(window) => window,
                None => versions.entry(rule.version.clone()).or_default(),
            };
            window.evaluations += 1;
            let failed = rule.outcome == RuleOutcome::Failed;
            if failed {
                window.failures += 1;
            }
            let sample = (rule.duration_us, (!failed).then_some(rule.fuel_used));
            if window.samples.len() < WINDOW {
                window.samples.push(sample);
            } else {
                window.samples[window.next] = sample;
            }
            window.next = (window.next + 1) % WINDOW;
        }
    }

    /// The figures so far, by rule name and version.
    pub fn rules(&self) -> Vec<RuleStatus> {
        let rules = self.rules.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out: Vec<RuleStatus> = rules
            .iter()
            .flat_map(|(name, versions)| {
                versions.iter().map(move |(version, w)| (name, version, w))
            })
            .map(|(name, version, window)| {
                let mut durations: Vec<u64> = window.samples.iter().map(|s| s.0).collect();
                durations.sort_unstable();
                let mut fuel: Vec<u64> = window.samples.iter().filter_map(|s| s.1).collect();
                fuel.sort_unstable();
                RuleStatus {
                    name: name.clone(),
                    version: version.clone(),
                    evaluations: window.evaluations,
                    failures: window.failures,
                    p50_us: percentile(&durations, 0.5),
                    p99_us: percentile(&durations, 0.99),
                    fuel_p50: percentile(&fuel, 0.5),
                    fuel_p99: percentile(&fuel, 0.99),
                }
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }

    /// This worker's heartbeat now.
    pub fn status(&self, instance: &str, live: &LiveRuleset) -> WorkerStatus {
        WorkerStatus {
            instance: instance.to_string(),
            ruleset_version: live.current().version,
            last_error: live.last_error(),
            orders: self.orders.load(Ordering::Relaxed),
            rules: self.rules(),
            at_unix_ms: now_unix_ms(),
        }
    }
}

/// Publishes this worker's heartbeat to the registry every [`HEARTBEAT_EVERY`] until
/// `shutdown` (a failed publish is logged and tried again at the next beat).
pub async fn publish(
    live: Arc<LiveRuleset>,
    stats: Arc<WorkerStats>,
    instance: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut every = tokio::time::interval(HEARTBEAT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        let status = stats.status(&instance, &live);
        match live.registry().put_heartbeat(&status, HEARTBEAT_TTL).await {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %format!("{e:#}"), "cannot publish this worker's heartbeat");
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_the_latest_window() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.5), 50);
        assert_eq!(percentile(&sorted, 0.99), 99);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
