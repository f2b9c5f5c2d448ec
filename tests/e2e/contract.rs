//! One contract, every backend: the same cases run against the embedded backend (redb)
//! and against Redis, through the seams the pipeline uses (`Store`, `Registry`): put,
//! first result wins, get and batch reads, waits, the registry's compare-and-set and
//! history, plugin blobs, and change notifications.

use std::sync::Arc;
use std::time::Duration;

use order_pipeline::backends::embedded::EmbeddedDb;
use order_pipeline::backends::redis::Redis;
use order_pipeline::domain::ruleset::{ActivateError, Expect, RulesetBody};
use order_pipeline::domain::{Order, OrderResult, PutOutcome, ResultStatus, Totals};
use order_pipeline::rules::registry::Registry;
use order_pipeline::store::Store;
use tokio_util::sync::CancellationToken;

use crate::support::{services, unique};

/// A backend under test.
struct Backend {
    name: &'static str,
    store: Store,
    registry: Registry,
}

fn result(id: &str, status: ResultStatus, item: &str) -> OrderResult {
    let order = Order::single_item(id, item, 4200, "EUR");
    OrderResult {
        id: id.to_string(),
        status,
        item: item.to_string(),
        currency: "EUR".into(),
        totals: Totals::of(&order),
        adjustments: Vec::new(),
        reasons: Vec::new(),
        rules: Vec::new(),
        error: if status == ResultStatus::Failed {
            "boom".into()
        } else {
            String::new()
        },
        attempts: 1,
        ruleset_version: 1,
        processed_by: "contract".into(),
        processed_at_unix_ms: 1,
    }
}

fn body(reason: &str) -> RulesetBody {
    RulesetBody {
        rules: Vec::new(),
        reason: reason.into(),
        based_on: None,
        created_at_unix_ms: 1,
    }
}

async fn put_and_first_final_result_wins(b: &Backend) {
    let id = unique("contract-put");
    assert_eq!(b.store.get(&id).await.unwrap(), None, "{}", b.name);
    let failed = result(&id, ResultStatus::Failed, "book");
    assert_eq!(b.store.put(&failed).await.unwrap(), PutOutcome::Written);
    // A failed result may be replaced by a later attempt...
    let done = result(&id, ResultStatus::Done, "book");
    assert_eq!(b.store.put(&done).await.unwrap(), PutOutcome::Written);
    // ...but a final one is never replaced.
    let other = result(&id, ResultStatus::Rejected, "pen");
    assert_eq!(
        b.store.put(&other).await.unwrap(),
        PutOutcome::KeptExisting,
        "{}",
        b.name
    );
    assert_eq!(b.store.get(&id).await.unwrap(), Some(done), "{}", b.name);
}

async fn batch_reads_keep_the_order_of_ids(b: &Backend) {
    let ids: Vec<String> = (0..5)
        .map(|i| unique(&format!("contract-batch{i}")))
        .collect();
    for id in ids.iter().step_by(2) {
        b.store
            .put(&result(id, ResultStatus::Done, id))
            .await
            .unwrap();
    }
    let found = b.store.get_many(&ids, None).await.unwrap();
    let items: Vec<Option<&str>> = found
        .iter()
        .map(|r| r.as_ref().map(|r| r.item.as_str()))
        .collect();
    let want: Vec<Option<&str>> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (i % 2 == 0).then_some(id.as_str()))
        .collect();
    assert_eq!(items, want, "{}", b.name);
}

async fn a_wait_returns_a_result_written_meanwhile(b: &Backend) {
    let id = unique("contract-wait");
    let waiting = {
        let (store, id) = (b.store.clone(), id.clone());
        tokio::spawn(async move { store.wait(&id, Duration::from_secs(20)).await })
    };
    let ids = [id.clone()];
    let batch = {
        let store = b.store.clone();
        let ids = ids.to_vec();
        tokio::spawn(async move { store.get_many(&ids, Some(Duration::from_secs(20))).await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let written = result(&id, ResultStatus::Done, "book");
    b.store.put(&written).await.unwrap();
    b.store.announce(&[id.as_str()]).await.unwrap();
    assert_eq!(
        waiting.await.unwrap().unwrap(),
        Some(written.clone()),
        "{}",
        b.name
    );
    assert_eq!(batch.await.unwrap().unwrap(), vec![Some(written)]);
    // A wait for an id nobody writes ends empty at its deadline.
    let missing = b
        .store
        .wait(&unique("contract-never"), Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(missing, None, "{}", b.name);
}

async fn registry_compare_and_set_history_and_blobs(b: &Backend) {
    let r = &b.registry;
    assert_eq!(r.active_version().await.unwrap(), None, "{}", b.name);
    let first = r.activate(&body("initial"), Expect::Nothing).await.unwrap();
    assert_eq!(first, 1, "{}", b.name);
    // Bootstrapping twice, or activating over a stale version, is a conflict.
    assert!(matches!(
        r.activate(&body("again"), Expect::Nothing).await,
        Err(ActivateError::Conflict(Some(1)))
    ));
    let second = r
        .activate(&body("deploy"), Expect::Version(first))
        .await
        .unwrap();
    assert_eq!(second, 2);
    assert!(matches!(
        r.activate(&body("stale"), Expect::Version(first)).await,
        Err(ActivateError::Conflict(Some(2)))
    ));
    let active = r.active().await.unwrap().unwrap();
    assert_eq!((active.version, active.body.reason.as_str()), (2, "deploy"));
    let history: Vec<u64> = r
        .history()
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(history, [2, 1], "{}", b.name);
    assert!(r.get(3).await.unwrap().is_none());

    let digest = unique("digest");
    assert_eq!(r.plugin(&digest).await.unwrap(), None);
    r.put_plugin(&digest, b"\0asm-bytes").await.unwrap();
    assert_eq!(
        r.plugin(&digest).await.unwrap().as_deref(),
        Some(&b"\0asm-bytes"[..])
    );
}

async fn registry_changes_are_notified(b: &Backend) {
    let r = &b.registry;
    let mut changes = r.changes().await;
    // The subscription may still be starting: activate until a notification arrives
    // (deadline 20 s); each activation is a real new version.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let active = r.active_version().await.unwrap();
        let expect = active.map_or(Expect::Nothing, Expect::Version);
        let version = r.activate(&body("notify"), expect).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(500), changes.changed())
            .await
            .is_ok()
        {
            assert!(*changes.borrow_and_update() <= version, "{}", b.name);
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{}: no change notification within 20 s",
            b.name
        );
    }
}

async fn run_contract(b: &Backend) {
    put_and_first_final_result_wins(b).await;
    batch_reads_keep_the_order_of_ids(b).await;
    a_wait_returns_a_result_written_meanwhile(b).await;
    registry_compare_and_set_history_and_blobs(b).await;
    registry_changes_are_notified(b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contract_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let db = EmbeddedDb::open(dir.path()).unwrap();
    let backend = Backend {
        name: "embedded",
        store: Store::Embedded(Arc::clone(&db)),
        registry: Registry::Embedded(Arc::clone(&db)),
    };
    run_contract(&backend).await;
    drop(backend);
    db.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn contract_redis() {
    let Some(services) = services() else { return };
    let redis = Redis::connect(&services.redis).await.unwrap();
    let registry = redis.registry(&unique("contract-group"));
    let shutdown = CancellationToken::new();
    let listener = tokio::spawn(redis.listener(Some(&registry)).run(shutdown.clone()));
    let backend = Backend {
        name: "redis",
        store: Store::Redis(Box::new(redis.store())),
        registry: Registry::Redis(Box::new(registry)),
    };
    run_contract(&backend).await;
    // The listener stops on the shutdown signal, like every task of the process.
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), listener)
        .await
        .expect("the listener did not stop on shutdown")
        .unwrap()
        .unwrap();
}
