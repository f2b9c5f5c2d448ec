//! What each instance policy guarantees, shown with hostile fixtures (issue 14): a rule
//! that leaks memory on every call, one that fails on the Nth call of its instance, and
//! one that carries data from one order to the next. The table in docs/RELIABILITY.md
//! ("Instance policies") states the same.

use order_rules_engine::{Evaluation, Isolation, Limits, Order, RuleChain, Status};

use crate::support::{chain_with, engine_with};

/// Decides `count` orders (ids `o-0`, `o-1`, ...) one after the other with `stem` alone.
fn decide(
    limits: Limits,
    stem: &str,
    config: &[(&str, &str)],
    isolation: Isolation,
    count: usize,
) -> Vec<Evaluation> {
    let engine = engine_with(limits);
    let chain: RuleChain = chain_with(&engine, &[(stem, config)], isolation).unwrap();
    (0..count)
        .map(|i| chain.evaluate(&Order::single_item(&format!("o-{i}"), "book", 42, "EUR")))
        .collect()
}

/// How many evaluations were decided again in a fresh instance.
fn retried(evaluations: &[Evaluation]) -> usize {
    evaluations
        .iter()
        .filter(|e| e.rules.iter().any(|r| r.retried_fresh))
        .count()
}

fn all_accepted(evaluations: &[Evaluation]) -> bool {
    evaluations.iter().all(|e| e.status == Status::Accepted)
}

/// Leaking 512 KiB per call against a 16 MiB cap: a reused instance would fail about
/// its 30th order. Recycled at the high-water mark (75%), it never gets there; with the
/// mark at 100% the order that hits the cap is decided again in a fresh instance.
#[test]
fn a_leaking_rule_never_fails_an_order() {
    let leak = |limits: Limits, isolation| decide(limits, "fixture_leak", &[], isolation, 100);

    let fresh = leak(crate::support::test_limits(), Isolation::Fresh);
    assert!(all_accepted(&fresh));
    assert_eq!(retried(&fresh), 0);

    let reused = leak(crate::support::test_limits(), Isolation::Reuse);
    assert!(
        all_accepted(&reused),
        "{:?}",
        reused.iter().find(|e| e.status != Status::Accepted)
    );
    assert_eq!(retried(&reused), 0, "recycled before the cap");

    let no_high_water = Limits {
        reuse_high_water_percent: 100,
        ..crate::support::test_limits()
    };
    let reused = leak(no_high_water, Isolation::Reuse);
    assert!(all_accepted(&reused));
    assert!(
        retried(&reused) >= 2,
        "the cap was hit and retried: {}",
        retried(&reused)
    );
}

/// Failing on the 3rd call of its instance: fresh instances never get there; a reused
/// one does, and that order is decided again in a fresh instance; recycled after 2
/// uses, it never gets there either.
#[test]
fn a_rule_failing_on_its_nth_call_fails_no_order() {
    let nth = |limits: Limits, isolation| {
        decide(limits, "fixture_nth_call", &[("n", "3")], isolation, 20)
    };
    let fresh = nth(crate::support::test_limits(), Isolation::Fresh);
    assert!(all_accepted(&fresh));
    assert_eq!(retried(&fresh), 0);

    let reused = nth(crate::support::test_limits(), Isolation::Reuse);
    assert!(
        all_accepted(&reused),
        "{:?}",
        reused.iter().find(|e| e.status != Status::Accepted)
    );
    // The 3rd order of each instance: the first instance's 3rd, then the fresh one that
    // decided it has had 1 call, so every 3rd order after that.
    assert!(retried(&reused) >= 2, "{}", retried(&reused));
    assert!(reused[2].rules[0].retried_fresh);

    let short_lived = Limits {
        reuse_max_uses: 2,
        ..crate::support::test_limits()
    };
    let reused = nth(short_lived, Isolation::Reuse);
    assert!(all_accepted(&reused));
    assert_eq!(retried(&reused), 0);
}

/// Carrying the previous order's id: a reused instance without checks shows it in the
/// next order's result; fresh instances, or recycling after every use, never do. With
/// the checks (the default), the instance's second order is also decided fresh: the two
/// outcomes differ, that order takes the fresh one, and the rule runs fresh from then on.
#[test]
fn only_fresh_instances_keep_one_orders_data_from_the_next() {
    let label = |e: &Evaluation| e.adjustments[0].label.clone();
    let none = |e: &Evaluation| label(e) == "previous order: none";
    let carry = |limits: Limits, isolation, from_call: &str| {
        decide(
            limits,
            "fixture_carry",
            &[("from-call", from_call)],
            isolation,
            6,
        )
    };
    let unchecked = Limits {
        reuse_check_every: 0,
        ..crate::support::test_limits()
    };

    let fresh = carry(crate::support::test_limits(), Isolation::Fresh, "2");
    assert!(fresh.iter().all(none));

    let reused = carry(unchecked.clone(), Isolation::Reuse, "2");
    assert_eq!(label(&reused[1]), "previous order: o-0");
    assert_eq!(label(&reused[2]), "previous order: o-1");

    let single_use = Limits {
        reuse_max_uses: 1,
        ..unchecked
    };
    let reused = carry(single_use, Isolation::Reuse, "2");
    assert!(reused.iter().all(none));

    // Checked (the default): caught at the instance's second order, which it shows in
    // the rule's trace; fresh from then on.
    let checked = carry(crate::support::test_limits(), Isolation::Reuse, "2");
    assert!(checked.iter().all(none), "{checked:?}");
    let leaks: Vec<bool> = checked.iter().map(|e| e.rules[0].state_leak).collect();
    assert_eq!(leaks, [false, true, false, false, false, false]);

    // State that shows from the 4th call on escapes the second-order check. Checking one
    // evaluation in 2 of served instances (the 2nd, 3rd and 5th orders here) lets the 4th
    // order show its predecessor and catches the rule at the 5th; fresh after that.
    let every_2nd = Limits {
        reuse_check_every: 2,
        ..crate::support::test_limits()
    };
    let sampled = carry(every_2nd, Isolation::Reuse, "4");
    assert_eq!(label(&sampled[3]), "previous order: o-2");
    let leaks: Vec<bool> = sampled.iter().map(|e| e.rules[0].state_leak).collect();
    assert_eq!(leaks, [false, false, false, false, true, false]);
    assert!(none(&sampled[4]) && none(&sampled[5]));
}

/// Idle reused instances never take the slots that new ones need: an engine keeps at
/// most half its instance slots idle, across every pool. With 2 slots, three chains of
/// a reused rule are built and decide orders; without that budget, the third chain's
/// first instance would find no slot.
#[test]
fn idle_reused_instances_leave_slots_for_new_ones() {
    let engine = engine_with(Limits {
        max_instances: 2,
        ..crate::support::test_limits()
    });
    let quiet: &[(&str, &str)] = &[("from-call", "1000")];
    let chains: Vec<RuleChain> = (0..3)
        .map(|_| chain_with(&engine, &[("fixture_carry", quiet)], Isolation::Reuse).unwrap())
        .collect();
    for round in 0..3 {
        for chain in &chains {
            let order = Order::single_item(&format!("slots-{round}"), "book", 42, "EUR");
            let evaluation = chain.evaluate(&order);
            assert_eq!(evaluation.status, Status::Accepted, "{evaluation:?}");
        }
    }
}
