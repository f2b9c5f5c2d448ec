//! The audit trail in the embedded database: events by number in one table, appended in
//! a write transaction that reads the last one (so the chain never forks) and never
//! pruned.

use std::sync::Arc;

use redb::{ReadableDatabase, ReadableTable};

use super::{AUDIT, EmbeddedDb, blocking};
use crate::domain::audit::{AuditEntry, AuditEvent, GENESIS};
use crate::domain::now_unix_ms;

impl EmbeddedDb {
    /// Appends `entry` as the next event of the chain; returns it.
    pub async fn append_audit(&self, entry: AuditEntry) -> anyhow::Result<AuditEvent> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_write()?;
            let event = {
                let mut table = txn.open_table(AUDIT)?;
                let last: Option<AuditEvent> = match table.last()? {
                    Some((_, json)) => Some(serde_json::from_str(json.value())?),
                    None => None,
                };
                let (seq, prev) = match &last {
                    Some(last) => (last.seq + 1, last.hash.as_str()),
                    None => (1, GENESIS),
                };
                let event = AuditEvent::chained(entry, seq, prev, now_unix_ms());
                table.insert(seq, serde_json::to_string(&event)?.as_str())?;
                event
            };
            txn.commit()?;
            Ok(event)
        })
        .await
    }

    /// The events after number `since`, at most `limit`, oldest first.
    pub async fn audit(&self, since: u64, limit: usize) -> anyhow::Result<Vec<AuditEvent>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(AUDIT)?;
            let mut events = Vec::new();
            for item in table.range(since.saturating_add(1)..)?.take(limit) {
                let (_, json) = item?;
                events.push(serde_json::from_str(json.value())?);
            }
            Ok(events)
        })
        .await
    }
}
