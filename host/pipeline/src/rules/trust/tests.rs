//! The trust model's unit tests: what a signature covers, and the trust file.

use super::*;
use order_rules_engine::{Isolation, RuleLimits};

fn rule(name: &str, config: &[(&str, &str)]) -> RuleRef {
    RuleRef {
        name: name.into(),
        version: "1.0.0".into(),
        digest: "ab".repeat(32),
        config: config
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        isolation: Isolation::Reuse,
        limits: RuleLimits::default(),
        signature: None,
    }
}

fn key(dir: &Path, id: &str) -> (SigningKey, String) {
    let (pem, public) = generate_key().unwrap();
    let path = dir.join(format!("{id}.key"));
    std::fs::write(&path, pem).unwrap();
    let key = SigningKey::read(&path).unwrap();
    assert_eq!(key.public_key(), public);
    (key, public)
}

fn signed(mut rule: RuleRef, key: &SigningKey, id: &str, window: (i64, i64)) -> RuleRef {
    rule.signature = Some(
        key.sign(&Stated::of(&rule), id, window.0, window.1)
            .unwrap(),
    );
    rule
}

#[test]
fn a_signature_covers_the_digest_the_config_the_limits_and_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, p1) = key(dir.path(), "k1");
    let trust = Trust::parse(
        &format!("[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\nrules = [\"tax\", \"disc*\"]\n"),
        "t",
    )
    .unwrap();
    let now = 1_000_000;
    let good = signed(
        rule("tax", &[("rate", "0.1")]),
        &k1,
        "k1",
        (now - 10, now + 10),
    );
    assert_eq!(trust.check(&good, now), Ok(()));
    assert_eq!(
        trust.check(&rule("tax", &[]), now).unwrap_err().reason(),
        "unsigned"
    );

    let mut changed = good.clone();
    changed.config[0].1 = "0.0".into();
    assert_eq!(
        trust.check(&changed, now).unwrap_err().reason(),
        "bad-signature"
    );
    let mut changed = good.clone();
    changed.digest = "cd".repeat(32);
    assert_eq!(
        trust.check(&changed, now).unwrap_err().reason(),
        "bad-signature"
    );
    let mut changed = good.clone();
    changed.limits.fuel = Some(1);
    assert_eq!(
        trust.check(&changed, now).unwrap_err().reason(),
        "bad-signature"
    );
    let mut changed = good.clone();
    changed.isolation = Isolation::Fresh;
    assert_eq!(
        trust.check(&changed, now).unwrap_err().reason(),
        "bad-signature"
    );
    // A stretched window is a forged one.
    let mut changed = good.clone();
    changed.signature.as_mut().unwrap().not_after_unix += 1000;
    assert_eq!(
        trust.check(&changed, now).unwrap_err().reason(),
        "bad-signature"
    );

    assert_eq!(
        trust.check(&good, now + 10).unwrap_err().reason(),
        "expired"
    );
    assert_eq!(
        trust.check(&good, now - 11).unwrap_err().reason(),
        "not-yet-valid"
    );

    // The key id selects the key: another key's signature under k1's id fails.
    let (k2, _) = key(dir.path(), "k2");
    let forged = signed(
        rule("tax", &[("rate", "0.1")]),
        &k2,
        "k1",
        (now - 10, now + 10),
    );
    assert_eq!(
        trust.check(&forged, now).unwrap_err().reason(),
        "bad-signature"
    );
    let other = signed(rule("tax", &[]), &k2, "k2", (now - 10, now + 10));
    assert_eq!(
        trust.check(&other, now).unwrap_err().reason(),
        "unknown-key"
    );

    // Patterns per key.
    let discount = signed(rule("discount", &[]), &k1, "k1", (now - 10, now + 10));
    assert_eq!(trust.check(&discount, now), Ok(()));
    let chaos = signed(rule("chaos", &[]), &k1, "k1", (now - 10, now + 10));
    let refused = trust.check(&chaos, now).unwrap_err();
    assert_eq!(refused.reason(), "key-not-allowed");
    assert!(refused.to_string().contains("tax, disc*"), "{refused}");
}

#[test]
fn revoked_keys_and_digests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, p1) = key(dir.path(), "k1");
    let now = 1_000_000;
    let good = signed(rule("tax", &[]), &k1, "k1", (now - 10, now + 10));
    let entry = format!("[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\n");
    let by_key = Trust::parse(&format!("{entry}[revoked]\nkeys = [\"k1\"]\n"), "t").unwrap();
    assert_eq!(
        by_key.check(&good, now).unwrap_err().reason(),
        "revoked-key"
    );
    let digest = &good.digest;
    let by_digest = Trust::parse(
        &format!("{entry}[revoked]\ndigests = [\"{digest}\"]\n"),
        "t",
    )
    .unwrap();
    assert_eq!(
        by_digest.check(&good, now).unwrap_err().reason(),
        "revoked-digest"
    );
}

#[test]
fn a_trust_file_is_checked_and_read_again_when_it_changes() {
    for (text, says) in [
        ("", "no [[key]]"),
        ("[[key]]\nid = \"a\"\npublic-key = \"eA==\"\n", "32 bytes"),
        (
            "[[key]]\nid = \"a\"\npublic-key = \"x\"\nextra = 1\n",
            "valid trust file",
        ),
        (
            "[[key]]\nid = \"a\"\npublic-key = \"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\"\nrules = [\"[\"]\n",
            "rule pattern",
        ),
    ] {
        let e = Trust::parse(text, "t").unwrap_err();
        assert!(format!("{e:#}").contains(says), "{text}: {e:#}");
    }

    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let (k1, p1) = key(dir.path(), "k1");
    let (k2, p2) = key(dir.path(), "k2");
    let path = dir.path().join("trust.toml");
    std::fs::write(
        &path,
        format!("[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\n"),
    )
    .unwrap();
    let store = TrustStore::open(&path).unwrap();
    let now = crate::domain::now_unix_ms() / 1000;
    let by_k1 = signed(rule("tax", &[]), &k1, "k1", (now - 10, now + 3600));
    let by_k2 = signed(rule("tax", &[]), &k2, "k2", (now - 10, now + 3600));
    assert_eq!(store.check(&by_k1), Ok(()));
    assert_eq!(store.check(&by_k2).unwrap_err().reason(), "unknown-key");

    // Rotation: both keys, then k1 revoked, read without a new store.
    std::fs::write(
        &path,
        format!(
            "[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\n[[key]]\nid = \"k2\"\npublic-key = \"{p2}\"\n"
        ),
    )
    .unwrap();
    assert_eq!(store.check(&by_k2), Ok(()));
    std::fs::write(
        &path,
        format!(
            "[[key]]\nid = \"k1\"\npublic-key = \"{p1}\"\n[[key]]\nid = \"k2\"\npublic-key = \"{p2}\"\n[revoked]\nkeys = [\"k1\"]\n"
        ),
    )
    .unwrap();
    assert_eq!(store.check(&by_k1).unwrap_err().reason(), "revoked-key");
    assert_eq!(store.check(&by_k2), Ok(()));

    // Broken or writable by others: everything refused (fail closed), and a process
    // does not start with it.
    std::fs::write(&path, "not toml [").unwrap();
    assert_eq!(store.check(&by_k2).unwrap_err().reason(), "trust-file");
    std::fs::write(
        &path,
        format!("[[key]]\nid = \"k2\"\npublic-key = \"{p2}\"\n"),
    )
    .unwrap();
    assert_eq!(store.check(&by_k2), Ok(()));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    let refused = store.check(&by_k2).unwrap_err();
    assert!(refused.to_string().contains("chmod go-w"), "{refused}");
    assert!(TrustStore::open(&path).is_err());
    assert!(TrustStore::open(&dir.path().join("missing.toml")).is_err());
}

#[test]
fn signature_files_say_how_a_deploy_differs() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, _) = key(dir.path(), "k1");
    let rule = rule("tax", &[("rate", "0.1")]);
    let file = SignatureFile {
        format: SIGNATURE_FILE_FORMAT.into(),
        rule: rule.name.clone(),
        digest: rule.digest.clone(),
        config: rule.config.iter().cloned().collect(),
        isolation: rule.isolation,
        limits: rule.limits,
        signature: k1.sign(&Stated::of(&rule), "k1", 0, 10).unwrap(),
    };
    let path = dir.path().join("tax.wasm.sig");
    std::fs::write(&path, serde_json::to_string_pretty(&file).unwrap()).unwrap();
    let read = SignatureFile::read(&path).unwrap();
    assert_eq!(read, file);
    assert_eq!(read.differs_from(&Stated::of(&rule)), None);
    let mut other = rule.clone();
    other.config[0].1 = "0.2".into();
    let says = read.differs_from(&Stated::of(&other)).unwrap();
    assert!(
        says.contains("config key `rate` is 0.2 here, 0.1"),
        "{says}"
    );
}
