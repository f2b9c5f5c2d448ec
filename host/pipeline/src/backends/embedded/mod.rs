//! The embedded, durable default: with no Kafka or Redis configured, one redb database in
//! the data directory is the order log, the consumer offset, the result store and the
//! dead-letter log. Appends are group-committed (one fsync for every order that arrived
//! meanwhile) and acknowledged only after the commit; the worker writes a batch's results
//! and its new offset in one transaction, so a restart re-processes nothing it finished
//! and loses nothing that was accepted. Processed log entries and results older than the
//! result TTL are pruned ([`EmbeddedDb::prune`]).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::domain::{OrderResult, PutOutcome};
use crate::waiters::Waiters;
use results::put;

mod audit;
mod lane;
mod registry;
mod replay;
mod results;
mod retention;
mod shadow;

pub use lane::EmbeddedLog;
pub use retention::run as run_retention;
pub use retention::{PRUNE_BATCH, PRUNE_EVERY, Pruned};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const RESULTS: TableDefinition<&str, &str> = TableDefinition::new("results");
/// The results by the time they were made (Unix ms, id): what the result TTL removes.
const RESULT_TIMES: TableDefinition<(u64, &str), ()> = TableDefinition::new("result_times");
const DEAD_LETTERS: TableDefinition<u64, &[u8]> = TableDefinition::new("dead_letters");
const PLUGINS: TableDefinition<&str, &[u8]> = TableDefinition::new("plugins");
const RULESETS: TableDefinition<u64, &str> = TableDefinition::new("rulesets");
/// When each plugin blob was last uploaded or activated (Unix ms, by digest); a blob
/// without an entry counts as unused since 0.
const PLUGIN_TIMES: TableDefinition<&str, i64> = TableDefinition::new("plugin_times");
/// Shadow runs' results: the candidate's result (JSON) by (run, order id).
const SHADOW_RESULTS: TableDefinition<(&str, &str), &str> = TableDefinition::new("shadow_results");
/// Shadow runs' tallies (JSON) by run.
const SHADOW_REPORTS: TableDefinition<&str, &str> = TableDefinition::new("shadow_reports");
/// The audit trail: events (JSON) by number, from 1; never pruned.
const AUDIT: TableDefinition<u64, &str> = TableDefinition::new("audit");
/// The rollout in progress (one entry, [`ROLLOUT`], JSON).
const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");
/// SETTINGS key: the rollout in progress.
const ROLLOUT: &str = "rollout";
/// META key: the first ruleset version the history limit did not drop.
const OLDEST_RULESET: &str = "oldest_ruleset";
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
    traceparent: Option<String>,
    reply: oneshot::Sender<Result<u64, String>>,
}

/// Most trace contexts held for entries not processed yet (only while traces are
/// exported); beyond it, entries go untraced rather than grow memory with a backlog.
const MAX_TRACED: usize = 100_000;

/// The `traceparent` of log entries not processed yet, by sequence number: the embedded
/// log's stand-in for Kafka's message headers. Kept in memory only: after a restart,
/// the entries appended before it are processed without their caller's trace.
type Traces = Arc<Mutex<std::collections::HashMap<u64, String>>>;

/// The embedded database.
pub struct EmbeddedDb {
    db: Arc<Database>,
    appends: mpsc::Sender<Append>,
    appender: Mutex<Option<JoinHandle<()>>>,
    head: watch::Receiver<u64>,
    waiters: Waiters,
    rulesets: watch::Sender<u64>,
    /// Worker heartbeats by instance, with when they stop counting.
    heartbeats: Mutex<std::collections::HashMap<String, (String, Instant)>>,
    traces: Traces,
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
            txn.open_table(RESULT_TIMES)?;
            txn.open_table(DEAD_LETTERS)?;
            txn.open_table(PLUGINS)?;
            txn.open_table(RULESETS)?;
            txn.open_table(PLUGIN_TIMES)?;
            txn.open_table(SETTINGS)?;
            txn.open_table(SHADOW_RESULTS)?;
            txn.open_table(SHADOW_REPORTS)?;
            txn.open_table(AUDIT)?;
            let meta = txn.open_table(META)?;
            meta.get(NEXT_SEQ)?.map_or(0, |v| v.value())
        };
        txn.commit()?;
        retention::index_older_results(&db)?;
        let db = Arc::new(db);
        let (appends, rx) = mpsc::channel(MAX_APPEND_BATCH);
        let (head_tx, head) = watch::channel(next);
        let traces = Traces::default();
        let appender = tokio::spawn(append_loop(
            Arc::clone(&db),
            rx,
            head_tx,
            Arc::clone(&traces),
        ));
        let (rulesets, _) = watch::channel(0);
        Ok(Arc::new(Self {
            traces,
            heartbeats: Mutex::default(),
            rulesets,
            waiters: Waiters::default(),
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

    /// Appends an entry durably, with the `traceparent` of its caller's span if traces
    /// are exported; returns its sequence number once committed.
    pub async fn append(
        &self,
        payload: Vec<u8>,
        traceparent: Option<String>,
    ) -> anyhow::Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.appends
            .send(Append {
                payload,
                traceparent,
                reply,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the embedded log is closed"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the embedded log stopped"))?
            .map_err(anyhow::Error::msg)
    }

    /// The `traceparent` entry `seq` was appended with, if any (once: it is forgotten).
    pub fn take_traceparent(&self, seq: u64) -> Option<String> {
        let mut traces = self.traces.lock().unwrap_or_else(PoisonError::into_inner);
        if traces.is_empty() {
            return None;
        }
        traces.remove(&seq)
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
    /// offset to `next`, in one transaction. Final results are kept as in Redis. Hands
    /// the results back with what became of each.
    pub async fn commit_batch(
        &self,
        results: Vec<Box<OrderResult>>,
        dead_letters: Vec<DeadLetterRecord>,
        next: u64,
    ) -> anyhow::Result<(Vec<PutOutcome>, Vec<Box<OrderResult>>)> {
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
                let mut times = txn.open_table(RESULT_TIMES)?;
                let mut outcomes = Vec::with_capacity(results.len());
                for result in &results {
                    outcomes.push(put(&mut table, &mut times, result)?);
                }
                let mut dead = txn.open_table(DEAD_LETTERS)?;
                for record in &dead_letters {
                    dead.insert(record.source_seq, serde_json::to_vec(record)?.as_slice())?;
                }
                txn.open_table(META)?.insert(CONSUMED, next)?;
                outcomes
            };
            txn.commit()?;
            Ok((outcomes, results))
        })
        .await?;
        self.waiters.wake(ids.iter().map(String::as_str));
        Ok(outcomes)
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

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .context("embedded database task panicked")?
}

/// Commits appends in groups: everything that arrived while the last commit ran.
async fn append_loop(
    db: Arc<Database>,
    mut rx: mpsc::Receiver<Append>,
    head: watch::Sender<u64>,
    traces: Traces,
) {
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
                // Before the head moves: the worker may take the entries at once.
                if batch.iter().any(|a| a.traceparent.is_some()) {
                    let mut traces = traces.lock().unwrap_or_else(PoisonError::into_inner);
                    for (i, append) in batch.iter_mut().enumerate() {
                        if let Some(traceparent) = append.traceparent.take()
                            && traces.len() < MAX_TRACED
                        {
                            traces.insert(first + i as u64, traceparent);
                        }
                    }
                }
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

/// The order log's publishing side, on the embedded log: the `traceparent` stays in
/// memory until the entry is processed.
#[async_trait::async_trait]
impl crate::order_log::OrderPublisher for EmbeddedDb {
    fn destination(&self) -> &str {
        "embedded"
    }

    async fn publish(
        &self,
        _id: &str,
        payload: Vec<u8>,
        headers: &[(String, String)],
    ) -> anyhow::Result<()> {
        let traceparent = headers
            .iter()
            .find(|(name, _)| name == "traceparent")
            .map(|(_, value)| value.clone());
        self.append(payload, traceparent).await.map(|_| ())
    }
}
