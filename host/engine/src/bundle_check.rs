//! Runs the examples a plugin carries ([`crate::bundle`]) on the plugin alone: what the
//! deploy gate does on deploy, activate and rollback.

use std::sync::Arc;

use crate::bundle::Bundle;
use crate::{Isolation, Order, Plugin, RuleChain, RuleLimits, RuleSpec, runner};

/// Runs every example on `plugin` alone, with the bundle's config, fresh instances
/// and the plugin's engine limits with the rule's own (`limits`) in place; answers
/// how many passed, or the first failure.
pub fn check(bundle: &Bundle, plugin: &Arc<Plugin>, limits: RuleLimits) -> Result<usize, String> {
    let name = plugin.name();
    let chain = RuleChain::new(vec![RuleSpec {
        plugin: Arc::clone(plugin),
        config: bundle.config.clone(),
        isolation: Isolation::Fresh,
        limits,
    }])
    .map_err(|e| format!("{name} does not take its bundled config: {e}"))?;
    for example in &bundle.examples {
        let failed = |message: String| {
            format!(
                "bundled example `{}` of {name} failed: {message}",
                example.name
            )
        };
        let order: Order = serde_json::from_value(example.order.clone())
            .map_err(|e| failed(format!("not an order: {e}")))?;
        let actual =
            serde_json::to_value(chain.evaluate(&order)).map_err(|e| failed(e.to_string()))?;
        if let Some(m) = runner::compare(&example.expected, &actual).first() {
            let got = m
                .actual
                .as_ref()
                .map_or("(missing)".to_string(), ToString::to_string);
            return Err(failed(format!(
                "{}: expected {}, got {got}",
                m.path, m.expected
            )));
        }
    }
    Ok(bundle.examples.len())
}
