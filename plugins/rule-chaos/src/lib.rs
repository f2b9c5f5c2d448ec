//! rule-chaos: the Go system's demo failure, kept so that its clients see the same
//! behaviour. An order with a line whose SKU starts with a prefix (default `fail`,
//! case-sensitive) gets a `retryable` outcome: the pipeline retries it and, when the
//! retries are used up, records it as failed and dead-letters it.

use rule_common::{ChainContext, Config, Order, Outcome, PluginInfo, RetryError, Rule};

/// The chaos rule.
pub struct Chaos;

/// Parsed config of rule-chaos.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// SKU prefix that triggers the simulated failure (`prefix`, default `fail`).
    pub prefix: String,
}

impl Rule for Chaos {
    type Settings = Settings;

    fn info() -> PluginInfo {
        rule_common::plugin_info!()
    }

    fn settings(config: &mut Config) -> Result<Settings, String> {
        let prefix = config.take("prefix").unwrap_or_else(|| "fail".into());
        if prefix.is_empty() {
            return Err("config key `prefix` must not be empty (it would fail every order)".into());
        }
        Ok(Settings { prefix })
    }

    fn decide(order: &Order, _context: &ChainContext, settings: &Settings) -> Outcome {
        match order
            .lines
            .iter()
            .find(|l| l.sku.starts_with(&settings.prefix))
        {
            Some(line) => Outcome::Retryable(RetryError {
                code: "simulated-failure".into(),
                message: format!(
                    "sku `{}` starts with `{}`: simulated transient failure",
                    line.sku, settings.prefix
                ),
            }),
            None => Outcome::Accept(Vec::new()),
        }
    }
}

rule_common::export_rule!(Chaos);

#[cfg(test)]
mod tests {
    use super::*;
    use rule_common::testing::{context, order, settings};

    fn decide(skus: &[&str], pairs: &[(&str, &str)]) -> Outcome {
        let lines: Vec<(&str, u32, i64)> = skus.iter().map(|s| (*s, 1, 100)).collect();
        let o = order("EUR", &lines);
        Chaos::decide(&o, &context(&o), &settings::<Chaos>(pairs).unwrap())
    }

    #[test]
    fn fail_prefix_is_retryable_case_sensitive() {
        assert!(
            matches!(decide(&["book", "fail-123"], &[]), Outcome::Retryable(e) if e.code == "simulated-failure")
        );
        assert!(matches!(decide(&["failure"], &[]), Outcome::Retryable(_)));
        assert!(matches!(decide(&["Fail"], &[]), Outcome::Accept(a) if a.is_empty()));
        assert!(matches!(decide(&["book"], &[]), Outcome::Accept(_)));
    }

    #[test]
    fn prefix_from_config() {
        assert!(matches!(
            decide(&["boom-1"], &[("prefix", "boom")]),
            Outcome::Retryable(_)
        ));
        assert!(settings::<Chaos>(&[("prefix", "")]).is_err());
    }
}
