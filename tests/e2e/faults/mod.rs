//! Fault tests on Apache Kafka and Redis, with the three roles (or `run`) as separate
//! processes of the real binary under a steady load of unary `CreateOrder` calls. Each
//! asserts that every order answered `accepted` has one final result at the end, and
//! that no result a client read ever changed. Each prints its account (run with
//! `--nocapture` to see it): orders accepted, final, lost, changed, answered
//! UNAVAILABLE, and the worst submit-to-decided time of the orders sent during the fault
//! (the time to recover). The soak runs them all on a schedule (docs/RELIABILITY.md).
//!
//! Each test starts brokers and a Redis of its own (scripts/kafka.sh, redis-server with
//! `appendfsync always`, the setting the README documents), so at most two run at once.

pub(crate) mod harness;
mod soak;

use std::time::Duration;

use harness::{Account, Kafka, Load, Proc, Reader, Redis, RoleEnv, Stop, free_port, wait_port};
use order_pipeline::domain::now_unix_ms;

/// At most two fault tests at a time: each runs brokers and a load of its own. Two, not
/// one: most of a fault test is waiting (for a broker to start, a session to time out,
/// a restarted process), and one at a time made them a chain of 5 minutes that held the
/// other test threads waiting on this lock (scripts/test.sh runs 4 test threads).
static FAULT_SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// Waits for one of the [`FAULT_SLOTS`].
async fn fault_slot() -> tokio::sync::SemaphorePermit<'static> {
    FAULT_SLOTS
        .acquire()
        .await
        .expect("the fault tests' semaphore is never closed")
}

/// Orders per second of the load, and its concurrent clients.
const RATE: u32 = 200;
const CLIENTS: u32 = 8;

/// The roles as processes on Kafka and Redis: an OrderService, a CacheService and
/// `workers` workers, each its own process.
struct Roles {
    env: RoleEnv,
    order: Proc,
    cache: Proc,
    workers: Vec<Proc>,
    order_addr: String,
    cache_addr: String,
}

impl Roles {
    fn start(env: RoleEnv, workers: usize) -> Self {
        let order_addr = format!("127.0.0.1:{}", free_port());
        let cache_addr = format!("127.0.0.1:{}", free_port());
        let mut order = env.role(
            "order-service",
            "order-service",
            &[("ORDER_SERVICE_ADDR", order_addr.clone())],
        );
        let mut cache = env.role(
            "cache-service",
            "cache-service",
            &[("CACHE_SERVICE_ADDR", cache_addr.clone())],
        );
        order.start();
        // The OrderService creates the topics; the workers subscribe after.
        wait_port(&order_addr, Duration::from_secs(120), "the OrderService");
        cache.start();
        wait_port(&cache_addr, Duration::from_secs(60), "the CacheService");
        let mut roles = Self {
            env,
            order,
            cache,
            workers: Vec::new(),
            order_addr,
            cache_addr,
        };
        for _ in 0..workers {
            roles.add_worker();
        }
        roles
    }

    /// Starts one more worker process.
    fn add_worker(&mut self) {
        let name = format!("worker-{}", self.workers.len() + 1);
        let mut worker = self.env.role(&name, "worker", &[]);
        worker.start();
        self.workers.push(worker);
    }

    fn assert_running(&mut self) {
        self.order.assert_running();
        self.cache.assert_running();
        for worker in &mut self.workers {
            worker.assert_running();
        }
    }
}

/// `order-pipeline run` (embedded, data in `dir`) as a process on free ports, started;
/// with its OrderService and CacheService addresses.
fn start_run(dir: &std::path::Path) -> (Proc, String, String) {
    let (order_addr, cache_addr) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut all = RoleEnv::embedded(dir).role(
        "run",
        "run",
        &[
            ("ORDER_SERVICE_ADDR", order_addr.clone()),
            ("CACHE_SERVICE_ADDR", cache_addr.clone()),
        ],
    );
    all.start();
    wait_port(&order_addr, Duration::from_secs(60), "order-pipeline run");
    wait_port(&cache_addr, Duration::from_secs(60), "order-pipeline run");
    (all, order_addr, cache_addr)
}

/// A test's record: the load, the reader and the fault windows it settles.
struct Run {
    load: Load,
    reader: Reader,
    windows: Vec<(String, i64, i64)>,
    started: i64,
}

impl Run {
    fn start(order_addr: &str, cache_addr: &str, prefix: &str, total: usize) -> Self {
        Self::start_at(order_addr, cache_addr, prefix, total, RATE)
    }

    fn start_at(order_addr: &str, cache_addr: &str, prefix: &str, total: usize, rate: u32) -> Self {
        let started = now_unix_ms();
        let load = Load::start(
            order_addr,
            &crate::support::unique(prefix),
            rate,
            CLIENTS,
            total,
        );
        let reader = Reader::start(cache_addr, &load);
        Self {
            load,
            reader,
            windows: Vec::new(),
            started,
        }
    }

    /// Records the orders sent from `from` until now as the window of fault `name`.
    fn window(&mut self, name: &str, from: i64) {
        self.windows.push((name.to_string(), from, now_unix_ms()));
    }

    /// Stops the load, waits until every accepted order has a result (at most 3 min),
    /// prints the accounts (the whole run first) and returns them.
    async fn settle(self, name: &str, cache_addr: &str, wait_for_all: bool) -> Vec<Account> {
        let log = self.load.finish(wait_for_all).await;
        let (seen, changed) = self.reader.finish().await;
        let mut windows = vec![(name.to_string(), self.started, i64::MAX)];
        windows.extend(self.windows);
        let spans: Vec<(i64, i64)> = windows.iter().map(|(_, from, to)| (*from, *to)).collect();
        let accounts = harness::settle(
            cache_addr,
            &log.accepted,
            &log.unavailable,
            &seen,
            &changed,
            &spans,
            Duration::from_secs(180),
        )
        .await;
        println!("{}", accounts[0].line(&format!("{name} (whole run)")));
        for ((fault, _, _), account) in windows.iter().zip(&accounts).skip(1) {
            println!("{}", account.line(&format!("  during {fault}")));
        }
        if let Some(first) = log.other_errors.first() {
            println!(
                "  {} calls cut off without an answer (e.g. {first})",
                log.other_errors.len()
            );
        }
        accounts
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Apache Kafka: scripts/test.sh runs it"]
async fn worker_killed_without_static_membership_loses_nothing() {
    let _slot = fault_slot().await;
    let dir = harness::run_dir();
    let kafka = Kafka::start(dir.path(), 1);
    let redis = Redis::start(dir.path());
    let mut roles = Roles::start(RoleEnv::kafka(dir.path(), &kafka, &redis, 1), 2);
    let mut run = Run::start(&roles.order_addr, &roles.cache_addr, "wkill", usize::MAX);
    run.load.wait_more(1000, Duration::from_secs(120)).await;

    let killed = now_unix_ms();
    roles.workers[0].stop(Stop::Kill);
    // The broker evicts the dead member after the session timeout (6 s); the other
    // worker then takes its partitions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    run.load
        .wait_caught_up(&roles.cache_addr, Duration::from_secs(120))
        .await;
    run.window("worker kill -9", killed);
    roles.assert_running_except_first_worker();
    let replaced = now_unix_ms();
    roles.workers[0].start();
    run.load.wait_more(1000, Duration::from_secs(120)).await;
    run.window("replacement joins", replaced);
    roles.assert_running();

    let accounts = run.settle("worker kill -9", &roles.cache_addr, false).await;
    for (account, name) in accounts.iter().zip(["run", "kill", "join"]) {
        account.assert_nothing_lost(name);
    }
}

impl Roles {
    fn assert_running_except_first_worker(&mut self) {
        self.order.assert_running();
        self.cache.assert_running();
        for worker in self.workers.iter_mut().skip(1) {
            worker.assert_running();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Apache Kafka: scripts/test.sh runs it"]
async fn broker_restarted_mid_stream_loses_nothing() {
    let _slot = fault_slot().await;
    let dir = harness::run_dir();
    let mut kafka = Kafka::start(dir.path(), 1);
    let redis = Redis::start(dir.path());
    let mut roles = Roles::start(RoleEnv::kafka(dir.path(), &kafka, &redis, 1), 1);
    let mut run = Run::start(&roles.order_addr, &roles.cache_addr, "brestart", usize::MAX);
    run.load.wait_more(1000, Duration::from_secs(120)).await;

    for (how, name) in [
        (Stop::Term, "broker SIGTERM + restart"),
        (Stop::Kill, "broker kill -9 + restart"),
    ] {
        let from = now_unix_ms();
        kafka.nodes[0].stop(how);
        tokio::time::sleep(Duration::from_secs(3)).await;
        kafka.restart(0);
        // Submission goes on and the worker resumes by itself.
        run.load
            .recovered(&roles.cache_addr, 500, Duration::from_secs(120))
            .await;
        run.window(name, from);
        roles.assert_running();
    }

    let accounts = run.settle("broker restart", &roles.cache_addr, false).await;
    for account in &accounts {
        account.assert_nothing_lost("broker restart");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Apache Kafka: scripts/test.sh runs it"]
async fn leader_lost_from_a_three_node_cluster_loses_nothing() {
    let _slot = fault_slot().await;
    let dir = harness::run_dir();
    let mut kafka = Kafka::start(dir.path(), 3);
    let redis = Redis::start(dir.path());
    let env = RoleEnv::kafka(dir.path(), &kafka, &redis, 3);
    let topic = env.topic();
    let mut roles = Roles::start(env, 2);
    let mut run = Run::start(&roles.order_addr, &roles.cache_addr, "leader", usize::MAX);
    run.load.wait_more(1000, Duration::from_secs(120)).await;

    let leader = kafka.leader_of(&topic, 0);
    let from = now_unix_ms();
    kafka.nodes[leader].stop(Stop::Kill);
    // acks=all with min.insync.replicas=2: the two left take every write.
    run.load
        .recovered(&roles.cache_addr, 1000, Duration::from_secs(120))
        .await;
    run.window(&format!("leader (node {}) kill -9", leader + 1), from);
    roles.assert_running();
    let back = now_unix_ms();
    kafka.restart(leader);
    run.load.wait_more(1000, Duration::from_secs(120)).await;
    run.window("node back", back);

    let accounts = run.settle("leader lost", &roles.cache_addr, false).await;
    for account in &accounts {
        account.assert_nothing_lost("leader lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Apache Kafka: scripts/test.sh runs it"]
async fn redis_killed_and_restarted_loses_nothing() {
    let _slot = fault_slot().await;
    let dir = harness::run_dir();
    let kafka = Kafka::start(dir.path(), 1);
    let mut redis = Redis::start(dir.path());
    let mut roles = Roles::start(RoleEnv::kafka(dir.path(), &kafka, &redis, 1), 1);
    let mut run = Run::start(&roles.order_addr, &roles.cache_addr, "rcrash", usize::MAX);
    run.load.wait_more(1000, Duration::from_secs(120)).await;

    let from = now_unix_ms();
    redis.proc.stop(Stop::Kill);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The append-only file (fsynced on every write) brings every stored result back.
    redis.restart();
    run.load
        .recovered(&roles.cache_addr, 500, Duration::from_secs(120))
        .await;
    run.window("redis kill -9 + restart", from);
    roles.assert_running();

    let accounts = run.settle("redis crash", &roles.cache_addr, false).await;
    for account in &accounts {
        account.assert_nothing_lost("redis crash");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Apache Kafka: scripts/test.sh runs it"]
async fn health_follows_kafka_and_redis_going_away_and_coming_back() {
    use crate::readiness::{not_serving, serving, wait_health};
    let _slot = fault_slot().await;
    let dir = harness::run_dir();
    let mut kafka = Kafka::start(dir.path(), 1);
    let mut redis = Redis::start(dir.path());
    let mut roles = Roles::start(RoleEnv::kafka(dir.path(), &kafka, &redis, 1), 0);
    // The worker answers health on its admin server (as compose's healthcheck asks it).
    let admin_addr = format!("127.0.0.1:{}", free_port());
    let mut worker = roles
        .env
        .role("worker", "worker", &[("ADMIN_ADDR", admin_addr.clone())]);
    worker.start();
    wait_port(&admin_addr, Duration::from_secs(120), "the worker");
    let order = format!("http://{}", roles.order_addr);
    let work = format!("http://{admin_addr}");
    let cache = format!("http://{}", roles.cache_addr);
    let limit = Duration::from_secs(60);
    for url in [&order, &work, &cache] {
        wait_health(url, limit, serving).await;
    }

    // Redis down: the worker and the CacheService are not ready; the OrderService is.
    redis.proc.stop(Stop::Kill);
    for url in [&work, &cache] {
        let line = wait_health(url, limit, not_serving("redis", "")).await;
        println!("redis down, {url}: {line}");
    }
    wait_health(&order, limit, serving).await;
    redis.restart();
    for url in [&order, &work, &cache] {
        wait_health(url, limit, serving).await;
    }

    // Kafka down: the OrderService and the worker are not ready; the CacheService is.
    kafka.nodes[0].stop(Stop::Term);
    for url in [&order, &work] {
        let line = wait_health(url, limit, not_serving("kafka", "")).await;
        println!("kafka down, {url}: {line}");
    }
    wait_health(&cache, limit, serving).await;
    kafka.restart(0);
    for url in [&order, &work, &cache] {
        wait_health(url, Duration::from_secs(120), serving).await;
    }
    roles.assert_running();
    worker.assert_running();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Apache Kafka: scripts/test.sh runs it"]
async fn second_worker_joins_and_leaves_under_load() {
    let _slot = fault_slot().await;
    let dir = harness::run_dir();
    let kafka = Kafka::start(dir.path(), 1);
    let redis = Redis::start(dir.path());
    let mut env = RoleEnv::kafka(dir.path(), &kafka, &redis, 1);
    // The default session timeout: no partition may wait longer than it.
    env.common.retain(|(k, _)| k != "KAFKA_SESSION_TIMEOUT_MS");
    let session = Duration::from_secs(10);
    let mut roles = Roles::start(env, 1);
    let mut run = Run::start(&roles.order_addr, &roles.cache_addr, "rebal", usize::MAX);
    run.load.wait_more(1000, Duration::from_secs(120)).await;

    let joined = now_unix_ms();
    roles.add_worker();
    run.load
        .recovered(&roles.cache_addr, 1500, Duration::from_secs(120))
        .await;
    run.window("second worker joins", joined);
    let left = now_unix_ms();
    roles.workers[1].stop(Stop::Term);
    run.load
        .recovered(&roles.cache_addr, 1500, Duration::from_secs(120))
        .await;
    run.window("second worker leaves", left);
    roles.assert_running();

    let accounts = run.settle("rebalance", &roles.cache_addr, false).await;
    for account in &accounts {
        account.assert_nothing_lost("rebalance");
        assert!(
            account.worst_decide < session,
            "an order waited {:?}, longer than the session timeout",
            account.worst_decide
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and Apache Kafka: scripts/test.sh runs it"]
async fn embedded_run_killed_and_restarted_loses_nothing() {
    let _slot = fault_slot().await;
    let dir = harness::run_dir();
    let (mut all, order_addr, cache_addr) = start_run(dir.path());
    let mut run = Run::start(&order_addr, &cache_addr, "ekill", usize::MAX);
    run.load.wait_more(1000, Duration::from_secs(120)).await;

    let from = now_unix_ms();
    all.stop(Stop::Kill);
    all.start();
    wait_port(&order_addr, Duration::from_secs(60), "order-pipeline run");
    run.load
        .recovered(&cache_addr, 500, Duration::from_secs(120))
        .await;
    run.window("run kill -9 + restart", from);
    all.assert_running();

    let accounts = run.settle("embedded kill", &cache_addr, false).await;
    for account in &accounts {
        account.assert_nothing_lost("embedded kill");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis: scripts/test.sh runs it"]
async fn a_worker_tells_whether_redis_keeps_acknowledged_results() {
    use order_pipeline::backends::redis::Redis as Client;
    // The suite's Redis runs without persistence: a worker warns.
    let Some(services) = crate::support::services() else {
        return;
    };
    let plain = Client::connect(&services.redis, "", &Default::default(), None)
        .await
        .unwrap();
    assert!(!plain.check_durability().await);
    // The documented setting (the fault tests' Redis).
    let dir = harness::run_dir();
    let redis = Redis::start(dir.path());
    let durable = Client::connect(&redis.addr, "", &Default::default(), None)
        .await
        .unwrap();
    assert!(durable.check_durability().await);
}
