//! The plugin author's CLI: output and exit codes of `plugin run|test|bench|inspect`.

use std::path::Path;

use crate::support::{built_plugin, cli, repo_root};
use order_pipeline_cli::{EXIT_OK, EXIT_TEST_FAILED, EXIT_USAGE};

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn default_ruleset_passes_every_example_order() {
    let examples = repo_root().join("examples/orders");
    let count = std::fs::read_dir(&examples)
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name().into_string().unwrap();
            name.ends_with(".json") && !name.ends_with(".expected.json")
        })
        .count();
    assert!(count >= 20, "at least 20 example orders, found {count}");
    let (code, out, err) = cli(&["plugin", "test", "--examples", path(&examples)]);
    assert_eq!(code, EXIT_OK, "{out}{err}");
    assert!(out.starts_with("EXAMPLE"), "{out}");
    assert!(
        out.contains(&format!("\n{count} passed, 0 failed\n")),
        "{out}"
    );
}

#[test]
fn a_wrong_expectation_fails_with_a_diff_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let examples = repo_root().join("examples/orders");
    for name in ["accepted-de-vat", "rejected-blocked-country"] {
        for suffix in [".json", ".expected.json"] {
            let file = format!("{name}{suffix}");
            std::fs::copy(examples.join(&file), dir.path().join(&file)).unwrap();
        }
    }
    std::fs::write(
        dir.path().join("accepted-de-vat.expected.json"),
        r#"{"status": "accepted", "totals": {"total": 5651}}"#,
    )
    .unwrap();
    let (code, out, _) = cli(&["plugin", "test", "--examples", path(dir.path())]);
    assert_eq!(code, EXIT_TEST_FAILED, "{out}");
    assert!(out.contains("accepted-de-vat           FAIL"), "{out}");
    assert!(out.contains("rejected-blocked-country  pass"), "{out}");
    assert!(
        out.contains("totals.total: expected 5651, got 5650"),
        "{out}"
    );
    assert!(out.ends_with("1 passed, 1 failed\n"), "{out}");
}

#[test]
fn missing_expectation_and_bad_order_are_failures() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("lonely.json"),
        r#"{"id":"x","currency":"EUR"}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("typo.json"), r#"{"id":"x","lnes":[]}"#).unwrap();
    std::fs::write(dir.path().join("typo.expected.json"), "{}").unwrap();
    let (code, out, _) = cli(&["plugin", "test", "--examples", path(dir.path())]);
    assert_eq!(code, EXIT_TEST_FAILED, "{out}");
    assert!(out.contains("missing lonely.expected.json"), "{out}");
    assert!(out.contains("unknown field `lnes`"), "{out}");
}

#[test]
fn each_plugin_passes_its_own_examples() {
    for (rule, stem) in [
        ("rule-validate", "rule_validate"),
        ("rule-fraud", "rule_fraud"),
        ("rule-discount", "rule_discount"),
        ("rule-tax", "rule_tax"),
        ("rule-chaos", "rule_chaos"),
    ] {
        let examples = repo_root().join("plugins").join(rule).join("examples");
        let plugin = built_plugin(stem);
        let (code, out, err) = cli(&[
            "plugin",
            "test",
            "--plugin",
            path(&plugin),
            "--examples",
            path(&examples),
        ]);
        assert_eq!(code, EXIT_OK, "{rule}: {out}{err}");
        assert!(out.contains(" passed, 0 failed"), "{rule}: {out}");
    }
}

#[test]
fn run_prints_the_outcome_with_fuel_and_time() {
    let order = repo_root().join("examples/orders/accepted-de-vat.json");
    let plugin = built_plugin("rule_tax");
    let (code, out, err) = cli(&[
        "plugin",
        "run",
        "--plugin",
        path(&plugin),
        "--config",
        "rates=DE:1000",
        "--order",
        path(&order),
    ]);
    assert_eq!(code, EXIT_OK, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["status"], "accepted");
    assert_eq!(json["totals"]["tax"], 475);
    assert_eq!(json["rules"][0]["name"], "rule-tax");
    assert!(json["rules"][0]["fuel_used"].as_u64().unwrap() > 0);
    assert!(json["rules"][0]["duration_us"].is_u64());
}

#[test]
fn bad_inputs_exit_2_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let not_wasm = dir.path().join("rule.wasm");
    std::fs::write(&not_wasm, "not wasm").unwrap();
    let order = repo_root().join("examples/orders/accepted-de-vat.json");
    let (code, _, err) = cli(&[
        "plugin",
        "run",
        "--plugin",
        path(&not_wasm),
        "--order",
        path(&order),
    ]);
    assert_eq!(code, EXIT_USAGE);
    assert!(err.contains("not a WebAssembly file"), "{err}");

    let (code, _, err) = cli(&["plugin", "test", "--examples", "/nonexistent/dir"]);
    assert_eq!(code, EXIT_USAGE);
    assert!(err.contains("/nonexistent/dir"), "{err}");

    let (code, _, err) = cli(&["plugin", "test", "--examples", path(dir.path())]);
    assert_eq!(code, EXIT_USAGE);
    assert!(err.contains("no NAME.json examples"), "{err}");

    let plugin = built_plugin("rule_tax");
    let (code, _, err) = cli(&[
        "plugin",
        "run",
        "--plugin",
        path(&plugin),
        "--config",
        "rates=DE:x",
        "--order",
        path(&order),
    ]);
    assert_eq!(code, EXIT_USAGE);
    assert!(
        err.contains("rule `rule-tax` refused its configuration"),
        "{err}"
    );
}

#[test]
fn inspect_and_bench() {
    let plugin = built_plugin("rule_discount");
    let (code, out, err) = cli(&["plugin", "inspect", path(&plugin)]);
    assert_eq!(code, EXIT_OK, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["name"], "rule-discount");
    assert_eq!(json["digest"].as_str().unwrap().len(), 64);

    let examples = repo_root().join("examples/orders");
    let (code, out, err) = cli(&[
        "plugin",
        "bench",
        "--examples",
        path(&examples),
        "--count",
        "200",
        "--json",
    ]);
    assert_eq!(code, EXIT_OK, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["orders"], 200);
    assert!(json["median_us"].as_f64().unwrap() > 0.0);
    assert!(json["statuses"]["accepted"].as_u64().unwrap() > 0);
    // Each rule's cost, slowest first.
    let rules = json["rules"].as_array().unwrap();
    let mut names: Vec<&str> = rules.iter().map(|r| r["name"].as_str().unwrap()).collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["rule-discount", "rule-fraud", "rule-tax", "rule-validate"]
    );
    let means: Vec<f64> = rules
        .iter()
        .map(|r| r["mean_us"].as_f64().unwrap())
        .collect();
    assert!(means.windows(2).all(|w| w[0] >= w[1]), "{means:?}");
    assert!(rules.iter().all(|r| r["mean_fuel"].as_f64().unwrap() > 0.0));
    let (code, text, _) = cli(&[
        "plugin",
        "bench",
        "--examples",
        path(&examples),
        "--count",
        "50",
    ]);
    assert_eq!(code, EXIT_OK);
    assert!(
        text.contains("rules, slowest first") && text.contains("most fuel: "),
        "{text}"
    );
}

/// `plugin run --profile`: a Firefox-profiler profile of the rule's evaluate, whose
/// samples land in the rule's own functions; a chain of several rules needs the rule
/// named; a rule that is not there is an error that lists the chain's.
#[test]
fn run_writes_a_guest_profile_of_the_rule() {
    let dir = tempfile::tempdir().unwrap();
    // 20 million loop iterations: tens of milliseconds of guest code. The samples are
    // taken when the epoch advances, which the profiler's ticker does every 10 µs and
    // the engine's own every 5 ms, so even a starved ticker leaves some.
    let ruleset = crate::support::slow_ruleset(dir.path(), 20_000_000);
    let order = repo_root().join("examples/rule-template/examples/small-order.json");
    let profile = dir.path().join("slow.json");
    let (code, out, err) = cli(&[
        "plugin",
        "run",
        "--ruleset",
        path(&ruleset),
        "--fuel",
        "1000000000",
        "--deadline-ms",
        "10000",
        "--order",
        path(&order),
        "--profile",
        path(&profile),
        "--profile-runs",
        "2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let evaluation: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(evaluation["status"], "accepted", "{out}");
    let profile: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&profile).unwrap()).unwrap();
    let thread = &profile["threads"][0];
    let samples = thread["samples"]["length"].as_u64().unwrap();
    assert!(samples > 0, "{samples} samples");
    let names: Vec<&str> = thread["stringArray"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s.as_str())
        .collect();
    // The built plugins are stripped of names: their frames are "<wasm function N>".
    assert!(
        names.iter().any(|n| n.starts_with("<wasm function ")),
        "no guest function in {names:?}"
    );

    // The default ruleset, profiled with `extra` arguments.
    let default_order = repo_root().join("examples/orders/accepted-at-fraud-limit.json");
    let x = dir.path().join("x.json");
    let profile_default = |extra: &[&str]| {
        let mut args = vec![
            "plugin",
            "run",
            "--order",
            path(&default_order),
            "--profile",
            path(&x),
        ];
        args.extend_from_slice(extra);
        cli(&args)
    };
    let (code, _, err) = profile_default(&[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--profile-rule (rule-validate, rule-fraud, rule-discount, rule-tax)"),
        "{err}"
    );
    let (code, _, err) = profile_default(&["--profile-rule", "rule-nope"]);
    assert_eq!(code, 2);
    assert!(err.contains("the chain has no rule `rule-nope`"), "{err}");
}

/// A ruleset's `[rule.limits]` hold that rule to its own limits: a fuel budget of 1
/// fails it, and a limit out of range is refused naming it.
#[test]
fn ruleset_limits_apply_to_their_rule() {
    let dir = tempfile::tempdir().unwrap();
    let order = repo_root().join("examples/orders/accepted-at-fraud-limit.json");
    // `plugin run` of rule-tax alone, with `limits` under its [rule.limits].
    let run_with = |limits: &str| {
        let file = dir.path().join("limited.toml");
        let tax = built_plugin("rule_tax");
        let ruleset = format!(
            "[[rule]]\nplugin = {:?}\n[rule.limits]\n{limits}\n",
            path(&tax)
        );
        std::fs::write(&file, ruleset).unwrap();
        cli(&[
            "plugin",
            "run",
            "--ruleset",
            path(&file),
            "--order",
            path(&order),
        ])
    };
    let (code, out, err) = run_with("fuel = 1");
    assert_eq!(code, EXIT_USAGE, "{out}");
    assert!(err.contains("rule-tax") && err.contains("fuel"), "{err}");
    let (code, out, err) = run_with("fuel = 50000000\nmemory-mib = 64\ndeadline-ms = 500");
    assert_eq!(code, EXIT_OK, "{err}");
    assert!(out.contains("\"status\": \"accepted\""), "{out}");
    let (code, _, err) = run_with("deadline-ms = 60000");
    assert_eq!(code, EXIT_USAGE);
    assert!(err.contains("deadline-ms 60000 is out of range"), "{err}");
}

/// `plugin bench --breakdown`: the median of each part of a fresh instance, per rule.
#[test]
fn bench_breaks_a_fresh_instance_down() {
    let examples = repo_root().join("examples/orders");
    let (code, out, err) = cli(&[
        "plugin",
        "bench",
        "--examples",
        path(&examples),
        "--count",
        "50",
        "--breakdown",
        "--json",
    ]);
    assert_eq!(code, EXIT_OK, "{err}");
    let costs: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let rules: Vec<&str> = costs.iter().map(|c| c["rule"].as_str().unwrap()).collect();
    assert_eq!(
        rules,
        ["rule-validate", "rule-fraud", "rule-discount", "rule-tax"]
    );
    for cost in &costs {
        let part = |name: &str| cost[name].as_f64().unwrap();
        let parts = [
            "store_us",
            "instantiate_us",
            "configure_us",
            "evaluate_us",
            "drop_us",
        ];
        assert!(parts.iter().all(|p| part(p) > 0.0), "{cost}");
        let sum: f64 = parts.iter().map(|p| part(p)).sum();
        assert!((sum - part("total_us")).abs() < 0.01, "{cost}");
    }
}

#[test]
fn a_dotenv_file_is_read_from_the_working_directory_only() {
    // The binary itself: `.env` is read by its `main`. A bad value it takes from `.env`
    // stops `run` at once, naming the variable; the environment gives another bad value
    // that names itself when `.env` is not read.
    let parent = tempfile::tempdir().unwrap();
    std::fs::write(
        parent.path().join(".env"),
        "ORDER_SERVICE_ADDR=from-the-dotenv-file\n",
    )
    .unwrap();
    let child = parent.path().join("child");
    std::fs::create_dir(&child).unwrap();
    let run_in = |dir: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_order-pipeline"))
            .arg("run")
            .current_dir(dir)
            .env_remove("ORDER_SERVICE_ADDR")
            .env("DEFAULT_CURRENCY", "not-a-currency")
            .env("DATA_DIR", dir.join("data"))
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let here = run_in(parent.path());
    assert!(
        here.contains("ORDER_SERVICE_ADDR `from-the-dotenv-file`"),
        "./.env is read: {here}"
    );
    let below = run_in(&child);
    assert!(
        !below.contains("from-the-dotenv-file") && below.contains("DEFAULT_CURRENCY"),
        "a parent's .env is not read: {below}"
    );
}

#[test]
fn help_never_shows_a_secret_from_the_environment() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_order-pipeline"))
        .args(["run", "--help"])
        .env("REDIS_ADDR", "redis://worker:redis-s3cret@redis:6379")
        .env("ADMIN_TOKEN", "admin-s3cret")
        .env("KAFKA_PROPERTIES", "sasl.password=kafka-s3cret")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("REDIS_ADDR") && help.contains("ADMIN_TOKEN"),
        "{help}"
    );
    for secret in ["redis-s3cret", "admin-s3cret", "kafka-s3cret"] {
        assert!(!help.contains(secret), "{secret} in --help");
    }
}
