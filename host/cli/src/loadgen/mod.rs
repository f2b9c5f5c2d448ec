//! The load generator behind `order-pipeline bench`: N concurrent clients submit orders
//! (unary `CreateOrder` or `CreateOrders` batches) and wait for each result through the
//! CacheService, measuring submit latency, submit-to-readable latency and throughput.

pub mod cpu;
pub mod plot;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::join_all;
use serde::Serialize;
use tonic::transport::Channel;

use order_pipeline::proto::cache_service_client::CacheServiceClient;
use order_pipeline::proto::order_service_client::OrderServiceClient;
use order_pipeline::proto::{CreateOrdersRequest, OrderRequest, ResultRequest, ResultsRequest};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// OrderService URL.
    pub order_url: String,
    /// CacheService URL.
    pub cache_url: String,
    /// Orders to submit.
    pub orders: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Orders per `CreateOrders` call; 0 submits with unary `CreateOrder`.
    pub batch: usize,
    /// Fixed rate, orders per second over all clients; `None`: as fast as they can.
    pub rate: Option<f64>,
    /// Stop submitting after this long (`orders` still caps the count).
    pub duration: Option<Duration>,
    /// How the clients connect.
    pub(crate) tls: crate::tls::TlsArgs,
    /// The processes whose CPU to measure over the run, besides the load generator.
    pub cpu: Vec<(cpu::Role, i32)>,
}

/// One order's measurements.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When its submit call started, from the start of the run.
    pub at: Duration,
    /// Submit call latency.
    pub submit: Duration,
    /// Submit start to result readable; `None` when not accepted or never readable.
    pub readable: Option<Duration>,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Slowest.
    pub max_ms: f64,
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Orders submitted and read back.
    pub orders: usize,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Orders per call (0 = unary).
    pub batch: usize,
    /// Orders accepted per second.
    pub submitted_per_sec: f64,
    /// Orders readable (result written) per second, over the whole run.
    pub completed_per_sec: f64,
    /// Submit call latency (per call; a batch counts once per order in it).
    pub submit: Percentiles,
    /// Time from the submit call's start to the result being readable.
    pub submit_to_readable: Percentiles,
    /// Orders that were not accepted or whose result did not appear.
    pub errors: usize,
    /// Wall time of the run, seconds.
    pub seconds: f64,
    /// The fixed rate asked for, orders/s (absent: as fast as possible).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    /// CPU of the measured processes over the run.
    pub cpu: cpu::CpuReport,
    /// Every order's measurements, for plots.
    #[serde(skip)]
    pub samples: Vec<Sample>,
}

/// What every client of one run shares.
struct Shared {
    run_id: i64,
    started: Instant,
    /// The next order number to submit.
    next: AtomicUsize,
    /// Orders finished so far.
    done: AtomicUsize,
    total: usize,
    batch: usize,
    rate: Option<f64>,
    duration: Option<Duration>,
}

/// Runs `plan`, calling `progress` with the number of finished orders now and then.
pub async fn run(
    plan: &BenchPlan,
    progress: impl Fn(usize) + Send + Sync + 'static,
) -> anyhow::Result<BenchReport> {
    anyhow::ensure!(
        plan.orders > 0 && plan.concurrency > 0,
        "--orders and --concurrency must be at least 1"
    );
    if let Some(rate) = plan.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number of orders per second, got {rate}"
        );
    }
    let order_channel = crate::tls::connect(&plan.order_url, &plan.tls, "OrderService")
        .await
        .map_err(anyhow::Error::msg)?;
    let cache_channel = crate::tls::connect(&plan.cache_url, &plan.tls, "CacheService")
        .await
        .map_err(anyhow::Error::msg)?;
    let shared = Arc::new(Shared {
        run_id: order_pipeline::domain::now_unix_ms(),
        started: Instant::now(),
        next: AtomicUsize::new(0),
        done: AtomicUsize::new(0),
        total: plan.orders,
        batch: plan.batch,
        rate: plan.rate,
        duration: plan.duration,
    });
    let progress = Arc::new(progress);
    let meter = cpu::CpuMeter::start(&plan.cpu).map_err(anyhow::Error::msg)?;
    let clients: Vec<_> = (0..plan.concurrency)
        .map(|_| {
            let orders = OrderServiceClient::new(order_channel.clone());
            let cache = CacheServiceClient::new(cache_channel.clone());
            let (shared, progress) = (Arc::clone(&shared), Arc::clone(&progress));
            tokio::spawn(async move { client(&shared, orders, cache, &*progress).await })
        })
        .collect();
    let mut samples = Vec::new();
    for client in clients {
        samples.extend(client.await.context("a bench client panicked")?);
    }
    let readable = samples.iter().filter(|s| s.readable.is_some()).count();
    let cpu = meter.finish(readable).map_err(anyhow::Error::msg)?;
    Ok(report(plan, shared.started, samples, cpu))
}

/// One client: takes the next orders (a batch, or one) until the run's orders or time
/// are used up, submits them, and reads their results back.
async fn client(
    shared: &Shared,
    mut orders: OrderServiceClient<Channel>,
    cache: CacheServiceClient<Channel>,
    progress: &(dyn Fn(usize) + Send + Sync),
) -> Vec<Sample> {
    let step = shared.batch.max(1);
    let mut samples: Vec<Sample> = Vec::new();
    loop {
        let first = shared.next.fetch_add(step, Ordering::Relaxed);
        if first >= shared.total {
            break;
        }
        // At a fixed rate, order `first` is due at first/rate; latencies count from when
        // it was due, so a client that falls behind shows up in them.
        let started = shared.started;
        let due = shared
            .rate
            .map(|r| started + Duration::from_secs_f64(first as f64 / r));
        if shared
            .duration
            .is_some_and(|d| due.unwrap_or_else(Instant::now) >= started + d)
        {
            break;
        }
        if let Some(due) = due {
            tokio::time::sleep_until(due.into()).await;
        }
        let ids: Vec<String> = (first..(first + step).min(shared.total))
            .map(|i| format!("bench-{}-{i}", shared.run_id))
            .collect();
        let t0 = due.unwrap_or_else(Instant::now);
        let accepted = submit(&mut orders, &ids, shared.batch).await;
        let submit = t0.elapsed();
        let at = t0.saturating_duration_since(started);
        let readable: Vec<Option<Duration>> = if shared.batch == 0 {
            read_each(&cache, &ids, &accepted, t0).await
        } else {
            // A batch client reads its batch's results in one call too.
            read_batch(&mut cache.clone(), &ids, &accepted, t0).await
        };
        for readable in readable {
            samples.push(Sample {
                at,
                submit,
                readable,
            });
        }
        let finished = shared.done.fetch_add(ids.len(), Ordering::Relaxed) + ids.len();
        progress(finished);
    }
    samples
}

/// Submits the orders `ids` (one `CreateOrder` each, or one `CreateOrders` when `batch`
/// is not 0); answers which were accepted.
async fn submit(
    orders: &mut OrderServiceClient<Channel>,
    ids: &[String],
    batch: usize,
) -> Vec<bool> {
    let requests: Vec<OrderRequest> = ids
        .iter()
        .map(|id| OrderRequest {
            id: id.clone(),
            item: "book".into(),
            price: 4200,
            ..Default::default()
        })
        .collect();
    if batch == 0 {
        let mut accepted = Vec::new();
        for request in requests {
            accepted.push(orders.create_order(request).await.is_ok());
        }
        return accepted;
    }
    match orders
        .create_orders(CreateOrdersRequest { orders: requests })
        .await
    {
        Ok(r) => r
            .into_inner()
            .responses
            .iter()
            .map(|r| r.status == "accepted")
            .collect(),
        Err(_) => vec![false; ids.len()],
    }
}

/// Reads each accepted order's result with its own `GetOrderResult` (waiting up to
/// 30 s), concurrently: each one's latency from `t0`, or `None`.
async fn read_each(
    cache: &CacheServiceClient<Channel>,
    ids: &[String],
    accepted: &[bool],
    t0: Instant,
) -> Vec<Option<Duration>> {
    let reads = ids.iter().zip(accepted).map(|(id, ok)| {
        let mut cache = cache.clone();
        let id = id.clone();
        let ok = *ok;
        async move {
            if !ok {
                return None;
            }
            let answer = cache
                .get_order_result(ResultRequest {
                    id,
                    wait_ms: 30_000,
                })
                .await;
            answer.ok().map(|_| t0.elapsed())
        }
    });
    join_all(reads).await
}

/// The figures of a run that started at `started`.
fn report(
    plan: &BenchPlan,
    started: Instant,
    mut samples: Vec<Sample>,
    cpu: cpu::CpuReport,
) -> BenchReport {
    let seconds = started.elapsed().as_secs_f64();
    let errors = samples.iter().filter(|s| s.readable.is_none()).count();
    let mut submit: Vec<Duration> = samples.iter().map(|s| s.submit).collect();
    let mut readable: Vec<Duration> = samples.iter().filter_map(|s| s.readable).collect();
    let accepted_by = samples
        .iter()
        .map(|s| s.at + s.submit)
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        .max(f64::EPSILON);
    samples.sort_unstable_by_key(|s| s.at);
    BenchReport {
        orders: samples.len(),
        concurrency: plan.concurrency,
        batch: plan.batch,
        submitted_per_sec: samples.len() as f64 / accepted_by,
        completed_per_sec: readable.len() as f64 / seconds.max(f64::EPSILON),
        submit: percentiles(&mut submit),
        submit_to_readable: percentiles(&mut readable),
        errors,
        seconds,
        target_rate: plan.rate,
        cpu,
        samples,
    }
}

/// Reads the results of a batch with `GetOrderResults`, asking again for those still
/// missing, until each is readable (its latency) or has waited 30 s (`None`).
async fn read_batch(
    cache: &mut CacheServiceClient<Channel>,
    ids: &[String],
    accepted: &[bool],
    t0: Instant,
) -> Vec<Option<Duration>> {
    let mut readable: Vec<Option<Duration>> = vec![None; ids.len()];
    let mut missing: Vec<usize> = (0..ids.len()).filter(|i| accepted[*i]).collect();
    let give_up = t0 + Duration::from_secs(30);
    while !missing.is_empty() && Instant::now() < give_up {
        let request = ResultsRequest {
            ids: missing.iter().map(|i| ids[*i].clone()).collect(),
            wait_ms: 1_000,
        };
        let Ok(answer) = cache.get_order_results(request).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let now = t0.elapsed();
        let mut still = Vec::new();
        for (i, entry) in missing.iter().zip(answer.into_inner().results) {
            if entry.found {
                readable[*i] = Some(now);
            } else {
                still.push(*i);
            }
        }
        missing = still;
    }
    readable
}

/// A one-line progress bar: `[#######-------------]  35%  7000/20000 readable  9.1k/s`;
/// for a run of fixed `duration`, the bar follows the clock.
pub fn progress_line(
    done: usize,
    total: usize,
    elapsed: Duration,
    duration: Option<Duration>,
) -> String {
    const WIDTH: usize = 30;
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    let (fraction, count) = match duration {
        Some(d) => (
            elapsed.as_secs_f64() / d.as_secs_f64().max(1e-9),
            format!(
                "{done} readable, {:.0}/{:.0} s",
                elapsed.as_secs_f64(),
                d.as_secs_f64()
            ),
        ),
        None => (
            if total == 0 {
                1.0
            } else {
                done.min(total) as f64 / total as f64
            },
            format!("{}/{total} readable", done.min(total)),
        ),
    };
    let fraction = fraction.clamp(0.0, 1.0);
    let filled = (fraction * WIDTH as f64) as usize;
    format!(
        "[{}{}] {:>3}%  {count}  {:.1}k/s",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        (fraction * 100.0) as usize,
        rate / 1000.0
    )
}

fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort_unstable();
    let at = |p: f64| order_rules_engine::runner::percentile(samples, p).as_secs_f64() * 1e3;
    Percentiles {
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

impl BenchReport {
    /// A short human summary.
    pub fn summary(&self) -> String {
        let mut mode = if self.batch == 0 {
            "unary CreateOrder".to_string()
        } else {
            format!("CreateOrders x{}", self.batch)
        };
        if let Some(rate) = self.target_rate {
            mode.push_str(&format!(" at {rate:.0} orders/s"));
        }
        format!(
            "{} orders, {} clients, {mode}, {:.1} s, {} errors\n\
             submitted: {:.0} orders/s; submit latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n\
             readable:  {:.0} orders/s; submit->readable p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms\n",
            self.orders,
            self.concurrency,
            self.seconds,
            self.errors,
            self.submitted_per_sec,
            self.submit.p50_ms,
            self.submit.p90_ms,
            self.submit.p99_ms,
            self.submit.max_ms,
            self.completed_per_sec,
            self.submit_to_readable.p50_ms,
            self.submit_to_readable.p90_ms,
            self.submit_to_readable.p99_ms,
            self.submit_to_readable.max_ms,
        ) + &self.cpu.summary()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills_with_the_orders() {
        let line = progress_line(5_000, 20_000, Duration::from_secs(1), None);
        assert!(
            line.starts_with("[#######-----------------------]  25%"),
            "{line}"
        );
        assert!(line.ends_with("5000/20000 readable  5.0k/s"), "{line}");
        assert!(progress_line(3, 0, Duration::ZERO, None).contains("100%"));
        let timed = progress_line(
            900,
            usize::MAX,
            Duration::from_secs(3),
            Some(Duration::from_secs(12)),
        );
        assert!(
            timed.starts_with("[#######-----------------------]  25%"),
            "{timed}"
        );
        assert!(timed.contains("900 readable, 3/12 s"), "{timed}");
    }
}
