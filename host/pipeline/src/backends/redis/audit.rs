//! The audit trail in Redis: a stream per worker group (`pipeline:{<group>}:audit`, one
//! event a record, its id `0-<seq>`) and the hash of the last event beside it
//! (`audit-head`, `<seq> <hash>`). An append is a compare-and-set on the head, so that
//! concurrent writers never fork the chain. Nothing expires or trims it.

use anyhow::Context as _;

use super::RedisRegistry;
use crate::domain::audit::{AuditEntry, AuditEvent, GENESIS};
use crate::domain::now_unix_ms;

/// Appends if the head is still ARGV[1]: KEYS = head, stream; ARGV = expected head, new
/// head, record id, event JSON. Returns 1, or 0 when another writer came first.
const APPEND_SCRIPT: &str = r#"
local head = redis.call('GET', KEYS[1]) or ''
if head ~= ARGV[1] then return 0 end
redis.call('XADD', KEYS[2], ARGV[3], 'event', ARGV[4])
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

static APPEND: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(APPEND_SCRIPT));

/// Most attempts of one append against concurrent writers.
const APPEND_ATTEMPTS: usize = 32;

impl RedisRegistry {
    fn audit_head_key(&self) -> String {
        format!("{}audit-head", self.namespace)
    }
    fn audit_key(&self) -> String {
        format!("{}audit", self.namespace)
    }

    /// Appends `entry` as the next event of the chain; returns it.
    pub async fn append_audit(&self, entry: AuditEntry) -> anyhow::Result<AuditEvent> {
        let mut connection = self.connection.clone();
        for _ in 0..APPEND_ATTEMPTS {
            let head: Option<String> = redis::cmd("GET")
                .arg(self.audit_head_key())
                .query_async(&mut connection)
                .await
                .context("reading the audit head")?;
            let head = head.unwrap_or_default();
            let (seq, prev) = match head.split_once(' ') {
                Some((seq, hash)) => (seq.parse::<u64>().context("the audit head")? + 1, hash),
                None => (1, GENESIS),
            };
            let event = AuditEvent::chained(entry.clone(), seq, prev, now_unix_ms());
            let json = serde_json::to_string(&event)?;
            let written: i64 = APPEND
                .key(self.audit_head_key())
                .key(self.audit_key())
                .arg(&head)
                .arg(format!("{seq} {}", event.hash))
                .arg(format!("0-{seq}"))
                .arg(json)
                .invoke_async(&mut connection)
                .await
                .context("appending to the audit trail")?;
            if written == 1 {
                return Ok(event);
            }
        }
        anyhow::bail!("the audit trail is appended to by too many writers at once; giving up")
    }

    /// The events after number `since`, at most `limit`, oldest first.
    pub async fn audit(&self, since: u64, limit: usize) -> anyhow::Result<Vec<AuditEvent>> {
        let mut connection = self.connection.clone();
        let records: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(self.audit_key())
            .arg(format!("0-{}", since + 1))
            .arg("+")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut connection)
            .await
            .context("reading the audit trail")?;
        records
            .into_iter()
            .map(|(id, fields)| {
                let json = fields
                    .into_iter()
                    .find(|(name, _)| name == "event")
                    .map(|(_, json)| json)
                    .with_context(|| format!("audit record {id} has no event"))?;
                serde_json::from_str(&json).with_context(|| format!("audit record {id}"))
            })
            .collect()
    }
}
