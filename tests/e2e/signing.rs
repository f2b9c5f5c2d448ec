//! Signed plugins (issue 22, item 2): with a trust file (`PLUGIN_TRUST_FILE`), a rule
//! that is unsigned, signed by a key the file does not list or revokes, expired, or
//! signed for another config is refused at deploy (FAILED_PRECONDITION naming why) and
//! at every load (the worker keeps its version). The trust file is read again when it
//! changes: a second key is accepted, and a key revoked, without a restart. The example
//! plugins of the default ruleset are signed here with the real CLI, as a release would.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use order_pipeline::app::{self, Role};
use order_pipeline::config::Config;
use order_pipeline::domain::now_unix_ms;
use order_pipeline::domain::ruleset::{Expect, RuleRef, RulesetBody};
use order_pipeline::rules::live::LiveRuleset;
use order_pipeline::rules::trust::{SigningKey, Stated};

use crate::support::{
    admin_cli, built_plugin, cache_client, cli, embedded_config, go_request, kafka_config,
    order_client, services, unique, wait_result,
};

/// The default ruleset's example plugins, with a config each (as `--config` gives it).
const EXAMPLES: [(&str, &str, &str); 4] = [
    ("rule_validate", "max-lines", "100"),
    ("rule_fraud", "max-total", "10000000"),
    ("rule_discount", "tiers", "10:500, 50:1000"),
    ("rule_tax", "rates", "US:0, DE:1900"),
];

/// A change to a good version's rules that makes it untrusted.
type Change<'a> = dyn Fn(&mut Vec<RuleRef>) + 'a;

/// Runs the real CLI off the runtime's threads.
async fn run(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&args)
    })
    .await
    .unwrap()
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

/// `plugin sign PLUGIN --key DIR/KEY.key [--key-id ID] --config KEY=VALUE -o OUT`.
async fn sign(dir: &Path, plugin: &Path, key: &str, extra: &[&str], out: &Path) {
    let mut args = vec![
        "plugin".to_string(),
        "sign".into(),
        s(plugin),
        "--key".into(),
        s(&dir.join(format!("{key}.key"))),
        "-o".into(),
        s(out),
    ];
    args.extend(extra.iter().map(ToString::to_string));
    let (code, stdout, stderr) = run(args).await;
    assert_eq!(code, 0, "plugin sign: {stdout}{stderr}");
    assert!(stdout.contains("signed rule-"), "{stdout}");
}

/// Writes the trust file as an operator would replace it (a new file renamed over it).
fn write_trust(path: &Path, dir: &Path, keys: &[&str], revoked: &str) {
    let mut text = String::new();
    for id in keys {
        let public = std::fs::read_to_string(dir.join(format!("{id}.pub"))).unwrap();
        text.push_str(&format!(
            "[[key]]\nid = \"{id}\"\npublic-key = \"{}\"\nrules = [\"rule-*\"]\n\n",
            public.trim()
        ));
    }
    text.push_str(revoked);
    let partial = path.with_extension("partial");
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// Keys k1, k2 and rogue; the example plugins signed by k1 into a ruleset file; a trust
/// file listing k1. Answers the ruleset's and trust file's paths.
async fn release(dir: &Path) -> (PathBuf, PathBuf) {
    for id in ["k1", "k2", "rogue"] {
        let args = ["plugin", "keygen", id, "--dir", &s(dir)];
        let (code, out, err) = run(args.iter().map(ToString::to_string).collect()).await;
        assert_eq!(code, 0, "plugin keygen: {out}{err}");
        assert!(out.contains(&format!("id = \"{id}\"")), "{out}");
    }
    // A key is never overwritten.
    let args = ["plugin", "keygen", "k1", "--dir", &s(dir)];
    let (code, _, err) = run(args.iter().map(ToString::to_string).collect()).await;
    assert_ne!(code, 0);
    assert!(err.contains("never overwritten"), "{err}");

    let mut ruleset = String::new();
    for (stem, key, value) in EXAMPLES {
        let plugin = built_plugin(stem);
        let signature = dir.join(format!("{stem}.sig"));
        let config = format!("{key}={value}");
        sign(dir, &plugin, "k1", &["--config", &config], &signature).await;
        ruleset.push_str(&format!(
            "[[rule]]\nplugin = \"{}\"\nsignature = \"{stem}.sig\"\n[rule.config]\n\"{key}\" = \"{value}\"\n\n",
            s(&plugin)
        ));
    }
    let ruleset_path = dir.join("ruleset.toml");
    std::fs::write(&ruleset_path, ruleset).unwrap();
    let trust = dir.join("trust.toml");
    write_trust(&trust, dir, &["k1"], "");
    (ruleset_path, trust)
}

/// Waits until the worker's last error says `what`; it stays on `version`.
async fn refused(live: &LiveRuleset, what: &str, version: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !live.last_error().is_some_and(|e| e.contains(what)) {
        assert!(
            Instant::now() < deadline,
            "not refused with {what:?}: {:?}",
            live.last_error()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(live.current().version, version);
}

async fn signed_plugins_are_required(mut config: Config) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ruleset, trust) = release(d).await;

    // Unsigned, the configured ruleset is refused at start, and nothing is stored.
    let mut unsigned = config.clone();
    let bare = d.join("bare.toml");
    let text = std::fs::read_to_string(&ruleset).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("signature"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&bare, text).unwrap();
    unsigned.plugins.ruleset = Some(bare);
    unsigned.plugins.trust_file = Some(trust.clone());
    unsigned.kafka.group = unique("unsigned-group");
    unsigned.data_dir = d.join("unsigned-data");
    let e = app::start(Role::All, &unsigned).await.err().unwrap();
    assert!(format!("{e:#}").contains("is not signed"), "{e:#}");

    config.plugins.ruleset = Some(ruleset);
    config.plugins.trust_file = Some(trust.clone());
    let running = app::start(Role::All, &config).await.unwrap();
    let live = running.live.clone().unwrap();
    let registry = live.registry();
    let good = registry.active().await.unwrap().unwrap();
    assert!(
        good.body
            .rules
            .iter()
            .all(|r| r.signature.as_ref().is_some_and(|s| s.key_id == "k1"))
    );
    let url = format!("http://{}", running.admin_addr.unwrap());
    let (code, out, err) = admin_cli(&url, &["plugin", "list"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("signed:k1 until").count(), 4, "{out}");

    // Refused at load: versions written to the registry past the gate.
    let k1 = SigningKey::read(&d.join("k1.key")).unwrap();
    let rogue = SigningKey::read(&d.join("rogue.key")).unwrap();
    let now = now_unix_ms() / 1000;
    let resign = |rule: &mut RuleRef, key: &SigningKey, id: &str, window: (i64, i64)| {
        rule.signature = Some(key.sign(&Stated::of(rule), id, window.0, window.1).unwrap());
    };
    let chaos_bytes = std::fs::read(built_plugin("rule_chaos")).unwrap();
    let chaos_digest = order_rules_engine::digest(&chaos_bytes);
    registry
        .put_plugin(&chaos_digest, &chaos_bytes)
        .await
        .unwrap();
    let mut chaos = RuleRef {
        name: "rule-chaos".into(),
        version: "0.1.0".into(),
        digest: chaos_digest.clone(),
        config: vec![("prefix".into(), "boom".into())],
        isolation: Default::default(),
        limits: Default::default(),
        signature: None,
    };
    resign(&mut chaos, &k1, "k1", (now - 60, now + 3600));
    let cases: Vec<(&str, Box<Change>)> = vec![
        ("is not signed", Box::new(|rules| rules[0].signature = None)),
        (
            "rule-validate`: the signature of key `k1` does not verify",
            Box::new(|rules| resign(&mut rules[0], &rogue, "k1", (now - 60, now + 3600))),
        ),
        (
            "does not list",
            Box::new(|rules| resign(&mut rules[0], &rogue, "rogue", (now - 60, now + 3600))),
        ),
        (
            "expired at",
            Box::new(|rules| resign(&mut rules[0], &k1, "k1", (now - 3600, now - 60))),
        ),
        (
            "rule-fraud`: the signature of key `k1` does not verify",
            Box::new(|rules| rules[1].config[0].1 = "1".into()),
        ),
        ("is revoked", Box::new(|rules| rules.push(chaos.clone()))),
    ];
    for (what, change) in cases {
        if what == "is revoked" {
            let revoked = format!("[revoked]\ndigests = [\"{chaos_digest}\"]\n");
            write_trust(&trust, d, &["k1"], &revoked);
        }
        let mut rules = good.body.rules.clone();
        change(&mut rules);
        let active = registry.active_version().await.unwrap().unwrap();
        registry
            .activate(
                &RulesetBody {
                    rules,
                    reason: format!("a test: {what}"),
                    based_on: None,
                    previous: Some(good.version),
                    created_at_unix_ms: now_unix_ms(),
                },
                Expect::Version(active),
            )
            .await
            .unwrap();
        refused(&live, what, good.version).await;
    }
    write_trust(&trust, d, &["k1"], "");
    // Back to the good version through the gate; orders are decided by it.
    let (code, out, err) =
        admin_cli(&url, &["plugin", "activate", &good.version.to_string()]).await;
    assert_eq!(code, 0, "{out}{err}");
    let mut orders = order_client(running.order_addr.unwrap()).await;
    let mut cache = cache_client(running.cache_addr.unwrap()).await;
    let id = unique("signed");
    orders
        .create_order(go_request(&id, "book", 42))
        .await
        .unwrap();
    let result = wait_result(&mut cache, &id, 60).await.unwrap();
    assert_eq!(result.status, "done");
    assert_eq!(result.rules.len(), 4);

    // Refused at deploy, with the reason.
    let chaos_path = built_plugin("rule_chaos");
    let deploy = |signature: Option<PathBuf>, config: &str| {
        let mut args = vec![
            "plugin".to_string(),
            "deploy".into(),
            s(&chaos_path),
            "--config".into(),
            config.to_string(),
        ];
        if let Some(signature) = signature {
            args.extend(["--signature".into(), s(&signature)]);
        }
        let url = url.clone();
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            admin_cli(&url, &args).await
        }
    };
    let (code, _, err) = deploy(None, "prefix=boom").await;
    assert_ne!(code, 0);
    assert!(
        err.contains("FailedPrecondition") && err.contains("is not signed"),
        "{err}"
    );
    let by_rogue = d.join("chaos-rogue.sig");
    sign(
        d,
        &chaos_path,
        "rogue",
        &["--config", "prefix=boom"],
        &by_rogue,
    )
    .await;
    let (_, _, err) = deploy(Some(by_rogue), "prefix=boom").await;
    assert!(
        err.contains("FailedPrecondition") && err.contains("does not list"),
        "{err}"
    );
    let rogue_as_k1 = d.join("chaos-rogue-k1.sig");
    let args = ["--config", "prefix=boom", "--key-id", "k1"];
    sign(d, &chaos_path, "rogue", &args, &rogue_as_k1).await;
    let (_, _, err) = deploy(Some(rogue_as_k1), "prefix=boom").await;
    assert!(
        err.contains("FailedPrecondition") && err.contains("does not verify"),
        "{err}"
    );
    let short = d.join("chaos-short.sig");
    let args = ["--config", "prefix=boom", "--valid-for", "1s"];
    sign(d, &chaos_path, "k1", &args, &short).await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (_, _, err) = deploy(Some(short), "prefix=boom").await;
    assert!(
        err.contains("FailedPrecondition") && err.contains("expired"),
        "{err}"
    );
    let by_k1 = d.join("chaos-k1.sig");
    sign(d, &chaos_path, "k1", &["--config", "prefix=boom"], &by_k1).await;
    // Another config than the signed one: named by the CLI before it sends anything.
    let (code, _, err) = deploy(Some(by_k1.clone()), "prefix=bang").await;
    assert_ne!(code, 0);
    assert!(
        err.contains("config key `prefix` is bang here, boom in the signature"),
        "{err}"
    );
    let revoked = format!("[revoked]\ndigests = [\"{chaos_digest}\"]\n");
    write_trust(&trust, d, &["k1"], &revoked);
    let (_, _, err) = deploy(Some(by_k1.clone()), "prefix=boom").await;
    assert!(
        err.contains("FailedPrecondition") && err.contains("is revoked"),
        "{err}"
    );

    // Rotation without a restart: k2 added, its signature accepted.
    write_trust(&trust, d, &["k1", "k2"], "");
    let by_k2 = d.join("chaos-k2.sig");
    sign(d, &chaos_path, "k2", &["--config", "prefix=boom"], &by_k2).await;
    let (code, out, err) = deploy(Some(by_k2), "prefix=boom").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("rule-chaos") && out.contains("signed:k2"),
        "{out}"
    );
    let id = unique("rotated");
    orders
        .create_order(go_request(&id, "book", 42))
        .await
        .unwrap();
    let result = wait_result(&mut cache, &id, 60).await.unwrap();
    assert_eq!(result.status, "done");
    assert!(
        result.rules.iter().any(|r| r.digest == chaos_digest),
        "{:?}",
        result.rules
    );

    // k1 revoked: its signatures are refused at deploy, and the running version (four
    // rules signed by k1) is reported as no longer trusted.
    write_trust(&trust, d, &["k1", "k2"], "[revoked]\nkeys = [\"k1\"]\n");
    let (_, _, err) = deploy(Some(by_k1), "prefix=boom").await;
    assert!(
        err.contains("FailedPrecondition") && err.contains("which the trust file revokes"),
        "{err}"
    );
    let version = live.current().version;
    refused(&live, "no longer trusted", version).await;

    drop(live);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_plugins_are_required_embedded() {
    let data = tempfile::tempdir().unwrap();
    signed_plugins_are_required(embedded_config(data.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Redis and the broker: scripts/test.sh runs it"]
async fn signed_plugins_are_required_on_kafka_and_redis() {
    let Some(services) = services() else { return };
    signed_plugins_are_required(kafka_config(&services)).await;
}
