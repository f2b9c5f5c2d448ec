//! The audit trail: one append-only event per admin call and per automatic action
//! (quarantine, canary rollback, a ruleset a worker refuses), who did it, what and with
//! what outcome. Each event carries the sha256 of the one before it and of itself, so
//! that an edited, removed or inserted event breaks the chain ([`verify`]). Stored by the
//! registry's backend; retention never trims it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The `prev` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What happened, as its caller tells it; the store numbers and chains it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Who: a principal's name, or `worker:<instance>` for an automatic action.
    pub principal: String,
    /// The admin call (`Deploy`, `Activate`, ...) or the action (`quarantine`, ...).
    pub action: String,
    /// The arguments that matter (a digest, a version, a reason...).
    pub args: BTreeMap<String, String>,
    /// `ok`, or the refusal or error.
    pub outcome: String,
}

/// An event of the trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Its number, from 1, without gaps.
    pub seq: u64,
    /// When it was appended, Unix milliseconds.
    pub at_unix_ms: i64,
    /// Who.
    pub principal: String,
    /// What.
    pub action: String,
    /// With what.
    pub args: BTreeMap<String, String>,
    /// How it ended.
    pub outcome: String,
    /// The hash of the event before it ([`GENESIS`] for the first).
    pub prev: String,
    /// sha256 of `prev` and this event's other fields.
    pub hash: String,
}

impl AuditEvent {
    /// The event after one whose number is `seq - 1` and hash `prev`.
    pub fn chained(entry: AuditEntry, seq: u64, prev: &str, at_unix_ms: i64) -> Self {
        let mut event = Self {
            seq,
            at_unix_ms,
            principal: entry.principal,
            action: entry.action,
            args: entry.args,
            outcome: entry.outcome,
            prev: prev.to_string(),
            hash: String::new(),
        };
        event.hash = event.digest();
        event
    }

    /// sha256 over every field but `hash`, in a fixed encoding.
    fn digest(&self) -> String {
        let unhashed = Self {
            hash: String::new(),
            ..self.clone()
        };
        // serde_json writes struct fields in order and a BTreeMap sorted: one encoding.
        let text = serde_json::to_string(&unhashed).unwrap_or_default();
        hex::encode(Sha256::digest(text.as_bytes()))
    }
}

/// Checks a run of events that starts after `prev` (the hash of the event before the
/// first, or [`GENESIS`]): numbers without gaps, each `prev` the hash before it, each hash
/// its own. `Err` names the first event that does not fit.
pub fn verify<'a>(events: &'a [AuditEvent], mut prev: &'a str) -> Result<(), String> {
    let first = events.first().map_or(1, |e| e.seq);
    for (expected_seq, event) in (first..).zip(events) {
        if event.seq != expected_seq {
            return Err(format!(
                "event {} follows {}: events are missing",
                event.seq,
                expected_seq - 1
            ));
        }
        if event.prev != prev {
            return Err(format!(
                "event {} does not follow the event before it (its prev is not that hash)",
                event.seq
            ));
        }
        if event.digest() != event.hash {
            return Err(format!(
                "event {} was changed (its hash does not match)",
                event.seq
            ));
        }
        prev = &event.hash;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            principal: "dana".into(),
            action: action.into(),
            args: BTreeMap::from([("version".to_string(), "7".to_string())]),
            outcome: "ok".into(),
        }
    }

    #[test]
    fn a_chain_verifies_and_any_edit_breaks_it() {
        let first = AuditEvent::chained(entry("Deploy"), 1, GENESIS, 1000);
        let second = AuditEvent::chained(entry("Activate"), 2, &first.hash, 2000);
        let third = AuditEvent::chained(entry("Rollback"), 3, &second.hash, 3000);
        let chain = vec![first.clone(), second.clone(), third.clone()];
        assert_eq!(verify(&chain, GENESIS), Ok(()));
        assert_eq!(verify(&chain[1..], &first.hash), Ok(()));

        let mut edited = chain.clone();
        edited[1].principal = "mallory".into();
        assert!(
            verify(&edited, GENESIS)
                .unwrap_err()
                .contains("event 2 was changed")
        );
        let mut rehashed = edited.clone();
        rehashed[1].hash = rehashed[1].digest();
        assert!(
            verify(&rehashed, GENESIS)
                .unwrap_err()
                .contains("event 3 does not follow")
        );
        let removed = vec![first, third];
        assert!(verify(&removed, GENESIS).unwrap_err().contains("missing"));
    }
}
