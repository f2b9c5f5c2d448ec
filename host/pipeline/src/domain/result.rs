//! The stored result of an order: the full record (status, totals, adjustments, reasons,
//! which rule versions decided) and its Go-compatible shape, the proto3 JSON of
//! `ResultResponse{item, price, status}` that the Go CacheService reads from `order:<id>`.

use serde::{Deserialize, Serialize};

use crate::domain::{Order, Totals};
use order_rules_engine::{AppliedAdjustment, Evaluation, RuleReason, RuleTrace, Status};

/// Final status of a processed order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultStatus {
    /// Every rule accepted.
    Done,
    /// A rule rejected the order.
    Rejected,
    /// A rule failed, or asked for retries until they ran out.
    Failed,
}

impl ResultStatus {
    /// The status word clients see.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Done => "done",
            Self::Rejected => "rejected",
            Self::Failed => "failed",
        }
    }
}

/// Everything known about a processed order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderResult {
    /// Order id.
    pub id: String,
    /// Final status.
    pub status: ResultStatus,
    /// First line's SKU (the Go API's item).
    pub item: String,
    /// Currency of every amount.
    pub currency: String,
    /// Totals after every applied adjustment.
    pub totals: Totals,
    /// Adjustments made by accepting rules.
    #[serde(default)]
    pub adjustments: Vec<AppliedAdjustment>,
    /// Reasons of a rejection.
    #[serde(default)]
    pub reasons: Vec<RuleReason>,
    /// What each rule did, with its version and digest.
    #[serde(default)]
    pub rules: Vec<RuleTrace>,
    /// Why the order failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
    /// How many times the chain ran.
    pub attempts: u32,
    /// The ruleset version that made this result (0: none recorded).
    #[serde(default)]
    pub ruleset_version: u64,
    /// The worker that made it (WORKER_INSTANCE_ID, or host:pid).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub processed_by: String,
    /// When the result was made, Unix milliseconds.
    pub processed_at_unix_ms: i64,
    /// The order as it was decided: what a replay or a shadow run decides again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    /// What this result replaced, when a replay with `--overwrite` wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<Replaced>,
}

/// The result a replay replaced, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replaced {
    /// Its status.
    pub status: ResultStatus,
    /// Its total.
    pub total: i64,
    /// The version that made it.
    pub ruleset_version: u64,
    /// When it was made, Unix ms.
    pub processed_at_unix_ms: i64,
    /// Why it was replaced (the operator's words).
    pub reason: String,
    /// The replay run that replaced it.
    pub run: String,
}

impl OrderResult {
    /// The result of the last of `attempts` evaluations of `order`. A `retryable`
    /// evaluation here means the retries ran out: the order failed.
    pub fn from_evaluation(order: &Order, evaluation: Evaluation, attempts: u32) -> Self {
        let (status, error) = match evaluation.status {
            Status::Accepted => (ResultStatus::Done, String::new()),
            Status::Rejected => (ResultStatus::Rejected, String::new()),
            Status::Retryable => {
                let retry = evaluation.retry.as_ref();
                (
                    ResultStatus::Failed,
                    format!(
                        "rule `{}` asked to retry ({}: {}) {attempts} times; giving up",
                        retry.map_or("?", |r| r.rule.as_str()),
                        retry.map_or("?", |r| r.code.as_str()),
                        retry.map_or("?", |r| r.message.as_str()),
                    ),
                )
            }
            Status::Failed => (
                ResultStatus::Failed,
                evaluation
                    .error
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default(),
            ),
        };
        Self {
            id: order.id.clone(),
            status,
            item: order
                .lines
                .first()
                .map(|l| l.sku.clone())
                .unwrap_or_default(),
            currency: order.currency.clone(),
            totals: evaluation.totals,
            adjustments: evaluation.adjustments,
            reasons: evaluation.reasons,
            rules: evaluation.rules,
            error,
            attempts,
            ruleset_version: 0,
            processed_by: String::new(),
            processed_at_unix_ms: now_unix_ms(),
            order: Some(order.clone()),
            replaced: None,
        }
    }

    /// The `failed` result that stands for this one when the store refused it for good
    /// (`code`, e.g. `CROSSSLOT`): what the rules decided is dropped, the error says why
    /// and where the order went. Small on purpose (no order, no adjustments), so that
    /// what made the store refuse the first is unlikely to refuse this one.
    pub fn refused_by_store(&self, code: &str, error: &str) -> Self {
        /// Longest store error kept in the result.
        const MAX_ERROR: usize = 300;
        let mut error = error.to_string();
        if error.len() > MAX_ERROR {
            let mut end = MAX_ERROR;
            while !error.is_char_boundary(end) {
                end -= 1;
            }
            error.truncate(end);
            error.push('…');
        }
        Self {
            status: ResultStatus::Failed,
            adjustments: Vec::new(),
            reasons: Vec::new(),
            error: format!(
                "the result store refused this order's {} result for good ({code}: {error}); \
                 the order was dead-lettered",
                self.status.as_str()
            ),
            order: None,
            replaced: None,
            ..self.clone()
        }
    }

    /// The Go API's price: the order total, clamped to int32.
    pub fn go_price(&self) -> i32 {
        i32::try_from(
            self.totals
                .total
                .clamp(i64::from(i32::MIN), i64::from(i32::MAX)),
        )
        .unwrap_or_default()
    }

    /// proto3 JSON of `ResultResponse{item, price, status}` as the Go system wrote it:
    /// zero values omitted, no other fields (the Go reader rejects unknown fields).
    pub fn go_json(&self) -> String {
        let mut map = serde_json::Map::new();
        if !self.item.is_empty() {
            map.insert("item".into(), self.item.clone().into());
        }
        if self.go_price() != 0 {
            map.insert("price".into(), self.go_price().into());
        }
        map.insert("status".into(), self.status.as_str().into());
        serde_json::Value::Object(map).to_string()
    }

    /// A result known only by its Go shape (written by the Go worker).
    pub fn from_go_json(id: &str, json: &str) -> Option<Self> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Go {
            #[serde(default)]
            item: String,
            #[serde(default)]
            price: i32,
            #[serde(default)]
            status: String,
        }
        let go: Go = serde_json::from_str(json).ok()?;
        let status = match go.status.as_str() {
            "done" => ResultStatus::Done,
            "rejected" => ResultStatus::Rejected,
            "failed" => ResultStatus::Failed,
            _ => return None,
        };
        Some(Self::minimal(id, status, go.item, i64::from(go.price)))
    }

    /// A result with only an id, status, item and total (what the Go shape holds).
    fn minimal(id: &str, status: ResultStatus, item: String, total: i64) -> Self {
        Self {
            id: id.to_string(),
            status,
            item,
            currency: String::new(),
            totals: Totals {
                subtotal: total,
                total,
                ..Totals::default()
            },
            adjustments: Vec::new(),
            reasons: Vec::new(),
            rules: Vec::new(),
            error: String::new(),
            attempts: 1,
            ruleset_version: 0,
            processed_by: String::new(),
            processed_at_unix_ms: 0,
            order: None,
            replaced: None,
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: ResultStatus, item: &str, total: i64) -> OrderResult {
        OrderResult::minimal("o", status, item.to_string(), total)
    }

    #[test]
    fn go_json_is_exactly_the_go_shape() {
        assert_eq!(
            result(ResultStatus::Done, "book", 42).go_json(),
            r#"{"item":"book","price":42,"status":"done"}"#
        );
        // proto3 JSON omits zero values.
        assert_eq!(
            result(ResultStatus::Rejected, "", 0).go_json(),
            r#"{"status":"rejected"}"#
        );
        assert_eq!(
            result(ResultStatus::Done, "x", i64::MAX).go_price(),
            i32::MAX
        );
    }

    #[test]
    fn go_json_round_trips_and_strangers_are_refused() {
        let r =
            OrderResult::from_go_json("o", r#"{"item": "book", "price": 42, "status": "done"}"#)
                .unwrap();
        assert_eq!(
            (r.item.as_str(), r.go_price(), r.status),
            ("book", 42, ResultStatus::Done)
        );
        assert!(OrderResult::from_go_json("o", r#"{"status":"done","id":"o"}"#).is_none());
    }
}
/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// The result was written.
    Written,
    /// A final result for this id existed; it was kept.
    KeptExisting,
}
