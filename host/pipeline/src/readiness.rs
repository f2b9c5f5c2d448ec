//! Readiness: whether this process can do its work right now. Each role's dependencies
//! are probed ([`probe`]): Kafka (the OrderService and the worker), Redis (the worker and
//! the CacheService), and the worker's ruleset (it cannot build the registry's active
//! version). While any of them has a problem, every gRPC server of the process answers
//! `grpc.health.v1` with NOT_SERVING and the reasons ([`crate::grpc::health`]), and the
//! gauge `order_pipeline_ready{check}` is 0. It turns back to SERVING on its own once the
//! probe succeeds again.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How often the dependencies are probed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(2);
/// How long one probe may take before it counts as a failure.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The checks that currently fail, by name (`kafka`, `redis`, `ruleset`), with why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Problems(BTreeMap<&'static str, String>);

impl Problems {
    /// Whether nothing fails.
    pub fn is_ready(&self) -> bool {
        self.0.is_empty()
    }

    /// One line naming every failing check and why (empty when ready).
    pub fn reason(&self) -> String {
        self.0
            .iter()
            .map(|(check, why)| format!("{check}: {why}"))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The process's readiness, shared by its probes and its gRPC servers.
#[derive(Debug)]
pub struct Readiness {
    problems: watch::Sender<Problems>,
}

impl Default for Readiness {
    fn default() -> Self {
        Self {
            problems: watch::Sender::new(Problems::default()),
        }
    }
}

impl Readiness {
    /// Records the outcome of check `check`: `None` when it passed, or why it failed.
    /// Logs when a check starts and stops failing.
    pub fn set(&self, check: &'static str, problem: Option<String>) {
        self.problems.send_if_modified(|problems| match problem {
            Some(why) => {
                let previous = problems.0.insert(check, why.clone());
                if previous.is_none() {
                    tracing::warn!(check, problem = %why, "not ready");
                }
                previous.as_ref() != Some(&why)
            }
            None => {
                let was = problems.0.remove(check).is_some();
                if was {
                    tracing::info!(check, "ready again");
                }
                was
            }
        });
        metrics::gauge!(crate::metrics::READY, "check" => check).set(
            if self.problems.borrow().0.contains_key(check) {
                0.0
            } else {
                1.0
            },
        );
    }

    /// The current problems, updated as they change.
    pub fn subscribe(&self) -> watch::Receiver<Problems> {
        self.problems.subscribe()
    }

    /// The current problems.
    pub fn problems(&self) -> Problems {
        self.problems.borrow().clone()
    }
}

/// Runs `check` every [`PROBE_INTERVAL`] (each within [`PROBE_TIMEOUT`]) until
/// `shutdown`, recording its outcome as check `name`.
pub async fn probe<F, Fut>(
    readiness: Arc<Readiness>,
    name: &'static str,
    check: F,
    shutdown: CancellationToken,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut + Send,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    readiness.set(name, None);
    let mut every = tokio::time::interval(PROBE_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            _ = every.tick() => {}
        }
        let outcome = match tokio::time::timeout(PROBE_TIMEOUT, check()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some(format!(
                "no answer within {} s",
                PROBE_TIMEOUT.as_secs_f64()
            )),
        };
        readiness.set(name, outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_are_reported_until_their_check_passes() {
        let readiness = Readiness::default();
        let mut seen = readiness.subscribe();
        assert!(readiness.problems().is_ready());
        readiness.set("redis", Some("connection refused".into()));
        readiness.set("kafka", Some("timed out".into()));
        assert!(seen.has_changed().unwrap_or(false));
        let problems = readiness.problems();
        assert!(!problems.is_ready());
        assert_eq!(
            problems.reason(),
            "kafka: timed out; redis: connection refused"
        );
        readiness.set("redis", None);
        assert_eq!(readiness.problems().reason(), "kafka: timed out");
        readiness.set("kafka", None);
        assert!(readiness.problems().is_ready());
        seen.mark_unchanged();
        readiness.set("kafka", None);
        assert!(!seen.has_changed().unwrap_or(true), "no change, no wake-up");
    }
}
