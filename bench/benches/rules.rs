//! `cd bench && cargo bench --features zen`: the cost of running rules as Wasm components,
//! next to the same rules compiled natively and (with `zen`) the same decisions in
//! zen-engine (GoRules ZEN, a peer business-rules engine). Prints criterion's figures, then the ratios.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use order_builtin_rules as ruleset;
#[cfg(feature = "zen")]
use order_pipeline_bench::zen;
use order_rules_engine::{
    Engine, Isolation, Limits, Order, OrderLine, RuleChain, RuleLimits, RuleSpec,
};

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

fn config(rule: &str) -> Vec<(String, String)> {
    order_pipeline_bench::config(rule).unwrap()
}

fn chain(engine: &Engine, rules: &[&str], isolation: Isolation) -> RuleChain {
    RuleChain::new(
        rules
            .iter()
            .map(|rule| RuleSpec {
                plugin: engine.load(ruleset::builtin(rule).unwrap()).unwrap(),
                config: config(rule),
                isolation,
                limits: RuleLimits::default(),
            })
            .collect(),
    )
    .unwrap()
}

/// The default chain with the same rules compiled natively: the host's benchmark
/// baseline (`NATIVE_RULES_BASELINE`), through the same chain code as the Wasm rules.
fn native_chain() -> RuleChain {
    let engine = ruleset::engine(Limits::default(), true).unwrap();
    ruleset::load_default(&engine).unwrap()
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
    // What reuse's checks against fresh instances cost (one in 100, and each instance's
    // second evaluation).
    let unchecked = Engine::new(Limits {
        reuse_check_every: 0,
        ..Limits::default()
    })
    .unwrap();
    let default = chain(&unchecked, &DEFAULT_CHAIN, Isolation::Reuse);
    c.bench_function("default chain reuse unchecked", |b| {
        b.iter(|| black_box(default.evaluate(black_box(&o))))
    });
    let native = native_chain();
    c.bench_function("default chain native", |b| {
        b.iter(|| black_box(native.evaluate(black_box(&o))))
    });
    #[cfg(feature = "zen")]
    {
        let rt = zen::runtime().unwrap();
        let decision = zen::decision().unwrap();
        c.bench_function("default chain zen-engine", |b| {
            b.iter(|| black_box(zen::evaluate(&rt, &decision, black_box(&o)).unwrap()))
        });
    }
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

/// ZEN's graph must decide like the Wasm chain, or the comparison means nothing.
#[cfg(feature = "zen")]
fn check_zen_agrees(engine: &Engine) {
    use order_rules_engine::Status;
    use std::path::Path;
    let wasm = chain(engine, &DEFAULT_CHAIN, Isolation::Reuse);
    let rt = zen::runtime().unwrap();
    let decision = zen::decision().unwrap();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/orders");
    let examples = order_rules_engine::runner::load_examples(&dir).unwrap();
    let mut checked = 0;
    for example in &examples {
        if example.name == "rejected-duplicate-sku" {
            continue; // not expressible in ZEN's expression language (see jdm())
        }
        let order = example.order.as_ref().unwrap();
        let w = wasm.evaluate(order);
        let z = zen::evaluate(&rt, &decision, order).unwrap();
        let status = match w.status {
            Status::Accepted => "accepted",
            _ => "rejected",
        };
        assert_eq!(z.status, status, "{}: zen {z:?}", example.name);
        if w.status == Status::Accepted {
            assert_eq!(z.total, w.totals.total, "{}: zen {z:?}", example.name);
        }
        checked += 1;
    }
    let bench_order = order(5);
    let w = wasm.evaluate(&bench_order);
    let z = zen::evaluate(&rt, &decision, &bench_order).unwrap();
    assert_eq!((z.status.as_str(), z.total), ("accepted", w.totals.total));
    println!(
        "zen-engine graph agrees with the Wasm chain on {checked} example orders and the bench order"
    );
}

fn main() {
    let engine = Engine::new(Limits::default()).unwrap();
    #[cfg(feature = "zen")]
    check_zen_agrees(&engine);
    rules();
    Criterion::default().configure_from_args().final_summary();
    // The ratios, from one more direct measurement each.
    let o = order(5);
    let native = native_chain();
    let native_ns = median_ns(20_000, || {
        black_box(native.evaluate(black_box(&o)));
    });
    println!("default chain, 5 lines: native {:.3} µs", native_ns / 1e3);
    #[cfg(feature = "zen")]
    let zen_ns = {
        let rt = zen::runtime().unwrap();
        let decision = zen::decision().unwrap();
        let ns = median_ns(20_000, || {
            black_box(zen::evaluate(&rt, &decision, black_box(&o)).unwrap());
        });
        println!("default chain, 5 lines: zen-engine {:.1} µs", ns / 1e3);
        ns
    };
    for isolation in [Isolation::Fresh, Isolation::Reuse] {
        let default = chain(&engine, &DEFAULT_CHAIN, isolation);
        let wasm_ns = median_ns(20_000, || {
            black_box(default.evaluate(black_box(&o)));
        });
        #[cfg(feature = "zen")]
        let versus_zen = format!(
            ", {:.2}x zen-engine's time ({})",
            wasm_ns / zen_ns,
            if wasm_ns <= zen_ns {
                "faster than zen-engine"
            } else {
                "slower than zen-engine"
            }
        );
        #[cfg(not(feature = "zen"))]
        let versus_zen = "";
        println!(
            "default chain, 5 lines: wasm ({isolation}) {:.1} µs = {:.0}x native{versus_zen}",
            wasm_ns / 1e3,
            wasm_ns / native_ns,
        );
    }
}
