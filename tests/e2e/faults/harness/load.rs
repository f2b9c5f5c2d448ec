//! The load of unary `CreateOrder` calls, the reader that remembers the first result it
//! saw of each order, and the final account of a run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use order_pipeline::domain::now_unix_ms;
use order_pipeline::proto::cache_service_client::CacheServiceClient;
use order_pipeline::proto::order_service_client::OrderServiceClient;
use order_pipeline::proto::{OrderRequest, ResultResponse, ResultsRequest};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// One accepted order: its id and when it was sent (ms since the epoch).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    pub sent_at: i64,
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct LoadLog {
    /// Orders answered `accepted`, in answer order.
    pub accepted: Vec<Accepted>,
    /// When the calls answered UNAVAILABLE (or DEADLINE_EXCEEDED) were sent: the order
    /// was not taken, and the client knows it.
    pub unavailable: Vec<i64>,
    /// Calls that failed otherwise, e.g. cut off when the process serving them was
    /// killed (the client does not know whether the order was taken).
    pub other_errors: Vec<String>,
}

/// Unary `CreateOrder` calls from `clients` concurrent clients at about `rate` per
/// second until `total` were sent or it is stopped.
pub struct Load {
    stop: CancellationToken,
    log: Arc<Mutex<LoadLog>>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
    total: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts the load against the OrderService at `addr`; ids start with `prefix`.
    pub fn start(addr: &str, prefix: &str, rate: u32, clients: u32, total: usize) -> Self {
        let stop = CancellationToken::new();
        let log = Arc::new(Mutex::new(LoadLog::default()));
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let per_client = Duration::from_secs_f64(f64::from(clients) / f64::from(rate));
        let tasks = (0..clients)
            .map(|client| {
                let (stop, log, sent) = (stop.clone(), Arc::clone(&log), Arc::clone(&sent));
                let endpoint = format!("http://{addr}");
                let prefix = prefix.to_string();
                tokio::spawn(async move {
                    let channel = Channel::from_shared(endpoint)
                        .expect("an endpoint")
                        .connect_timeout(Duration::from_secs(2))
                        .connect_lazy();
                    let mut orders = OrderServiceClient::new(channel);
                    let mut tick = tokio::time::interval(per_client);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    loop {
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = tick.tick() => {}
                        }
                        let n = sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if n >= total {
                            return;
                        }
                        let id = format!("{prefix}-{client}-{n}");
                        let mut request = tonic::Request::new(OrderRequest {
                            id: id.clone(),
                            item: "book".into(),
                            price: 1 + (n % 500) as i32,
                            ..Default::default()
                        });
                        request.set_timeout(Duration::from_secs(15));
                        let sent_at = now_unix_ms();
                        let answer = orders.create_order(request).await;
                        let mut log = log.lock().expect("the load log");
                        match answer {
                            Ok(answer) if answer.get_ref().status == "accepted" => {
                                log.accepted.push(Accepted { id, sent_at });
                            }
                            Ok(answer) => panic!("{id}: unexpected answer {answer:?}"),
                            Err(status)
                                if matches!(
                                    status.code(),
                                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                                ) =>
                            {
                                log.unavailable.push(sent_at);
                            }
                            Err(status) => {
                                log.other_errors.push(format!(
                                    "{id}: {:?} {}",
                                    status.code(),
                                    status.message()
                                ));
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            stop,
            log,
            sent,
            total,
            tasks,
        }
    }

    /// Whether every order of the load has been sent.
    pub fn all_sent(&self) -> bool {
        self.sent.load(std::sync::atomic::Ordering::Relaxed) >= self.total
    }

    /// How many orders were accepted so far.
    pub fn accepted(&self) -> usize {
        self.log.lock().expect("the load log").accepted.len()
    }

    /// Waits until `count` more orders than now were accepted (at most `limit`).
    pub async fn wait_more(&self, count: usize, limit: Duration) {
        let target = self.accepted() + count;
        let deadline = Instant::now() + limit;
        while self.accepted() < target && !self.all_sent() {
            assert!(
                Instant::now() < deadline,
                "fewer than {count} orders accepted within {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most `limit`) until the order accepted last by now has a result at the
    /// CacheService at `cache_addr`: the pipeline has caught up with the load. Returns how
    /// long that took.
    pub async fn wait_caught_up(&self, cache_addr: &str, limit: Duration) -> Duration {
        let started = Instant::now();
        let last = {
            let log = self.log.lock().expect("the load log");
            log.accepted.last().map(|a| a.id.clone())
        };
        let Some(last) = last else {
            return Duration::ZERO;
        };
        loop {
            if let Ok(mut cache) = CacheServiceClient::connect(format!("http://{cache_addr}")).await
                && cache
                    .get_order_result(order_pipeline::proto::ResultRequest {
                        id: last.clone(),
                        wait_ms: 1_000,
                    })
                    .await
                    .is_ok()
            {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "{last} (accepted) has no result after {limit:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// After a fault: waits (each at most `limit`) until `more` orders were accepted and
    /// the pipeline has caught up with them ([`Load::wait_more`], [`Load::wait_caught_up`]).
    pub async fn recovered(&self, cache_addr: &str, more: usize, limit: Duration) {
        self.wait_more(more, limit).await;
        self.wait_caught_up(cache_addr, limit).await;
    }

    /// Stops sending (or waits until all were sent) and returns what it saw.
    pub async fn finish(self, wait_for_all: bool) -> LoadLog {
        if !wait_for_all {
            self.stop.cancel();
        }
        for task in self.tasks {
            task.await.expect("a load client panicked");
        }
        std::mem::take(&mut *self.log.lock().expect("the load log"))
    }
}

/// What a client can see of a result: if any of it changes after a read, the result
/// changed visibly.
fn fingerprint(result: &ResultResponse) -> String {
    format!(
        "{}|{}|{}|{}|{}|{}|{:?}",
        result.status,
        result.processed_at_unix_ms,
        result.processed_by,
        result.attempts,
        result.ruleset_version,
        result.error,
        result.totals,
    )
}

/// Reads results while the run goes on and remembers the first it saw of each order.
pub struct Reader {
    seen: Arc<Mutex<HashMap<String, (String, i64)>>>,
    changed: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    /// Reads, every 200 ms, the results of the orders `load` accepted since the last round
    /// plus up to 200 earlier ones (a rotating window), from the CacheService at `addr`.
    pub fn start(addr: &str, load: &Load) -> Self {
        let seen: Arc<Mutex<HashMap<String, (String, i64)>>> = Arc::default();
        let changed: Arc<Mutex<Vec<String>>> = Arc::default();
        let stop = CancellationToken::new();
        let log = Arc::clone(&load.log);
        let endpoint = format!("http://{addr}");
        let task = tokio::spawn({
            let (seen, changed, stop) = (Arc::clone(&seen), Arc::clone(&changed), stop.clone());
            async move {
                let channel = Channel::from_shared(endpoint)
                    .expect("an endpoint")
                    .connect_timeout(Duration::from_secs(2))
                    .connect_lazy();
                let mut cache = CacheServiceClient::new(channel);
                let mut cursor = 0;
                let mut again = 0;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    let ids: Vec<String> = {
                        let log = log.lock().expect("the load log");
                        if cursor > log.accepted.len() {
                            // The load finished and took its log: the run is over.
                            return;
                        }
                        let new = log.accepted[cursor..].iter().map(|a| a.id.clone());
                        let earlier: Vec<String> = if cursor == 0 {
                            Vec::new()
                        } else {
                            (0..200.min(cursor))
                                .map(|k| log.accepted[(again + k) % cursor].id.clone())
                                .collect()
                        };
                        again += 200;
                        let ids = new.chain(earlier).take(1000).collect::<Vec<_>>();
                        cursor = (cursor + ids.len()).min(log.accepted.len());
                        ids
                    };
                    if ids.is_empty() {
                        continue;
                    }
                    let Ok(answer) = cache
                        .get_order_results(ResultsRequest { ids, wait_ms: 0 })
                        .await
                    else {
                        continue; // the CacheService or Redis is down: read again later
                    };
                    let now = now_unix_ms();
                    let mut seen = seen.lock().expect("seen");
                    for entry in answer.into_inner().results {
                        let Some(result) = entry.result.filter(|_| entry.found) else {
                            continue;
                        };
                        let print = fingerprint(&result);
                        match seen.get(&entry.id) {
                            None => {
                                seen.insert(entry.id, (print, now));
                            }
                            Some((first, _)) if *first != print => {
                                changed
                                    .lock()
                                    .expect("changed")
                                    .push(format!("{}: first {first}, then {print}", entry.id));
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
        });
        Self {
            seen,
            changed,
            stop,
            task,
        }
    }

    /// Stops reading; returns the first result seen per order and the changes seen.
    pub async fn finish(self) -> (HashMap<String, (String, i64)>, Vec<String>) {
        self.stop.cancel();
        self.task.await.expect("the reader panicked");
        let seen = std::mem::take(&mut *self.seen.lock().expect("seen"));
        let changed = std::mem::take(&mut *self.changed.lock().expect("changed"));
        (seen, changed)
    }
}

/// The account of one stretch of a run (one fault, or a whole test).
#[derive(Debug, Default, Clone)]
pub struct Account {
    /// Orders answered `accepted`.
    pub accepted: usize,
    /// Of them, with a final result (`done`, `rejected` or `failed`).
    pub final_results: usize,
    /// Of them, without a result at the end: lost.
    pub lost: Vec<String>,
    /// Results that differed from what a client had read earlier.
    pub changed: Vec<String>,
    /// Results whose status is not final.
    pub not_final: Vec<String>,
    /// Calls answered UNAVAILABLE: not accepted, and the client was told.
    pub unavailable: usize,
    /// The longest an accepted order waited from its submission to its decision.
    pub worst_decide: Duration,
    /// The longest stretch without an accepted order.
    pub worst_submit_gap: Duration,
}

impl Account {
    /// One line of the report.
    pub fn line(&self, name: &str) -> String {
        format!(
            "{name:<26} accepted {:>6}  final {:>6}  lost {:>3}  changed {:>3}  unavailable {:>5}  worst submit->decided {:>6.1} s  longest gap without an accepted order {:>5.1} s",
            self.accepted,
            self.final_results,
            self.lost.len(),
            self.changed.len(),
            self.unavailable,
            self.worst_decide.as_secs_f64(),
            self.worst_submit_gap.as_secs_f64(),
        )
    }

    /// Panics unless every accepted order has one final result that never changed.
    pub fn assert_nothing_lost(&self, name: &str) {
        assert!(self.accepted > 0, "{name}: no order was accepted");
        assert!(
            self.lost.is_empty() && self.changed.is_empty() && self.not_final.is_empty(),
            "{name}: {} lost (e.g. {:?}), {} changed (e.g. {:?}), {} not final (e.g. {:?})",
            self.lost.len(),
            self.lost.first(),
            self.changed.len(),
            self.changed.first(),
            self.not_final.len(),
            self.not_final.first(),
        );
        assert_eq!(self.final_results, self.accepted, "{name}");
    }
}

/// Waits (up to `limit`) until every accepted order has a result, reading them from the
/// CacheService at `addr`; compares each with what the reader saw first and returns the
/// account of the orders sent within each of `windows` (start and end, ms since the
/// epoch; `u64::MAX` for open ends).
pub async fn settle(
    addr: &str,
    accepted: &[Accepted],
    unavailable: &[i64],
    first_seen: &HashMap<String, (String, i64)>,
    changed_while_running: &[String],
    windows: &[(i64, i64)],
    limit: Duration,
) -> Vec<Account> {
    let mut cache = CacheServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("the CacheService");
    let mut results: HashMap<String, ResultResponse> = HashMap::new();
    let deadline = Instant::now() + limit;
    loop {
        let missing: Vec<String> = accepted
            .iter()
            .filter(|a| !results.contains_key(&a.id))
            .map(|a| a.id.clone())
            .collect();
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        for chunk in missing.chunks(1000) {
            match cache
                .get_order_results(ResultsRequest {
                    ids: chunk.to_vec(),
                    wait_ms: 0,
                })
                .await
            {
                Ok(answer) => {
                    for entry in answer.into_inner().results {
                        if let Some(result) = entry.result.filter(|_| entry.found) {
                            results.insert(entry.id, result);
                        }
                    }
                }
                Err(status) => eprintln!("settling: {status:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    windows
        .iter()
        .map(|&(from, to)| {
            let mut account = Account {
                unavailable: unavailable.iter().filter(|&&t| t >= from && t < to).count(),
                ..Account::default()
            };
            let mut sent: Vec<i64> = Vec::new();
            for order in accepted
                .iter()
                .filter(|a| a.sent_at >= from && a.sent_at < to)
            {
                account.accepted += 1;
                sent.push(order.sent_at);
                let Some(result) = results.get(&order.id) else {
                    account.lost.push(order.id.clone());
                    continue;
                };
                if ["done", "rejected", "failed"].contains(&result.status.as_str()) {
                    account.final_results += 1;
                } else {
                    account
                        .not_final
                        .push(format!("{}: {}", order.id, result.status));
                }
                if let Some((first, _)) = first_seen.get(&order.id)
                    && *first != fingerprint(result)
                {
                    account.changed.push(format!(
                        "{}: first {first}, at the end {}",
                        order.id,
                        fingerprint(result)
                    ));
                }
                let waited = result.processed_at_unix_ms.saturating_sub(order.sent_at);
                account.worst_decide = account
                    .worst_decide
                    .max(Duration::from_millis(u64::try_from(waited).unwrap_or(0)));
            }
            account.changed.extend(
                changed_while_running
                    .iter()
                    .filter(|c| {
                        accepted.iter().any(|a| {
                            a.sent_at >= from
                                && a.sent_at < to
                                && c.starts_with(&format!("{}:", a.id))
                        })
                    })
                    .cloned(),
            );
            sent.sort_unstable();
            account.worst_submit_gap = sent
                .windows(2)
                .map(|w| Duration::from_millis(u64::try_from(w[1] - w[0]).unwrap_or(0)))
                .max()
                .unwrap_or_default();
            account
        })
        .collect()
}
