//! Prometheus metrics. The roles record through the `metrics` facade; when `METRICS_ADDR`
//! is set, [`serve`] installs one recorder for the process (`metrics-exporter-prometheus`)
//! and serves it in the Prometheus text format on `GET /metrics`. Without it no recorder
//! is installed and recording costs nothing.
//!
//! Every name, its labels and its meaning are listed here and in the README ("Operating
//! it"); all start with `order_pipeline_`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use order_rules_engine::{Evaluation, RuleOutcome};
use tokio_util::sync::CancellationToken;

/// Counter `{outcome}`: orders the OrderService was asked to take, by outcome
/// (`accepted`, `invalid`, `unavailable`).
pub const ORDERS: &str = "order_pipeline_orders_total";
/// Histogram: seconds from an order's submission to the log's acknowledgement.
pub const PUBLISH_SECONDS: &str = "order_pipeline_publish_seconds";
/// Counter `{status}`: results stored, by status (`done`, `rejected`, `failed`).
pub const RESULTS: &str = "order_pipeline_results_total";
/// Histogram: seconds to store a batch of results.
pub const STORE_SECONDS: &str = "order_pipeline_store_seconds";
/// Histogram: seconds from an order's append to the log to its stored result.
pub const END_TO_END_SECONDS: &str = "order_pipeline_end_to_end_seconds";
/// Counter `{rule, version, outcome}`: rule evaluations, by outcome (`accept`, `reject`,
/// `retryable`, `failed`).
pub const RULE_EVALUATIONS: &str = "order_pipeline_rule_evaluations_total";
/// Counter `{rule, version, kind}`: rule failures, by kind (`trap`, `fuel-exhausted`,
/// `deadline-exceeded`, `memory-limit`, `malformed-output`, `instantiate`, `configure`).
pub const RULE_FAILURES: &str = "order_pipeline_rule_failures_total";
/// Counter `{rule, version}`: orders that failed in a reused instance and were decided
/// again in a fresh one (only that attempt's outcome counts).
pub const RULE_FRESH_RETRIES: &str = "order_pipeline_rule_fresh_retries_total";
/// Counter `{rule, version}`: checks that found a reused instance's outcome different
/// from a fresh instance's (the rule carries state between orders; it runs fresh after).
pub const RULE_STATE_LEAKS: &str = "order_pipeline_rule_state_leaks_total";
/// Histogram `{rule, version}`: seconds per rule evaluation, instantiation included.
pub const RULE_SECONDS: &str = "order_pipeline_rule_duration_seconds";
/// Histogram `{rule, version}`: fuel (about one unit per Wasm instruction) per evaluation.
pub const RULE_FUEL: &str = "order_pipeline_rule_fuel";
/// Counter `{rule}`: rules taken out by the quarantine policy.
pub const QUARANTINES: &str = "order_pipeline_quarantines_total";
/// Counter: switches of this worker's active ruleset.
pub const RULESET_SWITCHES: &str = "order_pipeline_ruleset_switches_total";
/// Gauge: the version of this worker's active ruleset.
pub const RULESET_VERSION: &str = "order_pipeline_ruleset_active_version";
/// Gauge `{topic, partition}`: messages of the partition this worker has not consumed
/// yet (librdkafka's `consumer_lag`, refreshed every 5 s).
pub const CONSUMER_LAG: &str = "order_pipeline_consumer_lag";

/// Gauge `{topic}`: orders per produce batch (one partition's share of a produce
/// request), librdkafka's rolling average, refreshed every 5 s: how many concurrent
/// submits share a request to the broker.
pub const PRODUCE_BATCH_MESSAGES: &str = "order_pipeline_kafka_produce_batch_messages";

/// Counter `{what}`: orders of a shadow run: `compared` (decided again by the
/// candidate), `differing` (decided differently), `dropped` (not compared: the shadow
/// task fell behind).
pub const SHADOW_ORDERS: &str = "order_pipeline_shadow_orders_total";
/// Counter: canaries ended because their candidate did worse than the live version.
pub const CANARY_ROLLBACKS: &str = "order_pipeline_canary_rollbacks_total";
/// Counter `{what}`: what retention removed: from the embedded database, `log` (entries
/// the worker had committed) and `results` (older than `RESULT_TTL`); from the registry
/// (either backend), `ruleset_versions` (beyond `RULESET_HISTORY`) and `plugin_blobs`
/// (used by no kept version, and unused for `PLUGIN_GRACE`). Redis expires results
/// itself (its `INFO stats` counts them as `expired_keys`).
pub const RETENTION_REMOVED: &str = "order_pipeline_retention_removed_total";
/// Counter `{code}`: results the store refused for good (e.g. `WRONGTYPE`, `CROSSSLOT`,
/// `NOPERM`); each such order is stored `failed` where the store takes that, and
/// dead-lettered.
pub const RESULTS_REFUSED: &str = "order_pipeline_results_refused_total";
/// Counter `{what}`: messages the dead-letter topic refused for good: `payload` (sent
/// again without it), `message` (refused even so: skipped, logged at error).
pub const DEAD_LETTERS_REFUSED: &str = "order_pipeline_dead_letters_refused_total";
/// Counter `{reason}`: plugins refused as they were deployed or loaded from the registry
/// (`digest-mismatch`: the blob's sha256 is not the digest its version names; with
/// `PLUGIN_TRUST_FILE`, `unsigned`, `unknown-key`, `revoked-key`, `revoked-digest`,
/// `key-not-allowed`, `not-yet-valid`, `expired`, `bad-signature`, `trust-file`); a
/// worker keeps its last verified version.
pub const PLUGIN_BLOBS_REFUSED: &str = "order_pipeline_plugin_blobs_refused_total";
/// Counter: audit events that could not be written (each logged at error).
pub const AUDIT_FAILURES: &str = "order_pipeline_audit_failures_total";
/// Gauge `{check}`: 1 while the check passes, 0 while it fails (`kafka`, `redis`,
/// `ruleset`); the process answers health checks with NOT_SERVING while any is 0.
pub const READY: &str = "order_pipeline_ready";

/// Latency buckets, seconds: 100 µs to 30 s.
const SECONDS_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];
/// Fuel buckets: 1k to 1G units.
const FUEL_BUCKETS: [f64; 10] = [1e3, 1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7, 1e8, 1e9];

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process's recorder (once; later calls do nothing).
pub fn install() -> anyhow::Result<()> {
    handle().map(|_| ())
}

/// The process's recorder, installed on the first call.
fn handle() -> anyhow::Result<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(RULE_FUEL.into()), &FUEL_BUCKETS)
                })
                .map_err(|e| e.to_string())?
                .install_recorder()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| anyhow::anyhow!("cannot install the metrics recorder: {e}"))
}

/// Installs the recorder and serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let handle = handle()?;
    let upkeep = {
        let shutdown = shutdown.clone();
        async move {
            // Histograms are drained into their buckets here, not on every record.
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    _ = tick.tick() => handle.run_upkeep(),
                }
            }
        }
    };
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || async move {
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
        }),
    );
    let server = std::future::IntoFuture::into_future(
        axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()),
    );
    let (served, ()) = tokio::join!(server, upkeep);
    served.context("the metrics endpoint failed")
}

/// Binds `addr` for [`serve`], naming `METRICS_ADDR` when it cannot.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("METRICS_ADDR {addr}: cannot listen"))
}

/// A rule version's metric handles, looked up once: an evaluation records through them
/// without building label keys.
struct RuleHandles {
    /// Evaluations by outcome, in [`outcome_index`] order.
    outcomes: [metrics::Counter; 4],
    seconds: metrics::Histogram,
    fuel: metrics::Histogram,
}

const OUTCOMES: [RuleOutcome; 4] = [
    RuleOutcome::Accept,
    RuleOutcome::Reject,
    RuleOutcome::Retryable,
    RuleOutcome::Failed,
];

fn outcome_index(outcome: RuleOutcome) -> usize {
    match outcome {
        RuleOutcome::Accept => 0,
        RuleOutcome::Reject => 1,
        RuleOutcome::Retryable => 2,
        RuleOutcome::Failed => 3,
    }
}

/// Handles by rule name, then version.
type HandleMap = HashMap<String, HashMap<String, Arc<RuleHandles>>>;
static RULE_HANDLES: LazyLock<RwLock<HandleMap>> = LazyLock::new(RwLock::default);

fn rule_handles(name: &str, version: &str) -> Arc<RuleHandles> {
    let found = RULE_HANDLES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(name)
        .and_then(|versions| versions.get(version))
        .cloned();
    if let Some(handles) = found {
        return handles;
    }
    let (rule, version) = (name.to_string(), version.to_string());
    let handles = Arc::new(RuleHandles {
        outcomes: OUTCOMES.map(|outcome| {
            metrics::counter!(RULE_EVALUATIONS, "rule" => rule.clone(), "version" => version.clone(), "outcome" => outcome.as_str())
        }),
        seconds: metrics::histogram!(RULE_SECONDS, "rule" => rule.clone(), "version" => version.clone()),
        fuel: metrics::histogram!(RULE_FUEL, "rule" => rule.clone(), "version" => version.clone()),
    });
    RULE_HANDLES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(rule)
        .or_default()
        .insert(version, Arc::clone(&handles));
    handles
}

/// Records what every rule of `evaluation` did. Without a recorder (no METRICS_ADDR) it
/// does nothing.
pub fn record_evaluation(evaluation: &Evaluation) {
    if !installed() {
        return;
    }
    for rule in &evaluation.rules {
        let handles = rule_handles(&rule.name, &rule.version);
        handles.outcomes[outcome_index(rule.outcome)].increment(1);
        handles.seconds.record(rule.duration_us as f64 / 1e6);
        if rule.retried_fresh {
            metrics::counter!(RULE_FRESH_RETRIES, "rule" => rule.name.clone(), "version" => rule.version.clone())
                .increment(1);
        }
        if rule.state_leak {
            metrics::counter!(RULE_STATE_LEAKS, "rule" => rule.name.clone(), "version" => rule.version.clone())
                .increment(1);
        }
        if rule.outcome == RuleOutcome::Failed {
            let kind = evaluation
                .error
                .as_ref()
                .filter(|e| e.rule == rule.name)
                .map_or("unknown", |e| e.kind.code());
            metrics::counter!(RULE_FAILURES, "rule" => rule.name.clone(), "version" => rule.version.clone(), "kind" => kind)
                .increment(1);
        } else {
            handles.fuel.record(rule.fuel_used as f64);
        }
    }
}

/// Whether this process records metrics (METRICS_ADDR was set).
fn installed() -> bool {
    HANDLE.get().is_some_and(Result::is_ok)
}

/// Records a stored batch: its results by status and how long the write took.
pub fn record_stored(statuses: impl Iterator<Item = crate::domain::ResultStatus>, took: Duration) {
    if !installed() {
        return;
    }
    metrics::histogram!(STORE_SECONDS).record(took.as_secs_f64());
    for status in statuses {
        metrics::counter!(RESULTS, "status" => status.as_str()).increment(1);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use order_rules_engine::FailureKind;

    #[test]
    fn failure_kinds_are_labelled_as_in_json() {
        for kind in [
            FailureKind::Trap,
            FailureKind::FuelExhausted,
            FailureKind::DeadlineExceeded,
            FailureKind::MemoryLimit,
            FailureKind::MalformedOutput,
            FailureKind::Instantiate,
            FailureKind::Configure,
        ] {
            assert_eq!(
                serde_json::to_string(&kind).unwrap(),
                format!("\"{}\"", kind.code())
            );
        }
    }
}
