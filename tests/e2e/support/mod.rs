//! Shared helpers for the end-to-end tests: where things are, and small builders.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use order_rules_engine::Order;
use order_rules_engine::{Engine, Isolation, Limits, Plugin, RuleChain, RuleSpec};

/// Listen on a free loopback port.
pub const LOOPBACK_ANY_PORT: std::net::SocketAddr =
    std::net::SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

/// The repository root (the e2e tests are a test target of `host/cli`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of a plugin built from `plugins/` by the host's build script, e.g. `fixture_spin`.
pub fn built_plugin(stem: &str) -> PathBuf {
    Path::new(order_builtin_rules::PLUGIN_BUILD_DIR).join(format!("{stem}.wasm"))
}

/// Loads a built plugin into `engine`.
pub fn load(engine: &Engine, stem: &str) -> anyhow::Result<Arc<Plugin>> {
    let path = built_plugin(stem);
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(engine.load(&bytes)?)
}

/// A chain of the given built plugins, each with its config, fresh instances.
pub fn chain(engine: &Engine, plugins: &[(&str, &[(&str, &str)])]) -> anyhow::Result<RuleChain> {
    chain_with(engine, plugins, Isolation::Fresh)
}

/// Like [`chain`] with the given isolation for every rule.
pub fn chain_with(
    engine: &Engine,
    plugins: &[(&str, &[(&str, &str)])],
    isolation: Isolation,
) -> anyhow::Result<RuleChain> {
    let specs = plugins
        .iter()
        .map(|(stem, config)| {
            Ok(RuleSpec {
                plugin: load(engine, stem)?,
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                isolation,
                limits: Default::default(),
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RuleChain::new(specs)?)
}

/// Writes a ruleset with only the `fixture_slow` rule, burning `iterations` per order,
/// into `dir`; returns its path. Keeps a worker busy mid-stream in the kill tests.
pub fn slow_ruleset(dir: &Path, iterations: u64) -> PathBuf {
    let path = dir.join("slow.toml");
    let wasm = built_plugin("fixture_slow");
    std::fs::write(
        &path,
        format!(
            "[[rule]]\nplugin = {:?}\n[rule.config]\niterations = {iterations}\n",
            wasm.display().to_string()
        ),
    )
    .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// The plugin limits of the tests: the defaults, but a wall-clock deadline of 10 s per
/// call instead of 100 ms. On 2 cores running the suite's 4 test threads, the background
/// template builds and the brokers, a call of a few ms has waited past 100 ms for a core
/// (a fresh instance of fixture-random, 101 ms, in a CI run here). Tests of the deadline
/// set one of their own; fuel still bounds every guest.
pub fn test_limits() -> Limits {
    Limits {
        deadline: TEST_DEADLINE,
        ..Limits::default()
    }
}

/// The deadline of [`test_limits`].
pub const TEST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// An engine with [`test_limits`].
pub fn engine() -> Engine {
    engine_with(test_limits())
}

/// An engine with the given limits; panics (test helper) if it cannot be built.
pub fn engine_with(limits: Limits) -> Engine {
    match Engine::new(limits) {
        Ok(engine) => engine,
        Err(e) => panic!("cannot build engine: {e:#}"),
    }
}

/// The Go API's e2e order: `e2e-test-1`, `book`, 42.
pub fn go_order() -> Order {
    Order::single_item("e2e-test-1", "book", 42, "USD")
}

/// Runs the CLI; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut argv = vec!["order-pipeline"];
    argv.extend_from_slice(args);
    let code = order_pipeline_cli::run(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// Runs the CLI in-process, off the async runtime, with `args` and then
/// `--admin-addr url`: an operator's command against a running pipeline.
pub async fn admin_cli(url: &str, args: &[&str]) -> (i32, String, String) {
    let mut args: Vec<String> = args.iter().map(ToString::to_string).collect();
    args.extend(["--admin-addr".to_string(), url.to_string()]);
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args)
    })
    .await
    .unwrap()
}

/// Addresses of the real Redis and Kafka-compatible broker the test script started.
#[derive(Debug, Clone)]
pub struct Services {
    /// `host:port` of Redis.
    pub redis: String,
    /// Bootstrap servers of the broker.
    pub kafka: String,
}

/// The services from `TEST_REDIS_ADDR` and `TEST_KAFKA_BROKERS`. Without them the test is
/// skipped (`None`), except under CI, where it fails: CI must run against real services.
pub fn services() -> Option<Services> {
    match (
        std::env::var("TEST_REDIS_ADDR"),
        std::env::var("TEST_KAFKA_BROKERS"),
    ) {
        (Ok(redis), Ok(kafka)) if !redis.is_empty() && !kafka.is_empty() => {
            Some(Services { redis, kafka })
        }
        _ if std::env::var_os("CI").is_some() => panic!(
            "CI is set but TEST_REDIS_ADDR / TEST_KAFKA_BROKERS are not: run the suite with scripts/test.sh"
        ),
        _ => {
            eprintln!(
                "skipped: TEST_REDIS_ADDR / TEST_KAFKA_BROKERS not set (scripts/test.sh sets them)"
            );
            None
        }
    }
}

/// The nodes of the three-master Redis Cluster the test script started
/// (`TEST_REDIS_CLUSTER`, comma-separated). Without it the test is skipped (`None`), except
/// under CI, where it fails.
pub fn redis_cluster() -> Option<String> {
    match std::env::var("TEST_REDIS_CLUSTER") {
        Ok(nodes) if !nodes.is_empty() => Some(nodes),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI is set but TEST_REDIS_CLUSTER is not: run the suite with scripts/test.sh")
        }
        _ => {
            eprintln!("skipped: TEST_REDIS_CLUSTER not set (scripts/test.sh sets it)");
            None
        }
    }
}

/// A name no other test (or earlier run) uses: `prefix-<pid>-<nanos>-<n>`.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos}-{n}", std::process::id())
}

/// The compiled-component cache the tests' pipelines share (outside the repository).
pub fn component_cache() -> PathBuf {
    std::env::temp_dir().join("order-pipeline-tests-component-cache")
}

/// A config for the Kafka + Redis mode with topics and group of its own, listening on
/// free loopback ports, with quick retries.
pub fn kafka_config(services: &Services) -> order_pipeline::config::Config {
    let mut config = loopback_config();
    config.kafka.brokers = Some(services.kafka.clone());
    config.redis.addr = Some(services.redis.clone());
    config.kafka.topic = unique("orders");
    config.kafka.dlq_topic = unique("orders-dlq");
    config.kafka.group = unique("worker-group");
    config.kafka.partitions = 2;
    config.kafka.produce_timeout_ms = 5000;
    config.plugins.component_cache = Some(component_cache());
    config
}

/// A config for the embedded mode in `data_dir`, on free loopback ports.
pub fn embedded_config(data_dir: &Path) -> order_pipeline::config::Config {
    let mut config = loopback_config();
    config.data_dir = data_dir.to_path_buf();
    config.plugins.component_cache = Some(data_dir.join("component-cache"));
    config
}

/// The defaults, every server on a free loopback port, with quick retries.
fn loopback_config() -> order_pipeline::config::Config {
    let mut config = order_pipeline::config::Config::default();
    config.servers.order = LOOPBACK_ANY_PORT;
    config.servers.cache = LOOPBACK_ANY_PORT;
    config.servers.admin = LOOPBACK_ANY_PORT;
    config.worker.retry_backoff_ms = 10;
    config.plugins.limits.deadline = TEST_DEADLINE;
    config
}

/// A gRPC client of the OrderService at `addr`.
pub async fn order_client(
    addr: std::net::SocketAddr,
) -> order_pipeline::proto::order_service_client::OrderServiceClient<tonic::transport::Channel> {
    match order_pipeline::proto::order_service_client::OrderServiceClient::connect(format!(
        "http://{addr}"
    ))
    .await
    {
        Ok(client) => client,
        Err(e) => panic!("cannot connect to the OrderService at {addr}: {e}"),
    }
}

/// A gRPC client of the CacheService at `addr`.
pub async fn cache_client(
    addr: std::net::SocketAddr,
) -> order_pipeline::proto::cache_service_client::CacheServiceClient<tonic::transport::Channel> {
    match order_pipeline::proto::cache_service_client::CacheServiceClient::connect(format!(
        "http://{addr}"
    ))
    .await
    {
        Ok(client) => client,
        Err(e) => panic!("cannot connect to the CacheService at {addr}: {e}"),
    }
}

/// The Go API's single-item request.
pub fn go_request(id: &str, item: &str, price: i32) -> order_pipeline::proto::OrderRequest {
    order_pipeline::proto::OrderRequest {
        id: id.to_string(),
        item: item.to_string(),
        price,
        ..Default::default()
    }
}

/// Waits up to `seconds` for the result of `id`.
pub async fn wait_result(
    client: &mut order_pipeline::proto::cache_service_client::CacheServiceClient<
        tonic::transport::Channel,
    >,
    id: &str,
    seconds: u32,
) -> Result<order_pipeline::proto::ResultResponse, tonic::Status> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(u64::from(seconds));
    loop {
        let answer = client
            .get_order_result(order_pipeline::proto::ResultRequest {
                id: id.to_string(),
                wait_ms: 5_000,
            })
            .await;
        match answer {
            Err(status)
                if status.code() == tonic::Code::NotFound
                    && std::time::Instant::now() < deadline => {}
            other => return other.map(tonic::Response::into_inner),
        }
    }
}

/// An Apache Kafka broker of a test's own (for tests that stop the broker), killed on
/// drop. Started with `scripts/kafka.sh run` (`TEST_KAFKA_SCRIPT`, set by scripts/test.sh).
pub struct OwnKafka {
    /// Its bootstrap address.
    pub addr: String,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl OwnKafka {
    /// Starts a single-node broker on free loopback ports with its data in a temp dir and
    /// waits until it accepts connections (at most 90 s). Panics (a test helper) when it
    /// cannot.
    pub fn start() -> Self {
        Self::start_with(|dir, port, controller| {
            vec![
                "run".into(),
                dir.as_os_str().to_owned(),
                port.to_string().into(),
                controller.to_string().into(),
            ]
        })
    }

    /// Like [`OwnKafka::start`], with the arguments of `scripts/kafka.sh` that `args`
    /// makes of the data dir, the port and the controller port (e.g. `secure ...`).
    pub fn start_with(args: impl FnOnce(&Path, u16, u16) -> Vec<std::ffi::OsString>) -> Self {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("temp dir: {e}"),
        };
        let (port, controller) = (free_port(), free_port());
        let script = std::env::var_os("TEST_KAFKA_SCRIPT")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("scripts/kafka.sh"));
        let child = std::process::Command::new(&script)
            .args(args(dir.path(), port, controller))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match child {
            Ok(child) => child,
            Err(e) => panic!("cannot run {}: {e}", script.display()),
        };
        let addr = format!("127.0.0.1:{port}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while std::net::TcpStream::connect(&addr).is_err() {
            if std::time::Instant::now() > deadline {
                panic!(
                    "Apache Kafka did not listen on {addr} within 90 s; see {}",
                    dir.path().join("broker.log").display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Self {
            addr,
            child,
            _dir: dir,
        }
    }
}

impl Drop for OwnKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits one Go order (`prefix`-unique id, a book at 42) to a running pipeline and
/// waits up to 30 s for it to be `done`; returns its id.
#[allow(clippy::unwrap_used)]
pub async fn decide_one(running: &order_pipeline::app::Running, prefix: &str) -> String {
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let id = unique(prefix);
    orders
        .create_order(go_request(&id, "book", 42))
        .await
        .unwrap();
    let result = wait_result(&mut cache, &id, 30).await.unwrap();
    assert_eq!(result.status, "done", "{id}");
    id
}

/// Submits `count` Go orders in one `CreateOrders` call (ids `prefix-0`...; a pen priced
/// 100 + i) to a running pipeline and waits up to 30 s for each result.
#[allow(clippy::unwrap_used)]
pub async fn decide_batch(running: &order_pipeline::app::Running, prefix: &str, count: i32) {
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let batch = (0..count)
        .map(|i| go_request(&format!("{prefix}-{i}"), "pen", 100 + i))
        .collect();
    orders
        .create_orders(order_pipeline::proto::CreateOrdersRequest { orders: batch })
        .await
        .unwrap();
    for i in 0..count {
        wait_result(&mut cache, &format!("{prefix}-{i}"), 30)
            .await
            .unwrap();
    }
}

/// `CacheService.GetOrderResults` against a running pipeline: a batch read back in one
/// call, in order; found = false for ids without a result (at once, or after a wait);
/// and its INVALID_ARGUMENT cases. Panics (a failed test) on any mismatch.
#[allow(clippy::unwrap_used)]
pub async fn check_batch_results(running: &order_pipeline::app::Running, prefix: &str) {
    use order_pipeline::proto::{CreateOrdersRequest, ResultsRequest};
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let ids: Vec<String> = (0..50).map(|i| unique(&format!("{prefix}-{i}"))).collect();
    let requests = ids
        .iter()
        .enumerate()
        .map(|(i, id)| go_request(id, &format!("item-{i}"), 100 + i as i32))
        .collect();
    let answer = orders
        .create_orders(CreateOrdersRequest { orders: requests })
        .await
        .unwrap()
        .into_inner();
    assert!(answer.responses.iter().all(|r| r.status == "accepted"));

    let results = cache
        .get_order_results(ResultsRequest {
            ids: ids.clone(),
            // 50 ids × 20 s: the most waiting one call may ask for (ids × wait_ms).
            wait_ms: 20_000,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert_eq!(results.len(), ids.len());
    for (i, (entry, id)) in results.iter().zip(&ids).enumerate() {
        assert_eq!(&entry.id, id);
        assert!(entry.found, "{id} not found after waiting");
        let result = entry.result.as_ref().unwrap();
        assert_eq!(result.item, format!("item-{i}"));
        assert_eq!(result.price, 100 + i as i32);
        assert_eq!(result.status, "done");
    }

    let unknown = unique(&format!("{prefix}-unknown"));
    let mixed = cache
        .get_order_results(ResultsRequest {
            ids: vec![ids[3].clone(), unknown.clone(), ids[3].clone()],
            wait_ms: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    let found: Vec<(&str, bool)> = mixed.iter().map(|e| (e.id.as_str(), e.found)).collect();
    assert_eq!(
        found,
        vec![
            (ids[3].as_str(), true),
            (unknown.as_str(), false),
            (ids[3].as_str(), true)
        ]
    );
    assert!(mixed[1].result.is_none());

    let started = std::time::Instant::now();
    let waited = cache
        .get_order_results(ResultsRequest {
            ids: vec![unknown.clone()],
            wait_ms: 200,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(!waited[0].found);
    assert!(started.elapsed() >= std::time::Duration::from_millis(190));

    let too_many = vec!["x".to_string(); 1001];
    let bad = [
        (too_many, 0, "ids: 1001 ids"),
        (vec!["a".into(), String::new()], 0, "ids[1]: is required"),
        (
            vec!["a".into(), "x".repeat(129)],
            0,
            "ids[1]: is 129 bytes, at most 128",
        ),
        (
            vec!["a\u{7}b".into()],
            0,
            "ids[0]: must not contain control characters",
        ),
        (vec!["a".into()], 60_000, "wait_ms: 60000 is more than"),
        (
            vec!["x".into(); 51],
            20_000,
            "wait_ms: 51 ids × 20000 ms is more than 1000000",
        ),
    ];
    for (ids, wait_ms, message) in bad {
        let status = cache
            .get_order_results(ResultsRequest { ids, wait_ms })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{message}");
        assert!(
            status.message().starts_with(message),
            "{}",
            status.message()
        );
    }
}

/// A free loopback `host:port` ([`free_port`]).
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A loopback port that is free now, chosen at random below the kernel's ephemeral
/// range (`/proc/sys/net/ipv4/ip_local_port_range`) when there is room there. A port of
/// that range can become the local port of any outgoing connection on the machine while
/// a test has the service on it stopped, and the service then cannot listen on it again
/// (and a port asked of the kernel with port 0 comes from that range too).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    const LOWEST: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    if ephemeral_low > LOWEST + 1000 {
        let span = u64::from(ephemeral_low - LOWEST);
        let mut random = std::collections::hash_map::RandomState::new().build_hasher();
        for attempt in 0..1000_u64 {
            random.write_u64(attempt);
            let port = LOWEST + u16::try_from(random.finish() % span).expect("below the span");
            if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return port;
            }
        }
    }
    match std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()) {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no free loopback port: {e}"),
    }
}

/// A process of the real binary, killed when dropped.
pub struct RoleProcess(std::process::Child);

impl Drop for RoleProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `order-pipeline ROLE` with `env` and waits until `addr` accepts connections.
pub fn start_role(role: &str, env: &[(&str, &str)], addr: Option<&str>) -> RoleProcess {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_order-pipeline"));
    command
        .arg(role)
        .env("RUST_LOG", "warn")
        .env("COMPONENT_CACHE_DIR", component_cache())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let child = RoleProcess(command.spawn().unwrap());
    if let Some(addr) = addr {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "{role} did not listen on {addr} within 60 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    child
}

/// Reads `topic` from the beginning until `enough` says the records read so far are
/// enough, waiting up to 30 s; panics (a failed test) after that.
pub async fn read_topic_until(
    brokers: &str,
    topic: &str,
    enough: impl Fn(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !enough(&out) {
        match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(message)) => out.push(message.detach()),
            Ok(Err(e)) => panic!("reading {topic}: {e}"),
            Err(_) => panic!("{} records on {topic} within 30 s, not enough", out.len()),
        }
    }
    out
}

/// Reads `count` records of `topic` from the beginning, waiting up to 30 s.
pub async fn read_topic(
    brokers: &str,
    topic: &str,
    count: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    read_topic_until(brokers, topic, |read| read.len() >= count).await
}

/// Header `name` of `message`, as text.
pub fn header(message: &rdkafka::message::OwnedMessage, name: &str) -> Option<String> {
    use rdkafka::Message as _;
    use rdkafka::message::Headers as _;
    let headers = message.headers()?;
    headers
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
}
