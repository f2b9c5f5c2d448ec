//! Rulesets: which plugins run, in which order, with which config, read from TOML (see
//! `plugins/ruleset.toml`). A rule names a component file or a built-in plugin
//! (`builtin:NAME`), looked up in the [`Builtins`] the caller passes (the
//! `order-builtin-rules` crate has the default ones).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;

use crate::{ChainError, Engine, Isolation, LoadError, Plugin, RuleChain, RuleLimits, RuleSpec};

/// The plugins a ruleset may name as `builtin:NAME`: (name, component bytes).
pub type Builtins = &'static [(&'static str, &'static [u8])];

/// Prefix of a plugin reference that names a built-in plugin.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// A ruleset file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesetFile {
    /// The rules, in order.
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleEntry>,
}

/// One `[[rule]]` of a ruleset file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// `builtin:NAME` or a path to a `.wasm` component.
    pub plugin: String,
    /// How instances are used.
    #[serde(default)]
    pub isolation: Isolation,
    /// The rule's config.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
    /// The rule's own limits (`[rule.limits]`: `memory-mib`, `fuel`, `deadline-ms`).
    #[serde(default)]
    pub limits: RuleLimits,
    /// Its signature file (`order-pipeline plugin sign`), relative to the ruleset's
    /// directory. Not read here: the pipeline stores it with the rule, and needs it when
    /// its workers have a trust file.
    #[serde(default)]
    pub signature: Option<String>,
}

/// Why a ruleset could not be loaded; each names the file, rule or key to fix.
#[derive(Debug, thiserror::Error)]
pub enum RulesetError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML is malformed.
    #[error("{origin} is not a valid ruleset: {message}")]
    Parse {
        /// Where the text came from.
        origin: String,
        /// The parser's message.
        message: String,
    },
    /// The ruleset has no rules.
    #[error("{0} has no [[rule]]; add at least one")]
    Empty(String),
    /// `builtin:NAME` names no built-in plugin.
    #[error("there is no built-in plugin `{name}`; built-in plugins are: {known}")]
    UnknownBuiltin {
        /// The name asked for.
        name: String,
        /// The names there are.
        known: String,
    },
    /// A config value has a type that cannot be passed to a plugin.
    #[error("rule `{plugin}`, config key `{key}`: {message}")]
    ConfigValue {
        /// The plugin reference.
        plugin: String,
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A plugin could not be loaded.
    #[error("plugin {plugin}: {source}")]
    Load {
        /// The plugin reference.
        plugin: String,
        /// Why.
        source: LoadError,
    },
    /// The chain could not be built (duplicate rule, refused config...).
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// The bytes of built-in plugin `name` (e.g. `rule-tax`) in `builtins`.
pub fn builtin(builtins: Builtins, name: &str) -> Option<&'static [u8]> {
    builtins
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, bytes)| *bytes)
}

/// Parses ruleset text; `origin` names it in errors.
pub fn parse(text: &str, origin: &str) -> Result<RulesetFile, RulesetError> {
    let file: RulesetFile = toml::from_str(text).map_err(|e| RulesetError::Parse {
        origin: origin.to_string(),
        message: e.to_string(),
    })?;
    if file.rules.is_empty() {
        return Err(RulesetError::Empty(origin.to_string()));
    }
    Ok(file)
}

/// Loads a ruleset file; relative plugin paths are resolved against its directory.
pub fn load_file(
    engine: &Engine,
    builtins: Builtins,
    path: &Path,
) -> Result<RuleChain, RulesetError> {
    let text = std::fs::read_to_string(path).map_err(|source| RulesetError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let file = parse(&text, &path.display().to_string())?;
    build(engine, builtins, &file, path.parent())
}

/// Builds the chain of a parsed ruleset.
pub fn build(
    engine: &Engine,
    builtins: Builtins,
    file: &RulesetFile,
    base_dir: Option<&Path>,
) -> Result<RuleChain, RulesetError> {
    let mut specs = Vec::with_capacity(file.rules.len());
    for entry in &file.rules {
        let plugin = load_plugin(engine, builtins, &entry.plugin, base_dir)?;
        let config =
            config_strings(&entry.config).map_err(|(key, message)| RulesetError::ConfigValue {
                plugin: entry.plugin.clone(),
                key,
                message,
            })?;
        specs.push(RuleSpec {
            plugin,
            config,
            isolation: entry.isolation,
            limits: entry.limits,
        });
    }
    Ok(RuleChain::new(specs)?)
}

/// Loads a plugin by reference: `builtin:NAME` or a path (relative to `base_dir`).
pub fn load_plugin(
    engine: &Engine,
    builtins: Builtins,
    reference: &str,
    base_dir: Option<&Path>,
) -> Result<Arc<Plugin>, RulesetError> {
    let bytes: std::borrow::Cow<'static, [u8]> = match reference.strip_prefix(BUILTIN_PREFIX) {
        Some(name) => builtin(builtins, name)
            .ok_or_else(|| RulesetError::UnknownBuiltin {
                name: name.to_string(),
                known: builtins
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", "),
            })?
            .into(),
        None => {
            let path = match base_dir {
                Some(dir) => dir.join(reference),
                None => PathBuf::from(reference),
            };
            std::fs::read(&path)
                .map_err(|source| RulesetError::Read { path, source })?
                .into()
        }
    };
    engine.load(&bytes).map_err(|source| RulesetError::Load {
        plugin: reference.to_string(),
        source,
    })
}

/// A TOML config table as the key/value strings a plugin receives; an error names the
/// key and what is wrong with its value. Rulesets and examples' `config.toml` share it.
pub fn config_strings(
    table: &BTreeMap<String, toml::Value>,
) -> Result<Vec<(String, String)>, (String, String)> {
    table
        .iter()
        .map(|(key, value)| {
            config_value(value)
                .map(|v| (key.clone(), v))
                .map_err(|message| (key.clone(), message))
        })
        .collect()
}

/// A TOML config value as the string a plugin receives.
fn config_value(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(i) => Ok(i.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| match item {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                _ => Err("list items must be strings or integers".to_string()),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|items| items.join(",")),
        toml::Value::Float(_) => {
            Err("floats are not allowed; give money as integer minor units".to_string())
        }
        _ => Err("expected a string, integer, boolean or list of strings".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_become_strings() {
        let file = parse(
            "[[rule]]\nplugin = \"x\"\nisolation = \"reuse\"\n[rule.config]\na = 1\nb = true\nc = [\"x\", \"y\"]\n",
            "t",
        )
        .unwrap();
        let rule = &file.rules[0];
        assert_eq!(rule.isolation, Isolation::Reuse);
        let values: Vec<String> = rule
            .config
            .values()
            .map(|v| config_value(v).unwrap())
            .collect();
        assert_eq!(values, ["1", "true", "x,y"]);
        assert!(
            config_value(&toml::Value::Float(1.5))
                .unwrap_err()
                .contains("minor units")
        );
    }

    #[test]
    fn malformed_rulesets_are_refused_clearly() {
        assert!(matches!(parse("", "t"), Err(RulesetError::Empty(_))));
        let err = parse("[[rule]]\nplugin = \"x\"\nisolaton = \"fresh\"\n", "t").unwrap_err();
        assert!(err.to_string().contains("isolaton"), "{err}");
        let err = parse(
            "[[rule]]\nplugin = \"x\"\n[rule.limits]\nmemory = 64\n",
            "t",
        )
        .unwrap_err();
        assert!(err.to_string().contains("memory-mib"), "{err}");
        let file = parse("[[rule]]\nplugin = \"x\"\n[rule.limits]\nfuel = 99\n", "t").unwrap();
        assert_eq!(file.rules[0].limits.fuel, Some(99));
    }
}
