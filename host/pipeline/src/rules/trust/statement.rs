//! The signed statement (what a signature covers), the signature file `plugin sign`
//! writes, and signing keys.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
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
