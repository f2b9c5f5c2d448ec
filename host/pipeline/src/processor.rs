//! The processor: decode -> evaluate -> retry -> result, for a batch of messages from
//! any order log. It writes nothing: [`worker`](crate::worker) gives each batch's outcome
//! to its log's lane, which commits it; what the quarantine and a canary's watch observe
//! is reported to the rules supervisor (`rules::supervisor`), which alone changes the
//! registry.
//!
//! Every message ends in exactly one of: a result (`done`, `rejected`, `failed`) written
//! to the store, or a dead letter (bytes that are not an order). A `retryable` outcome
//! is retried in place with exponential backoff (the partition waits, so order is kept)
//! up to `max_retries` times; then the order is written `failed` and dead-lettered with
//! headers (reason, rule, attempts, source). The dead letter is written before the result
//! and the offset is stored only after both, so a crash repeats work but loses nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use order_rules_engine::{Evaluation, RuleOutcome, Status};
use prost::Message as _;

use crate::domain::wire::order_from_request;
use crate::domain::{Order, OrderResult, ResultStatus};
use crate::proto;
use crate::rules::live::LiveRuleset;
use crate::rules::quarantine::{Breach, FailureWindows, QuarantinePolicy};
use crate::rules::report::{Observation, Report, Reporter};
use crate::rules::rollout::{CanaryWatch, Deciders};
use crate::rules::status::WorkerStats;

/// Batches at least this big are split over the evaluation threads.
const PARALLEL_MIN: usize = 32;
/// Most time a batch's evaluation may take on the lane's own task instead of the blocking
/// pool. A hand-off to the pool and back costs two thread wake-ups (measured: 2–3 µs per
/// order of unary load, docs/BENCHMARKS.md), more than evaluating a few orders with
/// reused instances (about 5 µs each); a slower chain (fresh instances, a JS rule, a
/// spinning guest) goes to the pool, so it never holds the threads that serve gRPC.
const INLINE_BUDGET: Duration = Duration::from_micros(200);

/// Evaluations of a batch, in order, and when each started (for its spans).
type Evaluated = (Vec<Evaluation>, Vec<SystemTime>);

/// Evaluates `order` with the chain that decides it (the live one, or a canary's
/// candidate), noting when it started.
fn evaluate_one(deciders: &Deciders, order: &Order) -> (Evaluation, SystemTime) {
    let started = SystemTime::now();
    (deciders.for_order(&order.id).chain.evaluate(order), started)
}

/// The CPUs evaluation may use, read once (`available_parallelism` reads the cgroup's
/// files each time: 2% of the pipeline's CPU when it was asked per batch).
fn evaluation_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from))
}

/// The recent evaluation time per order of the chains in use, which decides whether a
/// small batch is evaluated inline ([`INLINE_BUDGET`]).
#[derive(Default)]
struct EvaluationCost {
    /// The (live, canary) versions it was measured with, and the time per order.
    measured: std::sync::Mutex<Option<((u64, u64), Duration)>>,
}

impl EvaluationCost {
    /// What an estimate is for: the live version and the canary's (0: none).
    fn key(deciders: &Deciders) -> (u64, u64) {
        (
            deciders.live.version,
            deciders.canary.as_ref().map_or(0, |(_, c)| c.version),
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<((u64, u64), Duration)>> {
        self.measured
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `orders` orders fit the inline budget with these deciders; a version
    /// not measured yet goes to the pool first.
    fn inline(&self, versions: (u64, u64), orders: usize) -> bool {
        match *self.lock() {
            Some((key, per_order)) if key == versions => {
                orders < PARALLEL_MIN && per_order.saturating_mul(orders as u32) <= INLINE_BUDGET
            }
            _ => false,
        }
    }

    /// Notes that `orders` orders took `took` to evaluate with these deciders (a
    /// moving average: one slow batch sends the next ones to the pool).
    fn record(&self, key: (u64, u64), orders: usize, took: Duration) {
        if orders == 0 {
            return;
        }
        let sample = took / orders as u32;
        let mut measured = self.lock();
        let per_order = match *measured {
            Some((old_key, old)) if old_key == key => (old * 3 + sample) / 4,
            _ => sample,
        };
        *measured = Some((key, per_order.max(sample / 2)));
    }
}

/// Evaluates `orders`, in order: inline when `inline`, else on blocking threads, where
/// big batches are split in as many parts as there are CPUs. Also answers the time the
/// evaluations took (summed over the parts). An error is a panic in the engine.
async fn evaluate_all(
    active: Deciders,
    orders: Vec<Order>,
    inline: bool,
) -> Result<(Vec<Order>, Evaluated, Duration), String> {
    let evaluate = |active: &Deciders, orders: &[Order]| {
        let started = std::time::Instant::now();
        let evaluated: Vec<(Evaluation, SystemTime)> =
            orders.iter().map(|o| evaluate_one(active, o)).collect();
        (evaluated, started.elapsed())
    };
    let panicked = |e: &dyn std::fmt::Display| format!("{e}");
    let parts = evaluation_threads();
    let (parts_done, orders) = if inline {
        let done =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluate(&active, &orders)))
                .map_err(|payload| panic_message(&payload))?;
        (vec![done], orders)
    } else if parts < 2 || orders.len() < PARALLEL_MIN {
        let (done, orders) = tokio::task::spawn_blocking(move || {
            let done = evaluate(&active, &orders);
            (done, orders)
        })
        .await
        .map_err(|e| panicked(&e))?;
        (vec![done], orders)
    } else {
        let orders = Arc::new(orders);
        let chunk = orders.len().div_ceil(parts);
        let tasks: Vec<_> = (0..parts)
            .map(|part| {
                let (active, orders) = (active.clone(), Arc::clone(&orders));
                tokio::task::spawn_blocking(move || {
                    let end = ((part + 1) * chunk).min(orders.len());
                    let start = (part * chunk).min(end);
                    evaluate(&active, &orders[start..end])
                })
            })
            .collect();
        let mut done = Vec::with_capacity(parts);
        for task in tasks {
            done.push(task.await.map_err(|e| panicked(&e))?);
        }
        let orders = Arc::try_unwrap(orders).unwrap_or_else(|shared| (*shared).clone());
        (done, orders)
    };
    let mut evaluations = Vec::with_capacity(orders.len());
    let mut started = Vec::with_capacity(orders.len());
    let mut took = Duration::ZERO;
    for (part, part_took) in parts_done {
        took += part_took;
        for (evaluation, at) in part {
            evaluations.push(evaluation);
            started.push(at);
        }
    }
    Ok((orders, (evaluations, started), took))
}

/// The message of a caught panic.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

/// How `retryable` outcomes are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// Pause before the first retry; doubles each time.
    pub backoff: Duration,
}

/// What became of one message.
#[derive(Debug)]
pub enum Processed {
    /// An order with its result; dead-letter it first (with these headers) when set.
    Result {
        /// The result to write.
        result: Box<OrderResult>,
        /// Dead-letter headers, for failed orders.
        dead_letter: Option<Vec<(String, String)>>,
        /// When the evaluation that decided it started.
        evaluated: SystemTime,
    },
    /// Not an order: dead-letter the bytes with these headers.
    NotAnOrder {
        /// Dead-letter headers.
        headers: Vec<(String, String)>,
    },
}

/// Where the processor hands a batch's live results to the shadow task (`shadow`).
pub type ShadowSender = tokio::sync::mpsc::Sender<Vec<OrderResult>>;

/// Offers a processed batch to the shadow task, if a shadow run is on; drops it (counted)
/// when the task is behind.
fn offer_shadow(shadow: &ShadowSender, live: &LiveRuleset, processed: &[Processed]) {
    if live.rollout().shadow.is_none() {
        return;
    }
    let results: Vec<OrderResult> = processed
        .iter()
        .filter_map(|p| match p {
            Processed::Result { result, .. } if result.order.is_some() => Some((**result).clone()),
            _ => None,
        })
        .collect();
    let n = results.len() as u64;
    if shadow.try_send(results).is_err() {
        metrics::counter!(crate::metrics::SHADOW_ORDERS, "what" => "dropped").increment(n);
    }
}

/// Headers of a dead letter: (name, value).
pub type Headers = Vec<(String, String)>;

impl Processed {
    /// The result to write (if any) with when its evaluation started, and the
    /// dead-letter headers (if any).
    pub fn into_parts(self) -> (Option<(Box<OrderResult>, SystemTime)>, Option<Headers>) {
        match self {
            Self::Result {
                result,
                dead_letter,
                evaluated,
            } => (Some((result, evaluated)), dead_letter),
            Self::NotAnOrder { headers } => (None, Some(headers)),
        }
    }
}

/// Turns log entries into results with the live ruleset.
pub struct Processor {
    live: Arc<LiveRuleset>,
    retry: RetryPolicy,
    /// Latest outcomes of every rule, for the quarantine.
    windows: FailureWindows,
    /// Where the quarantine's and the canary's observations go (the rules supervisor).
    reporter: Reporter,
    default_currency: String,
    /// Who this worker is, recorded in every result.
    name: String,
    /// What its heartbeat reports.
    stats: Arc<WorkerStats>,
    /// A running canary's watch.
    canary: CanaryWatch,
    /// What evaluating an order costs lately: small cheap batches are evaluated inline.
    cost: EvaluationCost,
    /// Where live results go to be decided again by a shadow run's candidate.
    shadow: Option<ShadowSender>,
}

/// An order's last evaluation, after its retries.
struct Decided {
    evaluation: Evaluation,
    /// When that evaluation started.
    started: SystemTime,
    /// The version that decided it.
    version: u64,
    attempts: u32,
}

impl Processor {
    /// A processor evaluating with `live`'s current chain.
    pub fn new(
        live: Arc<LiveRuleset>,
        retry: RetryPolicy,
        quarantine: QuarantinePolicy,
        default_currency: &str,
        name: &str,
        reporter: Reporter,
    ) -> Self {
        Self {
            reporter,
            live,
            retry,
            windows: FailureWindows::new(quarantine),
            default_currency: default_currency.to_string(),
            name: name.to_string(),
            stats: Arc::default(),
            canary: CanaryWatch::default(),
            cost: EvaluationCost::default(),
            shadow: None,
        }
    }

    /// Hands every batch's results to `shadow` while a shadow run is on.
    pub fn with_shadow(mut self, shadow: ShadowSender) -> Self {
        self.shadow = Some(shadow);
        self
    }

    /// The figures of this worker's heartbeat, recorded as it processes.
    pub fn stats(&self) -> Arc<WorkerStats> {
        Arc::clone(&self.stats)
    }

    /// Reports a rule that broke the quarantine policy to the rules supervisor, which
    /// restores the version before `version` (if it is still active), and waits for
    /// this worker to switch: the batch's failed orders are then retried under it.
    async fn take_out(&self, version: u64, breach: &Breach) {
        let observation = Observation::Breach {
            version,
            rule: breach.rule.clone(),
            digest: breach.digest.clone(),
            failed: breach.failed,
            window: self.windows.policy().window,
        };
        let live = &self.live;
        self.report(observation, || live.current().version != version)
            .await;
    }

    async fn report(&self, observation: Observation, handled: impl Fn() -> bool) {
        let report = Report {
            worker: self.name.clone(),
            observation,
        };
        self.reporter.report(report, handled).await;
    }

    /// Processes a batch: every order is evaluated once (inline when the batch is small
    /// and its chain cheap, else on the blocking pool), then retryable ones are retried
    /// with backoff. Results come back in input order.
    pub async fn process_batch(&self, payloads: &[&[u8]]) -> Vec<Processed> {
        let decoded: Vec<Result<Order, String>> = payloads.iter().map(|p| self.decode(p)).collect();
        let orders: Vec<Order> = decoded
            .iter()
            .filter_map(|d| d.as_ref().ok().cloned())
            .collect();
        // The whole batch is evaluated by one ruleset version (and a canary's share by
        // one candidate version).
        let deciders = self.live.deciders();
        let first_version = deciders.live.version;
        let versions: Vec<u64> = orders
            .iter()
            .map(|o| deciders.for_order(&o.id).version)
            .collect();
        let count = orders.len();
        let cost_key = EvaluationCost::key(&deciders);
        let inline = self.cost.inline(cost_key, count);
        let evaluations = evaluate_all(deciders.clone(), orders, inline).await;
        if let Ok((_, (evaluations, _), took)) = &evaluations {
            self.cost.record(cost_key, count, *took);
            for evaluation in evaluations {
                crate::metrics::record_evaluation(evaluation);
                self.stats.record(evaluation);
            }
        }
        self.stats.processed(payloads.len());
        let (orders, (evaluations, started)) = match evaluations {
            Ok((orders, evaluated, _)) => (orders, evaluated),
            Err(e) => {
                // A panic in the engine is a host bug; fail these orders visibly.
                tracing::error!(error = %e, "rule evaluation panicked");
                return decoded
                    .into_iter()
                    .map(|d| match d {
                        Ok(order) => failed_by_host(&order, &format!("evaluation panicked: {e}")),
                        Err(reason) => not_an_order(reason),
                    })
                    .collect();
            }
        };
        self.observe(&deciders, &evaluations, &versions, first_version)
            .await;
        let mut evaluated = orders
            .into_iter()
            .zip(evaluations)
            .zip(started)
            .zip(versions);
        let mut out = Vec::with_capacity(payloads.len());
        for d in decoded {
            match d {
                Err(reason) => out.push(not_an_order(reason)),
                Ok(_) => {
                    let Some((((order, evaluation), started), version)) = evaluated.next() else {
                        break;
                    };
                    let decided = self
                        .retry_until_final(&order, evaluation, started, version)
                        .await;
                    out.push(self.finish(&order, decided));
                }
            }
        }
        if let Some(shadow) = &self.shadow {
            offer_shadow(shadow, &self.live, &out);
        }
        out
    }

    /// What the quarantine (the live version's rules) and a canary's watch make of a
    /// batch's evaluations; a breach or a worse canary is reported to the supervisor.
    async fn observe(
        &self,
        deciders: &Deciders,
        evaluations: &[Evaluation],
        versions: &[u64],
        first_version: u64,
    ) {
        let live_only = evaluations
            .iter()
            .zip(versions)
            .filter(|(_, v)| !deciders.is_canary(**v))
            .map(|(e, _)| e);
        if let Some(breach) = self.windows.observe(live_only) {
            // Take the rule out before deciding about this batch: its failed orders are
            // then retried under the restored version.
            self.take_out(first_version, &breach).await;
        }
        if let Some((canary, _)) = &deciders.canary {
            let evaluated: Vec<(u64, &Evaluation)> =
                versions.iter().copied().zip(evaluations).collect();
            if let Some(reason) = self.canary.observe(canary, &evaluated) {
                let version = canary.version;
                let live = &self.live;
                let ended = || live.deciders().canary.map(|(c, _)| c.version) != Some(version);
                self.report(Observation::CanaryWorse { version, reason }, ended)
                    .await;
            }
        }
    }

    /// Retries a retryable outcome with backoff; and a failure if the version that
    /// decides the order changed meanwhile (a rollback, a canary's end), under it.
    async fn retry_until_final(
        &self,
        order: &Order,
        mut evaluation: Evaluation,
        mut started: SystemTime,
        mut version: u64,
    ) -> Decided {
        let mut attempts = 1;
        while attempts <= self.retry.max_retries
            && (evaluation.status == Status::Retryable
                || (evaluation.status == Status::Failed
                    && self.live.deciders().for_order(&order.id).version != version))
        {
            let pause = self
                .retry
                .backoff
                .saturating_mul(1 << (attempts - 1).min(16));
            tracing::info!(order_id = %order.id, attempts, ?pause, "retrying");
            tokio::time::sleep(pause).await;
            attempts += 1;
            let active = self.live.deciders();
            version = active.for_order(&order.id).version;
            let again = order.clone();
            match tokio::task::spawn_blocking(move || evaluate_one(&active, &again)).await {
                Ok((next, at)) => {
                    crate::metrics::record_evaluation(&next);
                    self.stats.record(&next);
                    evaluation = next;
                    started = at;
                }
                Err(e) => {
                    tracing::error!(error = %e, "rule evaluation panicked");
                    break;
                }
            }
        }
        Decided {
            evaluation,
            started,
            version,
            attempts,
        }
    }

    /// The result of an order `decided`, and its dead letter's headers if it failed.
    fn finish(&self, order: &Order, decided: Decided) -> Processed {
        let mut result = OrderResult::from_evaluation(order, decided.evaluation, decided.attempts);
        result.ruleset_version = decided.version;
        result.processed_by.clone_from(&self.name);
        let dead_letter = (result.status == ResultStatus::Failed).then(|| {
            let rule = result
                .rules
                .iter()
                .rev()
                .find(|r| r.outcome != RuleOutcome::Accept)
                .map(|r| r.name.clone())
                .unwrap_or_default();
            vec![
                ("reason".to_string(), result.error.clone()),
                ("rule".to_string(), rule),
                ("attempts".to_string(), decided.attempts.to_string()),
                ("order-id".to_string(), result.id.clone()),
            ]
        });
        Processed::Result {
            result: Box::new(result),
            dead_letter,
            evaluated: decided.started,
        }
    }

    fn decode(&self, payload: &[u8]) -> Result<Order, String> {
        let request = proto::OrderRequest::decode(payload)
            .map_err(|e| format!("not a protobuf OrderRequest: {e}"))?;
        order_from_request(&request, &self.default_currency)
            .map_err(|e| format!("not a valid order: {e}"))
    }
}

fn not_an_order(reason: String) -> Processed {
    tracing::warn!(%reason, "dead-lettering a message that is not an order");
    Processed::NotAnOrder {
        headers: vec![("reason".to_string(), reason)],
    }
}

fn failed_by_host(order: &Order, message: &str) -> Processed {
    let evaluation = order_rules_engine::Evaluation {
        status: Status::Failed,
        totals: crate::domain::Totals::of(order),
        adjustments: Vec::new(),
        reasons: Vec::new(),
        retry: None,
        error: None,
        rules: Vec::new(),
    };
    let mut result = OrderResult::from_evaluation(order, evaluation, 1);
    result.error = message.to_string();
    Processed::Result {
        dead_letter: Some(vec![("reason".to_string(), message.to_string())]),
        result: Box::new(result),
        evaluated: SystemTime::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_small_batches_of_a_measured_cheap_chain_are_evaluated_inline() {
        let cost = EvaluationCost::default();
        let v1 = (1, 0);
        // Not measured yet: the pool.
        assert!(!cost.inline(v1, 1));
        cost.record(v1, 10, Duration::from_micros(50));
        assert!(cost.inline(v1, 1) && cost.inline(v1, 20));
        // Too many for the budget at 5 µs each, or big enough to split over the CPUs.
        assert!(!cost.inline(v1, PARALLEL_MIN));
        // Another version (a deploy, a canary) is measured afresh.
        assert!(!cost.inline((2, 0), 1) && !cost.inline((1, 2), 1));
        // One slow batch sends the next ones to the pool at once.
        cost.record(v1, 1, Duration::from_millis(5));
        assert!(!cost.inline(v1, 1));
        // Cheap again for a while: back inline.
        for _ in 0..20 {
            cost.record(v1, 10, Duration::from_micros(50));
        }
        assert!(cost.inline(v1, 4));
        cost.record(v1, 0, Duration::from_secs(1));
        assert!(cost.inline(v1, 4), "an empty batch measures nothing");
    }

    #[test]
    fn a_panic_message_is_kept() {
        let caught = std::panic::catch_unwind(|| panic!("boom {}", 7)).unwrap_err();
        assert_eq!(panic_message(&*caught), "boom 7");
        let caught = std::panic::catch_unwind(|| panic!("plain")).unwrap_err();
        assert_eq!(panic_message(&*caught), "plain");
    }
}
