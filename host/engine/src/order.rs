//! The order and its money, as the host sees them: the JSON shape used by the CLI and the
//! examples, and the running totals that rule adjustments change.
//!
//! Money is an integer amount of minor units of the order's ISO 4217 currency.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An order submitted to the pipeline.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// Unique order id chosen by the client.
    pub id: String,
    /// Who placed the order; empty when unknown.
    #[serde(default)]
    pub customer_id: String,
    /// ISO 4217 currency of every amount in the order.
    #[serde(default)]
    pub currency: String,
    /// What is bought.
    #[serde(default)]
    pub lines: Vec<OrderLine>,
    /// ISO 3166-1 alpha-2 country the order ships to; empty when unknown.
    #[serde(default)]
    pub shipping_country: String,
    /// Coupon codes as the customer entered them.
    #[serde(default)]
    pub coupon_codes: Vec<String>,
    /// Free-form key/value attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// One line of an order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderLine {
    /// Stock-keeping unit.
    pub sku: String,
    /// Units bought.
    pub quantity: u32,
    /// Price of one unit in minor units.
    pub unit_price: i64,
}

impl Order {
    /// The Go API's single-item order (`id`, `item`, `price`): one line of quantity 1.
    pub fn single_item(id: &str, item: &str, price: i64, currency: &str) -> Self {
        Self {
            id: id.to_string(),
            currency: currency.to_string(),
            lines: vec![OrderLine {
                sku: item.to_string(),
                quantity: 1,
                unit_price: price,
            }],
            ..Self::default()
        }
    }
}

/// Direction of an adjustment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AdjustmentKind {
    /// Lowers the total.
    Discount,
    /// Raises the total.
    Surcharge,
    /// Raises the total as a tax line.
    Tax,
}

/// Running totals of an order in minor units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Sum of quantity x unit price.
    pub subtotal: i64,
    /// Sum of discounts.
    pub discounts: i64,
    /// Sum of surcharges.
    pub surcharges: i64,
    /// Sum of taxes.
    pub tax: i64,
    /// subtotal - discounts + surcharges + tax.
    pub total: i64,
}

impl Totals {
    /// Totals of `order` before any adjustment. Saturates instead of overflowing: the
    /// validation rule rejects orders whose amounts do not fit.
    pub fn of(order: &Order) -> Self {
        let subtotal = order
            .lines
            .iter()
            .map(|l| l.unit_price.saturating_mul(i64::from(l.quantity)))
            .fold(0i64, i64::saturating_add);
        Self {
            subtotal,
            total: subtotal,
            ..Self::default()
        }
    }

    /// Applies one adjustment of `amount` >= 0; `None` when a sum would overflow.
    pub fn apply(&self, kind: AdjustmentKind, amount: i64) -> Option<Self> {
        let mut next = *self;
        match kind {
            AdjustmentKind::Discount => {
                next.discounts = next.discounts.checked_add(amount)?;
                next.total = next.total.checked_sub(amount)?;
            }
            AdjustmentKind::Surcharge => {
                next.surcharges = next.surcharges.checked_add(amount)?;
                next.total = next.total.checked_add(amount)?;
            }
            AdjustmentKind::Tax => {
                next.tax = next.tax.checked_add(amount)?;
                next.total = next.total.checked_add(amount)?;
            }
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_example_shape_and_refuses_typos() {
        let order: Order = serde_json::from_str(
            r#"{"id":"o-1","currency":"EUR","lines":[{"sku":"book","quantity":2,"unit_price":1999}],
                "attributes":{"channel":"web"}}"#,
        )
        .unwrap();
        assert_eq!(Totals::of(&order).subtotal, 3998);
        assert_eq!(order.attributes["channel"], "web");
        let err = serde_json::from_str::<Order>(r#"{"id":"o","lnes":[]}"#).unwrap_err();
        assert!(err.to_string().contains("lnes"), "{err}");
    }

    #[test]
    fn single_item_is_one_line_of_one() {
        let order = Order::single_item("e2e-test-1", "book", 42, "USD");
        assert_eq!(
            order.lines,
            [OrderLine {
                sku: "book".into(),
                quantity: 1,
                unit_price: 42
            }]
        );
    }

    #[test]
    fn adjustments_move_the_total_and_never_overflow() {
        let t = Totals {
            subtotal: 1000,
            total: 1000,
            ..Totals::default()
        };
        let t = t.apply(AdjustmentKind::Discount, 100).unwrap();
        let t = t.apply(AdjustmentKind::Surcharge, 50).unwrap();
        let t = t.apply(AdjustmentKind::Tax, 180).unwrap();
        assert_eq!(
            (t.discounts, t.surcharges, t.tax, t.total),
            (100, 50, 180, 1130)
        );
        assert_eq!(t.apply(AdjustmentKind::Tax, i64::MAX), None);
        let huge = Order::single_item("o", "x", i64::MAX, "EUR");
        let mut two = huge.clone();
        two.lines.push(huge.lines[0].clone());
        assert_eq!(Totals::of(&two).subtotal, i64::MAX);
    }
}
