//! Rules compiled natively into the host: a **benchmark baseline**, never a production
//! mode. An engine made with [`NativeTwins`](crate::Engine::with_native_twins) runs a chain
//! step whose plugin has a native twin (the built-in rules, byte-for-byte) as plain Rust
//! instead of in a Wasm instance: no isolation, no fuel, deadline or memory cap. Everything around it (the
//! chain, the outcome checks, the worker, storage) stays the same, so the pipeline can be
//! measured side by side with and without Wasm.

use rule_common as rc;

use super::bindings::order::rules::types as wit;

/// A built-in rule's `decide`, configured, as a native function.
pub type NativeDecide = Box<dyn Fn(&rc::Order, &rc::ChainContext) -> rc::Outcome + Send + Sync>;

/// Where an engine finds the native twins of plugins (the benchmark baseline). The
/// `order-builtin-rules` crate implements it for the built-in rules.
pub trait NativeTwins: Send + Sync {
    /// The native twin of the plugin named `name` whose component has sha256 `digest`,
    /// configured with `config`: `None` when it has none, an error (naming the key) when
    /// it refuses the config.
    fn twin(
        &self,
        name: &str,
        digest: &str,
        config: &[(String, String)],
    ) -> Option<anyhow::Result<NativeDecide>>;
}

/// One rule as a native function, as a chain step runs it.
pub(crate) struct NativeRule {
    decide: NativeDecide,
}

impl NativeRule {
    pub(crate) fn new(decide: NativeDecide) -> Self {
        Self { decide }
    }

    /// Decides on `order` (converted once per chain run) in `context`.
    pub(crate) fn evaluate(&self, order: &rc::Order, context: &wit::ChainContext) -> wit::Outcome {
        from_native_outcome((self.decide)(order, &to_native_context(context)))
    }
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
