//! The rule engine on the real compiled plugins of the default ruleset.

use std::sync::Arc;
use std::thread;

use crate::support::{chain, chain_with, engine, go_order, repo_root};
use order_builtin_rules as ruleset;
use order_rules_engine::Order;
use order_rules_engine::ruleset::RulesetError;
use order_rules_engine::{ChainError, FailureKind, Isolation, RuleChain, Status};

#[test]
fn default_chain_accepts_the_go_order_and_records_every_rule() {
    let engine = engine();
    let chain = ruleset::load_default(&engine).unwrap();
    let evaluation = chain.evaluate(&go_order());
    assert_eq!(evaluation.status, Status::Accepted);
    assert_eq!(evaluation.totals.total, 42);
    let names: Vec<&str> = evaluation.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        ["rule-validate", "rule-fraud", "rule-discount", "rule-tax"]
    );
    for (trace, spec) in evaluation.rules.iter().zip(chain.specs()) {
        let builtin = ruleset::builtin(&trace.name).unwrap();
        assert_eq!(trace.digest, order_rules_engine::digest(builtin));
        assert_eq!(trace.digest, spec.plugin.digest());
        assert_eq!(trace.version, "0.1.0");
        assert_eq!(trace.outcome, order_rules_engine::RuleOutcome::Accept);
        assert!(trace.fuel_used > 0, "{trace:?}");
    }
}

#[test]
fn adjustments_accumulate_through_the_chain() {
    let engine = engine();
    let chain = ruleset::load_default(&engine).unwrap();
    let order: Order = serde_json::from_str(
        r#"{"id":"o-1","currency":"EUR","shipping_country":"DE",
            "lines":[{"sku":"mug","quantity":10,"unit_price":1000}],"coupon_codes":["SAVE10"]}"#,
    )
    .unwrap();
    let evaluation = chain.evaluate(&order);
    assert_eq!(evaluation.status, Status::Accepted);
    // 10000 - 5% volume (500) - 10% coupon of 9500 (950) = 8550; VAT 19% of 8550 = 1624.5 -> 1625.
    let amounts: Vec<(&str, i64)> = evaluation
        .adjustments
        .iter()
        .map(|a| (a.rule.as_str(), a.amount))
        .collect();
    assert_eq!(
        amounts,
        [
            ("rule-discount", 500),
            ("rule-discount", 950),
            ("rule-tax", 1625)
        ]
    );
    assert_eq!(evaluation.totals.discounts, 1450);
    assert_eq!(evaluation.totals.tax, 1625);
    assert_eq!(evaluation.totals.total, 10175);
}

#[test]
fn rejection_stops_the_chain() {
    let engine = engine();
    let chain = ruleset::load_default(&engine).unwrap();
    let mut order = go_order();
    order.shipping_country = "KP".into();
    let evaluation = chain.evaluate(&order);
    assert_eq!(evaluation.status, Status::Rejected);
    assert_eq!(evaluation.rules.len(), 2, "discount and tax must not run");
    assert_eq!(evaluation.reasons[0].rule, "rule-fraud");
    assert_eq!(evaluation.reasons[0].code, "blocked-country");
}

#[test]
fn retryable_outcome_names_the_rule() {
    let engine = engine();
    let chain = chain(&engine, &[("rule_validate", &[]), ("rule_chaos", &[])]).unwrap();
    let evaluation = chain.evaluate(&Order::single_item("o", "fail-123", 42, "USD"));
    assert_eq!(evaluation.status, Status::Retryable);
    let retry = evaluation.retry.unwrap();
    assert_eq!(
        (retry.rule.as_str(), retry.code.as_str()),
        ("rule-chaos", "simulated-failure")
    );
}

#[test]
fn reused_instances_decide_exactly_like_fresh_ones() {
    let engine = engine();
    let rules: &[(&str, &[(&str, &str)])] = &[
        ("rule_validate", &[]),
        (
            "rule_discount",
            &[("tiers", "10:500"), ("coupons", "SAVE10:percent:1000")],
        ),
        ("rule_tax", &[("rates", "DE:1900")]),
    ];
    let fresh = chain_with(&engine, rules, Isolation::Fresh).unwrap();
    let reuse = chain_with(&engine, rules, Isolation::Reuse).unwrap();
    for quantity in [1, 9, 10, 11, 25] {
        let mut order = Order::single_item(&format!("o-{quantity}"), "mug", 999, "EUR");
        order.lines[0].quantity = quantity;
        order.shipping_country = "DE".into();
        order.coupon_codes = if quantity % 2 == 0 {
            vec!["SAVE10".into()]
        } else {
            vec![]
        };
        let (a, b) = (fresh.evaluate(&order), reuse.evaluate(&order));
        assert_eq!(
            (a.status, a.totals, &a.adjustments),
            (b.status, b.totals, &b.adjustments)
        );
    }
}

#[test]
fn one_chain_serves_many_threads() {
    let engine = engine();
    let chain = Arc::new(ruleset::load_default(&engine).unwrap());
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let chain = Arc::clone(&chain);
            thread::spawn(move || {
                (0..50)
                    .map(|i| {
                        let order =
                            Order::single_item(&format!("t{t}-{i}"), "book", 100 + i, "EUR");
                        chain.evaluate(&order).totals.total
                    })
                    .collect::<Vec<i64>>()
            })
        })
        .collect();
    for handle in handles {
        let totals = handle.join().unwrap();
        assert_eq!(totals, (0..50).map(|i| 100 + i).collect::<Vec<i64>>());
    }
}

#[test]
fn bad_config_is_refused_when_the_chain_is_built() {
    let engine = engine();
    let err = chain(&engine, &[("rule_tax", &[("rates", "DE:19%")])])
        .err()
        .unwrap();
    let err = err.downcast::<ChainError>().unwrap();
    match err {
        ChainError::Rule(failure) => {
            assert_eq!(failure.rule, "rule-tax");
            assert_eq!(failure.kind, FailureKind::Configure);
            assert!(failure.message.contains("`rates`"), "{}", failure.message);
        }
        other => panic!("expected a config failure, got {other}"),
    }
    let typo = chain(&engine, &[("rule_tax", &[("rate", "DE:1900")])])
        .err()
        .unwrap();
    assert!(
        typo.to_string().contains("unknown config key `rate`"),
        "{typo}"
    );
}

#[test]
fn a_rule_may_appear_only_once() {
    let engine = engine();
    let err = chain(&engine, &[("rule_tax", &[]), ("rule_tax", &[])])
        .err()
        .unwrap();
    assert!(
        matches!(err.downcast::<ChainError>(), Ok(ChainError::DuplicateRule(n)) if n == "rule-tax")
    );
}

#[test]
fn ruleset_files_resolve_plugins_and_report_errors() {
    let engine = engine();
    let dir = tempfile::tempdir().unwrap();
    let tax = crate::support::built_plugin("rule_tax");
    std::fs::copy(&tax, dir.path().join("tax.wasm")).unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        "[[rule]]\nplugin = \"builtin:rule-validate\"\n\n[[rule]]\nplugin = \"tax.wasm\"\nisolation = \"reuse\"\n[rule.config]\nrates = [\"DE:1900\"]\n",
    )
    .unwrap();
    let chain: RuleChain = ruleset::load_file(&engine, &path).unwrap();
    let mut order = go_order();
    order.shipping_country = "DE".into();
    order.lines[0].unit_price = 1000;
    assert_eq!(chain.evaluate(&order).totals.tax, 190);

    std::fs::write(&path, "[[rule]]\nplugin = \"builtin:rule-nope\"\n").unwrap();
    let err = ruleset::load_file(&engine, &path).err().unwrap();
    assert!(matches!(err, RulesetError::UnknownBuiltin { .. }));
    assert!(
        err.to_string().contains("rule-tax"),
        "lists the known plugins: {err}"
    );

    std::fs::write(&path, "[[rule]]\nplugin = \"missing.wasm\"\n").unwrap();
    let err = ruleset::load_file(&engine, &path).err().unwrap();
    assert!(err.to_string().contains("missing.wasm"), "{err}");
    assert!(repo_root().join("plugins/ruleset.toml").is_file());
}

#[test]
fn compiled_components_are_cached_by_digest_and_engine() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(crate::support::built_plugin("rule_tax")).unwrap();
    let mut order = order_rules_engine::Order::single_item("cached", "book", 1000, "EUR");
    order.shipping_country = "DE".into();
    let with_cache = || {
        let engine = engine();
        engine.cache_compiled_in(dir.path().to_path_buf()).unwrap();
        engine
    };
    let decide = |plugin: std::sync::Arc<order_rules_engine::Plugin>| {
        let evaluation = order_rules_engine::RuleChain::new(vec![order_rules_engine::RuleSpec {
            plugin,
            config: vec![("rates".into(), "DE:1900".into())],
            isolation: order_rules_engine::Isolation::Fresh,
            limits: order_rules_engine::RuleLimits::default(),
        }])
        .unwrap()
        .evaluate(&order);
        let fuel: Vec<u64> = evaluation.rules.iter().map(|r| r.fuel_used).collect();
        (
            evaluation.status,
            evaluation.totals,
            evaluation.adjustments,
            fuel,
        )
    };
    let compiled = with_cache().load(&bytes).unwrap();
    assert!(!compiled.from_cache());
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    // Its sha256 beside it, checked before every load.
    let digest = format!("{}.sha256", files[0].display());
    assert_eq!(std::fs::read_to_string(&digest).unwrap().len(), 64);
    let file = &files[0];
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    assert!(
        name.starts_with(compiled.digest()) && name.ends_with(".cwasm"),
        "{name}"
    );

    // Another engine of the same settings (another process, a restart) loads it.
    let cached = with_cache().load(&bytes).unwrap();
    assert!(cached.from_cache());
    assert_eq!(cached.digest(), compiled.digest());
    assert_eq!(decide(cached), decide(compiled));

    // A file that does not match its sha256 is compiled again and replaced.
    std::fs::write(file, b"not a compiled component").unwrap();
    let again = with_cache().load(&bytes).unwrap();
    assert!(!again.from_cache());
    assert!(with_cache().load(&bytes).unwrap().from_cache());

    // A directory others can write is refused at once, saying what to fix.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = engine()
        .cache_compiled_in(dir.path().to_path_buf())
        .unwrap_err()
        .to_string();
    assert!(err.contains("chmod 700"), "{err}");
}

/// A rule's fuel may grow with the order's lines (`fuel-per-line-percent`, bounded by
/// `fuel-max-scale`): a budget that a 1-line order fits and a 40-line order does not
/// becomes enough for both, and never more than its bound.
#[test]
fn fuel_scales_with_the_order_lines_within_its_bound() {
    let engine = engine();
    let tax = crate::support::load(&engine, "rule_tax").unwrap();
    let order = |lines: usize| {
        let mut order = Order::single_item(&format!("lines-{lines}"), "book", 1000, "EUR");
        order.shipping_country = "DE".into();
        order.lines = (0..lines)
            .map(|i| order_rules_engine::OrderLine {
                sku: format!("sku-{i}"),
                quantity: 1,
                unit_price: 1000,
            })
            .collect();
        order
    };
    let run = |limits: order_rules_engine::RuleLimits, lines: usize| {
        let chain = RuleChain::new(vec![order_rules_engine::RuleSpec {
            plugin: Arc::clone(&tax),
            config: vec![("rates".into(), "DE:1900".into())],
            isolation: Isolation::Fresh,
            limits,
        }])
        .unwrap();
        chain.evaluate(&order(lines))
    };
    let used = |lines: usize| run(Default::default(), lines).rules[0].fuel_used;
    let (one, forty) = (used(1), used(40));
    assert!(
        forty > 2 * one,
        "the rule's work grows with the lines: {one} vs {forty}"
    );

    // Between the two: enough for one line, not for forty.
    let base = one + (forty - one) / 4;
    let flat = order_rules_engine::RuleLimits {
        fuel: Some(base),
        ..Default::default()
    };
    assert_eq!(run(flat, 1).status, Status::Accepted);
    let starved = run(flat, 40);
    assert_eq!(starved.error.unwrap().kind, FailureKind::FuelExhausted);

    // Each line adds enough: forty lines fit, one still does.
    let percent = u32::try_from((forty * 2 / base) * 100 / 40 + 1).unwrap();
    let scaled = order_rules_engine::RuleLimits {
        fuel: Some(base),
        fuel_per_line_percent: Some(percent),
        fuel_max_scale: Some(1000),
        ..Default::default()
    };
    assert_eq!(run(scaled, 1).status, Status::Accepted);
    assert_eq!(run(scaled, 40).status, Status::Accepted, "{percent}%");

    // The bound holds: a scale of 1 is the flat budget.
    let capped = order_rules_engine::RuleLimits {
        fuel_max_scale: Some(1),
        ..scaled
    };
    assert_eq!(
        run(capped, 40).error.unwrap().kind,
        FailureKind::FuelExhausted
    );
}
