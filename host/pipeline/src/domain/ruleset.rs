//! Ruleset versions as the registry stores them: the rules (digests and config), why a
//! version exists, and the compare-and-set that activates one. Plain data, shared by the
//! registry seam (`rules::registry`) and its backends.

use serde::{Deserialize, Serialize};

use order_rules_engine::{Isolation, RuleLimits};

/// One rule of a stored ruleset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    /// Rule name (from the plugin's `describe`).
    pub name: String,
    /// Rule version (from `describe`).
    pub version: String,
    /// sha256 of the component; its bytes are stored under it.
    pub digest: String,
    /// The rule's config.
    pub config: Vec<(String, String)>,
    /// How its instances are used.
    pub isolation: Isolation,
    /// Its own limits (missing in versions stored before rules had them: none).
    #[serde(default, skip_serializing_if = "RuleLimits::is_default")]
    pub limits: RuleLimits,
    /// Its signature (`plugin sign`), over the digest, name, config, limits and isolation
    /// above (`rules::trust`); none when it was deployed unsigned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<PluginSignature>,
}

/// A detached Ed25519 signature of a rule, as deployed and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginSignature {
    /// Which of the trust file's keys made it (the key itself is never taken from here).
    pub key_id: String,
    /// Valid from (Unix seconds).
    pub not_before_unix: i64,
    /// Valid until, exclusive (Unix seconds).
    pub not_after_unix: i64,
    /// The signature, base64 (64 bytes).
    pub signature: String,
}

/// What a ruleset version holds (its number is its key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RulesetBody {
    /// The rules, in order.
    pub rules: Vec<RuleRef>,
    /// Why this version exists.
    pub reason: String,
    /// The version whose contents this one copies (activate, rollback), if any.
    #[serde(default)]
    pub based_on: Option<u64>,
    /// Where a rollback from this version returns to: the version that was active before
    /// it, following the activation history (a rollback's own version inherits the
    /// `previous` of the version it returned to, so rollbacks walk further back). `0`:
    /// none. Missing in versions stored before it was recorded; for those it is the
    /// version before by number ([`RulesetRecord::rollback_target`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    /// When it was made, Unix milliseconds.
    pub created_at_unix_ms: i64,
}

/// A ruleset version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RulesetRecord {
    /// The version number (1, 2, ...).
    pub version: u64,
    /// Its contents.
    pub body: RulesetBody,
}

impl RulesetRecord {
    /// The version a rollback from this one returns to; `None` when there is none.
    pub fn rollback_target(&self) -> Option<u64> {
        match self.body.previous {
            Some(0) => None,
            Some(previous) => Some(previous),
            // Stored before `previous` was: every activation makes a new version, so
            // the one before by number was active before this one.
            None => self.version.checked_sub(1).filter(|v| *v > 0),
        }
    }
}

/// What the active version must be for an activation to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// No ruleset may be active yet (bootstrap).
    Nothing,
    /// This version must be active (nobody changed it meanwhile).
    Version(u64),
}

/// Why an activation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The active version was not the expected one.
    #[error("the active ruleset changed meanwhile (now version {0:?}); look again and retry")]
    Conflict(Option<u64>),
    /// The registry could not be reached or written.
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

/// How much history the registry keeps (`RULESET_HISTORY`, `PLUGIN_GRACE`): the newest
/// `versions` ruleset versions, and the plugin blobs they use. A blob no kept version
/// uses goes once it has not been uploaded or activated for `blob_grace`: a deploy
/// uploads its plugin before it activates the version that uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Ruleset versions kept, the active one (always the newest) included; at least 1.
    pub versions: u64,
    /// How long an unused blob stays after its last upload or activation.
    pub blob_grace: std::time::Duration,
}

/// The newest version a history of `latest` versions drops under `limits` (0: none),
/// keeping `keep_from` (the active version, and any version a rollout uses) and after.
pub fn last_dropped(latest: u64, limits: &HistoryLimits, keep_from: u64) -> u64 {
    latest
        .saturating_sub(limits.versions.max(1))
        .min(keep_from.saturating_sub(1))
}

/// What a collection removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Collected {
    /// Ruleset versions older than the kept history.
    pub versions: u64,
    /// Plugin blobs no kept version uses.
    pub blobs: u64,
}

/// A rollout in progress beside the active version: a shadow run, a canary, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    /// Every order is also evaluated with a candidate, off the client's path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowRun>,
    /// A share of the orders is decided by a candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
    /// The last shadow run that ended (its diff stays readable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_shadow: Option<ShadowRun>,
    /// Why the last canary ended, when it did not end by promotion.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_canary_end: Option<String>,
}

impl Rollout {
    /// The versions it uses (kept by the history limit while it runs).
    pub fn versions(&self) -> impl Iterator<Item = u64> {
        let shadow = self.shadow.as_ref().map(|s| s.version);
        let canary = self.canary.as_ref().map(|c| c.version);
        shadow.into_iter().chain(canary)
    }
}

/// A shadow run: its id names where its results and its diff are kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShadowRun {
    /// The run's id (`shadow-<version>-<ms>`).
    pub id: String,
    /// The candidate ruleset version.
    pub version: u64,
    /// When it started, Unix ms.
    pub started_at_unix_ms: i64,
}

/// A canary: the orders whose id hashes below `basis_points` (of 10,000) are decided by
/// the candidate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    /// The candidate ruleset version.
    pub version: u64,
    /// Its share of the orders, in basis points (100 = 1%).
    pub basis_points: u32,
    /// How far the candidate's rate of failed or rejected orders may exceed the live
    /// version's before the canary ends by itself, in basis points.
    pub margin_basis_points: u32,
    /// When it started, Unix ms.
    pub started_at_unix_ms: i64,
}

impl Canary {
    /// Whether order `id` goes to the candidate: a stable hash of the id (the same on
    /// every worker and every delivery).
    pub fn selects(&self, id: &str) -> bool {
        use sha2::Digest as _;
        let hash = sha2::Sha256::digest(id.as_bytes());
        let bucket = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) % 10_000;
        bucket < self.basis_points
    }
}
