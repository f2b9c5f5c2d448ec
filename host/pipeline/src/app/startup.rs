//! What the roles read before they start: the worker's name, the ruleset and its
//! signatures, the AdminService's principals (checked against where it listens).

use anyhow::Context as _;
use order_rules_engine::{Engine, RuleChain};

use crate::config::Config;
use crate::grpc::principals::{self, Principals};
use crate::rules::trust::SignatureFile;

/// How results name this worker: WORKER_INSTANCE_ID, or host:pid.
pub(super) fn worker_name(config: &Config) -> String {
    match config
        .kafka
        .instance_id
        .as_deref()
        .filter(|id| !id.is_empty())
    {
        Some(id) => id.to_string(),
        None => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_else(|_| "worker".into());
            format!("{host}:{}", std::process::id())
        }
    }
}

/// Loads the configured ruleset (or the default) with the configured limits.
pub(super) async fn load_chain(config: &Config) -> anyhow::Result<(Engine, RuleChain)> {
    let limits = config.plugins.limits.clone();
    let native = config.plugins.native_baseline;
    let path = config.plugins.ruleset.clone();
    let cache = config.plugins.component_cache.clone();
    tokio::task::spawn_blocking(move || {
        if native {
            tracing::warn!(
                "NATIVE_RULES_BASELINE is on: the built-in rules run compiled into the host, \
                 without Wasm isolation or limits; use this to benchmark, never in production"
            );
        }
        let engine = order_builtin_rules::engine(limits, native)?;
        if let Some(dir) = cache {
            engine
                .cache_compiled_in(dir)
                .context("COMPONENT_CACHE_DIR (set it to a directory of this user's, or `off`)")?;
        }
        let chain = match &path {
            Some(path) => order_builtin_rules::load_file(&engine, path)?,
            None => order_builtin_rules::load_default(&engine)?,
        };
        for spec in chain.specs() {
            tracing::info!(
                rule = spec.plugin.name(),
                version = %spec.plugin.info().version,
                digest = spec.plugin.digest(),
                isolation = %spec.isolation,
                "rule loaded"
            );
        }
        Ok((engine, chain))
    })
    .await
    .context("loading the ruleset panicked")?
}

/// The signatures of the configured ruleset's rules (each `[[rule]]`'s `signature`
/// file, relative to the ruleset's directory), in order.
pub(super) fn seed_signatures(
    config: &Config,
) -> anyhow::Result<Vec<Option<crate::domain::ruleset::PluginSignature>>> {
    let Some(path) = &config.plugins.ruleset else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read RULESET {}", path.display()))?;
    let file = order_rules_engine::ruleset::parse(&text, &path.display().to_string())?;
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    file.rules
        .iter()
        .map(|rule| {
            rule.signature
                .as_ref()
                .map(|sig| {
                    SignatureFile::read(&dir.join(sig))
                        .map(|f| f.signature)
                        .with_context(|| {
                            format!("RULESET {}: rule {}", path.display(), rule.plugin)
                        })
                })
                .transpose()
        })
        .collect()
}

/// The AdminService's principals from the configuration, checked against where it
/// listens: without any, only a loopback address is allowed; with tokens, an address
/// that is not loopback needs TLS (or `ADMIN_ALLOW_PLAINTEXT`); certificate principals
/// need mTLS (`TLS_CLIENT_CA`).
pub(super) fn admin_principals(config: &Config) -> anyhow::Result<Principals> {
    let addr = config.servers.admin;
    let tokens = match &config.admin.tokens {
        Some(text) => principals::parse_tokens("ADMIN_TOKENS", text)?,
        None => Vec::new(),
    };
    let subjects = match &config.admin.cert_principals {
        Some(text) => principals::parse_subjects("ADMIN_CERT_PRINCIPALS", text)?,
        None => Vec::new(),
    };
    let principals = Principals::new(tokens, config.admin.token.as_deref(), subjects);
    let mtls = config
        .servers
        .tls
        .as_ref()
        .is_some_and(|t| t.client_ca.is_some());
    if principals.by_certificate() && !mtls {
        anyhow::bail!(
            "ADMIN_CERT_PRINCIPALS needs client certificates: set TLS_CERT, TLS_KEY and TLS_CLIENT_CA"
        );
    }
    if principals.is_empty() {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "ADMIN_ADDR {addr} is not a loopback address: set ADMIN_TOKEN or ADMIN_TOKENS, or listen on 127.0.0.1"
            );
        }
        tracing::warn!(%addr, "admin API without ADMIN_TOKEN: anyone on this host can deploy rules");
    } else if !addr.ip().is_loopback() && config.servers.tls.is_none() {
        if !config.admin.allow_plaintext {
            anyhow::bail!(
                "ADMIN_ADDR {addr} is not a loopback address and the servers have no TLS: admin \
                 tokens would cross the network in clear. Set TLS_CERT and TLS_KEY, listen on \
                 127.0.0.1, or set ADMIN_ALLOW_PLAINTEXT=true"
            );
        }
        tracing::warn!(%addr, "admin tokens cross the network in clear (ADMIN_ALLOW_PLAINTEXT)");
    }
    Ok(principals)
}
