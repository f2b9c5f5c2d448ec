//! `order-pipeline plugin status`: the live workers from their heartbeats, with the
//! ruleset version each runs (flagged when it is not the active one), the orders it
//! processed and its rules' figures.

use std::time::{Duration, Instant};

use order_pipeline::app::{self, Role};
use order_pipeline::rules::status::WorkerStatus;

use crate::support::{cli, embedded_config};

async fn status(admin: &str) -> (i32, String) {
    let admin = admin.to_string();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || cli(&["plugin", "status", "--admin-addr", &admin]))
            .await
            .unwrap();
    (code, format!("{out}{err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_status_lists_live_workers_and_flags_the_ones_behind() {
    let data = tempfile::tempdir().unwrap();
    let running = app::start(Role::All, &embedded_config(data.path()))
        .await
        .unwrap();
    let admin = format!("http://{}", running.admin_addr.unwrap());
    crate::support::decide_batch(&running, "status", 20).await;
    let live = running.live.clone().unwrap();
    let active = live.current().version;

    // The next heartbeat (every 5 s) carries the 20 orders.
    let deadline = Instant::now() + Duration::from_secs(20);
    let out = loop {
        let (code, out) = status(&admin).await;
        if out.contains(", 20 orders,") {
            assert_eq!(code, 0, "{out}");
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "no heartbeat with the orders: {out}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        out.starts_with(&format!(
            "active ruleset version {active}; 1 live worker(s)"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(": version {active}, 20 orders")),
        "{out}"
    );
    for rule in ["rule-validate", "rule-fraud", "rule-discount", "rule-tax"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(rule))
            .unwrap_or_else(|| panic!("no line for {rule}: {out}"));
        assert!(line.contains("20 evaluations, 0 failed"), "{line}");
        assert!(!line.contains("p50 0 µs"), "{line}");
    }

    // A worker still on an older version, which could not switch: flagged, exit 1.
    live.registry()
        .put_heartbeat(
            &WorkerStatus {
                instance: "worker-behind".into(),
                ruleset_version: active.saturating_sub(1),
                last_error: Some("plugin rule-x is not in the registry".into()),
                orders: 3,
                rules: Vec::new(),
                at_unix_ms: order_pipeline::domain::now_unix_ms(),
            },
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    let (code, out) = status(&admin).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("2 live worker(s)"), "{out}");
    assert!(
        out.contains(&format!(
            "worker-behind: version {}  NOT ON THE ACTIVE VERSION {active}",
            active.saturating_sub(1)
        )),
        "{out}"
    );
    assert!(
        out.contains("last error: plugin rule-x is not in the registry"),
        "{out}"
    );
    drop(live);
    running.stop().await.unwrap();
}
