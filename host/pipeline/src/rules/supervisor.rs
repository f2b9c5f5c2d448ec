//! The rules supervisor: the one place the data path's observations become registry
//! writes. Workers observe (a rule breaking the quarantine policy, a canary doing worse
//! than the live version, a version they refuse to load) and *report*; the supervisor
//! decides and writes (the quarantine's take-out and the canary's end through the
//! [gate](super::gate::Gate), and their audit events). So a worker needs no write access to
//! the registry.
//!
//! It runs in every process that serves the AdminService (`run`, `admin`, and `worker`
//! unless `WORKER_ADMIN=false`). A worker in such a process reports to it in-process and
//! waits for the outcome; a worker without one (`WORKER_ADMIN=false`) reports through
//! Redis (a stream beside the registry, which its Redis user may append to) and waits
//! for the version to change. A report is an untrusted claim: the gate checks it against
//! the registry (the version must still be active and hold that plugin; the canary must
//! still run that candidate), so a report can at most restore an earlier version or end
//! a canary, as the worker's own policy would.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::gate::Gate;
use super::live::LiveRuleset;
use super::registry::Registry;
use crate::domain::audit::AuditEntry;

/// How often the supervisor reads the reports of workers in other processes.
const REMOTE_POLL: Duration = Duration::from_millis(250);
/// How long a worker that reported through Redis waits for the version to change.
const REMOTE_WAIT: Duration = Duration::from_secs(3);
/// Longest report read from Redis; longer ones are dropped (logged).
pub const MAX_REPORT_BYTES: usize = 16 * 1024;

/// What a worker saw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Observation {
    /// A rule of `version` failed on more than the quarantine tolerates.
    Breach {
        /// The live version it failed on.
        version: u64,
        /// The rule's name.
        rule: String,
        /// Its plugin's digest.
        digest: String,
        /// Failures within the window.
        failed: usize,
        /// The window (orders).
        window: usize,
    },
    /// A canary's candidate did worse than the live version.
    CanaryWorse {
        /// The candidate version.
        version: u64,
        /// Why, with the figures.
        reason: String,
    },
    /// The worker cannot switch to the active version.
    Refused {
        /// The version it keeps.
        kept_version: u64,
        /// Why.
        reason: String,
    },
}

/// An observation and the worker that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// The worker's name (as in its heartbeat; a claim, recorded as such).
    pub worker: String,
    /// What it saw.
    pub observation: Observation,
}

type Local = (Report, oneshot::Sender<()>);

/// Where a worker sends its reports.
#[derive(Clone)]
pub enum Reporter {
    /// The supervisor of this process; a report is answered once handled.
    Local(mpsc::Sender<Local>),
    /// The supervisors of other processes, through the registry (Redis).
    Remote(Registry),
}

/// What a worker that reported through Redis waits for, a few seconds at most, so that
/// the orders its observation was about are retried under what replaces it.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// This worker no longer runs this version (a quarantine's take-out).
    Left(u64),
    /// This worker no longer runs this canary.
    CanaryEnded(u64),
    /// Nothing to wait for.
    Sent,
}

impl Until {
    fn reached(self, live: &LiveRuleset) -> bool {
        match self {
            Self::Left(version) => live.current().version != version,
            Self::CanaryEnded(version) => {
                live.deciders().canary.map(|(c, _)| c.version) != Some(version)
            }
            Self::Sent => true,
        }
    }
}

impl Reporter {
    /// Reports `report` and waits until it is handled: in-process, until the supervisor
    /// is done; through Redis, until `until` is reached, for a few seconds at most.
    pub async fn report(&self, report: Report, live: &LiveRuleset, until: Until) {
        match self {
            Self::Local(sender) => {
                let (done, handled) = oneshot::channel();
                if sender.send((report, done)).await.is_ok() {
                    let _ = handled.await;
                }
            }
            Self::Remote(registry) => {
                let json = match serde_json::to_string(&report) {
                    Ok(json) => json,
                    Err(e) => return tracing::error!(error = %e, "cannot encode a report"),
                };
                if let Err(e) = registry.push_report(&json).await {
                    tracing::error!(error = %format!("{e:#}"), "cannot report to the rules supervisor");
                    return;
                }
                let deadline = tokio::time::Instant::now() + REMOTE_WAIT;
                while !until.reached(live) && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Turns reports into registry changes and audit events.
pub struct Supervisor {
    gate: Gate,
    live: Arc<LiveRuleset>,
}

impl Supervisor {
    /// A supervisor changing `live`'s registry through the gate.
    pub fn new(live: Arc<LiveRuleset>) -> Self {
        Self {
            gate: Gate::new(Arc::clone(&live)),
            live,
        }
    }

    /// Starts the supervisor: answers the in-process reporter, and reads the reports of
    /// other processes' workers (when the registry is Redis) until `shutdown`.
    pub fn spawn(
        self,
        tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
        shutdown: &CancellationToken,
    ) -> Reporter {
        let remote = self
            .live
            .registry()
            .takes_reports()
            .then(|| self.live.registry().clone());
        self.spawn_with(remote, tasks, shutdown)
    }

    fn spawn_with(
        self,
        remote: Option<Registry>,
        tasks: &mut tokio::task::JoinSet<anyhow::Result<()>>,
        shutdown: &CancellationToken,
    ) -> Reporter {
        let (sender, receiver) = mpsc::channel(64);
        tasks.spawn(Arc::new(self).run(receiver, remote, shutdown.clone()));
        Reporter::Local(sender)
    }

    async fn run(
        self: Arc<Self>,
        mut local: mpsc::Receiver<Local>,
        remote: Option<Registry>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let consumer = format!("supervisor-{}", uuid_like());
        if let Some(remote) = &remote
            && let Err(e) = remote.reports_group().await
        {
            tracing::warn!(error = %format!("{e:#}"), "cannot create the reports group yet; retrying as it reads");
        }
        let mut poll = tokio::time::interval(REMOTE_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                Some((report, done)) = local.recv() => {
                    self.handle(report).await;
                    let _ = done.send(());
                }
                _ = poll.tick(), if remote.is_some() => {
                    let Some(remote) = &remote else { continue };
                    self.read_remote(remote, &consumer).await;
                }
            }
        }
    }

    /// Handles the reports waiting in Redis (each acknowledged once handled).
    async fn read_remote(&self, remote: &Registry, consumer: &str) {
        let reports = match remote.read_reports(consumer).await {
            Ok(reports) => reports,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the workers' reports");
                if let Err(e) = remote.reports_group().await {
                    tracing::debug!(error = %format!("{e:#}"), "reports group");
                }
                return;
            }
        };
        for (id, json) in reports {
            match parse_report(&json) {
                Ok(report) => self.handle(report).await,
                Err(e) => tracing::warn!(error = %e, "a worker's report is not valid; dropped"),
            }
            if let Err(e) = remote.ack_report(&id).await {
                tracing::warn!(error = %format!("{e:#}"), "cannot acknowledge a report");
            }
        }
    }

    /// Acts on one report.
    pub async fn handle(&self, report: Report) {
        let worker = report.worker;
        match report.observation {
            Observation::Breach {
                version,
                rule,
                digest,
                failed,
                window,
            } => {
                self.take_out(&worker, version, &rule, &digest, failed, window)
                    .await;
            }
            Observation::CanaryWorse { version, reason } => {
                self.end_canary(&worker, version, reason).await;
            }
            Observation::Refused {
                kept_version,
                reason,
            } => {
                let args = [("kept_version", kept_version.to_string())];
                self.audit(&worker, "ruleset-refused", args, reason).await;
            }
        }
    }

    /// Takes a rule that broke the quarantine policy out: the gate restores the version
    /// before `version` (if `version` is still active and holds that plugin); the reason
    /// goes into the ruleset history.
    async fn take_out(
        &self,
        worker: &str,
        version: u64,
        rule: &str,
        digest: &str,
        failed: usize,
        window: usize,
    ) {
        let reason = |target: u64| {
            format!(
                "quarantine: rule {rule} ({}) failed {failed} of its last {window} orders; restored version {target}",
                &digest[..digest.len().min(12)],
            )
        };
        let holds = match self.gate.version(version).await {
            Ok(record) => record
                .body
                .rules
                .iter()
                .any(|r| r.digest == digest && r.name == rule),
            Err(e) => {
                tracing::error!(rule, %e, "a quarantine report names a version that cannot be read");
                return;
            }
        };
        if !holds {
            tracing::warn!(
                worker,
                rule,
                digest,
                version,
                "a quarantine report names a rule its version does not hold; ignored"
            );
            return;
        }
        match self.gate.take_out(version, digest, reason).await {
            Ok(Some(new)) => {
                tracing::error!(rule, digest, failed, new_version = new, "rule quarantined");
                metrics::counter!(crate::metrics::QUARANTINES, "rule" => rule.to_string())
                    .increment(1);
                let args = [
                    ("rule", rule.to_string()),
                    ("digest", digest.to_string()),
                    ("failed", failed.to_string()),
                    ("window", window.to_string()),
                    ("from_version", version.to_string()),
                    ("to_version", new.to_string()),
                ];
                self.audit(worker, "quarantine", args, "ok".into()).await;
            }
            // Another report took it out first, or an operator changed the ruleset.
            Ok(None) => {
                if let Err(e) = self.live.refresh().await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot switch after a quarantine");
                }
            }
            Err(error) => {
                tracing::error!(rule, digest, failed, %error, "rule breaks the quarantine policy but cannot be taken out");
            }
        }
    }

    /// Ends a canary whose candidate did worse than the live version: every order goes
    /// back to the live version, and the reason stays in the rollout.
    async fn end_canary(&self, worker: &str, version: u64, reason: String) {
        let outcome = match self.gate.end_canary(version, &reason).await {
            // Another report ended it first (its event is in the trail), or it is over.
            Ok(false) => return,
            Ok(true) => {
                tracing::error!(version, %reason, "canary rolled back");
                metrics::counter!(crate::metrics::CANARY_ROLLBACKS).increment(1);
                "ok".to_string()
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot end the canary");
                format!("error: {e}")
            }
        };
        let args = [("version", version.to_string()), ("reason", reason)];
        self.audit(worker, "canary-rollback", args, outcome).await;
    }

    /// Appends an automatic action to the audit trail (logged at error if it cannot be
    /// written). Its principal is the worker that reported it.
    async fn audit<const N: usize>(
        &self,
        worker: &str,
        action: &str,
        args: [(&str, String); N],
        outcome: String,
    ) {
        let entry = AuditEntry {
            principal: format!("worker:{worker}"),
            action: action.to_string(),
            args: args.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            outcome,
        };
        if let Err(e) = self.live.registry().append_audit(entry).await {
            metrics::counter!(crate::metrics::AUDIT_FAILURES).increment(1);
            tracing::error!(action, error = %format!("{e:#}"), "cannot write the audit event of an automatic action");
        }
    }
}

/// Parses a report read from Redis: bounded in size, every field known, names and
/// reasons bounded too.
pub fn parse_report(json: &str) -> Result<Report, String> {
    if json.len() > MAX_REPORT_BYTES {
        return Err(format!(
            "{} bytes, more than {MAX_REPORT_BYTES}",
            json.len()
        ));
    }
    let report: Report = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let bounded = |s: &str| s.len() <= 4096 && !s.chars().any(|c| c.is_control() && c != '\n');
    let ok = bounded(&report.worker)
        && match &report.observation {
            Observation::Breach { rule, digest, .. } => bounded(rule) && bounded(digest),
            Observation::CanaryWorse { reason, .. } | Observation::Refused { reason, .. } => {
                bounded(reason)
            }
        };
    if !ok {
        return Err("a field is too long or has control characters".into());
    }
    Ok(report)
}

/// A name for this process's consumer of the reports stream.
fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        crate::domain::now_unix_ms().rem_euclid(1_000_000_000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_parsed_strictly() {
        let report = Report {
            worker: "w1".into(),
            observation: Observation::Breach {
                version: 3,
                rule: "rule-chaos".into(),
                digest: "ab".repeat(32),
                failed: 6,
                window: 20,
            },
        };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(parse_report(&json), Ok(report));
        assert!(parse_report(r#"{"worker":"w","observation":{"kind":"drop-table"}}"#).is_err());
        assert!(
            parse_report(r#"{"worker":"w","extra":1,"observation":{"kind":"refused","kept_version":1,"reason":"x"}}"#)
                .is_err()
        );
        let long = format!(
            r#"{{"worker":"w","observation":{{"kind":"refused","kept_version":1,"reason":"{}"}}}}"#,
            "x".repeat(MAX_REPORT_BYTES)
        );
        assert!(parse_report(&long).is_err());
        let control = r#"{"worker":"w\u0007","observation":{"kind":"refused","kept_version":1,"reason":"x"}}"#;
        assert!(parse_report(control).is_err());
    }
}
