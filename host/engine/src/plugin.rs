//! A plugin loaded once: checked to be a component of the `rule` world, compiled,
//! pre-instantiated, described and fingerprinted (sha256), ready to be instantiated
//! cheaply for every evaluation.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use wasmtime::component::Component;

use super::Engine;
use super::bindings::RulePre;
use super::instance::{Failure, HostState, Instance};
use super::limits::Limits;
use super::wasi::OrderSeed;
use crate::bundle::Bundle;

/// How instances of a rule are used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Isolation {
    /// A fresh instance per order: no state can reach one order from another.
    Fresh,
    /// Instances are kept and reused across orders (the default): discarded after any
    /// failure, recycled by use count and memory, an order that fails in one decided
    /// again fresh, and some orders checked against a fresh instance (see
    /// `reuse.rs`). About five times cheaper per rule than fresh; a rule that keeps data
    /// from one order on purpose can show it in another until a check catches it.
    #[default]
    Reuse,
}

impl Isolation {
    /// The name used in rulesets, the CLI and the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fresh => "fresh",
            Self::Reuse => "reuse",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Isolation {
    type Err = String;

    /// `fresh` or `reuse`; the error says what is accepted.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fresh" => Ok(Self::Fresh),
            "reuse" => Ok(Self::Reuse),
            other => Err(format!("`{other}` is neither `fresh` nor `reuse`")),
        }
    }
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The bytes are not WebAssembly at all.
    #[error(
        "not a WebAssembly file (it does not start with \\0asm); build the plugin for wasm32-wasip2"
    )]
    NotWasm,
    /// A core module instead of a component.
    #[error(
        "this is a core WebAssembly module, not a component; build for wasm32-wasip2 (or run `wasm-tools component new`)"
    )]
    CoreModule,
    /// The component does not validate or compile.
    #[error("invalid component: {0}")]
    Invalid(String),
    /// The component does not implement the `order:rules/rule@0.1.0` world.
    #[error("the component does not implement the order:rules/rule@0.1.0 world: {0}")]
    WrongWorld(String),
    /// `describe` failed or said something unusable.
    #[error("the plugin's describe() failed: {0}")]
    Describe(String),
    /// Its bundled examples cannot be read.
    #[error("the plugin's bundled examples: {0}")]
    Bundle(#[from] crate::bundle::BundleError),
}

/// What a plugin says about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginInfo {
    /// Rule name, kebab-case.
    pub name: String,
    /// Rule version.
    pub version: String,
    /// What the rule decides.
    pub description: String,
}

/// A compiled, checked plugin.
pub struct Plugin {
    engine: Engine,
    pre: RulePre<HostState>,
    name: Arc<str>,
    info: PluginInfo,
    digest: String,
    bytes: Arc<[u8]>,
    bundle: Option<Arc<Bundle>>,
    from_cache: bool,
    /// The engine's limits, the memory cap raised for a component that starts big
    /// ([`default_limits`]).
    limits: Limits,
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("info", &self.info)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// Compiles and checks a plugin: WebAssembly component, the `rule` world, a sane
    /// `describe()`. The plugin's name comes from `describe()`.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Plugin>, LoadError> {
        check_header(bytes)?;
        let digest = digest(bytes);
        let (component, from_cache) = match self.compiled_cache() {
            Some(dir) => crate::cache::load_or_compile(self.wasmtime(), dir, &digest, bytes),
            None => Component::new(self.wasmtime(), bytes).map(|c| (c, false)),
        }
        .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let pre = self
            .linker()
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WrongWorld(without_wasi_hint(format!("{e:#}"))))?;
        let pre = RulePre::new(pre).map_err(|e| LoadError::WrongWorld(format!("{e:#}")))?;
        let initial_pages = component
            .resources_required()
            .and_then(|r| r.max_initial_memory_size)
            .unwrap_or(0);
        let mut plugin = Plugin {
            limits: default_limits(self.limits(), initial_pages),
            engine: self.clone(),
            pre,
            name: Arc::from("(loading)"),
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
            },
            digest,
            bytes: Arc::from(bytes),
            from_cache,
            bundle: crate::bundle::read(bytes)?.map(Arc::new),
        };
        let info = plugin
            .instantiate(plugin.limits(), &OrderSeed::of_rule(&plugin.digest, &[]))
            .and_then(|mut instance| instance.describe(plugin.limits()))
            .map_err(|f| LoadError::Describe(format!("{}: {}", f.kind, f.message)))?;
        check_info(&info.name, &info.version)?;
        plugin.name = Arc::from(info.name.as_str());
        plugin.info = PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
        };
        Ok(Arc::new(plugin))
    }
}

/// The limits of a plugin whose largest linear memory starts at `initial_pages` (64 KiB
/// each): the engine's, except that the memory cap is at least twice the initial memory
/// (rounded up to MiB, at most [`crate::limits::MAX_RULE_MEMORY_MIB`]). A Rust rule
/// starts near 1 MiB and keeps the engine's cap; an interpreter guest starts with its
/// interpreter's heap (JavaScript from componentize-js about 9 MiB, Python from
/// componentize-py about 12 MiB) and gets as much again to grow into.
pub(crate) fn default_limits(engine: &Limits, initial_pages: u64) -> Limits {
    let twice = initial_pages.saturating_mul(2 * 64 * 1024);
    let twice_mib = usize::try_from(twice.div_ceil(1 << 20)).unwrap_or(usize::MAX);
    let ceiling = crate::limits::MAX_RULE_MEMORY_MIB as usize;
    Limits {
        memory_bytes: engine.memory_bytes.max(twice_mib.min(ceiling) << 20),
        ..engine.clone()
    }
}

impl Plugin {
    /// Name, version and description from `describe()`.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// sha256 of the component bytes, lowercase hex.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Whether its compiled form came from the engine's cache of compiled components.
    pub fn from_cache(&self) -> bool {
        self.from_cache
    }

    /// The examples (and their config) bundled in the component, if any.
    pub fn bundle(&self) -> Option<&Arc<Bundle>> {
        self.bundle.as_ref()
    }

    /// Size of the component in bytes.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    /// The component's bytes (what its digest is of).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compiled component.
    pub(crate) fn component(&self) -> &wasmtime::component::Component {
        self.pre.instance_pre().component()
    }

    /// The limits every call into this plugin is held to unless its rule has its own
    /// ([`crate::RuleLimits`]): the engine's, with the memory cap raised for a
    /// component that starts big ([`default_limits`]).
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// A fresh store for this plugin, and then an instance in it: the two halves of
    /// [`Plugin::instantiate`], timed apart by [`crate::RuleChain::fresh_costs`].
    pub(crate) fn instantiate_timed(
        &self,
        limits: &Limits,
        seed: &OrderSeed,
    ) -> (
        std::time::Duration,
        std::time::Duration,
        Result<Instance, Failure>,
    ) {
        let started = std::time::Instant::now();
        let store = Instance::store(self.engine.wasmtime(), limits, self.name.clone(), seed);
        let stored = started.elapsed();
        let instance = store.and_then(|store| Instance::instantiate_in(store, &self.pre));
        (stored, started.elapsed() - stored, instance)
    }

    /// A new instance in a fresh store held to `limits`, its randomness seeded by `seed`.
    pub(crate) fn instantiate(
        &self,
        limits: &Limits,
        seed: &OrderSeed,
    ) -> Result<Instance, Failure> {
        Instance::new(
            self.engine.wasmtime(),
            limits,
            &self.pre,
            self.name.clone(),
            seed,
        )
    }
}

/// Says why a plugin that imports WASI does not link in an engine built without it.
fn without_wasi_hint(message: String) -> String {
    if cfg!(feature = "wasi") || !message.contains("wasi:") {
        return message;
    }
    format!(
        "{message} (the plugin imports WASI, built for wasm32-wasip2, and this engine has no \
         WASI: build it with the `wasi` feature of order-rules-engine, or build the plugin \
         for wasm32-unknown-unknown)"
    )
}

/// sha256 of `bytes` as lowercase hex.
pub fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn check_header(bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm);
    }
    // Bytes 4..8: a core module has version 1, layer 0; a component has layer 1.
    if bytes[4..8] == [1, 0, 0, 0] {
        return Err(LoadError::CoreModule);
    }
    Ok(())
}

fn check_info(name: &str, version: &str) -> Result<(), LoadError> {
    let kebab = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if !kebab {
        return Err(LoadError::Describe(format!(
            "name `{name}` must be 1-64 characters of lowercase kebab-case"
        )));
    }
    if version.is_empty() || version.len() > 64 {
        return Err(LoadError::Describe(format!(
            "version `{version}` must be 1-64 characters"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_component_that_starts_big_gets_twice_its_initial_memory() {
        let engine = Limits::default();
        // A Rust rule: 17 pages, about 1 MiB.
        assert_eq!(default_limits(&engine, 17), engine);
        // componentize-js: 145 pages (9.1 MiB) -> 19 MiB; componentize-py: 197 -> 25 MiB.
        assert_eq!(default_limits(&engine, 145).memory_bytes, 19 << 20);
        assert_eq!(default_limits(&engine, 197).memory_bytes, 25 << 20);
        assert_eq!(default_limits(&engine, 197).fuel, engine.fuel);
        // Never above the ceiling of a rule's own cap.
        assert_eq!(default_limits(&engine, 65_536).memory_bytes, 1024 << 20);
    }

    #[test]
    fn a_wasi_import_is_explained_only_without_wasi() {
        let message = "component imports instance `wasi:cli/environment@0.2.6`, but a \
                       matching implementation was not found in the linker";
        let said = without_wasi_hint(message.to_string());
        assert!(said.starts_with(message));
        assert_eq!(
            said.contains("the `wasi` feature of order-rules-engine"),
            !cfg!(feature = "wasi"),
            "{said}"
        );
        let other = "component imports instance `order:rules/other`";
        assert_eq!(without_wasi_hint(other.to_string()), other);
    }

    #[test]
    fn headers_are_told_apart() {
        assert!(matches!(
            check_header(b"hello world"),
            Err(LoadError::NotWasm)
        ));
        assert!(matches!(
            check_header(b"\0asm\x01\0\0\0"),
            Err(LoadError::CoreModule)
        ));
        assert!(check_header(b"\0asm\x0d\0\x01\0").is_ok());
    }

    #[test]
    fn names_must_be_kebab_case() {
        assert!(check_info("rule-tax", "1.0.0").is_ok());
        assert!(check_info("Rule Tax", "1.0.0").is_err());
        assert!(check_info("rule-tax", "").is_err());
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
