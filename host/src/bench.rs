//! The load generator behind `order-pipeline bench`: N concurrent clients submit orders
//! (unary `CreateOrder` or `CreateOrders` batches) and wait for each result through the
//! CacheService, measuring submit latency, submit-to-readable latency and throughput.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::future::join_all;
use serde::Serialize;
use tonic::transport::Channel;

use crate::proto::cache_service_client::CacheServiceClient;
use crate::proto::order_service_client::OrderServiceClient;
use crate::proto::{CreateOrdersRequest, OrderRequest, ResultRequest};

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
    let order_channel = Channel::from_shared(plan.order_url.clone())
        .context("bad OrderService URL")?
        .connect()
        .await
        .with_context(|| format!("cannot reach the OrderService at {}", plan.order_url))?;
    let cache_channel = Channel::from_shared(plan.cache_url.clone())
        .context("bad CacheService URL")?
        .connect()
        .await
        .with_context(|| format!("cannot reach the CacheService at {}", plan.cache_url))?;
    let run_id = crate::result::now_unix_ms();
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let progress = Arc::new(progress);
    let started = Instant::now();
    let step = plan.batch.max(1);
    let clients: Vec<_> = (0..plan.concurrency)
        .map(|_| {
            let mut orders = OrderServiceClient::new(order_channel.clone());
            let cache = CacheServiceClient::new(cache_channel.clone());
            let (next, done, progress) =
                (Arc::clone(&next), Arc::clone(&done), Arc::clone(&progress));
            let (total, batch) = (plan.orders, plan.batch);
            tokio::spawn(async move {
                // (submit latency, submit->readable latency, when it was accepted)
                let mut samples: Vec<(Duration, Option<Duration>, Instant)> = Vec::new();
                loop {
                    let first = next.fetch_add(step, Ordering::Relaxed);
                    if first >= total {
                        break;
                    }
                    let ids: Vec<String> = (first..(first + step).min(total))
                        .map(|i| format!("bench-{run_id}-{i}"))
                        .collect();
                    let requests: Vec<OrderRequest> = ids
                        .iter()
                        .map(|id| OrderRequest {
                            id: id.clone(),
                            item: "book".into(),
                            price: 4200,
                            ..Default::default()
                        })
                        .collect();
                    let t0 = Instant::now();
                    let accepted: Vec<bool> = if batch == 0 {
                        let mut accepted = Vec::new();
                        for request in requests {
                            accepted.push(orders.create_order(request).await.is_ok());
                        }
                        accepted
                    } else {
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
                    };
                    let submit = t0.elapsed();
                    let reads = ids.iter().zip(&accepted).map(|(id, ok)| {
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
                    for readable in join_all(reads).await {
                        samples.push((submit, readable, t0 + submit));
                    }
                    let finished = done.fetch_add(ids.len(), Ordering::Relaxed) + ids.len();
                    progress(finished);
                }
                samples
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(plan.orders);
    for client in clients {
        samples.extend(client.await.context("a bench client panicked")?);
    }
    let seconds = started.elapsed().as_secs_f64();
    let errors = samples.iter().filter(|s| s.1.is_none()).count();
    let mut submit: Vec<Duration> = samples.iter().map(|s| s.0).collect();
    let mut readable: Vec<Duration> = samples.iter().filter_map(|s| s.1).collect();
    let accepted_by = samples
        .iter()
        .map(|s| s.2.saturating_duration_since(started))
        .max()
        .unwrap_or_default()
        .as_secs_f64()
        .max(f64::EPSILON);
    Ok(BenchReport {
        orders: samples.len(),
        concurrency: plan.concurrency,
        batch: plan.batch,
        submitted_per_sec: samples.len() as f64 / accepted_by,
        completed_per_sec: readable.len() as f64 / seconds.max(f64::EPSILON),
        submit: percentiles(&mut submit),
        submit_to_readable: percentiles(&mut readable),
        errors,
        seconds,
    })
}

/// A one-line progress bar: `[#######-------------]  35%  7000/20000 readable  9.1k/s`.
pub fn progress_line(done: usize, total: usize, elapsed: Duration) -> String {
    const WIDTH: usize = 30;
    let done = done.min(total);
    let filled = (done * WIDTH).checked_div(total).unwrap_or(WIDTH);
    let rate = done as f64 / elapsed.as_secs_f64().max(1e-9);
    format!(
        "[{}{}] {:>3}%  {done}/{total} readable  {:.1}k/s",
        "#".repeat(filled),
        "-".repeat(WIDTH - filled),
        (done * 100).checked_div(total).unwrap_or(100),
        rate / 1000.0
    )
}

fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort_unstable();
    let at = |p: f64| crate::runner::percentile(samples, p).as_secs_f64() * 1e3;
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
        let mode = if self.batch == 0 {
            "unary CreateOrder".to_string()
        } else {
            format!("CreateOrders x{}", self.batch)
        };
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
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_bar_fills_with_the_orders() {
        let line = progress_line(5_000, 20_000, Duration::from_secs(1));
        assert!(
            line.starts_with("[#######-----------------------]  25%"),
            "{line}"
        );
        assert!(line.ends_with("5000/20000 readable  5.0k/s"), "{line}");
        assert!(progress_line(3, 0, Duration::ZERO).contains("100%"));
    }
}
