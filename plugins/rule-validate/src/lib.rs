//! rule-validate: the first rule of a chain. Checks that an order is well formed before
//! any business rule looks at it, and reports every problem at once.

pub mod iso;

use std::collections::HashSet;

use rule_common::{ChainContext, Config, Order, Outcome, PluginInfo, Reason, Rule, reason};

/// Longest accepted order id, customer id, SKU or coupon code, in bytes.
const MAX_ID_LEN: usize = 128;
/// Most attributes an order may carry.
const MAX_ATTRIBUTES: usize = 32;
/// Most coupon codes an order may carry.
const MAX_COUPONS: usize = 8;

/// The validation rule.
pub struct Validate;

/// Parsed config of rule-validate.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Most lines in an order (`max-lines`, default 100).
    pub max_lines: usize,
    /// Most units (sum of quantities) in an order (`max-units`, default 10000).
    pub max_units: u64,
    /// Whether a customer id is required (`require-customer`, default false).
    pub require_customer: bool,
    /// Whether a shipping country is required (`require-country`, default false).
    pub require_country: bool,
    /// Accepted currencies (`currencies`, default: every active ISO 4217 code).
    pub currencies: Option<Vec<String>>,
}

impl Rule for Validate {
    type Settings = Settings;

    fn info() -> PluginInfo {
        rule_common::plugin_info!()
    }

    fn settings(config: &mut Config) -> Result<Settings, String> {
        let currencies = config.list("currencies");
        if let Some(bad) = currencies.iter().find(|c| !iso::is_currency(c)) {
            return Err(format!(
                "config key `currencies`: `{bad}` is not an ISO 4217 currency code"
            ));
        }
        Ok(Settings {
            max_lines: config.parse_or("max-lines", 100, "a whole number")?,
            max_units: config.parse_or("max-units", 10_000, "a whole number")?,
            require_customer: config.bool_or("require-customer", false)?,
            require_country: config.bool_or("require-country", false)?,
            currencies: (!currencies.is_empty()).then_some(currencies),
        })
    }

    fn decide(order: &Order, _context: &ChainContext, settings: &Settings) -> Outcome {
        let reasons = problems(order, settings);
        if reasons.is_empty() {
            Outcome::Accept(Vec::new())
        } else {
            Outcome::Reject(reasons)
        }
    }
}

rule_common::export_rule!(Validate);

/// Every problem with `order`, in field order.
fn problems(order: &Order, settings: &Settings) -> Vec<Reason> {
    let mut out = Vec::new();
    check_id(&mut out, "id", &order.id, true);
    check_id(
        &mut out,
        "customer_id",
        &order.customer_id,
        settings.require_customer,
    );

    let currency_ok = match &settings.currencies {
        Some(allowed) => allowed.iter().any(|c| c == &order.currency),
        None => iso::is_currency(&order.currency),
    };
    if order.currency.is_empty() {
        out.push(reason(
            "missing-currency",
            "currency is required (an ISO 4217 code such as EUR)",
        ));
    } else if !currency_ok {
        out.push(reason(
            "invalid-currency",
            format!(
                "currency `{}` is not an accepted ISO 4217 code",
                order.currency
            ),
        ));
    }

    if order.shipping_country.is_empty() {
        if settings.require_country {
            out.push(reason("missing-country", "shipping_country is required"));
        }
    } else if !iso::is_country(&order.shipping_country) {
        out.push(reason(
            "invalid-country",
            format!(
                "shipping_country `{}` is not an ISO 3166-1 alpha-2 code such as DE",
                order.shipping_country
            ),
        ));
    }

    check_lines(&mut out, order, settings);

    if order.coupon_codes.len() > MAX_COUPONS {
        out.push(reason(
            "too-many-coupons",
            format!(
                "{} coupon codes given, at most {MAX_COUPONS} allowed",
                order.coupon_codes.len()
            ),
        ));
    }
    for (i, code) in order.coupon_codes.iter().enumerate() {
        check_id(&mut out, &format!("coupon_codes[{i}]"), code, true);
    }
    if order.attributes.len() > MAX_ATTRIBUTES {
        out.push(reason(
            "too-many-attributes",
            format!(
                "{} attributes given, at most {MAX_ATTRIBUTES} allowed",
                order.attributes.len()
            ),
        ));
    }
    out
}

fn check_lines(out: &mut Vec<Reason>, order: &Order, settings: &Settings) {
    if order.lines.is_empty() {
        out.push(reason(
            "no-lines",
            "lines: an order needs at least one line",
        ));
        return;
    }
    if order.lines.len() > settings.max_lines {
        out.push(reason(
            "too-many-lines",
            format!(
                "lines: {} lines, at most {} allowed",
                order.lines.len(),
                settings.max_lines
            ),
        ));
    }
    let mut seen = HashSet::new();
    let mut units: u64 = 0;
    let mut subtotal: Option<i64> = Some(0);
    for (i, line) in order.lines.iter().enumerate() {
        check_id(out, &format!("lines[{i}].sku"), &line.sku, true);
        if !line.sku.is_empty() && !seen.insert(line.sku.as_str()) {
            out.push(reason(
                "duplicate-sku",
                format!(
                    "lines[{i}].sku: `{}` appears on more than one line; merge them",
                    line.sku
                ),
            ));
        }
        if line.quantity == 0 {
            out.push(reason(
                "invalid-quantity",
                format!("lines[{i}].quantity must be at least 1"),
            ));
        }
        if line.unit_price < 0 {
            out.push(reason(
                "negative-price",
                format!(
                    "lines[{i}].unit_price is {}, it must not be negative",
                    line.unit_price
                ),
            ));
        }
        units += u64::from(line.quantity);
        subtotal = subtotal.and_then(|s| {
            line.unit_price
                .checked_mul(i64::from(line.quantity))?
                .checked_add(s)
        });
    }
    if units > settings.max_units {
        out.push(reason(
            "too-many-units",
            format!(
                "lines: {units} units in total, at most {} allowed",
                settings.max_units
            ),
        ));
    }
    if subtotal.is_none() {
        out.push(reason(
            "amount-overflow",
            "lines: the order total does not fit in 64 bits",
        ));
    }
}

/// Checks an identifier-like field: present when `required`, at most [`MAX_ID_LEN`]
/// bytes, no control characters, no surrounding white space.
fn check_id(out: &mut Vec<Reason>, field: &str, value: &str, required: bool) {
    if value.is_empty() {
        if required {
            out.push(reason("missing-field", format!("{field} is required")));
        }
    } else if value.len() > MAX_ID_LEN {
        out.push(reason(
            "field-too-long",
            format!(
                "{field} is {} bytes long, at most {MAX_ID_LEN} allowed",
                value.len()
            ),
        ));
    } else if value.chars().any(char::is_control) || value.trim() != value {
        out.push(reason(
            "invalid-field",
            format!("{field} must not contain control characters or surrounding spaces"),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rule_common::testing::{context, order, settings};

    fn codes(outcome: Outcome) -> Vec<String> {
        match outcome {
            Outcome::Reject(reasons) => reasons.into_iter().map(|r| r.code).collect(),
            Outcome::Accept(_) => Vec::new(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn decide(o: &Order, pairs: &[(&str, &str)]) -> Vec<String> {
        let s = settings::<Validate>(pairs).unwrap();
        codes(Validate::decide(o, &context(o), &s))
    }

    #[test]
    fn accepts_a_good_order() {
        let o = order("EUR", &[("book", 1, 4200), ("pen", 3, 150)]);
        assert!(decide(&o, &[]).is_empty());
    }

    #[test]
    fn reports_every_problem() {
        let mut o = order("EURO", &[("a", 0, -1), ("a", 1, 5), ("", 1, 1)]);
        o.id.clear();
        o.shipping_country = "Germany".into();
        assert_eq!(
            decide(&o, &[]),
            [
                "missing-field",
                "invalid-currency",
                "invalid-country",
                "invalid-quantity",
                "negative-price",
                "duplicate-sku",
                "missing-field"
            ]
        );
    }

    #[test]
    fn limits_and_requirements_from_config() {
        let o = order("USD", &[("a", 6, 1), ("b", 5, 1)]);
        let pairs = [
            ("max-lines", "1"),
            ("max-units", "10"),
            ("require-customer", "true"),
            ("require-country", "true"),
            ("currencies", "EUR, GBP"),
        ];
        assert_eq!(
            decide(&o, &pairs),
            [
                "missing-field",
                "invalid-currency",
                "missing-country",
                "too-many-lines",
                "too-many-units"
            ]
        );
    }

    #[test]
    fn overflowing_totals_are_rejected() {
        let o = order("EUR", &[("a", u32::MAX, i64::MAX / 2)]);
        assert_eq!(decide(&o, &[]), ["too-many-units", "amount-overflow"]);
    }

    #[test]
    fn empty_order_and_bad_text() {
        let mut o = order("EUR", &[]);
        o.id = " padded".into();
        o.coupon_codes = vec!["x".repeat(200)];
        assert_eq!(
            decide(&o, &[]),
            ["invalid-field", "no-lines", "field-too-long"]
        );
    }

    #[test]
    fn bad_config_is_refused() {
        assert!(
            settings::<Validate>(&[("currencies", "EUR,XYZ")])
                .unwrap_err()
                .contains("XYZ")
        );
        assert!(settings::<Validate>(&[("max-lines", "many")]).is_err());
        assert!(
            settings::<Validate>(&[("typo", "1")])
                .unwrap_err()
                .contains("unknown")
        );
    }
}
