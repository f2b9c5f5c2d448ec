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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::domain::ruleset::{PluginSignature, RuleRef};
use order_rules_engine::{Isolation, RuleLimits};

/// What a signature statement says it is, first in every statement: a signature made for
/// anything else never verifies as a plugin's.
pub const STATEMENT_PURPOSE: &str = "order-pipeline plugin statement v1";
/// The `format` of a signature file.
pub const SIGNATURE_FILE_FORMAT: &str = "order-pipeline-plugin-signature/1";
/// The PEM label of a private key file (PKCS#8, as OpenSSL writes Ed25519 keys).
const PEM_LABEL: &str = "PRIVATE KEY";
/// Longest key id.
pub const MAX_KEY_ID_LEN: usize = 128;

/// The limits as a statement covers them: every field, 0 for "the workers' default".
#[derive(Debug, Serialize)]
struct StatedLimits {
    memory_mib: u32,
    fuel: u64,
    deadline_ms: u64,
    fuel_per_line_percent: u32,
    fuel_max_scale: u32,
}

/// The bytes a plugin's signature is over. JSON with its fields in a fixed order, the
/// config sorted by key: the same rule always gives the same bytes.
#[derive(Debug, Serialize)]
struct Statement<'a> {
    purpose: &'static str,
    rule: &'a str,
    digest: &'a str,
    config: BTreeMap<&'a str, &'a str>,
    isolation: &'static str,
    limits: StatedLimits,
    key_id: &'a str,
    not_before_unix: i64,
    not_after_unix: i64,
}

/// What a signature covers, apart from the signature itself.
#[derive(Debug, Clone, Copy)]
pub struct Stated<'a> {
    /// The rule's name (from the plugin's `describe`).
    pub rule: &'a str,
    /// sha256 of the component.
    pub digest: &'a str,
    /// Its config.
    pub config: &'a [(String, String)],
    /// How its instances are used.
    pub isolation: Isolation,
    /// Its own limits.
    pub limits: RuleLimits,
}

impl<'a> Stated<'a> {
    /// What `rule` (as a version stores it) says.
    pub fn of(rule: &'a RuleRef) -> Self {
        Self {
            rule: &rule.name,
            digest: &rule.digest,
            config: &rule.config,
            isolation: rule.isolation,
            limits: rule.limits,
        }
    }

    /// The statement's bytes with this key id and window.
    pub fn bytes(
        &self,
        key_id: &str,
        not_before_unix: i64,
        not_after_unix: i64,
    ) -> serde_json::Result<Vec<u8>> {
        let statement = Statement {
            purpose: STATEMENT_PURPOSE,
            rule: self.rule,
            digest: self.digest,
            config: self
                .config
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect(),
            isolation: self.isolation.as_str(),
            limits: StatedLimits {
                memory_mib: self.limits.memory_mib.unwrap_or(0),
                fuel: self.limits.fuel.unwrap_or(0),
                deadline_ms: self.limits.deadline_ms.unwrap_or(0),
                fuel_per_line_percent: self.limits.fuel_per_line_percent.unwrap_or(0),
                fuel_max_scale: self.limits.fuel_max_scale.unwrap_or(0),
            },
            key_id,
            not_before_unix,
            not_after_unix,
        };
        serde_json::to_vec(&statement)
    }
}

/// A signature file (`plugin sign` writes it beside the plugin as `NAME.wasm.sig`): the
/// signature and, for people and for the CLI's own comparison before a deploy, what it
/// covers. Only `key_id`, the window and `signature` are sent; the rest is rebuilt from
/// the rule as deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// [`SIGNATURE_FILE_FORMAT`].
    pub format: String,
    /// The rule's name.
    pub rule: String,
    /// The component's sha256.
    pub digest: String,
    /// The config signed.
    pub config: BTreeMap<String, String>,
    /// The isolation signed.
    pub isolation: Isolation,
    /// The limits signed.
    #[serde(default)]
    pub limits: RuleLimits,
    /// The signature.
    #[serde(flatten)]
    pub signature: PluginSignature,
}

impl SignatureFile {
    /// Reads and checks a signature file.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the signature {}", path.display()))?;
        let file: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a plugin signature file", path.display()))?;
        if file.format != SIGNATURE_FILE_FORMAT {
            anyhow::bail!(
                "{}: format {:?} is not {SIGNATURE_FILE_FORMAT:?}",
                path.display(),
                file.format
            );
        }
        check_signature_fields(&file.signature).with_context(|| path.display().to_string())?;
        Ok(file)
    }

    /// The first way `stated` differs from what this file signed, if any ("config key
    /// `rate` is 0.2 here, 0.1 in the signature").
    pub fn differs_from(&self, stated: &Stated<'_>) -> Option<String> {
        if self.rule != stated.rule {
            return Some(format!(
                "the plugin is rule `{}`, the signature is for `{}`",
                stated.rule, self.rule
            ));
        }
        if self.digest != stated.digest {
            return Some(format!(
                "the plugin's digest is {}, the signature is for {}",
                stated.digest, self.digest
            ));
        }
        let config: BTreeMap<String, String> = stated.config.iter().cloned().collect();
        if config != self.config {
            let keys: BTreeSet<&String> = config.keys().chain(self.config.keys()).collect();
            for key in keys {
                let (here, signed) = (config.get(key), self.config.get(key));
                if here != signed {
                    let show = |v: Option<&String>| v.map_or("unset".to_string(), |v| v.clone());
                    return Some(format!(
                        "config key `{key}` is {} here, {} in the signature",
                        show(here),
                        show(signed)
                    ));
                }
            }
        }
        if self.isolation != stated.isolation {
            return Some(format!(
                "isolation is {} here, {} in the signature",
                stated.isolation, self.isolation
            ));
        }
        if self.limits != stated.limits {
            return Some(format!(
                "the limits differ from the signature's ({:?} here, {:?} signed)",
                stated.limits, self.limits
            ));
        }
        None
    }
}

/// Checks the form of a signature from outside (a deploy, a file): a key id of 1 to
/// [`MAX_KEY_ID_LEN`] printable characters, a window that is not empty, and 64 bytes of
/// base64 signature.
pub fn check_signature_fields(signature: &PluginSignature) -> anyhow::Result<()> {
    let id = &signature.key_id;
    if id.is_empty() || id.len() > MAX_KEY_ID_LEN || id.chars().any(|c| c.is_control()) {
        anyhow::bail!(
            "signature.key_id must be 1 to {MAX_KEY_ID_LEN} bytes without control characters"
        );
    }
    if signature.not_after_unix <= signature.not_before_unix {
        anyhow::bail!("signature: not_after_unix must be later than not_before_unix");
    }
    let bytes = BASE64
        .decode(&signature.signature)
        .map_err(|e| anyhow::anyhow!("signature.signature is not base64: {e}"))?;
    if bytes.len() != 64 {
        anyhow::bail!(
            "signature.signature must be an Ed25519 signature (64 bytes), not {} bytes",
            bytes.len()
        );
    }
    Ok(())
}

/// A new Ed25519 key: its private half as PKCS#8 PEM, and its public half as base64 (32
/// bytes), as the trust file takes it.
pub fn generate_key() -> anyhow::Result<(String, String)> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| anyhow::anyhow!("cannot read back the generated key"))?;
    let b64 = BASE64.encode(pkcs8.as_ref());
    let mut pem = format!("-----BEGIN {PEM_LABEL}-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.extend(line.iter().map(|&b| char::from(b)));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {PEM_LABEL}-----\n"));
    Ok((pem, BASE64.encode(pair.public_key().as_ref())))
}

/// A signing key read from a private key file (`plugin keygen`'s, or OpenSSL's
/// `genpkey -algorithm ed25519`).
pub struct SigningKey(Ed25519KeyPair);

impl SigningKey {
    /// Reads a PKCS#8 PEM private key.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the key {}", path.display()))?;
        let body: String = text
            .lines()
            .map(str::trim)
            .skip_while(|l| *l != format!("-----BEGIN {PEM_LABEL}-----"))
            .skip(1)
            .take_while(|l| !l.starts_with("-----END"))
            .collect();
        let der = BASE64
            .decode(body.as_bytes())
            .ok()
            .filter(|d| !d.is_empty());
        let der = der.with_context(|| {
            format!(
                "{} is not a PEM private key (-----BEGIN {PEM_LABEL}-----); make one with \
                 `order-pipeline plugin keygen`",
                path.display()
            )
        })?;
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map(Self)
            .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 private key: {e}", path.display()))
    }

    /// Its public half, base64.
    pub fn public_key(&self) -> String {
        BASE64.encode(self.0.public_key().as_ref())
    }

    /// Signs what `stated` says with this key, as `key_id`, valid in the window.
    pub fn sign(
        &self,
        stated: &Stated<'_>,
        key_id: &str,
        not_before_unix: i64,
        not_after_unix: i64,
    ) -> anyhow::Result<PluginSignature> {
        let bytes = stated.bytes(key_id, not_before_unix, not_after_unix)?;
        let signature = PluginSignature {
            key_id: key_id.to_string(),
            not_before_unix,
            not_after_unix,
            signature: BASE64.encode(self.0.sign(&bytes).as_ref()),
        };
        check_signature_fields(&signature)?;
        Ok(signature)
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, config: &[(&str, &str)]) -> RuleRef {
        RuleRef {
            name: name.into(),
            version: "1.0.0".into(),
            digest: "ab".repeat(32),
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            isolation: Isolation::Reuse,
            limits: RuleLimits::default(),
            signature: None,
        }
    }

    fn key(dir: &Path, id: &str) -> (SigningKey, String) {
        let (pem, public) = generate_key().unwrap();
        let path = dir.join(format!("{id}.key"));
        std::fs::write(&path, pem).unwrap();
        let key = SigningKey::read(&path).unwrap();
        assert_eq!(key.public_key(), public);
        (key, public)
    }

    fn signed(mut rule: RuleRef, key: &SigningKey, id: &str, window: (i64, i64)) -> RuleRef {
        rule.signature = Some(
            key.sign(&Stated::of(&rule), id, window.0, window.1)
                .unwrap(),
        );
        rule
    }

    #[test]
    fn a_signature_covers_the_digest_the_config_the_limits_and_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, p1) = key(dir.path(), "k1");
        let trust = Trust::parse(
            &format!("[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\nrules = [\"tax\", \"disc*\"]\n"),
            "t",
        )
        .unwrap();
        let now = 1_000_000;
        let good = signed(
            rule("tax", &[("rate", "0.1")]),
            &k1,
            "k1",
            (now - 10, now + 10),
        );
        assert_eq!(trust.check(&good, now), Ok(()));
        assert_eq!(
            trust.check(&rule("tax", &[]), now).unwrap_err().reason(),
            "unsigned"
        );

        let mut changed = good.clone();
        changed.config[0].1 = "0.0".into();
        assert_eq!(
            trust.check(&changed, now).unwrap_err().reason(),
            "bad-signature"
        );
        let mut changed = good.clone();
        changed.digest = "cd".repeat(32);
        assert_eq!(
            trust.check(&changed, now).unwrap_err().reason(),
            "bad-signature"
        );
        let mut changed = good.clone();
        changed.limits.fuel = Some(1);
        assert_eq!(
            trust.check(&changed, now).unwrap_err().reason(),
            "bad-signature"
        );
        let mut changed = good.clone();
        changed.isolation = Isolation::Fresh;
        assert_eq!(
            trust.check(&changed, now).unwrap_err().reason(),
            "bad-signature"
        );
        // A stretched window is a forged one.
        let mut changed = good.clone();
        changed.signature.as_mut().unwrap().not_after_unix += 1000;
        assert_eq!(
            trust.check(&changed, now).unwrap_err().reason(),
            "bad-signature"
        );

        assert_eq!(
            trust.check(&good, now + 10).unwrap_err().reason(),
            "expired"
        );
        assert_eq!(
            trust.check(&good, now - 11).unwrap_err().reason(),
            "not-yet-valid"
        );

        // The key id selects the key: another key's signature under k1's id fails.
        let (k2, _) = key(dir.path(), "k2");
        let forged = signed(
            rule("tax", &[("rate", "0.1")]),
            &k2,
            "k1",
            (now - 10, now + 10),
        );
        assert_eq!(
            trust.check(&forged, now).unwrap_err().reason(),
            "bad-signature"
        );
        let other = signed(rule("tax", &[]), &k2, "k2", (now - 10, now + 10));
        assert_eq!(
            trust.check(&other, now).unwrap_err().reason(),
            "unknown-key"
        );

        // Patterns per key.
        let discount = signed(rule("discount", &[]), &k1, "k1", (now - 10, now + 10));
        assert_eq!(trust.check(&discount, now), Ok(()));
        let chaos = signed(rule("chaos", &[]), &k1, "k1", (now - 10, now + 10));
        let refused = trust.check(&chaos, now).unwrap_err();
        assert_eq!(refused.reason(), "key-not-allowed");
        assert!(refused.to_string().contains("tax, disc*"), "{refused}");
    }

    #[test]
    fn revoked_keys_and_digests_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, p1) = key(dir.path(), "k1");
        let now = 1_000_000;
        let good = signed(rule("tax", &[]), &k1, "k1", (now - 10, now + 10));
        let entry = format!("[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\n");
        let by_key = Trust::parse(&format!("{entry}[revoked]\nkeys = [\"k1\"]\n"), "t").unwrap();
        assert_eq!(
            by_key.check(&good, now).unwrap_err().reason(),
            "revoked-key"
        );
        let digest = &good.digest;
        let by_digest = Trust::parse(
            &format!("{entry}[revoked]\ndigests = [\"{digest}\"]\n"),
            "t",
        )
        .unwrap();
        assert_eq!(
            by_digest.check(&good, now).unwrap_err().reason(),
            "revoked-digest"
        );
    }

    #[test]
    fn a_trust_file_is_checked_and_read_again_when_it_changes() {
        for (text, says) in [
            ("", "no [[key]]"),
            ("[[key]]\nid = \"a\"\npublic-key = \"eA==\"\n", "32 bytes"),
            (
                "[[key]]\nid = \"a\"\npublic-key = \"x\"\nextra = 1\n",
                "valid trust file",
            ),
            (
                "[[key]]\nid = \"a\"\npublic-key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\nrules = [\"[\"]\n",
                "rule pattern",
            ),
        ] {
            let e = Trust::parse(text, "t").unwrap_err();
            assert!(format!("{e:#}").contains(says), "{text}: {e:#}");
        }

        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (k1, p1) = key(dir.path(), "k1");
        let (k2, p2) = key(dir.path(), "k2");
        let path = dir.path().join("trust.toml");
        std::fs::write(
            &path,
            format!("[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\n"),
        )
        .unwrap();
        let store = TrustStore::open(&path).unwrap();
        let now = crate::domain::now_unix_ms() / 1000;
        let by_k1 = signed(rule("tax", &[]), &k1, "k1", (now - 10, now + 3600));
        let by_k2 = signed(rule("tax", &[]), &k2, "k2", (now - 10, now + 3600));
        assert_eq!(store.check(&by_k1), Ok(()));
        assert_eq!(store.check(&by_k2).unwrap_err().reason(), "unknown-key");

        // Rotation: both keys, then k1 revoked, read without a new store.
        std::fs::write(
            &path,
            format!(
                "[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\n[[key]]\nid = \"k2\"\npublic-key = \"{p2}\"\n"
            ),
        )
        .unwrap();
        assert_eq!(store.check(&by_k2), Ok(()));
        std::fs::write(
            &path,
            format!(
                "[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\n[[key]]\nid = \"k2\"\npublic-key = \"{p2}\"\n[revoked]\nkeys = [\"k1\"]\n"
            ),
        )
        .unwrap();
        assert_eq!(store.check(&by_k1).unwrap_err().reason(), "revoked-key");
        assert_eq!(store.check(&by_k2), Ok(()));

        // Broken or writable by others: everything refused (fail closed), and a process
        // does not start with it.
        std::fs::write(&path, "not toml [").unwrap();
        assert_eq!(store.check(&by_k2).unwrap_err().reason(), "trust-file");
        std::fs::write(
            &path,
            format!("[[key]]\nid = \"k2\"\npublic-key = \"{p2}\"\n"),
        )
        .unwrap();
        assert_eq!(store.check(&by_k2), Ok(()));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let refused = store.check(&by_k2).unwrap_err();
        assert!(refused.to_string().contains("chmod go-w"), "{refused}");
        assert!(TrustStore::open(&path).is_err());
        assert!(TrustStore::open(&dir.path().join("missing.toml")).is_err());
    }

    #[test]
    fn signature_files_say_how_a_deploy_differs() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, _) = key(dir.path(), "k1");
        let rule = rule("tax", &[("rate", "0.1")]);
        let file = SignatureFile {
            format: SIGNATURE_FILE_FORMAT.into(),
            rule: rule.name.clone(),
            digest: rule.digest.clone(),
            config: rule.config.iter().cloned().collect(),
            isolation: rule.isolation,
            limits: rule.limits,
            signature: k1.sign(&Stated::of(&rule), "k1", 0, 10).unwrap(),
        };
        let path = dir.path().join("tax.wasm.sig");
        std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
        let read = SignatureFile::read(&path).unwrap();
        assert_eq!(read, file);
        assert_eq!(read.differs_from(&Stated::of(&rule)), None);
        let mut other = rule.clone();
        other.config[0].1 = "0.2".into();
        let says = read.differs_from(&Stated::of(&other)).unwrap();
        assert!(
            says.contains("config key `rate` is 0.2 here, 0.1"),
            "{says}"
        );
    }
}
