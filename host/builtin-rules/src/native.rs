//! The built-in rules' own `decide` functions (`plugins/rule-*`, linked as rlibs) as the
//! engine's [`NativeTwins`]: the benchmark baseline. A plugin has a twin only when its
//! component is byte-for-byte the built-in one of the same name.

use order_rules_engine::{NativeDecide, NativeTwins, digest};
use rule_common as rc;

/// The four rules of the default ruleset, natively.
pub(crate) struct BuiltinTwins {
    /// (name, sha256 of the built-in component).
    digests: Vec<(&'static str, String)>,
}

impl BuiltinTwins {
    pub(crate) fn new() -> Self {
        Self {
            digests: crate::BUILTIN_PLUGINS
                .iter()
                .map(|(name, bytes)| (*name, digest(bytes)))
                .collect(),
        }
    }
}

impl NativeTwins for BuiltinTwins {
    fn twin(
        &self,
        name: &str,
        digest: &str,
        config: &[(String, String)],
    ) -> Option<anyhow::Result<NativeDecide>> {
        if !self.digests.iter().any(|(n, d)| *n == name && d == digest) {
            return None;
        }
        Some(match name {
            "rule-validate" => make::<rule_validate::Validate>(config),
            "rule-fraud" => make::<rule_fraud::Fraud>(config),
            "rule-discount" => make::<rule_discount::Discount>(config),
            "rule-tax" => make::<rule_tax::Tax>(config),
            _ => return None,
        })
    }
}

fn make<R: rc::Rule>(config: &[(String, String)]) -> anyhow::Result<NativeDecide>
where
    R::Settings: Send + Sync + 'static,
{
    let settings = rc::parse_settings::<R>(config.to_vec()).map_err(anyhow::Error::msg)?;
    Ok(Box::new(move |order, context| {
        R::decide(order, context, &settings)
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use order_rules_engine::{Engine, Limits, runner};

    /// The baseline is only worth measuring if it decides exactly like the components.
    #[test]
    fn the_native_baseline_decides_every_example_like_the_wasm_rules() {
        let wasm = crate::load_default(&Engine::new(Limits::default()).unwrap()).unwrap();
        let native = crate::load_default(&crate::engine(Limits::default(), true).unwrap()).unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/orders");
        let examples = runner::load_examples(&dir).unwrap();
        assert!(examples.len() > 20, "examples missing in {}", dir.display());
        for example in &examples {
            let order = example.order.as_ref().unwrap();
            let a = wasm.evaluate(order);
            let b = native.evaluate(order);
            assert_eq!(a.status, b.status, "{}", example.name);
            assert_eq!(a.totals, b.totals, "{}", example.name);
            assert_eq!(a.adjustments, b.adjustments, "{}", example.name);
            assert_eq!(a.reasons, b.reasons, "{}", example.name);
            assert!(
                b.rules
                    .iter()
                    .all(|r| r.version.ends_with("(native baseline)"))
            );
            assert!(a.rules.iter().all(|r| !r.version.contains("native")));
        }
    }
}
