//! Signed plugins: which rules a worker may run, decided by keys the operator configures.
//!
//! A plugin's author signs a *statement* with an Ed25519 key (`plugin sign`): the
//! component's digest and everything that changes outcomes as much as code does (the
//! rule's name, config, limits and isolation), a validity window and the key's id. The
//! signature travels with the deploy and is stored in the ruleset version beside the
//! rule. When a trust file is configured (`PLUGIN_TRUST_FILE`), the deploy gate refuses a
//! rule whose signature does not verify (FAILED_PRECONDITION naming why), and every
//! worker checks each rule of a version again before it loads it: an unsigned, expired,
//! revoked or badly signed rule refuses the whole version, and the worker keeps the one
//! it runs. The statement is rebuilt from what the version stores, never read from the
//! signature, so a config changed in the registry breaks the signature; the key is the
//! one the trust file gives for the signature's key id, never one the plugin carries.
//!
//! The trust file (TOML) lists keys, each with the rule names it may sign, and revoked
//! keys and digests. It is read again whenever it changes, without a restart; a file
//! that cannot be read or parsed refuses every rule until it is fixed (fail closed).

mod statement;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, UnparsedPublicKey};
use serde::Deserialize;

use crate::domain::ruleset::RuleRef;

pub use statement::{
    MAX_KEY_ID_LEN, SIGNATURE_FILE_FORMAT, STATEMENT_PURPOSE, SignatureFile, SigningKey, Stated,
    check_signature_fields, generate_key,
};

/// Why a rule is not trusted. Each names what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    /// The rule has no signature.
    #[error(
        "rule `{0}` is not signed, and PLUGIN_TRUST_FILE requires a signature: sign it with \
         `order-pipeline plugin sign` and deploy it with the signature"
    )]
    Unsigned(String),
    /// The trust file has no key of that id.
    #[error("rule `{rule}` is signed with key `{key}`, which the trust file does not list")]
    UnknownKey {
        /// The rule.
        rule: String,
        /// The key id.
        key: String,
    },
    /// The key is revoked.
    #[error("rule `{rule}` is signed with key `{key}`, which the trust file revokes")]
    RevokedKey {
        /// The rule.
        rule: String,
        /// The key id.
        key: String,
    },
    /// The digest is revoked.
    #[error("rule `{rule}`: its plugin {digest} is revoked in the trust file")]
    RevokedDigest {
        /// The rule.
        rule: String,
        /// The digest.
        digest: String,
    },
    /// The key may not sign this rule's name.
    #[error("key `{key}` may not sign rule `{rule}` (its rules in the trust file: {patterns})")]
    NotAllowed {
        /// The rule.
        rule: String,
        /// The key id.
        key: String,
        /// The key's patterns.
        patterns: String,
    },
    /// The window has not begun.
    #[error("rule `{rule}`: its signature is valid only from {from} (Unix seconds)")]
    NotYetValid {
        /// The rule.
        rule: String,
        /// Start of the window.
        from: i64,
    },
    /// The window is over.
    #[error(
        "rule `{rule}`: its signature expired at {until} (Unix seconds); sign it again and \
         deploy it with the new signature"
    )]
    Expired {
        /// The rule.
        rule: String,
        /// End of the window.
        until: i64,
    },
    /// The signature does not verify.
    #[error(
        "rule `{rule}`: the signature of key `{key}` does not verify: it was not made with \
         that key, or not for this plugin with this name, config, limits and isolation"
    )]
    BadSignature {
        /// The rule.
        rule: String,
        /// The key id.
        key: String,
    },
    /// The trust file cannot be used.
    #[error("the trust file cannot be used, so no rule is trusted: {0}")]
    NoTrustFile(String),
}

impl Untrusted {
    /// The metric label of the reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unsigned(_) => "unsigned",
            Self::UnknownKey { .. } => "unknown-key",
            Self::RevokedKey { .. } => "revoked-key",
            Self::RevokedDigest { .. } => "revoked-digest",
            Self::NotAllowed { .. } => "key-not-allowed",
            Self::NotYetValid { .. } => "not-yet-valid",
            Self::Expired { .. } => "expired",
            Self::BadSignature { .. } => "bad-signature",
            Self::NoTrustFile(_) => "trust-file",
        }
    }
}

/// The trust file's text form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TrustFile {
    #[serde(default, rename = "key")]
    keys: Vec<KeyEntry>,
    #[serde(default)]
    revoked: Revoked,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct KeyEntry {
    id: String,
    public_key: String,
    #[serde(default = "all_rules")]
    rules: Vec<String>,
}

fn all_rules() -> Vec<String> {
    vec!["*".to_string()]
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct Revoked {
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    digests: Vec<String>,
}

/// A key the trust file lists.
#[derive(Debug)]
struct TrustedKey {
    public_key: Vec<u8>,
    rules: Vec<glob::Pattern>,
}

/// The keys and revocations of a trust file, checked.
#[derive(Debug)]
pub struct Trust {
    keys: BTreeMap<String, TrustedKey>,
    revoked_keys: BTreeSet<String>,
    revoked_digests: BTreeSet<String>,
}

impl Trust {
    /// Parses and checks a trust file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let file: TrustFile =
            toml::from_str(text).with_context(|| format!("{origin} is not a valid trust file"))?;
        if file.keys.is_empty() {
            anyhow::bail!(
                "{origin} lists no [[key]]; add the public key of each signer (`plugin keygen` \
                 prints the entry)"
            );
        }
        let mut keys = BTreeMap::new();
        for entry in file.keys {
            let id = entry.id;
            if id.is_empty() || id.len() > MAX_KEY_ID_LEN || id.chars().any(|c| c.is_control()) {
                anyhow::bail!("{origin}: key id {id:?} must be 1 to {MAX_KEY_ID_LEN} bytes");
            }
            let public_key = BASE64
                .decode(entry.public_key.trim())
                .ok()
                .filter(|k| k.len() == 32)
                .with_context(|| {
                    format!("{origin}: key `{id}`: public-key must be 32 bytes of base64 (Ed25519)")
                })?;
            if entry.rules.is_empty() {
                anyhow::bail!("{origin}: key `{id}`: rules is empty; give patterns, or \"*\"");
            }
            let rules = entry
                .rules
                .iter()
                .map(|p| {
                    glob::Pattern::new(p)
                        .with_context(|| format!("{origin}: key `{id}`: rule pattern {p:?}"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if keys
                .insert(id.clone(), TrustedKey { public_key, rules })
                .is_some()
            {
                anyhow::bail!("{origin}: key `{id}` is listed twice");
            }
        }
        for digest in &file.revoked.digests {
            if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
                anyhow::bail!("{origin}: revoked digest {digest:?} is not a sha256 in hex");
            }
        }
        Ok(Self {
            keys,
            revoked_keys: file.revoked.keys.into_iter().collect(),
            revoked_digests: file
                .revoked
                .digests
                .into_iter()
                .map(|d| d.to_ascii_lowercase())
                .collect(),
        })
    }

    /// Whether `rule` (as a version stores it) may run at `now_unix` (seconds).
    pub fn check(&self, rule: &RuleRef, now_unix: i64) -> Result<(), Untrusted> {
        let name = || rule.name.clone();
        if self.revoked_digests.contains(&rule.digest) {
            return Err(Untrusted::RevokedDigest {
                rule: name(),
                digest: rule.digest.clone(),
            });
        }
        let Some(signature) = &rule.signature else {
            return Err(Untrusted::Unsigned(name()));
        };
        let key_id = &signature.key_id;
        if self.revoked_keys.contains(key_id) {
            return Err(Untrusted::RevokedKey {
                rule: name(),
                key: key_id.clone(),
            });
        }
        let Some(key) = self.keys.get(key_id) else {
            return Err(Untrusted::UnknownKey {
                rule: name(),
                key: key_id.clone(),
            });
        };
        if !key.rules.iter().any(|p| p.matches(&rule.name)) {
            return Err(Untrusted::NotAllowed {
                rule: name(),
                key: key_id.clone(),
                patterns: key
                    .rules
                    .iter()
                    .map(glob::Pattern::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        let bad = || Untrusted::BadSignature {
            rule: name(),
            key: key_id.clone(),
        };
        let bytes = BASE64.decode(&signature.signature).map_err(|_| bad())?;
        let statement = Stated::of(rule)
            .bytes(key_id, signature.not_before_unix, signature.not_after_unix)
            .map_err(|_| bad())?;
        UnparsedPublicKey::new(&ED25519, &key.public_key)
            .verify(&statement, &bytes)
            .map_err(|_| bad())?;
        // The window is checked once the signature is known to be the key's: a forged
        // window is a bad signature, not an expired one.
        if now_unix < signature.not_before_unix {
            return Err(Untrusted::NotYetValid {
                rule: name(),
                from: signature.not_before_unix,
            });
        }
        if now_unix >= signature.not_after_unix {
            return Err(Untrusted::Expired {
                rule: name(),
                until: signature.not_after_unix,
            });
        }
        Ok(())
    }
}

/// What identifies a version of the trust file on disk.
type Stamp = (Option<SystemTime>, u64, u32, u64, i64);

struct Loaded {
    stamp: Option<Stamp>,
    trust: Result<Arc<Trust>, String>,
}

/// The trust file, read again whenever it changes (its modification or change time, size,
/// mode or inode: an edit in place and a file renamed over it alike).
pub struct TrustStore {
    path: PathBuf,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl TrustStore {
    /// Reads the trust file at `path`; fails when it cannot be used, so that a process
    /// never starts with a trust file it cannot read.
    pub fn open(path: &Path) -> anyhow::Result<Arc<Self>> {
        let store = Self {
            path: path.to_path_buf(),
            loaded: Mutex::new(Loaded {
                stamp: None,
                trust: Err("not read yet".into()),
            }),
        };
        store
            .current()
            .map_err(|e| anyhow::anyhow!("PLUGIN_TRUST_FILE: {e}"))?;
        Ok(Arc::new(store))
    }

    /// Where it is read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The trust in force: read again if the file changed since it was last read.
    pub fn current(&self) -> Result<Arc<Trust>, String> {
        let stamp = stamp(&self.path);
        let mut loaded = self
            .loaded
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if loaded.stamp.is_none() || loaded.stamp != stamp.as_ref().ok().copied() {
            let trust = stamp
                .clone()
                .and_then(|_| read_trust(&self.path))
                .map(Arc::new);
            match &trust {
                Ok(trust) => tracing::info!(
                    path = %self.path.display(),
                    keys = trust.keys.len(),
                    revoked_keys = trust.revoked_keys.len(),
                    revoked_digests = trust.revoked_digests.len(),
                    "plugin trust file read"
                ),
                // Once per new reason (a missing file is looked at on every check).
                Err(e) if loaded.trust.as_ref().err() != Some(e) => tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "the plugin trust file cannot be used: every rule is refused until it is fixed"
                ),
                Err(_) => {}
            }
            loaded.trust = trust;
            loaded.stamp = stamp.ok();
        }
        loaded.trust.clone()
    }

    /// Whether `rule` may run now; a refusal is counted by reason.
    pub fn check(&self, rule: &RuleRef) -> Result<(), Untrusted> {
        let checked = self
            .current()
            .map_err(Untrusted::NoTrustFile)
            .and_then(|trust| trust.check(rule, crate::domain::now_unix_ms() / 1000));
        if let Err(e) = &checked {
            metrics::counter!(crate::metrics::PLUGIN_BLOBS_REFUSED, "reason" => e.reason())
                .increment(1);
        }
        checked
    }
}

fn stamp(path: &Path) -> Result<Stamp, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok((
        meta.modified().ok(),
        meta.len(),
        meta.mode(),
        meta.ino(),
        meta.ctime_nsec(),
    ))
}

/// Reads a trust file, refusing one that others may change: anyone who can write it
/// decides which code runs.
fn read_trust(path: &Path) -> Result<Trust, String> {
    use std::os::unix::fs::MetadataExt as _;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "{} can be written by group or others (mode {:o}): whoever can write it decides \
             which plugins run; chmod go-w it",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Trust::parse(&text, &path.display().to_string()).map_err(|e| format!("{e:#}"))
}
