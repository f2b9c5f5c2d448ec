//! The embedded mode (no Kafka, no Redis): the same API and semantics on one durable
//! database in the data directory, across restarts.

use crate::support::{cache_client, embedded_config, go_request, order_client, wait_result};
use order_pipeline::app::{self, Role};
use order_pipeline::backends::embedded::EmbeddedDb;
use order_pipeline::proto::{CreateOrdersRequest, ResultRequest};
use prost::Message as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_e2e_case_and_a_restart_keep_every_result() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path());
    let running = app::start(Role::All, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;

    assert_eq!(
        orders
            .create_order(go_request("e2e-test-1", "book", 42))
            .await
            .unwrap()
            .into_inner()
            .status,
        "accepted"
    );
    let result = wait_result(&mut cache, "e2e-test-1", 30).await.unwrap();
    assert_eq!(
        (result.item.as_str(), result.price, result.status.as_str()),
        ("book", 42, "done")
    );

    let batch = (0..200)
        .map(|i| go_request(&format!("o-{i}"), "pen", 100 + i))
        .collect();
    let responses = orders
        .create_orders(CreateOrdersRequest { orders: batch })
        .await
        .unwrap()
        .into_inner()
        .responses;
    assert!(responses.iter().all(|r| r.status == "accepted"));
    running.stop().await.unwrap();

    // Everything accepted before the stop is there after the restart.
    let running = app::start(Role::All, &config).await.unwrap();
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    for i in 0..200 {
        let result = wait_result(&mut cache, &format!("o-{i}"), 30)
            .await
            .unwrap();
        assert_eq!((result.status.as_str(), result.price), ("done", 100 + i));
    }
    assert_eq!(
        wait_result(&mut cache, "e2e-test-1", 5)
            .await
            .unwrap()
            .price,
        42
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_but_unprocessed_orders_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        // What the OrderService does before the worker gets to the orders: durable appends.
        let db = EmbeddedDb::open(dir.path()).unwrap();
        for i in 0..20 {
            db.append(
                go_request(&format!("pending-{i}"), "book", i).encode_to_vec(),
                None,
            )
            .await
            .unwrap();
        }
        db.append(vec![0xff, 0xff], None).await.unwrap();
        db.close().await.unwrap();
    }
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    for i in 0..20 {
        let result = wait_result(&mut cache, &format!("pending-{i}"), 30)
            .await
            .unwrap();
        assert_eq!(result.status, "done");
    }
    let dead = running
        .embedded
        .as_ref()
        .unwrap()
        .dead_letters()
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].payload, vec![0xff, 0xff]);
    assert!(
        dead[0]
            .headers
            .iter()
            .any(|(k, v)| k == "reason" && v.contains("not a protobuf"))
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_has_the_same_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = embedded_config(dir.path());
    let ruleset = dir.path().join("chaos.toml");
    std::fs::write(&ruleset, "[[rule]]\nplugin = \"builtin:rule-validate\"\n\n[[rule]]\nplugin = \"builtin:rule-chaos\"\n").unwrap();
    config.plugins.ruleset = Some(ruleset);
    config.worker.max_retries = 1;
    let running = app::start(Role::All, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;

    // Validation, NOT_FOUND, first result kept, retries then failed + dead letter.
    let status = orders
        .create_order(go_request("x", "book", -5))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (tonic::Code::InvalidArgument, "price: -5 is negative")
    );
    let missing = cache
        .get_order_result(ResultRequest {
            id: "nope".into(),
            wait_ms: 50,
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);

    orders
        .create_order(go_request("same", "book", 1))
        .await
        .unwrap();
    assert_eq!(wait_result(&mut cache, "same", 30).await.unwrap().price, 1);
    orders
        .create_order(go_request("same", "book", 2))
        .await
        .unwrap();
    orders
        .create_order(go_request("fail-me", "fail-1", 3))
        .await
        .unwrap();
    let failed = wait_result(&mut cache, "fail-me", 30).await.unwrap();
    assert_eq!((failed.status.as_str(), failed.attempts), ("failed", 2));
    assert_eq!(
        wait_result(&mut cache, "same", 5).await.unwrap().price,
        1,
        "the first result stays"
    );
    let dead = running
        .embedded
        .as_ref()
        .unwrap()
        .dead_letters()
        .await
        .unwrap();
    assert!(dead.iter().any(|d| {
        d.headers
            .iter()
            .any(|(k, v)| k == "rule" && v == "rule-chaos")
    }));
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_results_are_read_in_one_call() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    crate::support::check_batch_results(&running, "emb-batch").await;
    running.stop().await.unwrap();
}

/// `order-pipeline bench` end to end against an embedded pipeline: a batched run with a
/// plot, a fixed-rate timed run (exactly rate x duration orders), and bad flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generator_runs_batched_and_at_a_fixed_rate() {
    let dir = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(dir.path()))
        .await
        .unwrap();
    let order_url = format!("http://{}", running.order_addr.unwrap());
    let cache_url = format!("http://{}", running.cache_addr.unwrap());
    let plot = dir.path().join("latency.png");
    let args = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "bench".to_string(),
            "--order-addr".into(),
            order_url.clone(),
            "--cache-addr".into(),
            cache_url.clone(),
            "--json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            crate::support::cli(&args)
        })
    };

    let plot_arg = plot.display().to_string();
    let (code, out, err) = run(args(&[
        "--orders",
        "300",
        "--concurrency",
        "3",
        "--batch",
        "50",
        "--plot",
        &plot_arg,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["orders"], 300, "{out}");
    assert_eq!(report["errors"], 0, "{out}");
    assert_eq!(report["batch"], 50, "{out}");
    assert!(report["submit_to_readable"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(&std::fs::read(&plot).unwrap()[..4], b"\x89PNG");
    // The pipeline listens in this process: bench finds it by its port and measures its
    // CPU per order (and counts this process once, under that role).
    let own = i64::from(std::process::id());
    let processes = report["cpu"]["processes"].as_array().unwrap();
    assert_eq!(processes.len(), 1, "{out}");
    assert_eq!(
        (processes[0]["role"].as_str(), processes[0]["pid"].as_i64()),
        (Some("pipeline"), Some(own)),
        "{out}"
    );
    assert!(
        report["cpu"]["pipeline_us_per_order"].as_f64().unwrap() > 0.0,
        "{out}"
    );
    assert!(report["cpu"]["serving_us_per_order"].is_null(), "{out}");

    // Orders are due at i / rate; a run of 0.3 s at 1000/s submits exactly 300.
    let (code, out, err) = run(args(&["--rate", "1000", "--duration", "0.3"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (report["orders"].as_u64(), report["target_rate"].as_f64()),
        (Some(300), Some(1000.0)),
        "{out}"
    );

    for (bad, message) in [
        (vec!["--plot", "latency.svg"], "the plot is a PNG"),
        (vec!["--rate", "0"], "--rate 0: give a positive number"),
        (vec!["--duration", "0"], "the duration must be more than 0"),
        (vec!["--duration", "soon"], "is not a number of seconds"),
        (vec!["--broker-pid", "0"], "0 is not a process id"),
        (
            vec!["--redis-pid", "2147483647"],
            "cannot read the CPU time of process 2147483647",
        ),
    ] {
        let (code, _, err) = run(args(&bad)).await.unwrap();
        assert_eq!(code, 2, "{bad:?}: {err}");
        assert!(err.contains(message), "{bad:?}: {err}");
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_is_pruned_once_committed_and_results_after_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let config = embedded_config(dir.path());
    let running = app::start(Role::All, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let db = running.embedded.clone().unwrap();

    crate::support::decide_batch(&running, "old", 20).await;
    // Results made before the cutoff expire; the one made after it stays.
    let cutoff = order_pipeline::domain::now_unix_ms() + 1;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    orders
        .create_order(go_request("new", "book", 42))
        .await
        .unwrap();
    wait_result(&mut cache, "new", 30).await.unwrap();

    let pruned = db.prune(Some(cutoff)).await.unwrap();
    assert_eq!((pruned.log_entries, pruned.results), (21, 20), "{pruned:?}");
    assert!(!pruned.more_left());
    let gone = cache
        .get_order_result(ResultRequest {
            id: "old-3".into(),
            wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound, "{gone:?}");
    assert_eq!(wait_result(&mut cache, "new", 5).await.unwrap().price, 42);
    assert_eq!(db.prune(Some(cutoff)).await.unwrap(), Default::default());
    drop(db);
    running.stop().await.unwrap();

    // After a restart nothing is processed again, and new orders go on.
    let running = app::start(Role::All, &config).await.unwrap();
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    orders
        .create_order(go_request("after", "book", 7))
        .await
        .unwrap();
    assert_eq!(wait_result(&mut cache, "after", 30).await.unwrap().price, 7);
    let db = running.embedded.clone().unwrap();
    let pruned = db.prune(None).await.unwrap();
    assert_eq!((pruned.log_entries, pruned.results), (1, 0), "{pruned:?}");
    drop(db);
    running.stop().await.unwrap();
}
