//! What a rule's outcome does to an evaluation: checked against the limits, its
//! adjustments applied to the totals later rules see, a rejection, retry or failure
//! recorded; and the order and totals as the WIT types a rule takes.

use super::{AppliedAdjustment, Evaluation, RuleOutcome, RuleReason, RuleRetry, Status};
use crate::bindings::order::rules::types as wit;
use crate::instance::{Failure, FailureKind};
use crate::limits::{MAX_ADJUSTMENTS, MAX_REASONS};
use crate::order::{AdjustmentKind, Order, Totals};
use crate::plugin::Plugin;

/// The label of a step's outcome in its trace.
pub(super) fn outcome_label(outcome: &Result<wit::Outcome, Failure>) -> RuleOutcome {
    match outcome {
        Ok(wit::Outcome::Accept(_)) => RuleOutcome::Accept,
        Ok(wit::Outcome::Reject(_)) => RuleOutcome::Reject,
        Ok(wit::Outcome::Retryable(_)) => RuleOutcome::Retryable,
        Err(_) => RuleOutcome::Failed,
    }
}

/// Applies rule `name`'s `outcome` to `evaluation`; false when the chain stops there
/// (a rejection, a retryable outcome, a failure).
pub(super) fn conclude(
    evaluation: &mut Evaluation,
    context: &mut wit::ChainContext,
    name: &str,
    outcome: Result<wit::Outcome, Failure>,
) -> bool {
    match outcome {
        Ok(wit::Outcome::Accept(adjustments)) => {
            if let Err(failure) = apply(evaluation, context, name, adjustments) {
                evaluation.status = Status::Failed;
                evaluation.error = Some(failure.named(name));
                if let Some(trace) = evaluation.rules.last_mut() {
                    trace.outcome = RuleOutcome::Failed;
                }
                return false;
            }
            true
        }
        Ok(wit::Outcome::Reject(reasons)) => {
            evaluation.status = Status::Rejected;
            evaluation.reasons = reasons
                .into_iter()
                .map(|r| RuleReason {
                    rule: name.to_string(),
                    code: r.code,
                    message: r.message,
                })
                .collect();
            false
        }
        Ok(wit::Outcome::Retryable(e)) => {
            evaluation.status = Status::Retryable;
            evaluation.retry = Some(RuleRetry {
                rule: name.to_string(),
                code: e.code,
                message: e.message,
            });
            false
        }
        Err(failure) => {
            tracing::warn!(rule = name, kind = ?failure.kind, "{}", failure.message);
            evaluation.status = Status::Failed;
            evaluation.error = Some(failure.named(name));
            false
        }
    }
}

/// Checks an outcome against the contract and the engine's output limit.
pub(super) fn check_outcome(
    outcome: wit::Outcome,
    plugin: &Plugin,
) -> Result<wit::Outcome, Failure> {
    let malformed = |message: String| Err(Failure::new(FailureKind::MalformedOutput, message));
    let max_bytes = plugin.limits().max_output_bytes;
    let text_bytes: usize = match &outcome {
        wit::Outcome::Accept(adjs) => adjs.iter().map(|a| a.label.len()).sum(),
        wit::Outcome::Reject(reasons) => {
            reasons.iter().map(|r| r.code.len() + r.message.len()).sum()
        }
        wit::Outcome::Retryable(e) => e.code.len() + e.message.len(),
    };
    if text_bytes > max_bytes {
        return malformed(format!(
            "the outcome holds {text_bytes} bytes of text, more than the limit of {max_bytes}"
        ));
    }
    match &outcome {
        wit::Outcome::Accept(adjs) => {
            if adjs.len() > MAX_ADJUSTMENTS {
                return malformed(format!(
                    "{} adjustments, at most {MAX_ADJUSTMENTS} allowed",
                    adjs.len()
                ));
            }
            if let Some(a) = adjs.iter().find(|a| a.amount < 0) {
                return malformed(format!(
                    "adjustment `{}` has a negative amount {}; amounts are >= 0 and the kind gives the direction",
                    a.label, a.amount
                ));
            }
            if adjs.iter().any(|a| a.label.trim().is_empty()) {
                return malformed("an adjustment has an empty label".into());
            }
        }
        wit::Outcome::Reject(reasons) => {
            if reasons.is_empty() {
                return malformed("a rejection must give at least one reason".into());
            }
            if reasons.len() > MAX_REASONS {
                return malformed(format!(
                    "{} reasons, at most {MAX_REASONS} allowed",
                    reasons.len()
                ));
            }
            if reasons.iter().any(|r| r.code.is_empty()) {
                return malformed("a rejection reason has an empty code".into());
            }
        }
        wit::Outcome::Retryable(e) => {
            if e.code.is_empty() {
                return malformed("a retryable error has an empty code".into());
            }
        }
    }
    Ok(outcome)
}

/// Applies accepted adjustments to the evaluation and to the context later rules see.
fn apply(
    evaluation: &mut Evaluation,
    context: &mut wit::ChainContext,
    rule: &str,
    adjustments: Vec<wit::Adjustment>,
) -> Result<(), Failure> {
    for adjustment in adjustments {
        let kind = match adjustment.kind {
            wit::AdjustmentKind::Discount => AdjustmentKind::Discount,
            wit::AdjustmentKind::Surcharge => AdjustmentKind::Surcharge,
            wit::AdjustmentKind::Tax => AdjustmentKind::Tax,
        };
        evaluation.totals = evaluation
            .totals
            .apply(kind, adjustment.amount)
            .ok_or_else(|| {
                Failure::new(
                    FailureKind::MalformedOutput,
                    format!(
                        "adjustment `{}` makes the totals overflow",
                        adjustment.label
                    ),
                )
            })?;
        evaluation.adjustments.push(AppliedAdjustment {
            rule: rule.to_string(),
            kind,
            label: adjustment.label.clone(),
            amount: adjustment.amount,
        });
        context.adjustments.push(adjustment);
    }
    context.totals = to_wit_totals(&evaluation.totals);
    Ok(())
}

pub(crate) fn to_wit_order(order: &Order) -> wit::Order {
    wit::Order {
        id: order.id.clone(),
        customer_id: order.customer_id.clone(),
        currency: order.currency.clone(),
        lines: order
            .lines
            .iter()
            .map(|l| wit::OrderLine {
                sku: l.sku.clone(),
                quantity: l.quantity,
                unit_price: l.unit_price,
            })
            .collect(),
        shipping_country: order.shipping_country.clone(),
        coupon_codes: order.coupon_codes.clone(),
        attributes: order
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

pub(crate) fn to_wit_totals(t: &Totals) -> wit::Totals {
    wit::Totals {
        subtotal: t.subtotal,
        discounts: t.discounts,
        surcharges: t.surcharges,
        tax: t.tax,
        total: t.total,
    }
}
