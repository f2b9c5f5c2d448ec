//! `cargo bench -p order-pipeline --bench rules`: the cost of running rules as Wasm
//! components, next to the same rules compiled natively. Prints criterion's figures, then
//! the Wasm/native ratio of the default chain.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use order_pipeline::engine::{Engine, Isolation, Limits, RuleChain, RuleSpec};
use order_pipeline::order::{Order, OrderLine};
use order_pipeline::ruleset;
use rule_common::{AdjustmentKind, ChainContext, Outcome, Rule, Totals};

// The rules' own sources, compiled natively: the same `decide` functions the plugins run.
// (Their unit tests come along under cfg(test); they are not run here.)
#[allow(unused, dead_code, clippy::all)]
#[path = "../../plugins/rule-discount/src/lib.rs"]
mod rule_discount;
#[allow(unused, dead_code, clippy::all)]
#[path = "../../plugins/rule-fraud/src/lib.rs"]
mod rule_fraud;
#[allow(unused, dead_code, clippy::all)]
#[path = "../../plugins/rule-tax/src/lib.rs"]
mod rule_tax;
#[allow(unused, dead_code, clippy::all)]
#[path = "../../plugins/rule-validate/src/lib.rs"]
mod rule_validate;

fn order(lines: usize) -> Order {
    Order {
        id: "bench-1".into(),
        currency: "EUR".into(),
        shipping_country: "DE".into(),
        coupon_codes: vec!["SAVE10".into()],
        lines: (0..lines)
            .map(|i| OrderLine {
                sku: format!("sku-{i}"),
                quantity: 1 + (i as u32 % 3),
                unit_price: 1999,
            })
            .collect(),
        ..Order::default()
    }
}

/// The default ruleset's config of `rule`, as the plugin receives it.
fn config(rule: &str) -> Vec<(String, String)> {
    let file = ruleset::parse(ruleset::DEFAULT_RULESET, "default").unwrap();
    let entry = file
        .rules
        .iter()
        .find(|r| r.plugin == format!("builtin:{rule}"))
        .unwrap();
    entry
        .config
        .iter()
        .map(|(k, v)| {
            let value = match v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|i| i.as_str().unwrap().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                other => other.to_string(),
            };
            (k.clone(), value)
        })
        .collect()
}

fn chain(engine: &Engine, rules: &[&str], isolation: Isolation) -> RuleChain {
    RuleChain::new(
        rules
            .iter()
            .map(|rule| RuleSpec {
                plugin: engine.load(ruleset::builtin(rule).unwrap()).unwrap(),
                config: config(rule),
                isolation,
            })
            .collect(),
    )
    .unwrap()
}

/// The default chain, natively.
struct Native {
    validate: rule_validate::Settings,
    fraud: rule_fraud::Settings,
    discount: rule_discount::Settings,
    tax: rule_tax::Settings,
}

impl Native {
    fn new() -> Self {
        Self {
            validate: rule_common::parse_settings::<rule_validate::Validate>(config(
                "rule-validate",
            ))
            .unwrap(),
            fraud: rule_common::parse_settings::<rule_fraud::Fraud>(config("rule-fraud")).unwrap(),
            discount: rule_common::parse_settings::<rule_discount::Discount>(config(
                "rule-discount",
            ))
            .unwrap(),
            tax: rule_common::parse_settings::<rule_tax::Tax>(config("rule-tax")).unwrap(),
        }
    }

    fn evaluate(&self, order: &rule_common::Order) -> Totals {
        let subtotal = order
            .lines
            .iter()
            .map(|l| l.unit_price * i64::from(l.quantity))
            .sum();
        let mut context = ChainContext {
            totals: Totals {
                subtotal,
                discounts: 0,
                surcharges: 0,
                tax: 0,
                total: subtotal,
            },
            adjustments: Vec::new(),
        };
        for step in 0..4 {
            let outcome = match step {
                0 => rule_validate::Validate::decide(order, &context, &self.validate),
                1 => rule_fraud::Fraud::decide(order, &context, &self.fraud),
                2 => rule_discount::Discount::decide(order, &context, &self.discount),
                _ => rule_tax::Tax::decide(order, &context, &self.tax),
            };
            match outcome {
                Outcome::Accept(adjustments) => {
                    for a in adjustments {
                        match a.kind {
                            AdjustmentKind::Discount => {
                                context.totals.discounts += a.amount;
                                context.totals.total -= a.amount;
                            }
                            AdjustmentKind::Surcharge => {
                                context.totals.surcharges += a.amount;
                                context.totals.total += a.amount;
                            }
                            AdjustmentKind::Tax => {
                                context.totals.tax += a.amount;
                                context.totals.total += a.amount;
                            }
                        }
                        context.adjustments.push(a);
                    }
                }
                _ => break,
            }
        }
        context.totals
    }
}

fn native_order(order: &Order) -> rule_common::Order {
    rule_common::Order {
        id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        currency: order.currency.clone(),
        lines: order
            .lines
            .iter()
            .map(|l| rule_common::OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect(),
        shipping_country: order.shipping_country.clone(),
        coupon_codes: order.coupon_codes.clone(),
        attributes: Vec::new(),
    }
}

const DEFAULT_CHAIN: [&str; 4] = ["rule-validate", "rule-fraud", "rule-discount", "rule-tax"];

fn benches(c: &mut Criterion) {
    let engine = Engine::new(Limits::default()).unwrap();
    for lines in [1, 100] {
        let o = order(lines);
        for isolation in [Isolation::Fresh, Isolation::Reuse] {
            let validate = chain(&engine, &["rule-validate"], isolation);
            c.bench_function(&format!("rule-validate {lines}-line {isolation}"), |b| {
                b.iter(|| black_box(validate.evaluate(black_box(&o))))
            });
        }
    }
    let o = order(5);
    for isolation in [Isolation::Fresh, Isolation::Reuse] {
        let default = chain(&engine, &DEFAULT_CHAIN, isolation);
        c.bench_function(&format!("default chain {isolation}"), |b| {
            b.iter(|| black_box(default.evaluate(black_box(&o))))
        });
    }
    let native = Native::new();
    let n = native_order(&o);
    c.bench_function("default chain native", |b| {
        b.iter(|| black_box(native.evaluate(black_box(&n))))
    });
}

criterion_group!(rules, benches);

/// Median time per evaluation of `f` over `n` runs.
fn median_ns(n: usize, mut f: impl FnMut()) -> f64 {
    let mut times: Vec<u128> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_nanos()
        })
        .collect();
    times.sort_unstable();
    times[n / 2] as f64
}

fn main() {
    rules();
    Criterion::default().configure_from_args().final_summary();
    // The ratio the issue asks for, from one more direct measurement.
    let engine = Engine::new(Limits::default()).unwrap();
    let o = order(5);
    let native = Native::new();
    let n = native_order(&o);
    let native_ns = median_ns(20_000, || {
        black_box(native.evaluate(black_box(&n)));
    });
    for isolation in [Isolation::Fresh, Isolation::Reuse] {
        let default = chain(&engine, &DEFAULT_CHAIN, isolation);
        let wasm_ns = median_ns(20_000, || {
            black_box(default.evaluate(black_box(&o)));
        });
        println!(
            "default chain, 5 lines: wasm ({isolation}) {:.1} µs, native {:.3} µs, ratio {:.0}x",
            wasm_ns / 1e3,
            native_ns / 1e3,
            wasm_ns / native_ns
        );
    }
}
