//! What workers tell the rules supervisor (`rules::supervisor`), and how: an
//! [`Observation`] (a quarantine breach, a canary doing worse, a version refused) sent
//! in-process to the supervisor of this process, or through the registry's Redis to the
//! supervisors of other processes (`WORKER_ADMIN=false`). A report read from Redis is
//! untrusted: [`parse_report`] takes only known, bounded fields.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::registry::Registry;

/// How long a worker that reported through Redis waits for it to be handled.
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

/// A report to the supervisor of this process, and where to say it is handled.
pub type Local = (Report, oneshot::Sender<()>);

/// Where a worker sends its reports.
#[derive(Clone)]
pub enum Reporter {
    /// The supervisor of this process; a report is answered once handled.
    Local(mpsc::Sender<Local>),
    /// The supervisors of other processes, through the registry (Redis).
    Remote(Registry),
}

impl Reporter {
    /// Reports `report` and waits until it is handled: in-process, until the supervisor
    /// is done; through Redis, until `handled()` says so (the worker runs what replaces
    /// the observed version or canary, so that the orders the observation was about are
    /// retried under it), for a few seconds at most.
    pub async fn report(&self, report: Report, handled: impl Fn() -> bool) {
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
                while !handled() && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
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
