//! Support for the rule-engine benchmarks (`cargo bench -p order-pipeline-bench`): the
//! default ruleset's config, and (feature `zen`, off by default) the same decisions as a
//! GoRules ZEN decision graph for a side-by-side comparison with zen-engine.

use order_rules_engine::ruleset;

#[cfg(feature = "zen")]
pub mod zen;

/// The default ruleset's config of `rule` (e.g. `rule-tax`), as the plugin receives it.
pub fn config(rule: &str) -> Result<Vec<(String, String)>, String> {
    let file = ruleset::parse(order_builtin_rules::DEFAULT_RULESET, "default")
        .map_err(|e| e.to_string())?;
    let entry = file
        .rules
        .iter()
        .find(|r| r.plugin == format!("builtin:{rule}"))
        .ok_or_else(|| format!("{rule} is not in the default ruleset"))?;
    ruleset::config_strings(&entry.config)
        .map_err(|(key, message)| format!("{rule}.{key}: {message}"))
}
