//! Hostile plugins: each is contained with a classified error naming the rule, and the
//! engine keeps evaluating orders afterwards.

use std::time::Duration;

use crate::support::{built_plugin, chain, chain_with, engine, engine_with, go_order};
use order_builtin_rules as ruleset;
use order_rules_engine::{Engine, Evaluation, FailureKind, Isolation, Limits, LoadError, Status};

/// Runs `stem` (after rule-validate) on the Go order; returns the evaluation.
fn run_hostile(
    engine: &Engine,
    stem: &str,
    config: &[(&str, &str)],
    isolation: Isolation,
) -> Evaluation {
    let chain = chain_with(engine, &[("rule_validate", &[]), (stem, config)], isolation).unwrap();
    chain.evaluate(&go_order())
}

/// Asserts the evaluation failed in `rule` with `kind`, and that the engine still works.
fn assert_contained(engine: &Engine, evaluation: &Evaluation, rule: &str, kind: FailureKind) {
    assert_eq!(evaluation.status, Status::Failed, "{evaluation:?}");
    let error = evaluation.error.as_ref().unwrap();
    assert_eq!(error.rule, rule);
    assert_eq!(error.kind, kind, "{}", error.message);
    let traces: Vec<(&str, &str)> = evaluation
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(traces, [("rule-validate", "accept"), (rule, "failed")]);
    let next = ruleset::load_default(engine).unwrap().evaluate(&go_order());
    assert_eq!(
        next.status,
        Status::Accepted,
        "the engine must keep working"
    );
}

#[test]
fn infinite_loop_runs_out_of_fuel() {
    let engine = engine();
    for isolation in [Isolation::Fresh, Isolation::Reuse] {
        let evaluation = run_hostile(&engine, "fixture_spin", &[], isolation);
        assert_contained(
            &engine,
            &evaluation,
            "fixture-spin",
            FailureKind::FuelExhausted,
        );
    }
}

/// The deadline is 1 s: instantiating the rules runs under it too, and a fresh instance
/// has waited over 100 ms for a core on a busy CI machine.
#[test]
fn infinite_loop_hits_the_deadline_when_fuel_is_plentiful() {
    let engine = engine_with(Limits {
        fuel: u64::MAX / 2,
        deadline: Duration::from_secs(1),
        ..crate::support::test_limits()
    });
    let evaluation = run_hostile(&engine, "fixture_spin", &[], Isolation::Fresh);
    assert_contained(
        &engine,
        &evaluation,
        "fixture-spin",
        FailureKind::DeadlineExceeded,
    );
    let message = &evaluation.error.as_ref().unwrap().message;
    assert!(
        message.contains("ran past its 1000 ms deadline"),
        "{message}"
    );
}

/// An engine with plenty of fuel, so that the limit under test is the one that trips.
fn engine_plenty_of_fuel() -> Engine {
    engine_with(Limits {
        fuel: 1_000_000_000,
        ..crate::support::test_limits()
    })
}

#[test]
fn unbounded_allocation_hits_the_memory_limit() {
    let engine = engine_plenty_of_fuel();
    let evaluation = run_hostile(&engine, "fixture_alloc", &[], Isolation::Reuse);
    assert_contained(
        &engine,
        &evaluation,
        "fixture-alloc",
        FailureKind::MemoryLimit,
    );
    assert!(evaluation.error.unwrap().message.contains("16 MiB"));
}

#[test]
fn panic_is_a_trap_with_the_panic_message() {
    let engine = engine();
    let evaluation = run_hostile(&engine, "fixture_panic", &[], Isolation::Fresh);
    assert_contained(&engine, &evaluation, "fixture-panic", FailureKind::Trap);
    let message = evaluation.error.unwrap().message;
    assert!(
        message.contains("fixture panic: this rule always fails"),
        "{message}"
    );
}

#[test]
fn oversized_output_is_malformed() {
    let engine = engine_plenty_of_fuel();
    let evaluation = run_hostile(&engine, "fixture_huge_output", &[], Isolation::Fresh);
    assert_contained(
        &engine,
        &evaluation,
        "fixture-huge-output",
        FailureKind::MalformedOutput,
    );
    assert!(evaluation.error.unwrap().message.contains("limit"));
}

#[test]
fn outcomes_the_contract_forbids_are_malformed() {
    let engine = engine();
    for (mode, words) in [
        ("empty-reject", "at least one reason"),
        ("negative-adjustment", "negative amount"),
    ] {
        let evaluation = run_hostile(
            &engine,
            "fixture_malformed",
            &[("mode", mode)],
            Isolation::Reuse,
        );
        assert_contained(
            &engine,
            &evaluation,
            "fixture-malformed",
            FailureKind::MalformedOutput,
        );
        let message = evaluation.error.unwrap().message;
        assert!(message.contains(words), "{mode}: {message}");
    }
}

#[test]
fn a_failed_reused_instance_is_replaced() {
    let engine = engine();
    let chain = chain_with(&engine, &[("fixture_panic", &[])], Isolation::Reuse).unwrap();
    for _ in 0..3 {
        let evaluation = chain.evaluate(&go_order());
        assert_eq!(evaluation.error.unwrap().kind, FailureKind::Trap);
    }
}

#[test]
fn wrong_world_is_refused_at_load() {
    let engine = engine();
    let bytes = std::fs::read(built_plugin("fixture_wrong_world")).unwrap();
    let err = engine.load(&bytes).unwrap_err();
    assert!(matches!(err, LoadError::WrongWorld(_)), "{err}");
    assert!(err.to_string().contains("order:rules/rule@0.1.0"), "{err}");
}

#[test]
fn bytes_that_are_not_a_component_are_refused() {
    let engine = engine();
    assert!(matches!(
        engine.load(b"#!/bin/sh\necho hi\n"),
        Err(LoadError::NotWasm)
    ));
    assert!(matches!(
        engine.load(b"\0asm\x01\0\0\0"),
        Err(LoadError::CoreModule)
    ));
    let mut truncated = std::fs::read(built_plugin("rule_tax")).unwrap();
    truncated.truncate(truncated.len() / 2);
    assert!(matches!(
        engine.load(&truncated),
        Err(LoadError::Invalid(_))
    ));
    // The engine still loads and runs a good plugin.
    let good = chain(&engine, &[("rule_tax", &[])]).unwrap();
    assert_eq!(good.evaluate(&go_order()).status, Status::Accepted);
}

/// The label fixture-random made of the first bytes it drew for order `id`.
fn drawn(chain: &order_rules_engine::RuleChain, id: &str) -> String {
    let evaluation = chain.evaluate(&order_rules_engine::Order::single_item(
        id, "book", 100, "USD",
    ));
    assert_eq!(evaluation.status, Status::Accepted, "{evaluation:?}");
    evaluation.adjustments[0].label.clone()
}

#[test]
fn wasi_random_is_the_same_for_the_same_order_and_rule() {
    let engine = engine();
    let fresh = chain_with(&engine, &[("fixture_random", &[])], Isolation::Fresh).unwrap();
    let first = drawn(&fresh, "order-a");
    assert!(first.starts_with("random ") && first.len() == 23, "{first}");
    assert_eq!(drawn(&fresh, "order-a"), first);
    assert_ne!(drawn(&fresh, "order-b"), first);
    // A reused instance draws the same for the order, whatever orders it saw before;
    // so does a chain built again (another worker, a replay).
    let reused = chain_with(&engine, &[("fixture_random", &[])], Isolation::Reuse).unwrap();
    drawn(&reused, "order-b");
    assert_eq!(drawn(&reused, "order-a"), first);
    let again = chain_with(&engine, &[("fixture_random", &[])], Isolation::Fresh).unwrap();
    assert_eq!(drawn(&again, "order-a"), first);
    // Another config is another rule, with randomness of its own.
    let other = chain_with(
        &engine,
        &[("fixture_random", &[("bytes", "16")])],
        Isolation::Fresh,
    )
    .unwrap();
    assert_ne!(drawn(&other, "order-a"), first);
}

#[test]
fn a_random_request_above_the_bound_fails_without_allocating_it() {
    let engine = engine();
    let max = order_rules_engine::limits::MAX_RANDOM_BYTES.to_string();
    let at_max = chain_with(
        &engine,
        &[("fixture_random", &[("bytes", &max)])],
        Isolation::Fresh,
    )
    .unwrap();
    drawn(&at_max, "order-a");
    for isolation in [Isolation::Fresh, Isolation::Reuse] {
        let evaluation = run_hostile(
            &engine,
            "fixture_random",
            &[("bytes", "1073741824")],
            isolation,
        );
        assert_contained(&engine, &evaluation, "fixture-random", FailureKind::Trap);
        let message = &evaluation.error.as_ref().unwrap().message;
        assert!(
            message.contains("1073741824") && message.contains(&max),
            "{message}"
        );
    }

    // The host's peak memory stays flat: `plugin run` asking for 8 bytes and for 1 GiB,
    // each in a process of its own, measured by the kernel.
    let peak_kib = |bytes: &str| {
        #[allow(clippy::zombie_processes)] // waited for below, with wait4
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_order-pipeline"))
            .args(["plugin", "run", "--plugin"])
            .arg(built_plugin("fixture_random"))
            .args(["--config", &format!("bytes={bytes}"), "--order"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/orders/accepted-at-fraud-limit.json"
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let pid = child.id() as libc::pid_t;
        let mut status = 0;
        // SAFETY: rusage is plain data the kernel fills in; the pid is our own child,
        // waited for here once (std's `Child` is dropped without waiting again).
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        assert_eq!(waited, pid);
        usage.ru_maxrss
    };
    let small = peak_kib("8");
    let huge = peak_kib("1073741824");
    assert!(
        huge < small + 16 * 1024,
        "peak memory asking for 8 bytes: {small} KiB, for 1 GiB: {huge} KiB"
    );
}

/// A rule's own limits (`[rule.limits]`, or given at deploy) replace the engine's for
/// that rule only: a memory cap above the engine's (and the pool's old ceiling), a fuel
/// budget below it, and a deadline, each reported in the rule's failure.
#[test]
fn a_rules_own_limits_replace_the_engines_for_that_rule() {
    use order_rules_engine::{RuleChain, RuleLimits, RuleSpec};
    let engine = engine_plenty_of_fuel();
    let spec = |stem: &str, limits: RuleLimits| RuleSpec {
        plugin: crate::support::load(&engine, stem).unwrap(),
        config: Vec::new(),
        isolation: Isolation::Fresh,
        limits,
    };
    let chain = RuleChain::new(vec![
        spec("rule_validate", RuleLimits::default()),
        spec(
            "fixture_alloc",
            RuleLimits {
                memory_mib: Some(64),
                ..RuleLimits::default()
            },
        ),
    ])
    .unwrap();
    let evaluation = chain.evaluate(&go_order());
    let error = evaluation.error.unwrap();
    assert_eq!(error.kind, FailureKind::MemoryLimit);
    assert!(error.message.contains("64 MiB"), "{}", error.message);

    let starved = RuleChain::new(vec![spec(
        "rule_validate",
        RuleLimits {
            fuel: Some(1),
            ..RuleLimits::default()
        },
    )]);
    // Instantiating and configuring run on the rule's own budget too: 1 unit is not enough.
    let err = starved.err().unwrap().to_string();
    assert!(err.contains("fuel"), "{err}");

    // The rule's deadline (1 s) stops the spin, not the engine's (10 s): the failure
    // names it. It is long enough that instantiating the rule, which runs under it too,
    // never hits it on a busy machine; plenty of fuel leaves the deadline to stop it.
    let error = RuleChain::new(vec![spec(
        "fixture_spin",
        RuleLimits {
            deadline_ms: Some(1000),
            fuel: Some(1_000_000_000_000),
            ..RuleLimits::default()
        },
    )])
    .unwrap()
    .evaluate(&go_order())
    .error
    .unwrap();
    assert_eq!(error.kind, FailureKind::DeadlineExceeded);
    assert!(
        error.message.contains("1000 ms deadline"),
        "{}",
        error.message
    );

    let refused = RuleChain::new(vec![spec(
        "rule_validate",
        RuleLimits {
            memory_mib: Some(100_000),
            ..RuleLimits::default()
        },
    )]);
    let err = refused.err().unwrap().to_string();
    assert!(
        err.starts_with("rule `rule-validate`, limits: memory-mib 100000 is out of range"),
        "{err}"
    );
}
