//! How a candidate's result of an order differs from the live one (a shadow run, a
//! replay), and the tally of many: counts of orders whose status, total or reasons
//! differ, the totals' difference in money per currency, and samples of each kind.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{OrderResult, ResultStatus};
use order_rules_engine::RuleOutcome;

/// Samples kept per kind of difference.
pub const MAX_SAMPLES: usize = 10;

/// The kinds of difference, as the tally names them.
pub const KINDS: [&str; 3] = ["status", "total", "reasons"];

/// What one side decided, as a sample shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// `done`, `rejected` or `failed`.
    pub status: String,
    /// The total, minor units.
    pub total: i64,
    /// Rejection reasons as `rule/code`, and `failed in <rule>` for a failure.
    pub reasons: Vec<String>,
    /// The ruleset version that decided.
    pub version: u64,
}

impl Side {
    fn of(result: &OrderResult) -> Self {
        let mut reasons: Vec<String> = result
            .reasons
            .iter()
            .map(|r| format!("{}/{}", r.rule, r.code))
            .collect();
        if result.status == ResultStatus::Failed {
            // Which rule failed it, not the error's words (they count attempts, which a
            // replay or a shadow run, deciding once, does not repeat).
            let rule = result
                .rules
                .iter()
                .rev()
                .find(|r| r.outcome != RuleOutcome::Accept)
                .map_or("the host", |r| r.name.as_str());
            reasons.push(format!("failed in {rule}"));
        }
        Self {
            status: result.status.as_str().to_string(),
            total: result.totals.total,
            reasons,
            version: result.ruleset_version,
        }
    }
}

/// One order decided differently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    /// The order id.
    pub id: String,
    /// Its currency.
    pub currency: String,
    /// What the live version decided.
    pub live: Side,
    /// What the candidate decided.
    pub candidate: Side,
}

/// The tally of many orders decided twice.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiffReport {
    /// Orders compared.
    pub orders: u64,
    /// Orders with any difference.
    pub differing: u64,
    /// Orders by kind of difference (`status`, `total`, `reasons`); one order may count
    /// under several.
    pub by_kind: BTreeMap<String, u64>,
    /// Candidate total minus live total, summed per currency (minor units).
    pub money: BTreeMap<String, i64>,
    /// Up to [`MAX_SAMPLES`] orders per kind.
    pub samples: BTreeMap<String, Vec<Sample>>,
}

impl DiffReport {
    /// Adds one order: its live result and the candidate's.
    pub fn add(&mut self, live: &OrderResult, candidate: &OrderResult) {
        self.orders += 1;
        let (l, c) = (Side::of(live), Side::of(candidate));
        let kinds = [
            l.status != c.status,
            l.total != c.total,
            l.reasons != c.reasons,
        ];
        if !kinds.contains(&true) {
            return;
        }
        self.differing += 1;
        if l.total != c.total {
            *self.money.entry(live.currency.clone()).or_default() += c.total - l.total;
        }
        for (kind, differs) in KINDS.iter().zip(kinds) {
            if !differs {
                continue;
            }
            *self.by_kind.entry((*kind).to_string()).or_default() += 1;
            let samples = self.samples.entry((*kind).to_string()).or_default();
            if samples.len() < MAX_SAMPLES {
                samples.push(Sample {
                    id: live.id.clone(),
                    currency: live.currency.clone(),
                    live: l.clone(),
                    candidate: c.clone(),
                });
            }
        }
    }

    /// Adds another tally (another worker's, another batch's).
    pub fn merge(&mut self, other: &Self) {
        self.orders += other.orders;
        self.differing += other.differing;
        for (kind, n) in &other.by_kind {
            *self.by_kind.entry(kind.clone()).or_default() += n;
        }
        for (currency, amount) in &other.money {
            *self.money.entry(currency.clone()).or_default() += amount;
        }
        for (kind, samples) in &other.samples {
            let mine = self.samples.entry(kind.clone()).or_default();
            let room = MAX_SAMPLES.saturating_sub(mine.len());
            mine.extend(samples.iter().take(room).cloned());
        }
    }

    /// The report as people read it.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "{} orders compared, {} decided differently",
            self.orders, self.differing
        );
        for kind in KINDS {
            let n = self.by_kind.get(kind).copied().unwrap_or(0);
            out.push_str(&format!("\n  {kind:<8} {n}"));
        }
        for (currency, amount) in &self.money {
            out.push_str(&format!(
                "\n  money    {currency} {amount:+} (candidate - live, minor units)"
            ));
        }
        for (kind, samples) in &self.samples {
            for s in samples {
                out.push_str(&format!(
                    "\n  {kind}: {} live {} {} {:?} v{} -> candidate {} {} {:?} v{}",
                    s.id,
                    s.live.status,
                    s.live.total,
                    s.live.reasons,
                    s.live.version,
                    s.candidate.status,
                    s.candidate.total,
                    s.candidate.reasons,
                    s.candidate.version
                ));
            }
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::domain::{Order, Totals};

    fn result(id: &str, status: ResultStatus, total: i64) -> OrderResult {
        let order = Order::single_item(id, "book", total, "EUR");
        let mut result = OrderResult::from_evaluation(
            &order,
            order_rules_engine::Evaluation {
                status: order_rules_engine::Status::Accepted,
                totals: Totals::of(&order),
                adjustments: Vec::new(),
                reasons: Vec::new(),
                retry: None,
                error: None,
                rules: Vec::new(),
            },
            1,
        );
        result.status = status;
        result
    }

    #[test]
    fn counts_kinds_money_and_keeps_samples() {
        let mut report = DiffReport::default();
        report.add(
            &result("same", ResultStatus::Done, 100),
            &result("same", ResultStatus::Done, 100),
        );
        report.add(
            &result("dearer", ResultStatus::Done, 100),
            &result("dearer", ResultStatus::Done, 130),
        );
        report.add(
            &result("refused", ResultStatus::Done, 100),
            &result("refused", ResultStatus::Rejected, 100),
        );
        assert_eq!((report.orders, report.differing), (3, 2));
        assert_eq!(report.by_kind["total"], 1);
        assert_eq!(report.by_kind["status"], 1);
        assert_eq!(report.money["EUR"], 30);
        assert_eq!(report.samples["status"][0].id, "refused");
        let mut twice = report.clone();
        twice.merge(&report);
        assert_eq!((twice.orders, twice.money["EUR"]), (6, 60));
        assert_eq!(twice.samples["total"].len(), 2);
    }
}
