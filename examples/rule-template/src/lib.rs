//! A template rule: adds a handling surcharge (`fee`, minor units) to orders whose running
//! total is below `threshold`. Copy this crate, rename it, and replace `decide`.
//!
//! The shape to keep: the decision is a pure function (`decide`) that unit-tests on your
//! machine's target; the exported functions only parse config, convert and call it.

use std::cell::RefCell;

wit_bindgen::generate!({
    world: "rule",
    // The contract: wit/rule.wit (order:rules@0.1.0).
    path: "wit",
});

use order::rules::log::{Level, log};
use order::rules::types::{Adjustment, AdjustmentKind};

/// The rule's settings, parsed from its config.
#[derive(Debug, Clone, PartialEq)]
struct Settings {
    /// Orders with a total below this (minor units) pay the fee.
    threshold: i64,
    /// The fee, in minor units.
    fee: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Self { threshold: 2000, fee: 300 }
    }
}

/// Parses config; unknown keys and bad values are errors that name the key.
fn parse_settings(config: &[(String, String)]) -> Result<Settings, String> {
    let mut settings = Settings::default();
    for (key, value) in config {
        let amount: i64 = value
            .trim()
            .parse()
            .map_err(|_| format!("config key `{key}`: expected an amount in minor units, got `{value}`"))?;
        if amount < 0 {
            return Err(format!("config key `{key}` must not be negative"));
        }
        match key.as_str() {
            "threshold" => settings.threshold = amount,
            "fee" => settings.fee = amount,
            other => return Err(format!("unknown config key `{other}`; this rule knows: threshold, fee")),
        }
    }
    Ok(settings)
}

/// The decision: pure, no I/O, easy to test.
fn decide(_order: &Order, context: &ChainContext, settings: &Settings) -> Outcome {
    if context.totals.total < settings.threshold && settings.fee > 0 {
        Outcome::Accept(vec![Adjustment {
            kind: AdjustmentKind::Surcharge,
            label: "small order fee".into(),
            amount: settings.fee,
        }])
    } else {
        Outcome::Accept(Vec::new())
    }
}

thread_local! {
    static SETTINGS: RefCell<Settings> = RefCell::new(Settings::default());
}

struct SmallOrderFee;

impl Guest for SmallOrderFee {
    fn describe() -> PluginInfo {
        PluginInfo {
            name: env!("CARGO_PKG_NAME").into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: env!("CARGO_PKG_DESCRIPTION").into(),
        }
    }

    fn configure(config: Vec<(String, String)>) -> Result<(), String> {
        let settings = parse_settings(&config)?;
        log(Level::Debug, &format!("configured: {settings:?}"));
        SETTINGS.with(|s| *s.borrow_mut() = settings);
        Ok(())
    }

    fn evaluate(order: Order, context: ChainContext) -> Outcome {
        SETTINGS.with(|s| decide(&order, &context, &s.borrow()))
    }
}

export!(SmallOrderFee);

#[cfg(test)]
mod tests {
    use super::*;
    use order::rules::types::Totals;

    fn context(total: i64) -> ChainContext {
        ChainContext {
            totals: Totals { subtotal: total, discounts: 0, surcharges: 0, tax: 0, total },
            adjustments: Vec::new(),
        }
    }

    fn order() -> Order {
        Order {
            id: "o-1".into(),
            customer_id: String::new(),
            currency: "EUR".into(),
            lines: Vec::new(),
            shipping_country: String::new(),
            coupon_codes: Vec::new(),
            attributes: Vec::new(),
        }
    }

    #[test]
    fn small_orders_pay_the_fee() {
        match decide(&order(), &context(1999), &Settings::default()) {
            Outcome::Accept(adjs) => assert_eq!(adjs[0].amount, 300),
            other => panic!("{other:?}"),
        }
        assert!(matches!(decide(&order(), &context(2000), &Settings::default()), Outcome::Accept(a) if a.is_empty()));
    }

    #[test]
    fn config_errors_name_the_key() {
        let bad = vec![("fee".to_string(), "lots".to_string())];
        assert!(parse_settings(&bad).unwrap_err().contains("`fee`"));
        let unknown = vec![("fees".to_string(), "1".to_string())];
        assert!(parse_settings(&unknown).unwrap_err().contains("unknown"));
    }
}
