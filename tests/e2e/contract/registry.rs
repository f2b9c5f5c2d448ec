//! The registry's part of the contract: compare-and-set, history and blobs, change
//! notifications, heartbeats, and the history limit.

use std::time::Duration;

use order_pipeline::domain::ruleset::{
    ActivateError, Collected, Expect, HistoryLimits, RuleRef, RulesetBody,
};

use super::Backend;
use crate::support::unique;

fn body(reason: &str) -> RulesetBody {
    RulesetBody {
        rules: Vec::new(),
        reason: reason.into(),
        based_on: None,
        previous: None,
        created_at_unix_ms: 1,
    }
}

pub(super) async fn compare_and_set_history_and_blobs(b: &Backend) {
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

pub(super) async fn changes_are_notified(b: &Backend) {
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

pub(super) async fn heartbeats_are_listed_until_they_expire(b: &Backend) {
    use order_pipeline::rules::status::WorkerStatus;
    let beat = |instance: &str, version: u64| WorkerStatus {
        instance: instance.to_string(),
        ruleset_version: version,
        last_error: None,
        orders: 7,
        rules: Vec::new(),
        at_unix_ms: 1,
    };
    let (short, long) = (unique("worker-a"), unique("worker-b"));
    b.registry
        .put_heartbeat(&beat(&short, 1), Duration::from_millis(800))
        .await
        .unwrap();
    b.registry
        .put_heartbeat(&beat(&long, 2), Duration::from_secs(30))
        .await
        .unwrap();
    let listed = b.registry.heartbeats().await.unwrap();
    assert!(listed.contains(&beat(&short, 1)), "{}: {listed:?}", b.name);
    assert!(listed.contains(&beat(&long, 2)), "{}: {listed:?}", b.name);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let listed = b.registry.heartbeats().await.unwrap();
    assert!(
        !listed.iter().any(|w| w.instance == short),
        "{}: {listed:?}",
        b.name
    );
    assert!(listed.contains(&beat(&long, 2)), "{}", b.name);
}

fn uses(reason: &str, digests: &[&str]) -> RulesetBody {
    let rules = digests
        .iter()
        .map(|digest| RuleRef {
            name: format!("rule-{digest}"),
            version: "1".into(),
            digest: (*digest).to_string(),
            config: Vec::new(),
            isolation: Default::default(),
            limits: Default::default(),
            signature: None,
        })
        .collect();
    RulesetBody {
        rules,
        ..body(reason)
    }
}

/// The registry keeps the newest versions and the blobs they use; a blob no kept version
/// uses goes once its grace is over, and cannot be pinned for an activation after that.
pub(super) async fn collects_beyond_the_history_limit(b: &Backend) {
    let r = &b.registry;
    let [a, shared, c, late] = ["a", "shared", "c", "late"].map(unique);
    for digest in [&a, &shared, &c] {
        r.put_plugin(digest, digest.as_bytes()).await.unwrap();
    }
    let mut active = r.active_version().await.unwrap().unwrap();
    for (reason, digests) in [
        ("uses a", [a.as_str(), shared.as_str()]),
        ("uses c", [c.as_str(), shared.as_str()]),
        ("uses c again", [c.as_str(), shared.as_str()]),
    ] {
        active = r
            .activate(&uses(reason, &digests), Expect::Version(active))
            .await
            .unwrap();
    }
    let keep = |versions, grace_s| HistoryLimits {
        versions,
        blob_grace: Duration::from_secs(grace_s),
    };
    r.put_plugin(&late, b"late").await.unwrap();
    // Within their grace unused blobs stay: a deploy uploads before it activates.
    let collected = r.collect(&keep(2, 3600)).await.unwrap();
    let expected = Collected {
        versions: active - 2,
        blobs: 0,
    };
    assert_eq!(collected, expected, "{}", b.name);
    let kept: Vec<u64> = r
        .history()
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(kept, [active, active - 1], "{}", b.name);
    assert_eq!(r.oldest_version().await.unwrap(), active - 1, "{}", b.name);
    assert!(r.get(active - 2).await.unwrap().is_none(), "{}", b.name);
    assert!(r.plugin(&a).await.unwrap().is_some(), "{}", b.name);

    let collected = r.collect(&keep(2, 0)).await.unwrap();
    assert_eq!(collected.versions, 0, "{}", b.name);
    assert!(collected.blobs >= 2, "{}: {collected:?}", b.name); // a, late (and older)
    for gone in [&a, &late] {
        assert_eq!(r.plugin(gone).await.unwrap(), None, "{}", b.name);
    }
    for digest in [&shared, &c] {
        assert!(r.plugin(digest).await.unwrap().is_some(), "{}", b.name);
    }
    assert_eq!(
        r.pin(&[&c, &a]).await.unwrap(),
        vec![a.clone()],
        "{}",
        b.name
    );

    // A new version moves the window on.
    r.put_plugin(&late, b"late").await.unwrap();
    let next = r
        .activate(&uses("uses late", &[&late]), Expect::Version(active))
        .await
        .unwrap();
    let collected = r.collect(&keep(1, 0)).await.unwrap();
    let expected = Collected {
        versions: 2,
        blobs: 2, // c and shared
    };
    assert_eq!(collected, expected, "{}", b.name);
    assert_eq!(r.oldest_version().await.unwrap(), next, "{}", b.name);
    assert_eq!(r.pin(&[&late]).await.unwrap(), Vec::<String>::new());
}
