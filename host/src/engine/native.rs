//! The built-in rules compiled natively into the host: a **benchmark baseline**, never a
//! production mode. With `--native-baseline` (`NATIVE_RULES_BASELINE=true`) a chain step
//! whose plugin is byte-for-byte one of the built-in components runs the very same
//! `decide` function (`plugins/rule-*/src/lib.rs`) as plain Rust instead of in a Wasm
//! instance: no isolation, no fuel, deadline or memory cap. Everything around it (the
//! chain, the outcome checks, the worker, storage) stays the same, so the pipeline can be
//! measured side by side with and without Wasm.

use rule_common as rc;

use super::bindings::order::rules::types as wit;

// The rules' own sources; their unit tests come along under cfg(test) and run there too.
#[allow(dead_code, unused, clippy::all)]
#[path = "../../../plugins/rule-discount/src/lib.rs"]
mod rule_discount;
#[allow(dead_code, unused, clippy::all)]
#[path = "../../../plugins/rule-fraud/src/lib.rs"]
mod rule_fraud;
#[allow(dead_code, unused, clippy::all)]
#[path = "../../../plugins/rule-tax/src/lib.rs"]
mod rule_tax;
#[allow(dead_code, unused, clippy::all)]
#[path = "../../../plugins/rule-validate/src/lib.rs"]
mod rule_validate;

type Decide = dyn Fn(&rc::Order, &rc::ChainContext) -> rc::Outcome + Send + Sync;

/// One built-in rule, configured, as a native function.
pub(crate) struct NativeRule {
    decide: Box<Decide>,
}

impl NativeRule {
    /// The native twin of built-in rule `name` with `config`; `None` when `name` has none.
    pub(crate) fn new(name: &str, config: &[(String, String)]) -> Option<Result<Self, String>> {
        Some(match name {
            "rule-validate" => make::<rule_validate::Validate>(config),
            "rule-fraud" => make::<rule_fraud::Fraud>(config),
            "rule-discount" => make::<rule_discount::Discount>(config),
            "rule-tax" => make::<rule_tax::Tax>(config),
            _ => return None,
        })
    }

    /// Decides on `order` (converted once per chain run) in `context`.
    pub(crate) fn evaluate(&self, order: &rc::Order, context: &wit::ChainContext) -> wit::Outcome {
        from_native_outcome((self.decide)(order, &to_native_context(context)))
    }
}

fn make<R: rc::Rule>(config: &[(String, String)]) -> Result<NativeRule, String>
where
    R::Settings: Send + Sync,
{
    let settings = rc::parse_settings::<R>(config.to_vec())?;
    Ok(NativeRule {
        decide: Box::new(move |order, context| R::decide(order, context, &settings)),
    })
}

/// The order as the native rules take it.
pub(crate) fn to_native_order(order: &wit::Order) -> rc::Order {
    rc::Order {
        id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        currency: order.currency.clone(),
        lines: order
            .lines
            .iter()
            .map(|l| rc::OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect(),
        shipping_country: order.shipping_country.clone(),
        coupon_codes: order.coupon_codes.clone(),
        attributes: order.attributes.clone(),
    }
}

fn to_native_context(context: &wit::ChainContext) -> rc::ChainContext {
    let t = &context.totals;
    rc::ChainContext {
        totals: rc::Totals {
            subtotal: t.subtotal,
            discounts: t.discounts,
            surcharges: t.surcharges,
            tax: t.tax,
            total: t.total,
        },
        adjustments: context
            .adjustments
            .iter()
            .map(|a| rc::Adjustment {
                kind: match a.kind {
                    wit::AdjustmentKind::Discount => rc::AdjustmentKind::Discount,
                    wit::AdjustmentKind::Surcharge => rc::AdjustmentKind::Surcharge,
                    wit::AdjustmentKind::Tax => rc::AdjustmentKind::Tax,
                },
                label: a.label.clone(),
                amount: a.amount,
            })
            .collect(),
    }
}

fn from_native_outcome(outcome: rc::Outcome) -> wit::Outcome {
    match outcome {
        rc::Outcome::Accept(adjustments) => wit::Outcome::Accept(
            adjustments
                .into_iter()
                .map(|a| wit::Adjustment {
                    kind: match a.kind {
                        rc::AdjustmentKind::Discount => wit::AdjustmentKind::Discount,
                        rc::AdjustmentKind::Surcharge => wit::AdjustmentKind::Surcharge,
                        rc::AdjustmentKind::Tax => wit::AdjustmentKind::Tax,
                    },
                    label: a.label,
                    amount: a.amount,
                })
                .collect(),
        ),
        rc::Outcome::Reject(reasons) => wit::Outcome::Reject(
            reasons
                .into_iter()
                .map(|r| wit::Reason {
                    code: r.code,
                    message: r.message,
                })
                .collect(),
        ),
        rc::Outcome::Retryable(e) => wit::Outcome::Retryable(wit::RetryError {
            code: e.code,
            message: e.message,
        }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::Path;

    use crate::engine::{Engine, Limits};
    use crate::{ruleset, runner};

    /// The baseline is only worth measuring if it decides exactly like the components.
    #[test]
    fn the_native_baseline_decides_every_example_like_the_wasm_rules() {
        let wasm = ruleset::load_default(&Engine::new(Limits::default()).unwrap()).unwrap();
        let native_engine = Engine::new(Limits {
            native_builtins: true,
            ..Limits::default()
        })
        .unwrap();
        let native = ruleset::load_default(&native_engine).unwrap();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/orders");
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
