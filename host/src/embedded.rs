//! The embedded, durable default: with no Kafka or Redis configured, one redb database in
//! the data directory is the order log, the consumer offset, the result store and the
//! dead-letter log. Appends are group-committed (one fsync for every order that arrived
//! meanwhile) and acknowledged only after the commit; the worker writes a batch's results
//! and its new offset in one transaction, so a restart re-processes nothing it finished
//! and loses nothing that was accepted.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::result::{OrderResult, ResultStatus};
use crate::store::PutOutcome;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RESULTS: TableDefinition<&str, &str> = TableDefinition::new("results");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
const RULESETS: TableDefinition<u64, &str> = TableDefinition::new("rulesets");
/// META key: the active ruleset version.
const ACTIVE_RULESET: &str = "active_ruleset";
/// META key: the newest ruleset version.
const LATEST_RULESET: &str = "latest_ruleset";

/// META key: sequence number the next append gets.
const NEXT_SEQ: &str = "next_seq";
/// META key: sequence number of the first entry not yet processed.
const CONSUMED: &str = "consumed";
/// Most appends committed together.
const MAX_APPEND_BATCH: usize = 4096;

/// A dead-lettered log entry with why it was dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterRecord {
    /// Log sequence number of the entry.
    pub source_seq: u64,
    /// The headers a Kafka dead letter would carry (reason, rule, attempts, ...).
    pub headers: Vec<(String, String)>,
    /// The entry's bytes.
    pub payload: Vec<u8>,
}

struct Append {
    payload: Vec<u8>,
    reply: oneshot::Sender<Result<u64, String>>,
}

/// The embedded database.
pub struct EmbeddedDb {
    db: Arc<Database>,
    appends: mpsc::Sender<Append>,
    appender: Mutex<Option<JoinHandle<()>>>,
    head: watch::Receiver<u64>,
    waiters: crate::store::Waiters,
    rulesets: watch::Sender<u64>,
}

impl EmbeddedDb {
    /// Opens (or creates) `dir/pipeline.redb` and starts the appender task.
    pub fn open(dir: &Path) -> anyhow::Result<Arc<Self>> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the data directory {}", dir.display()))?;
        let path = dir.join("pipeline.redb");
        let db = Database::create(&path).with_context(|| {
            format!(
                "cannot open {} (is another order-pipeline using this DATA_DIR?)",
                path.display()
            )
        })?;
        let txn = db.begin_write()?;
        let next = {
            txn.open_table(LOG)?;
            txn.open_table(RESULTS)?;
            txn.open_table(DEAD_LETTERS)?;
            txn.open_table(PLUGINS)?;
            txn.open_table(RULESETS)?;
            let meta = txn.open_table(META)?;
            meta.get(NEXT_SEQ)?.map_or(0, |v| v.value())
        };
        txn.commit()?;
        let db = Arc::new(db);
        let (appends, rx) = mpsc::channel(MAX_APPEND_BATCH);
        let (head_tx, head) = watch::channel(next);
        let appender = tokio::spawn(append_loop(Arc::clone(&db), rx, head_tx));
        let (rulesets, _) = watch::channel(0);
        Ok(Arc::new(Self {
            rulesets,
            waiters: crate::store::Waiters::default(),
            db,
            appends,
            appender: Mutex::new(Some(appender)),
            head,
        }))
    }

    /// Closes the database once every other user of it is gone (waiting up to 10 s):
    /// pending appends are committed, and the file is released for the next `open`.
    pub async fn close(self: Arc<Self>) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut this = self;
        let inner = loop {
            match Arc::try_unwrap(this) {
                Ok(inner) => break inner,
                Err(shared) if Instant::now() < deadline => {
                    this = shared;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => anyhow::bail!("the embedded database is still in use after 10 s"),
            }
        };
        let Self {
            db,
            appends,
            appender,
            ..
        } = inner;
        drop(appends);
        let appender = appender
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(appender) = appender {
            appender
                .await
                .context("the embedded log's appender panicked")?;
        }
        drop(db);
        Ok(())
    }

    /// Appends an entry durably; returns its sequence number once committed.
    pub async fn append(&self, payload: Vec<u8>) -> anyhow::Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(Append { payload, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the embedded log is closed"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the embedded log stopped"))?
            .map_err(anyhow::Error::msg)
    }

    /// The consumed offset and up to `max` unprocessed entries after it, in order.
    pub async fn read_batch(&self, max: usize) -> anyhow::Result<(u64, Vec<(u64, Vec<u8>)>)> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            let consumed = txn
                .open_table(META)?
                .get(CONSUMED)?
                .map_or(0, |v| v.value());
            let log = txn.open_table(LOG)?;
            let mut out = Vec::new();
            for entry in log.range(consumed..)?.take(max) {
                let (seq, payload) = entry?;
                out.push((seq.value(), payload.value().to_vec()));
            }
            Ok((consumed, out))
        })
        .await
    }

    /// Waits until the log has an entry at or after `seq`, or `stop` resolves.
    pub async fn wait_for_entries(&self, seq: u64, stop: impl std::future::Future<Output = ()>) {
        let mut head = self.head.clone();
        tokio::select! {
            _ = head.wait_for(|h| *h > seq) => {}
            () = stop => {}
        }
    }

    /// Records the results and dead letters of processed entries and moves the consumed
    /// offset to `next`, in one transaction. Final results are kept as in Redis.
    pub async fn commit_batch(
        &self,
        results: Vec<OrderResult>,
        dead_letters: Vec<DeadLetterRecord>,
        next: u64,
    ) -> anyhow::Result<Vec<PutOutcome>> {
        let db = Arc::clone(&self.db);
        let ids: Vec<String> = results.iter().map(|r| r.id.clone()).collect();
        let outcomes = blocking(move || {
            let mut txn = db.begin_write()?;
            // Results and offset commit together without their own fsync: a crash rolls
            // both back to the last durable commit (the next append's), and the entries
            // are processed again, to the same results. Appends are always durable.
            txn.set_durability(Durability::None)?;
            let outcomes = {
                let mut table = txn.open_table(RESULTS)?;
                let mut outcomes = Vec::with_capacity(results.len());
                for result in &results {
                    outcomes.push(put(&mut table, result)?);
                }
                let mut dead = txn.open_table(DEAD_LETTERS)?;
                for record in &dead_letters {
                    dead.insert(record.source_seq, serde_json::to_vec(record)?.as_slice())?;
                }
                txn.open_table(META)?.insert(CONSUMED, next)?;
                outcomes
            };
            txn.commit()?;
            Ok(outcomes)
        })
        .await?;
        self.waiters.wake(ids.iter().map(String::as_str));
        Ok(outcomes)
    }

    /// Writes one result (the CacheService path for tools; the worker uses batches).
    pub async fn put_result(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        let db = Arc::clone(&self.db);
        let id = result.id.clone();
        let result = result.clone();
        let outcome = blocking(move || {
            let txn = db.begin_write()?;
            let outcome = put(&mut txn.open_table(RESULTS)?, &result)?;
            txn.commit()?;
            Ok(outcome)
        })
        .await?;
        self.waiters.wake([id.as_str()]);
        Ok(outcome)
    }

    /// The result of `id`. Read on the calling thread: a read transaction on cached
    /// pages takes microseconds, less than handing it to a blocking thread.
    pub async fn get_result(&self, id: &str) -> anyhow::Result<Option<OrderResult>> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RESULTS)?;
        match table.get(id)? {
            Some(json) => Ok(Some(serde_json::from_str(json.value())?)),
            None => Ok(None),
        }
    }

    /// The results of `ids`, in order, from one read transaction.
    pub async fn get_results(&self, ids: Vec<String>) -> anyhow::Result<Vec<Option<OrderResult>>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(RESULTS)?;
            ids.iter()
                .map(|id| match table.get(id.as_str())? {
                    Some(json) => Ok(Some(serde_json::from_str(json.value())?)),
                    None => Ok(None),
                })
                .collect()
        })
        .await
    }

    /// The results of `ids`, in order, waiting until `deadline` for missing ones; a
    /// commit wakes the waiter once, however many of its ids it wrote.
    pub async fn wait_results(
        &self,
        ids: &[String],
        deadline: Instant,
    ) -> anyhow::Result<Vec<Option<OrderResult>>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let mut results: Vec<Option<OrderResult>> = ids.iter().map(|_| None).collect();
        let mut missing: Vec<usize> = (0..ids.len()).collect();
        let outcome = loop {
            // Register before reading, so a write between the two is not missed.
            let woken: Vec<_> = missing
                .iter()
                .map(|&i| self.waiters.register(&ids[i]))
                .collect();
            let read = match self
                .get_results(missing.iter().map(|&i| ids[i].clone()).collect())
                .await
            {
                Ok(read) => read,
                Err(e) => break Err(e),
            };
            let mut still = Vec::new();
            let mut still_woken = Vec::new();
            for ((i, found), rx) in missing.iter().zip(read).zip(woken) {
                match found {
                    Some(result) => results[*i] = Some(result),
                    None => {
                        still.push(*i);
                        still_woken.push(rx);
                    }
                }
            }
            missing = still;
            if missing.is_empty() {
                break Ok(());
            }
            let any = futures::future::select_all(still_woken);
            if tokio::time::timeout_at(deadline, any).await.is_err() {
                break Ok(());
            }
        };
        for id in ids {
            self.waiters.forget(id);
        }
        outcome.map(|()| results)
    }

    /// The result of `id`, waiting until `deadline` for it to be written.
    pub async fn wait_result(
        &self,
        id: &str,
        deadline: Instant,
    ) -> anyhow::Result<Option<OrderResult>> {
        let deadline = tokio::time::Instant::from_std(deadline);
        let found = loop {
            // Register before reading, so a write between the two is not missed.
            let woken = self.waiters.register(id);
            if let Some(result) = self.get_result(id).await? {
                break Some(result);
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                break None;
            }
        };
        self.waiters.forget(id);
        Ok(found)
    }

    /// Stores a plugin's bytes under its digest.
    pub async fn put_plugin(&self, digest: &str, bytes: &[u8]) -> anyhow::Result<()> {
        let (db, digest, bytes) = (Arc::clone(&self.db), digest.to_string(), bytes.to_vec());
        blocking(move || {
            let txn = db.begin_write()?;
            txn.open_table(PLUGINS)?
                .insert(digest.as_str(), bytes.as_slice())?;
            txn.commit()?;
            Ok(())
        })
        .await
    }

    /// A plugin's bytes by digest.
    pub async fn plugin(&self, digest: &str) -> anyhow::Result<Option<Vec<u8>>> {
        let (db, digest) = (Arc::clone(&self.db), digest.to_string());
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(PLUGINS)?;
            Ok(table.get(digest.as_str())?.map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn meta(&self, key: &'static str) -> anyhow::Result<Option<u64>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            Ok(txn.open_table(META)?.get(key)?.map(|v| v.value()))
        })
        .await
    }

    /// The active ruleset version.
    pub async fn active_ruleset(&self) -> anyhow::Result<Option<u64>> {
        self.meta(ACTIVE_RULESET).await
    }

    /// The newest ruleset version (0 when there is none).
    pub async fn latest_ruleset(&self) -> anyhow::Result<u64> {
        Ok(self.meta(LATEST_RULESET).await?.unwrap_or(0))
    }

    /// A ruleset version's JSON body.
    pub async fn ruleset(&self, version: u64) -> anyhow::Result<Option<String>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(RULESETS)?;
            Ok(table.get(version)?.map(|v| v.value().to_string()))
        })
        .await
    }

    /// Activates `body` as a new version if the active one is still `expect`.
    pub async fn activate_ruleset(
        &self,
        body: String,
        expect: crate::registry::Expect,
    ) -> Result<u64, crate::registry::ActivateError> {
        use crate::registry::{ActivateError, Expect};
        let db = Arc::clone(&self.db);
        let outcome = blocking(move || {
            let txn = db.begin_write()?;
            let outcome = {
                let mut meta = txn.open_table(META)?;
                let active = meta.get(ACTIVE_RULESET)?.map(|v| v.value());
                let matches = match expect {
                    Expect::Nothing => active.is_none(),
                    Expect::Version(v) => active == Some(v),
                };
                if matches {
                    let version = meta.get(LATEST_RULESET)?.map_or(0, |v| v.value()) + 1;
                    txn.open_table(RULESETS)?.insert(version, body.as_str())?;
                    meta.insert(LATEST_RULESET, version)?;
                    meta.insert(ACTIVE_RULESET, version)?;
                    Ok(version)
                } else {
                    Err(active)
                }
            };
            txn.commit()?;
            Ok(outcome)
        })
        .await
        .map_err(ActivateError::Store)?;
        match outcome {
            Ok(version) => {
                self.rulesets.send_replace(version);
                Ok(version)
            }
            Err(active) => Err(ActivateError::Conflict(active)),
        }
    }

    /// Changes whenever a ruleset version is activated.
    pub fn ruleset_changes(&self) -> watch::Receiver<u64> {
        self.rulesets.subscribe()
    }

    /// Every dead letter, oldest first.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetterRecord>> {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(DEAD_LETTERS)?;
            let mut out = Vec::new();
            for entry in table.iter()? {
                let (_, value) = entry?;
                out.push(serde_json::from_slice(value.value())?);
            }
            Ok(out)
        })
        .await
    }
}

/// Writes `result` unless a final result for its id is there.
fn put(
    table: &mut redb::Table<'_, &'static str, &'static str>,
    result: &OrderResult,
) -> anyhow::Result<PutOutcome> {
    if let Some(existing) = table.get(result.id.as_str())? {
        let existing: OrderResult = serde_json::from_str(existing.value())?;
        if existing.status != ResultStatus::Failed {
            return Ok(PutOutcome::KeptExisting);
        }
    }
    let json = serde_json::to_string(result)?;
    table.insert(result.id.as_str(), json.as_str())?;
    Ok(PutOutcome::Written)
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("embedded database task panicked")?
}

/// Commits appends in groups: everything that arrived while the last commit ran.
async fn append_loop(db: Arc<Database>, mut rx: mpsc::Receiver<Append>, head: watch::Sender<u64>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_APPEND_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let payloads: Vec<Vec<u8>> = batch
            .iter_mut()
            .map(|a| std::mem::take(&mut a.payload))
            .collect();
        let db = Arc::clone(&db);
        let committed = blocking(move || {
            let txn = db.begin_write()?;
            let first = {
                let mut meta = txn.open_table(META)?;
                let first = meta.get(NEXT_SEQ)?.map_or(0, |v| v.value());
                let mut log = txn.open_table(LOG)?;
                for (i, payload) in payloads.iter().enumerate() {
                    log.insert(first + i as u64, payload.as_slice())?;
                }
                meta.insert(NEXT_SEQ, first + payloads.len() as u64)?;
                first
            };
            txn.commit()?;
            Ok(first)
        })
        .await;
        match committed {
            Ok(first) => {
                let count = batch.len() as u64;
                for (i, append) in batch.into_iter().enumerate() {
                    let _ = append.reply.send(Ok(first + i as u64));
                }
                head.send_replace(first + count);
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "embedded log append failed");
                for append in batch {
                    let _ = append.reply.send(Err(format!("{e:#}")));
                }
            }
        }
    }
}
