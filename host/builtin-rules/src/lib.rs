//! The built-in rules: `build.rs` builds the `plugins/` workspace into components (for
//! wasm32-unknown-unknown, made components with wit-component) and this crate embeds the
//! `rule-*` ones as constants, with the default ruleset that names them.
//!
//! - [`BUILTIN_PLUGINS`], [`builtin`]: the components; [`PLUGIN_BUILD_DIR`]: where every
//!   plugin of `plugins/` was built, hostile fixtures included (tests and tools).
//! - [`DEFAULT_RULESET`], [`load_default`], [`load_file`], [`load_plugin`]: rulesets with
//!   `builtin:NAME` resolved against these components.
//! - [`engine`]: an engine, optionally with the built-in rules compiled natively (the
//!   `native-baseline` feature), the benchmark baseline.

#[cfg(feature = "native-baseline")]
mod native;

use std::path::Path;
use std::sync::Arc;

use order_rules_engine::ruleset::{self, Builtins, RulesetError};
use order_rules_engine::{Engine, Limits, Plugin, RuleChain};

include!(concat!(env!("OUT_DIR"), "/builtin_plugins.rs"));

/// The default ruleset (`plugins/ruleset.toml`).
pub const DEFAULT_RULESET: &str = include_str!("../../../plugins/ruleset.toml");

/// The built-in plugins as a ruleset resolves `builtin:NAME`.
pub const BUILTINS: Builtins = BUILTIN_PLUGINS;

/// The bytes of built-in plugin `name` (e.g. `rule-tax`).
pub fn builtin(name: &str) -> Option<&'static [u8]> {
    ruleset::builtin(BUILTINS, name)
}

/// Loads the default ruleset.
pub fn load_default(engine: &Engine) -> Result<RuleChain, RulesetError> {
    let file = ruleset::parse(DEFAULT_RULESET, "the default ruleset")?;
    ruleset::build(engine, BUILTINS, &file, None)
}

/// Loads a ruleset file; relative plugin paths are resolved against its directory.
pub fn load_file(engine: &Engine, path: &Path) -> Result<RuleChain, RulesetError> {
    ruleset::load_file(engine, BUILTINS, path)
}

/// Loads a plugin by reference: `builtin:NAME` or a path (relative to `base_dir`).
pub fn load_plugin(
    engine: &Engine,
    reference: &str,
    base_dir: Option<&Path>,
) -> Result<Arc<Plugin>, RulesetError> {
    ruleset::load_plugin(engine, BUILTINS, reference, base_dir)
}

/// An engine enforcing `limits`. With `native_baseline`, the built-in rules run compiled
/// natively instead of as components (the benchmark baseline; needs the
/// `native-baseline` feature).
pub fn engine(limits: Limits, native_baseline: bool) -> anyhow::Result<Engine> {
    if !native_baseline {
        return Engine::new(limits);
    }
    #[cfg(feature = "native-baseline")]
    {
        Engine::with_native_twins(limits, Arc::new(native::BuiltinTwins::new()))
    }
    #[cfg(not(feature = "native-baseline"))]
    {
        anyhow::bail!(
            "the native baseline was asked for, but this build has no native rules: \
             build with the `native-baseline` feature of order-builtin-rules"
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use order_rules_engine::ruleset::BUILTIN_PREFIX;

    #[test]
    fn default_ruleset_names_only_builtins() {
        let file = ruleset::parse(DEFAULT_RULESET, "default").unwrap();
        let names: Vec<&str> = file.rules.iter().map(|r| r.plugin.as_str()).collect();
        assert_eq!(
            names,
            [
                "builtin:rule-validate",
                "builtin:rule-fraud",
                "builtin:rule-discount",
                "builtin:rule-tax"
            ]
        );
        for name in names {
            assert!(
                builtin(name.trim_start_matches(BUILTIN_PREFIX)).is_some(),
                "{name}"
            );
        }
    }
}
