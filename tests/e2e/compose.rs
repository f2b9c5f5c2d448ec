//! `compose.yaml`, the production shape, checked without a Docker engine: compose-go (the
//! Compose Specification's parser, `scripts/compose-check`) loads it, then the normalized
//! project is checked against the real binary for what a parser cannot know: the Go
//! system's service names, that every variable the roles set is one the binary reads,
//! that every `command` and healthcheck runs a real subcommand (on the role's own port),
//! and that the broker image is the Kafka version the tests run.

use std::collections::BTreeSet;
use std::process::Command;

use serde_json::Value;

use crate::support::repo_root;

/// The Redis users' passwords compose.yaml requires (from .env), for the checks.
pub(crate) const PASSWORDS: [(&str, &str); 4] = [
    ("REDIS_WORKER_PASSWORD", "worker0pass"),
    ("REDIS_ADMIN_PASSWORD", "admin0pass"),
    ("REDIS_CACHE_PASSWORD", "cache0pass"),
    ("REDIS_AUDITOR_PASSWORD", "auditor0pass"),
];

/// The normalized project, as compose-go prints it (`go run ./scripts/compose-check`).
fn load_compose() -> Value {
    load_compose_with(&PASSWORDS)
}

/// The same, with these variables set as `.env` would set them.
pub(crate) fn load_compose_with(vars: &[(&str, &str)]) -> Value {
    let root = repo_root();
    let output = Command::new("go")
        .current_dir(root.join("scripts/compose-check"))
        .args(["run", ".", "../../compose.yaml"])
        .envs(vars.iter().copied())
        .output()
        .expect("run go (scripts/test.sh installs it)");
    assert!(
        output.status.success(),
        "compose.yaml does not load: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// What `order-pipeline ARGS --help` prints.
fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_order-pipeline"))
        .args(args)
        .arg("--help")
        .output()
        .unwrap();
    assert!(output.status.success(), "{args:?} --help");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The subcommands the binary has (the `Commands:` section of its help).
fn subcommands() -> BTreeSet<String> {
    help(&[])
        .split("Commands:")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// The variables `order-pipeline COMMAND` reads (`[env: NAME=...]` in its help).
fn env_vars(command: &str) -> BTreeSet<String> {
    help(&[command])
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split(['=', ']']).next().map(str::to_string))
        .collect()
}

pub(crate) fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
#[ignore = "needs Go and its module proxy: scripts/test.sh runs it"]
fn compose_yaml_loads_and_matches_the_binary() {
    let project = load_compose();
    let services = project["services"].as_object().unwrap();
    let names: BTreeSet<&str> = services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "kafka",
            "orderadmin",
            "ordercache",
            "orderprocessor",
            "orderreceiver",
            "redis"
        ]),
        "the Go system's service names, and orderadmin"
    );
    // Without the Redis passwords, compose refuses to start (no default password).
    let output = Command::new("go")
        .current_dir(repo_root().join("scripts/compose-check"))
        .args(["run", ".", "../../compose.yaml"])
        .env_remove("REDIS_WORKER_PASSWORD")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("set REDIS_WORKER_PASSWORD in .env"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let subcommands = subcommands();
    // Each role's healthcheck asks its own gRPC server (the worker's is the admin API,
    // kept inside the container); the client ports are published.
    for (service, role, variable, port, published) in [
        (
            "orderreceiver",
            "order-service",
            "ORDER_SERVICE_ADDR",
            50051,
            true,
        ),
        ("orderprocessor", "worker", "ADMIN_ADDR", 50053, false),
        ("orderadmin", "admin", "ADMIN_ADDR", 50053, false),
        (
            "ordercache",
            "cache-service",
            "CACHE_SERVICE_ADDR",
            50052,
            true,
        ),
    ] {
        let s = &services[service];
        let command = strings(&s["command"]);
        assert_eq!(command, [role], "{service}: command");
        assert!(subcommands.contains(role), "{role} is not a subcommand");

        let reads = env_vars(role);
        let environment = s["environment"].as_object().unwrap();
        for key in environment.keys() {
            assert!(
                reads.contains(key) || key == "RUST_LOG",
                "{service} sets {key}, which `order-pipeline {role}` does not read"
            );
        }

        let addr = environment[variable].as_str().unwrap();
        assert!(addr.ends_with(&format!(":{port}")), "{service}: {variable}");
        let test = strings(&s["healthcheck"]["test"]);
        assert_eq!(
            test,
            [
                "CMD",
                "order-pipeline",
                "health",
                "--addr",
                &format!("http://127.0.0.1:{port}")
            ],
            "{service}: healthcheck"
        );
        assert!(subcommands.contains("health"));
        let ports = s["ports"].as_array().cloned().unwrap_or_default();
        assert_eq!(
            ports.iter().any(|p| p["target"] == port),
            published,
            "{service} publishes {port}: {published}"
        );
    }
    for service in ["kafka", "redis"] {
        assert!(
            !strings(&services[service]["healthcheck"]["test"]).is_empty(),
            "{service} has a healthcheck the roles wait for"
        );
    }

    // Redis is reached on the compose network only, and each role with its own user
    // (the users themselves are checked against a real Redis: redis_users.rs).
    assert!(
        services["redis"]["ports"]
            .as_array()
            .is_none_or(Vec::is_empty),
        "Redis is not published on the host"
    );
    for (service, user) in [
        ("orderprocessor", "worker"),
        ("orderadmin", "admin"),
        ("ordercache", "cache"),
    ] {
        let addr = services[service]["environment"]["REDIS_ADDR"]
            .as_str()
            .unwrap();
        assert!(
            addr.starts_with(&format!("redis://{user}:")),
            "{service} uses the Redis user {user}"
        );
    }
    assert_eq!(
        services["orderprocessor"]["environment"]["WORKER_ADMIN"], "false",
        "workers leave the registry to orderadmin"
    );

    // Redis runs with the durability the README promises and the fault tests use.
    let redis = strings(&services["redis"]["command"]);
    assert!(
        redis.windows(3).any(|w| w == ["--user", "default", "off"]),
        "no default user: {redis:?}"
    );
    for pair in [["--appendonly", "yes"], ["--appendfsync", "always"]] {
        assert!(
            redis.windows(2).any(|w| w == pair.as_slice()),
            "redis runs with {pair:?}: {redis:?}"
        );
    }

    // The broker image is the Kafka version the tests run (scripts/kafka.sh).
    let script = std::fs::read_to_string(repo_root().join("scripts/kafka.sh")).unwrap();
    let version = script
        .lines()
        .find_map(|l| l.strip_prefix("KAFKA_VERSION=\""))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap();
    assert_eq!(
        services["kafka"]["image"],
        format!("apache/kafka:{version}"),
        "compose.yaml runs the broker version the tests use"
    );
}
