//! The plugin author's tools: run one order through a chain, test a chain against a
//! directory of example orders with expected outcomes, and time a chain.
//!
//! An example is `NAME.json` (an [`Order`]) with `NAME.expected.json` beside it. The
//! expectation is matched as a subset of the evaluation's JSON: every key it gives must
//! be present with an equal value (recursively); arrays must have the same length and
//! match item by item. So an expectation states only what matters, e.g.
//! `{"status": "rejected", "reasons": [{"code": "blocked-country"}]}`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::order::Order;
use crate::{Evaluation, RuleChain, Status};

/// File in an examples directory that holds the config of a single plugin under test.
pub const EXAMPLES_CONFIG_FILE: &str = "config.toml";

/// Suffix of expectation files.
pub const EXPECTED_SUFFIX: &str = ".expected.json";

/// Why an example, or the examples' config, could not be read; names the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ExampleError(pub String);

/// One example order and its expectation, as read from disk.
#[derive(Debug)]
pub struct Example {
    /// File stem, e.g. `accepted-basic`.
    pub name: String,
    /// The order, or why it could not be read.
    pub order: Result<Order, ExampleError>,
    /// The expected evaluation subset, or why it could not be read.
    pub expected: Result<Value, ExampleError>,
}

/// A difference between expectation and evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    /// JSON path, e.g. `totals.total` or `reasons[0].code`.
    pub path: String,
    /// What the expectation says.
    pub expected: Value,
    /// What the evaluation has; `None` when the key is missing.
    pub actual: Option<Value>,
}

/// The verdict on one example.
#[derive(Debug)]
pub struct ExampleResult {
    /// Example name.
    pub name: String,
    /// Overall status of the evaluation, when it ran.
    pub status: Option<Status>,
    /// Time of the evaluation.
    pub duration: Duration,
    /// Differences; empty when it passed.
    pub mismatches: Vec<Mismatch>,
    /// An error that kept the example from running.
    pub error: Option<String>,
}

impl ExampleResult {
    /// Whether the example passed.
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.mismatches.is_empty()
    }
}

/// Reads every `NAME.json` in `dir` (but `*.expected.json`) with its expectation, sorted
/// by name.
pub fn load_examples(dir: &Path) -> io::Result<Vec<Example>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<io::Result<_>>()?;
    paths.sort();
    let mut examples = Vec::new();
    for path in paths {
        let Some(file) = path.file_name().and_then(|f| f.to_str()) else {
            continue;
        };
        if !file.ends_with(".json") || file.ends_with(EXPECTED_SUFFIX) {
            continue;
        }
        let name = file.trim_end_matches(".json").to_string();
        let order = read_json(&path).and_then(|v| {
            serde_json::from_value::<Order>(v)
                .map_err(|e| ExampleError(format!("{file}: not an order: {e}")))
        });
        let expected_path = dir.join(format!("{name}{EXPECTED_SUFFIX}"));
        let expected = if expected_path.is_file() {
            read_json(&expected_path)
        } else {
            Err(ExampleError(format!(
                "missing {name}{EXPECTED_SUFFIX} beside {file}"
            )))
        };
        examples.push(Example {
            name,
            order,
            expected,
        });
    }
    Ok(examples)
}

/// Reads `DIR/config.toml` (flat `key = value`), the config of a plugin's own examples.
pub fn load_examples_config(dir: &Path) -> Result<Vec<(String, String)>, ExampleError> {
    let path = dir.join(EXAMPLES_CONFIG_FILE);
    if !path.is_file() {
        return Ok(Vec::new());
    }
    let fail = |message: String| ExampleError(format!("{}: {message}", path.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| fail(e.to_string()))?;
    let table: BTreeMap<String, toml::Value> =
        toml::from_str(&text).map_err(|e| fail(e.to_string()))?;
    crate::ruleset::config_strings(&table)
        .map_err(|(key, message)| fail(format!("key `{key}`: {message}")))
}

fn read_json(path: &Path) -> Result<Value, ExampleError> {
    let fail = |message: String| ExampleError(format!("{}: {message}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| fail(format!("invalid JSON: {e}")))
}

/// Runs every example through `chain` and compares.
pub fn run_examples(chain: &RuleChain, examples: &[Example]) -> Vec<ExampleResult> {
    examples
        .iter()
        .map(|example| {
            let mut result = ExampleResult {
                name: example.name.clone(),
                status: None,
                duration: Duration::ZERO,
                mismatches: Vec::new(),
                error: None,
            };
            let (order, expected) = match (&example.order, &example.expected) {
                (Ok(order), Ok(expected)) => (order, expected),
                (Err(e), _) | (_, Err(e)) => {
                    result.error = Some(e.to_string());
                    return result;
                }
            };
            let started = Instant::now();
            let evaluation = chain.evaluate(order);
            result.duration = started.elapsed();
            result.status = Some(evaluation.status);
            match serde_json::to_value(&evaluation) {
                Ok(actual) => result.mismatches = compare(expected, &actual),
                Err(e) => result.error = Some(format!("cannot serialise the evaluation: {e}")),
            }
            result
        })
        .collect()
}

/// The differences between `expected` (a subset) and `actual`.
pub fn compare(expected: &Value, actual: &Value) -> Vec<Mismatch> {
    let mut out = Vec::new();
    compare_at(String::new(), expected, actual, &mut out);
    out
}

fn compare_at(path: String, expected: &Value, actual: &Value, out: &mut Vec<Mismatch>) {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (key, e_value) in e {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                match a.get(key) {
                    Some(a_value) => compare_at(child, e_value, a_value, out),
                    None => out.push(Mismatch {
                        path: child,
                        expected: e_value.clone(),
                        actual: None,
                    }),
                }
            }
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (e_item, a_item)) in e.iter().zip(a).enumerate() {
                compare_at(format!("{path}[{i}]"), e_item, a_item, out);
            }
        }
        _ if expected == actual => {}
        _ => out.push(Mismatch {
            path: if path.is_empty() {
                "(root)".into()
            } else {
                path
            },
            expected: expected.clone(),
            actual: Some(actual.clone()),
        }),
    }
}

/// Prints the pass/fail table, the differences of failures and a summary line;
/// returns (passed, failed).
pub fn print_report(out: &mut dyn Write, results: &[ExampleResult]) -> io::Result<(usize, usize)> {
    let width = results
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(7)
        .max(7);
    writeln!(
        out,
        "{:<width$}  RESULT  {:<10}  {:>9}",
        "EXAMPLE", "STATUS", "TIME"
    )?;
    for r in results {
        let status = r.status.map(status_name).unwrap_or("-");
        let verdict = if r.passed() { "pass" } else { "FAIL" };
        writeln!(
            out,
            "{:<width$}  {verdict:<6}  {status:<10}  {:>9}",
            r.name,
            format_duration(r.duration)
        )?;
    }
    let failed: Vec<&ExampleResult> = results.iter().filter(|r| !r.passed()).collect();
    for r in &failed {
        writeln!(out, "\n--- {} ---", r.name)?;
        if let Some(error) = &r.error {
            writeln!(out, "  error: {error}")?;
        }
        for m in &r.mismatches {
            let actual = m
                .actual
                .as_ref()
                .map_or_else(|| "(missing)".to_string(), Value::to_string);
            writeln!(out, "  {}: expected {}, got {actual}", m.path, m.expected)?;
        }
    }
    let passed = results.len() - failed.len();
    writeln!(out, "\n{passed} passed, {} failed", failed.len())?;
    Ok((passed, failed.len()))
}

fn status_name(status: Status) -> &'static str {
    match status {
        Status::Accepted => "accepted",
        Status::Rejected => "rejected",
        Status::Retryable => "retryable",
        Status::Failed => "failed",
    }
}

fn format_duration(d: Duration) -> String {
    let us = d.as_micros();
    if us >= 10_000 {
        format!("{} ms", us / 1000)
    } else {
        format!("{us} µs")
    }
}

/// Latency figures of a benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Evaluations run.
    pub orders: usize,
    /// Evaluations per second (one thread).
    pub orders_per_sec: f64,
    /// Median time per order, µs.
    pub median_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Slowest, µs.
    pub max_us: f64,
    /// How many evaluations ended in each status.
    pub statuses: BTreeMap<String, usize>,
    /// Each rule of the chain, slowest first (by mean time).
    pub rules: Vec<RuleCost>,
}

/// What one rule of the chain cost over a benchmark run.
#[derive(Debug, Clone, Serialize)]
pub struct RuleCost {
    /// Rule name.
    pub name: String,
    /// Its evaluations (a rule after a rejection is not evaluated).
    pub evaluations: usize,
    /// Mean time, instantiation included, µs.
    pub mean_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// Mean fuel.
    pub mean_fuel: f64,
    /// Most fuel of one evaluation.
    pub max_fuel: u64,
}

/// Evaluates `count` orders, cycling through `orders`, on the calling thread; `warmup`
/// evaluations first are not counted.
pub fn bench(chain: &RuleChain, orders: &[Order], count: usize, warmup: usize) -> BenchReport {
    let mut times = Vec::with_capacity(count);
    let mut statuses = BTreeMap::new();
    for i in 0..warmup {
        if let Some(order) = orders.get(i % orders.len().max(1)) {
            chain.evaluate(order);
        }
    }
    // Per rule, in chain order: (name, durations µs, fuel).
    let mut per_rule: Vec<(String, Vec<u64>, Vec<u64>)> = Vec::new();
    let started = Instant::now();
    for i in 0..count {
        let Some(order) = orders.get(i % orders.len().max(1)) else {
            break;
        };
        let t = Instant::now();
        let evaluation: Evaluation = chain.evaluate(order);
        times.push(t.elapsed());
        *statuses
            .entry(status_name(evaluation.status).to_string())
            .or_insert(0) += 1;
        for trace in &evaluation.rules {
            let at = match per_rule.iter().position(|(n, _, _)| *n == trace.name) {
                Some(at) => at,
                None => {
                    per_rule.push((trace.name.clone(), Vec::new(), Vec::new()));
                    per_rule.len() - 1
                }
            };
            per_rule[at].1.push(trace.duration_us);
            per_rule[at].2.push(trace.fuel_used);
        }
    }
    let total = started.elapsed();
    let mut rules: Vec<RuleCost> = per_rule
        .into_iter()
        .map(|(name, mut us, fuel)| {
            us.sort_unstable();
            let n = us.len().max(1) as f64;
            let rank = ((us.len() as f64 * 0.99).ceil() as usize).clamp(1, us.len().max(1));
            RuleCost {
                name,
                evaluations: us.len(),
                mean_us: us.iter().sum::<u64>() as f64 / n,
                p99_us: us.get(rank - 1).copied().unwrap_or(0) as f64,
                mean_fuel: fuel.iter().sum::<u64>() as f64 / n,
                max_fuel: fuel.iter().copied().max().unwrap_or(0),
            }
        })
        .collect();
    rules.sort_by(|a, b| b.mean_us.total_cmp(&a.mean_us));
    times.sort_unstable();
    let pct = |p: f64| percentile(&times, p).as_secs_f64() * 1e6;
    BenchReport {
        orders: times.len(),
        orders_per_sec: times.len() as f64 / total.as_secs_f64().max(f64::EPSILON),
        median_us: pct(0.5),
        p90_us: pct(0.9),
        p99_us: pct(0.99),
        max_us: pct(1.0),
        statuses,
        rules,
    }
}

/// The nearest-rank `p` percentile (0..=1) of `sorted`; zero when empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

impl BenchReport {
    /// A short human summary.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} orders, {:.0} orders/s on one thread\nper order: median {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, max {:.1} µs\n",
            self.orders, self.orders_per_sec, self.median_us, self.p90_us, self.p99_us, self.max_us
        );
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(s, "outcomes: {}", statuses.join(", "));
        if !self.rules.is_empty() {
            let _ = writeln!(s, "rules, slowest first (time includes instantiation):");
            for rule in &self.rules {
                let _ = writeln!(
                    s,
                    "  {:<24} {:>8.1} µs mean {:>8.1} µs p99 {:>10.0} fuel mean {:>10} fuel max ({} evaluations)",
                    rule.name,
                    rule.mean_us,
                    rule.p99_us,
                    rule.mean_fuel,
                    rule.max_fuel,
                    rule.evaluations
                );
            }
            if let Some(hungriest) = self
                .rules
                .iter()
                .max_by(|a, b| a.mean_fuel.total_cmp(&b.mean_fuel))
            {
                let _ = writeln!(
                    s,
                    "most fuel: {} ({:.0} per evaluation)",
                    hungriest.name, hungriest.mean_fuel
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nearest_rank_percentiles() {
        let times: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&times, 0.5), Duration::from_micros(50));
        assert_eq!(percentile(&times, 0.99), Duration::from_micros(99));
        assert_eq!(percentile(&times, 1.0), Duration::from_micros(100));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn subset_match_ignores_unlisted_keys() {
        let actual = json!({"status": "accepted", "totals": {"total": 10, "tax": 1}, "rules": []});
        assert!(compare(&json!({"totals": {"total": 10}}), &actual).is_empty());
    }

    #[test]
    fn mismatches_name_the_path() {
        let actual = json!({"reasons": [{"code": "a", "message": "m"}], "totals": {"total": 10}});
        let expected =
            json!({"reasons": [{"code": "b"}], "totals": {"total": 11, "tax": 0}, "x": 1});
        let paths: Vec<String> = compare(&expected, &actual)
            .into_iter()
            .map(|m| m.path)
            .collect();
        assert_eq!(
            paths,
            ["reasons[0].code", "totals.tax", "totals.total", "x"]
        );
    }

    #[test]
    fn arrays_must_have_the_same_length() {
        let m = compare(&json!({"a": [1]}), &json!({"a": [1, 2]}));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].path, "a");
    }

    #[test]
    fn report_lists_failures_with_differences() {
        let results = vec![
            ExampleResult {
                name: "good".into(),
                status: Some(Status::Accepted),
                duration: Duration::from_micros(12),
                mismatches: Vec::new(),
                error: None,
            },
            ExampleResult {
                name: "bad".into(),
                status: Some(Status::Rejected),
                duration: Duration::from_micros(15),
                mismatches: vec![Mismatch {
                    path: "status".into(),
                    expected: json!("accepted"),
                    actual: Some(json!("rejected")),
                }],
                error: None,
            },
        ];
        let mut out = Vec::new();
        assert_eq!(print_report(&mut out, &results).unwrap(), (1, 1));
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("good     pass"), "{text}");
        assert!(text.contains("bad      FAIL"), "{text}");
        assert!(
            text.contains("status: expected \"accepted\", got \"rejected\""),
            "{text}"
        );
        assert!(text.ends_with("1 passed, 1 failed\n"), "{text}");
    }
}
