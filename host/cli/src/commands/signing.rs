//! Signed plugins on the author's side: `plugin keygen`, `plugin sign`, and the
//! signature a deploy sends (`rules::trust` in the service library checks it).

use std::io::Write;
use std::path::Path;

use order_pipeline::proto;
use order_pipeline::rules::trust::{self, SignatureFile, Stated};
use order_rules_engine::{Engine, Isolation, RuleLimits};

use crate::exit::{EXIT_OK, Failure};
use crate::shared_args::RuleLimitArgs;

/// The signature a deploy sends: `--signature`, else PLUGIN.sig when it exists. It is
/// compared with what is deployed first, so that a config or limits that differ from
/// the signed ones are named here rather than refused as a bad signature.
pub(crate) fn deploy_signature(
    plugin: &Path,
    given: Option<&Path>,
    wasm: &[u8],
    config: &[(String, String)],
    isolation: Isolation,
    limits: RuleLimits,
) -> Result<Option<proto::admin::PluginSignature>, Failure> {
    let beside = signature_path(plugin);
    let path = match given {
        Some(path) => path.to_path_buf(),
        None if beside.exists() => beside,
        None => return Ok(None),
    };
    let file = SignatureFile::read(&path).map_err(|e| format!("{e:#}"))?;
    let digest = order_rules_engine::digest(wasm);
    let stated = Stated {
        rule: &file.rule, // the name is the plugin's own: the worker checks it
        digest: &digest,
        config,
        isolation,
        limits,
    };
    if let Some(why) = file.differs_from(&stated) {
        return Err(format!(
            "{} does not sign this deploy: {why}; sign it again with the deploy's flags \
             (`plugin sign`)",
            path.display()
        )
        .into());
    }
    let s = file.signature;
    Ok(Some(proto::admin::PluginSignature {
        key_id: s.key_id,
        not_before_unix: s.not_before_unix,
        not_after_unix: s.not_after_unix,
        signature: s.signature,
    }))
}

/// Where `plugin sign` writes a plugin's signature by default: PLUGIN.sig.
pub(crate) fn signature_path(plugin: &Path) -> std::path::PathBuf {
    let mut name = plugin.as_os_str().to_owned();
    name.push(".sig");
    name.into()
}

/// `plugin keygen`: ID.key (0600, never overwritten) and ID.pub in `dir`.
pub(crate) fn keygen(id: &str, dir: &Path, out: &mut dyn Write) -> Result<i32, Failure> {
    use std::os::unix::fs::OpenOptionsExt as _;
    if id.is_empty()
        || id.len() > trust::MAX_KEY_ID_LEN
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(format!(
            "key id {id:?}: use 1 to {} letters, digits, `-`, `_` or `.`",
            trust::MAX_KEY_ID_LEN
        )
        .into());
    }
    let (private, public) = trust::generate_key().map_err(|e| format!("{e:#}"))?;
    let key_path = dir.join(format!("{id}.key"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&key_path)
        .map_err(|e| {
            format!(
                "cannot create {}: {e} (an existing key is never overwritten)",
                key_path.display()
            )
        })?;
    file.write_all(private.as_bytes())?;
    file.sync_all()?;
    let pub_path = dir.join(format!("{id}.pub"));
    std::fs::write(&pub_path, format!("{public}\n"))
        .map_err(|e| format!("cannot write {}: {e}", pub_path.display()))?;
    writeln!(
        out,
        "wrote {} (private: keep it where releases are signed, not on the servers) and {}\n\n\
         # the workers' trust file (PLUGIN_TRUST_FILE):\n[[key]]\nid = \"{id}\"\n\
         public-key = \"{public}\"\nrules = [\"*\"]  # the rule names this key may sign",
        key_path.display(),
        pub_path.display()
    )?;
    Ok(EXIT_OK)
}

/// `plugin sign`: writes the signature file of `plugin` as it will be deployed.
#[allow(clippy::too_many_arguments)]
pub(crate) fn sign(
    plugin: &Path,
    key_path: &Path,
    key_id: Option<String>,
    config: &[(String, String)],
    isolation: Isolation,
    limits: RuleLimitArgs,
    valid_for: std::time::Duration,
    output: Option<std::path::PathBuf>,
    out: &mut dyn Write,
) -> Result<i32, Failure> {
    let key = trust::SigningKey::read(key_path).map_err(|e| format!("{e:#}"))?;
    let key_id = match key_id {
        Some(id) => id,
        None => key_path
            .file_stem()
            .and_then(|s| s.to_str())
            .map(str::to_string)
            .ok_or_else(|| format!("{}: give --key-id", key_path.display()))?,
    };
    let bytes =
        std::fs::read(plugin).map_err(|e| format!("cannot read {}: {e}", plugin.display()))?;
    // The rule's name is the one its `describe` gives, as the worker will see it.
    let engine =
        Engine::new(order_rules_engine::Limits::default()).map_err(|e| format!("{e:#}"))?;
    let loaded = engine
        .load(&bytes)
        .map_err(|e| format!("{}: {e}", plugin.display()))?;
    let limits = limits.request().map(RuleLimits::from).unwrap_or_default();
    limits.validate().map_err(|e| e.0)?;
    let stated = Stated {
        rule: loaded.name(),
        digest: loaded.digest(),
        config,
        isolation,
        limits,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs() as i64;
    let until = now.saturating_add(valid_for.as_secs().min(i64::MAX as u64) as i64);
    let signature = key
        .sign(&stated, &key_id, now, until)
        .map_err(|e| format!("{e:#}"))?;
    let file = SignatureFile {
        format: trust::SIGNATURE_FILE_FORMAT.into(),
        rule: loaded.name().to_string(),
        digest: loaded.digest().to_string(),
        config: config.iter().cloned().collect(),
        isolation,
        limits,
        signature,
    };
    let path = output.unwrap_or_else(|| signature_path(plugin));
    std::fs::write(&path, serde_json::to_string_pretty(&file)? + "\n")
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    writeln!(
        out,
        "signed {} ({}) with key {key_id}, valid until {} (Unix {until}): {}",
        loaded.name(),
        loaded.digest(),
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(until.max(0) as u64)
        ),
        path.display()
    )?;
    Ok(EXIT_OK)
}
