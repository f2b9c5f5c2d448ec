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

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::gate::Gate;
use super::live::LiveRuleset;
use super::registry::Registry;
use super::report::{Local, Observation, Report, Reporter, parse_report};
use crate::domain::audit::AuditEntry;

/// How often the supervisor reads the reports of workers in other processes.
const REMOTE_POLL: Duration = Duration::from_millis(250);

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

/// A name for this process's consumer of the reports stream.
fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        crate::domain::now_unix_ms().rem_euclid(1_000_000_000)
    )
}
