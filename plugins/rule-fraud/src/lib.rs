//! rule-fraud: simple risk limits. Rejects an order whose running total is over the
//! limit for its currency, that ships to a blocked country, or that buys too many units
//! of one SKU.

use rule_common::{ChainContext, Config, Order, Outcome, PluginInfo, Rule, reason};

/// The fraud rule.
pub struct Fraud;

/// Parsed config of rule-fraud.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Highest accepted running total in minor units (`max-total`, default 10000000).
    pub max_total: i64,
    /// Per-currency limits (`max-total.<CUR>`, e.g. `max-total.JPY = 1500000`).
    pub max_total_by_currency: Vec<(String, i64)>,
    /// Countries orders may not ship to (`blocked-countries`, comma-separated, default none).
    pub blocked_countries: Vec<String>,
    /// Highest quantity on one line (`max-line-quantity`, default 1000).
    pub max_line_quantity: u32,
}

impl Rule for Fraud {
    type Settings = Settings;

    fn info() -> PluginInfo {
        rule_common::plugin_info!()
    }

    fn settings(config: &mut Config) -> Result<Settings, String> {
        let mut max_total_by_currency = Vec::new();
        for (currency, raw) in config.prefixed("max-total.") {
            let limit = raw.parse().map_err(|_| {
                format!("config key `max-total.{currency}`: expected an amount in minor units, got `{raw}`")
            })?;
            max_total_by_currency.push((currency, limit));
        }
        Ok(Settings {
            max_total: config.parse_or("max-total", 10_000_000, "an amount in minor units")?,
            max_total_by_currency,
            blocked_countries: config.list("blocked-countries"),
            max_line_quantity: config.parse_or("max-line-quantity", 1000, "a whole number")?,
        })
    }

    fn decide(order: &Order, context: &ChainContext, settings: &Settings) -> Outcome {
        let mut reasons = Vec::new();
        let limit = settings
            .max_total_by_currency
            .iter()
            .find(|(currency, _)| currency == &order.currency)
            .map_or(settings.max_total, |(_, limit)| *limit);
        if context.totals.total > limit {
            reasons.push(reason(
                "total-over-limit",
                format!(
                    "order total {} {} is over the limit of {limit}; split the order or ask for a review",
                    context.totals.total, order.currency
                ),
            ));
        }
        if settings.blocked_countries.contains(&order.shipping_country) {
            reasons.push(reason(
                "blocked-country",
                format!("orders cannot ship to {}", order.shipping_country),
            ));
        }
        for (i, line) in order.lines.iter().enumerate() {
            if line.quantity > settings.max_line_quantity {
                reasons.push(reason(
                    "line-quantity-over-limit",
                    format!(
                        "lines[{i}]: quantity {} of `{}` is over the limit of {}",
                        line.quantity, line.sku, settings.max_line_quantity
                    ),
                ));
            }
        }
        if reasons.is_empty() {
            Outcome::Accept(Vec::new())
        } else {
            Outcome::Reject(reasons)
        }
    }
}

rule_common::export_rule!(Fraud);

#[cfg(test)]
mod tests {
    use super::*;
    use rule_common::testing::{context, order, settings};

    fn codes(o: &Order, pairs: &[(&str, &str)]) -> Vec<String> {
        let s = settings::<Fraud>(pairs).unwrap();
        match Fraud::decide(o, &context(o), &s) {
            Outcome::Reject(reasons) => reasons.into_iter().map(|r| r.code).collect(),
            Outcome::Accept(adjustments) => {
                assert!(adjustments.is_empty());
                Vec::new()
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn accepts_within_limits() {
        assert!(codes(&order("EUR", &[("a", 2, 500)]), &[("max-total", "1000")]).is_empty());
    }

    #[test]
    fn total_limit_with_currency_override() {
        let o = order("JPY", &[("a", 1, 50_000)]);
        assert_eq!(codes(&o, &[("max-total", "10000")]), ["total-over-limit"]);
        assert!(codes(&o, &[("max-total", "10000"), ("max-total.JPY", "100000")]).is_empty());
    }

    #[test]
    fn blocked_country_and_line_quantity() {
        let mut o = order("EUR", &[("a", 11, 1), ("b", 10, 1)]);
        o.shipping_country = "KP".into();
        let pairs = [("blocked-countries", "KP, IR"), ("max-line-quantity", "10")];
        assert_eq!(
            codes(&o, &pairs),
            ["blocked-country", "line-quantity-over-limit"]
        );
    }

    #[test]
    fn bad_config_names_the_key() {
        let err = settings::<Fraud>(&[("max-total.EUR", "ten")]).unwrap_err();
        assert!(err.contains("max-total.EUR"), "{err}");
    }
}
