//! Redis users (issue 22, item 5): the users `compose.yaml` gives Redis, on a real Redis
//! started with compose's own command line. The worker runs as `worker`, which may read
//! the registry but not write it, with `WORKER_ADMIN=false`; the admin role runs as
//! `admin` and is the one writer of the registry: a rule that breaks the quarantine
//! policy on the worker is taken out by the admin role's supervisor, from the worker's
//! report. The CacheService runs as `cache` (read only), and an auditor can read the
//! audit trail and nothing else.

use std::time::Duration;

use order_pipeline::app::{self, Role};
use order_pipeline::config::{Config, WorkerConfig};
use order_pipeline::proto::CreateOrdersRequest;
use order_pipeline::proto::admin::admin_service_client::AdminServiceClient;
use order_pipeline::proto::admin::{self, DeployRequest, deploy_request::Position};

use crate::compose::{PASSWORDS, load_compose_with, strings};
use crate::faults::harness::{Proc, free_port, wait_port};
use crate::support::{
    admin_cli, built_plugin, cache_client, go_request, kafka_config, order_client, services,
    unique, wait_result,
};

fn password(user: &str) -> &'static str {
    let name = format!("REDIS_{}_PASSWORD", user.to_uppercase());
    PASSWORDS
        .iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| *v)
        .unwrap()
}

/// What Redis answers `cmd` with, as `user`: Ok, or the error's code (`NOPERM`).
async fn as_user(addr: &str, user: &str, cmd: &redis::Cmd) -> Result<redis::Value, String> {
    let url = format!("redis://{user}:{}@{addr}", password(user));
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut connection)
        .await
        .map_err(|e| e.code().unwrap_or("?").to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Go, Redis and the broker: scripts/test.sh runs it"]
async fn each_role_runs_with_its_own_redis_user() {
    let Some(services) = services() else { return };
    let group = unique("acl-group");
    let mut vars = PASSWORDS.to_vec();
    vars.push(("WORKER_GROUP", &group));

    // Redis as compose runs it (users and all), on a port of its own.
    let project = load_compose_with(&vars);
    let mut command: Vec<String> = strings(&project["services"]["redis"]["command"])
        .into_iter()
        .map(ToString::to_string)
        .collect();
    assert!(command.iter().any(|a| a == "--user"), "{command:?}");
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    command.extend(
        [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            &dir.path().display().to_string(),
            "--save",
            "",
        ]
        .map(String::from),
    );
    let mut server = Proc::new("redis-server", command, Vec::new(), dir.path().join("log"));
    server.start();
    let addr = format!("127.0.0.1:{port}");
    wait_port(&addr, Duration::from_secs(30), "redis-server");
    // Nobody gets in without a user.
    let anonymous = redis::Client::open(format!("redis://{addr}")).unwrap();
    let mut connection = anonymous.get_multiplexed_async_connection().await.unwrap();
    let answer: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut connection).await;
    assert!(answer.is_err(), "the default user is off");

    let mut base = kafka_config(&services);
    base.kafka.group = group.clone();
    base.worker.quarantine_failures = 3;
    base.worker.quarantine_window = 10;
    base.kafka.instance_id = Some("acl-worker".into());
    let with_user = |user: &str| {
        let mut config = base.clone();
        config.redis.addr = Some(format!("redis://{user}:{}@{addr}", password(user)));
        config
    };
    // The admin role stores the first version; then the worker, which may not.
    let admin_role = app::start(Role::Admin, &with_user("admin")).await.unwrap();
    let worker = app::start(
        Role::Worker,
        &Config {
            worker: WorkerConfig {
                admin: false,
                ..base.worker.clone()
            },
            ..with_user("worker")
        },
    )
    .await
    .unwrap();
    let receiver = app::start(Role::OrderService, &base).await.unwrap();
    let cache_role = app::start(Role::CacheService, &with_user("cache"))
        .await
        .unwrap();
    let admin_url = format!("http://{}", admin_role.admin_addr.unwrap());

    // Orders flow end to end.
    let mut orders = order_client(receiver.order_addr.unwrap()).await;
    let mut cache = cache_client(cache_role.cache_addr.unwrap()).await;
    let id = unique("acl");
    orders
        .create_order(go_request(&id, "book", 42))
        .await
        .unwrap();
    let result = wait_result(&mut cache, &id, 60).await.unwrap();
    assert_eq!(result.status, "done");
    assert_eq!(result.processed_by, "acl-worker");

    // The worker serves no AdminService, only its health.
    let mut on_worker =
        AdminServiceClient::connect(format!("http://{}", worker.admin_addr.unwrap()))
            .await
            .unwrap();
    let refused = on_worker.active(admin::ActiveRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unimplemented);
    // Its heartbeat (a key it may write) reaches `plugin status`.
    let (code, out, err) = admin_cli(&admin_url, &["plugin", "status"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("acl-worker"), "{out}");

    // A rule that breaks the quarantine policy on the worker...
    let mut admin_api = AdminServiceClient::connect(admin_url.clone())
        .await
        .unwrap();
    let deployed = admin_api
        .deploy(DeployRequest {
            wasm: std::fs::read(built_plugin("fixture_trap_on")).unwrap(),
            position: Some(Position::After("rule-validate".into())),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // The worker is another role: it takes the new version from Redis a moment later.
    // Plain orders (the rule traps only on `boom` SKUs) until one is decided under it,
    // so that the `boom` orders below meet the breaking rule.
    let mut picked_up = false;
    for attempt in 0..120 {
        let probe = unique(&format!("probe-{attempt}"));
        orders
            .create_order(go_request(&probe, "book", 42))
            .await
            .unwrap();
        let result = wait_result(&mut cache, &probe, 60).await.unwrap();
        if result.ruleset_version >= deployed.version {
            picked_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(picked_up, "the worker took version {}", deployed.version);
    let ids: Vec<String> = (0..20).map(|i| unique(&format!("boom-{i}"))).collect();
    let batch = ids.iter().map(|id| go_request(id, "boom", 10)).collect();
    orders
        .create_orders(CreateOrdersRequest { orders: batch })
        .await
        .unwrap();
    let mut restored = 0;
    for id in &ids {
        let result = wait_result(&mut cache, id, 60).await.unwrap();
        if result.status == "done" {
            assert!(result.ruleset_version > deployed.version);
            restored += 1;
        }
    }
    assert!(
        restored > 0,
        "some orders were decided again under the restored version"
    );
    // ...is taken out by the admin role, from the worker's report.
    let history = admin_api
        .history(admin::HistoryRequest {})
        .await
        .unwrap()
        .into_inner()
        .versions;
    assert!(
        history[0]
            .reason
            .starts_with("quarantine: rule fixture-trap-on"),
        "{:?}",
        history[0].reason
    );
    let trail = admin_role
        .live
        .as_ref()
        .unwrap()
        .registry()
        .audit(0, 10_000)
        .await
        .unwrap();
    let quarantines: Vec<_> = trail.iter().filter(|e| e.action == "quarantine").collect();
    assert_eq!(quarantines.len(), 1, "{trail:?}");
    assert_eq!(quarantines[0].principal, "worker:acl-worker");

    // A canary that does worse on the worker is ended by the admin role, from its report.
    let candidate = admin_api
        .deploy(DeployRequest {
            wasm: std::fs::read(built_plugin("fixture_trap_on")).unwrap(),
            position: Some(Position::After("rule-validate".into())),
            canary_percent: 50.0,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let ids: Vec<String> = (0..80).map(|i| unique(&format!("canary-{i}"))).collect();
    for id in &ids {
        let order = go_request(id, "boom", 10);
        orders.create_order(order).await.unwrap();
    }
    for id in &ids {
        let result = wait_result(&mut cache, id, 60).await.unwrap();
        assert!(["done", "failed"].contains(&result.status.as_str()), "{id}");
    }
    let rollout = admin_api
        .rollout(admin::RolloutRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rollout.canary_version, 0, "{rollout:?}");
    assert!(!rollout.last_canary_end.is_empty(), "{rollout:?}");
    let trail = admin_role
        .live
        .as_ref()
        .unwrap()
        .registry()
        .audit(0, 10_000)
        .await
        .unwrap();
    let ends: Vec<_> = trail
        .iter()
        .filter(|e| e.action == "canary-rollback")
        .collect();
    assert_eq!(ends.len(), 1, "{trail:?}");
    assert_eq!(ends[0].principal, "worker:acl-worker");
    assert_eq!(ends[0].args["version"], candidate.version.to_string());

    // What each user may do, asked of Redis itself.
    let ns = format!("pipeline:{group}:");
    let set = |key: &str| redis::cmd("SET").arg(key).arg("1").clone();
    let get = |key: &str| redis::cmd("GET").arg(key).clone();
    let xadd = |key: &str| {
        redis::cmd("XADD")
            .arg(key)
            .arg("*")
            .arg("a")
            .arg("b")
            .clone()
    };
    for key in ["ruleset-active", "ruleset-latest", "rollout", "ruleset:1"] {
        let key = format!("{ns}{key}");
        assert_eq!(
            as_user(&addr, "worker", &set(&key)).await.unwrap_err(),
            "NOPERM",
            "the worker cannot write {key}"
        );
    }
    assert!(
        as_user(&addr, "worker", &get(&format!("{ns}ruleset-active")))
            .await
            .is_ok()
    );
    assert_eq!(
        as_user(&addr, "worker", &xadd(&format!("{ns}audit")))
            .await
            .unwrap_err(),
        "NOPERM",
        "the worker cannot write the audit trail"
    );
    assert_eq!(
        as_user(&addr, "cache", &set(&format!("order:{id}")))
            .await
            .unwrap_err(),
        "NOPERM",
        "the CacheService only reads results"
    );
    let audit = redis::cmd("XRANGE")
        .arg(format!("{ns}audit"))
        .arg("-")
        .arg("+")
        .clone();
    let events = as_user(&addr, "auditor", &audit).await.unwrap();
    assert!(
        matches!(&events, redis::Value::Array(events) if events.len() >= 2),
        "the auditor reads the trail: {events:?}"
    );
    for cmd in [xadd(&format!("{ns}audit")), get(&format!("order:{id}"))] {
        assert_eq!(as_user(&addr, "auditor", &cmd).await.unwrap_err(), "NOPERM");
    }

    for running in [cache_role, receiver, worker, admin_role] {
        running.stop().await.unwrap();
    }
    server.assert_running();
}
