//! rule-tax: adds one tax line (VAT or sales tax) at the rate configured for the order's
//! shipping country. The taxable amount is the running total before tax (subtotal less
//! discounts plus surcharges), so put this rule after the rules that adjust prices.

use rule_common::money::{format_rate, percent_of};
use rule_common::{
    Adjustment, AdjustmentKind, ChainContext, Config, Order, Outcome, PluginInfo, Rule,
};

/// The tax rule.
pub struct Tax;

/// Parsed config of rule-tax.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Country -> rate in basis points (`rates = "DE:1900,FR:2000"`; 1900 = 19%).
    pub rates: Vec<(String, u32)>,
    /// Rate for countries not listed, if any (`default-rate`); without it they pay no tax.
    pub default_rate: Option<u32>,
    /// Label of the tax line (`label`, default `VAT`).
    pub label: String,
}

impl Rule for Tax {
    type Settings = Settings;

    fn info() -> PluginInfo {
        rule_common::plugin_info!()
    }

    fn settings(config: &mut Config) -> Result<Settings, String> {
        let rates = config.pairs::<u32>("rates", "a rate in basis points (1900 = 19%)")?;
        let default_rate = match config.take("default-rate") {
            None => None,
            Some(raw) => Some(raw.parse().map_err(|_| {
                format!(
                    "config key `default-rate`: expected basis points (1900 = 19%), got `{raw}`"
                )
            })?),
        };
        if let Some(bp) = rates
            .iter()
            .map(|(_, bp)| *bp)
            .chain(default_rate)
            .find(|bp| *bp > 10_000)
        {
            return Err(format!("a tax rate of {bp} basis points is more than 100%"));
        }
        Ok(Settings {
            rates,
            default_rate,
            label: config.take("label").unwrap_or_else(|| "VAT".into()),
        })
    }

    fn decide(order: &Order, context: &ChainContext, settings: &Settings) -> Outcome {
        let rate = settings
            .rates
            .iter()
            .find(|(country, _)| *country == order.shipping_country)
            .map(|(_, bp)| *bp)
            .or(settings.default_rate);
        let taxable = context
            .totals
            .total
            .saturating_sub(context.totals.tax)
            .max(0);
        let adjustments = match rate {
            Some(bp) if bp > 0 => {
                let mut label = settings.label.clone();
                for part in [order.shipping_country.clone(), format_rate(bp)] {
                    if !part.is_empty() {
                        label.push(' ');
                        label.push_str(&part);
                    }
                }
                vec![Adjustment {
                    kind: AdjustmentKind::Tax,
                    label,
                    amount: percent_of(taxable, bp),
                }]
            }
            _ => Vec::new(),
        };
        Outcome::Accept(adjustments)
    }
}

rule_common::export_rule!(Tax);

#[cfg(test)]
mod tests {
    use super::*;
    use rule_common::testing::{context, order, settings};

    const CONFIG: [(&str, &str); 1] = [("rates", "DE:1900, FR:2000, US:0")];

    fn tax(country: &str, pairs: &[(&str, &str)], discounts: i64) -> Vec<(String, i64)> {
        let mut o = order("EUR", &[("a", 3, 1000)]);
        o.shipping_country = country.into();
        let mut ctx = context(&o);
        ctx.totals.discounts = discounts;
        ctx.totals.total -= discounts;
        match Tax::decide(&o, &ctx, &settings::<Tax>(pairs).unwrap()) {
            Outcome::Accept(adjs) => adjs.into_iter().map(|a| (a.label, a.amount)).collect(),
            other => panic!("expected accept, got {other:?}"),
        }
    }

    #[test]
    fn taxes_the_discounted_total_at_the_country_rate() {
        assert_eq!(tax("DE", &CONFIG, 0), [("VAT DE 19%".to_string(), 570)]);
        assert_eq!(tax("FR", &CONFIG, 1000), [("VAT FR 20%".to_string(), 400)]);
    }

    #[test]
    fn zero_rate_unknown_country_and_default() {
        assert!(tax("US", &CONFIG, 0).is_empty());
        assert!(tax("JP", &CONFIG, 0).is_empty());
        assert!(tax("", &CONFIG, 0).is_empty());
        let with_default = [
            ("rates", "DE:1900"),
            ("default-rate", "1000"),
            ("label", "Sales tax"),
        ];
        assert_eq!(
            tax("JP", &with_default, 0),
            [("Sales tax JP 10%".to_string(), 300)]
        );
    }

    #[test]
    fn bad_rates_are_refused() {
        assert!(settings::<Tax>(&[("rates", "DE:19%")]).is_err());
        assert!(settings::<Tax>(&[("default-rate", "20000")]).is_err());
    }
}
