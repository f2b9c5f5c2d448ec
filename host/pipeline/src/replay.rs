//! Replay: decide orders again with a chosen ruleset version. The orders come from their
//! stored results (by id, or, embedded, by when they were decided; a result keeps the
//! order it decided), from the order log (Kafka: by offsets, or by the time they were
//! appended) or from the dead letters. By default the new results go to a scratch
//! namespace (the shadow runs' store, under the replay's run id) and the answer is the
//! diff against the stored results; `overwrite` replaces the stored results, each
//! recording what it replaced and why.

use std::sync::Arc;
use std::time::Instant;

use prost::Message as _;

use crate::domain::diff::DiffReport;
use crate::domain::wire::order_from_request;
use crate::domain::{Order, OrderResult, Replaced, now_unix_ms};
use crate::proto;
use crate::rules::live::LiveRuleset;
use crate::store::Store;

/// A message's headers, as text.
type Headers = Vec<(String, String)>;

/// Most orders one replay decides by default.
pub const DEFAULT_LIMIT: usize = 10_000;

/// Results written to the scratch namespace per call.
const CHUNK: usize = 500;

/// Which orders a replay decides again.
#[derive(Debug, Clone)]
pub enum Selection {
    /// These ids (from their stored results).
    Ids(Vec<String>),
    /// Decided (embedded) or appended to the order topic (Kafka) from `since` to
    /// `until`, Unix ms.
    Time {
        /// Start, included.
        since: i64,
        /// End, excluded.
        until: i64,
    },
    /// Kafka offsets of the order topic: partition, first, after the last (`None`: end).
    Offsets(Vec<(i32, i64, Option<i64>)>),
    /// Every dead letter.
    DeadLetters,
}

/// A replay to run.
#[derive(Debug, Clone)]
pub struct Request {
    /// The orders.
    pub selection: Selection,
    /// The ruleset version to decide with (`None`: the active one).
    pub version: Option<u64>,
    /// Replace the stored results, for this reason (`None`: scratch only).
    pub overwrite: Option<String>,
    /// Most orders to decide.
    pub limit: usize,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// Its run id: where its results are (`replay-<version>-<ms>`).
    pub run: String,
    /// The version that decided.
    pub version: u64,
    /// Orders decided.
    pub decided: u64,
    /// The diff against the stored results (orders that had one).
    pub report: DiffReport,
    /// Orders that had no stored result.
    pub without_result: u64,
    /// Stored results replaced (`overwrite`).
    pub overwritten: u64,
    /// Ids or entries that could not be replayed, with why.
    pub skipped: Vec<String>,
    /// How long it took, seconds.
    pub seconds: f64,
}

/// A dead letter as the tooling lists it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Where it is: `partition/offset` (Kafka) or the log sequence number (embedded).
    pub position: String,
    /// Why it was dead-lettered, and where it came from.
    pub headers: Vec<(String, String)>,
    /// The order, or why the bytes are not one.
    pub order: Result<Order, String>,
    /// The status of its stored result, if it has one.
    pub result_status: Option<String>,
}

/// An entry read back from the log or its dead letters.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Where it is: `partition/offset` (Kafka) or the log sequence number (embedded).
    pub position: String,
    /// Its headers.
    pub headers: Headers,
    /// Its bytes.
    pub payload: Vec<u8>,
}

/// What a time range of the log gives back.
#[derive(Debug)]
pub enum InRange {
    /// The entries appended in it (Kafka keeps them).
    Entries(Vec<Recorded>),
    /// The results decided in it (the embedded log drops processed entries; a result
    /// keeps the order it decided).
    Results(Vec<OrderResult>),
}

/// Where a replay reads the worker's orders back; implemented in `backends/<name>/`.
#[async_trait::async_trait]
pub trait ReplayLog: Send + Sync + 'static {
    /// The dead letters, oldest first, at most `limit`.
    async fn dead_letters(&self, limit: usize) -> anyhow::Result<Vec<Recorded>>;

    /// What was appended (or decided) from `since` (included) to `until` (excluded),
    /// Unix ms, at most `limit`.
    async fn between(&self, since: i64, until: i64, limit: usize) -> anyhow::Result<InRange>;

    /// The entries of `partition` from offset `from` (included) to `to` (excluded;
    /// `None`: the end), at most `limit`; `None` when this log has no offsets.
    async fn offsets(
        &self,
        partition: i32,
        from: i64,
        to: Option<i64>,
        limit: usize,
    ) -> anyhow::Result<Option<Vec<Recorded>>>;
}

/// The worker's log, as a replayer holds it.
pub type Log = Arc<dyn ReplayLog>;

/// Why a replay did not run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The request cannot be served (names what to fix).
    #[error("{0}")]
    Invalid(String),
    /// The version does not exist or does not build.
    #[error("{0}")]
    Version(String),
    /// A backend failed.
    #[error("{0:#}")]
    Unavailable(anyhow::Error),
}

/// Replays orders of one worker's pipeline.
pub struct Replayer {
    live: Arc<LiveRuleset>,
    store: Store,
    log: Log,
    default_currency: String,
}

impl Replayer {
    /// A replayer over the worker's ruleset, store and log.
    pub fn new(live: Arc<LiveRuleset>, store: Store, log: Log, default_currency: &str) -> Self {
        Self {
            live,
            store,
            log,
            default_currency: default_currency.to_string(),
        }
    }

    fn decode(&self, payload: &[u8]) -> Result<Order, String> {
        let request = proto::OrderRequest::decode(payload)
            .map_err(|e| format!("not a protobuf OrderRequest: {e}"))?;
        order_from_request(&request, &self.default_currency)
            .map_err(|e| format!("not a valid order: {e}"))
    }

    /// The dead letters, oldest first, at most `limit`.
    pub async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, ReplayError> {
        Ok(self
            .letters_with_results(limit)
            .await?
            .into_iter()
            .map(|(letter, _)| letter)
            .collect())
    }

    /// The dead letters with the stored results of their orders (read together).
    async fn letters_with_results(
        &self,
        limit: usize,
    ) -> Result<Vec<(DeadLetter, Option<OrderResult>)>, ReplayError> {
        let raw = self
            .log
            .dead_letters(limit)
            .await
            .map_err(ReplayError::Unavailable)?;
        let letters: Vec<DeadLetter> = raw
            .into_iter()
            .map(
                |Recorded {
                     position,
                     headers,
                     payload,
                 }| DeadLetter {
                    order: self.decode(&payload),
                    position,
                    headers,
                    result_status: None,
                },
            )
            .collect();
        // Letters that are not orders have no result: their slot reads nothing.
        let ids: Vec<String> = letters
            .iter()
            .map(|l| l.order.as_ref().map(|o| o.id.clone()).unwrap_or_default())
            .collect();
        let stored = self
            .store
            .get_many(&ids, None)
            .await
            .map_err(ReplayError::Unavailable)?;
        Ok(letters
            .into_iter()
            .zip(stored)
            .map(|(mut letter, stored)| {
                let stored = stored.filter(|_| letter.order.is_ok());
                letter.result_status = stored.as_ref().map(|r| r.status.as_str().to_string());
                (letter, stored)
            })
            .collect())
    }

    /// The orders `selection` names, each with its stored result when it has one.
    async fn orders(
        &self,
        selection: &Selection,
        limit: usize,
        skipped: &mut Vec<String>,
    ) -> Result<Vec<(Order, Option<OrderResult>)>, ReplayError> {
        let entries: Vec<Recorded> = match selection {
            Selection::Ids(ids) => return self.by_ids(ids, limit, skipped).await,
            Selection::Time { since, until } => {
                match self
                    .log
                    .between(*since, *until, limit)
                    .await
                    .map_err(ReplayError::Unavailable)?
                {
                    InRange::Entries(entries) => entries,
                    InRange::Results(results) => return Ok(with_orders(results, skipped)),
                }
            }
            Selection::Offsets(ranges) => self.by_offsets(ranges, limit).await?,
            Selection::DeadLetters => {
                let mut out = Vec::new();
                for (letter, stored) in self.letters_with_results(limit).await? {
                    match letter.order {
                        Ok(order) => out.push((order, stored)),
                        Err(why) => skipped.push(format!("{}: {why}", letter.position)),
                    }
                }
                return Ok(out);
            }
        };
        let mut orders = Vec::with_capacity(entries.len());
        for Recorded {
            position, payload, ..
        } in entries
        {
            match self.decode(&payload) {
                Ok(order) => orders.push(order),
                Err(why) => skipped.push(format!("{position}: {why}")),
            }
        }
        // Their stored results, read together (pipelined on Redis).
        let ids: Vec<String> = orders.iter().map(|o| o.id.clone()).collect();
        let stored = self
            .store
            .get_many(&ids, None)
            .await
            .map_err(ReplayError::Unavailable)?;
        Ok(orders.into_iter().zip(stored).collect())
    }

    /// The orders of these ids, from their stored results.
    async fn by_ids(
        &self,
        ids: &[String],
        limit: usize,
        skipped: &mut Vec<String>,
    ) -> Result<Vec<(Order, Option<OrderResult>)>, ReplayError> {
        let ids: Vec<String> = ids.iter().take(limit).cloned().collect();
        let stored = self
            .store
            .get_many(&ids, None)
            .await
            .map_err(ReplayError::Unavailable)?;
        let mut results = Vec::new();
        for (id, result) in ids.iter().zip(stored) {
            match result {
                Some(result) => results.push(result),
                None => skipped.push(format!("{id}: no stored result")),
            }
        }
        Ok(with_orders(results, skipped))
    }

    /// The entries of the order log in `ranges` (partition, first, after the last).
    async fn by_offsets(
        &self,
        ranges: &[(i32, i64, Option<i64>)],
        limit: usize,
    ) -> Result<Vec<Recorded>, ReplayError> {
        let mut all = Vec::new();
        for (partition, from, to) in ranges {
            let left = limit.saturating_sub(all.len());
            let read = self
                .log
                .offsets(*partition, *from, *to, left)
                .await
                .map_err(ReplayError::Unavailable)?;
            let Some(read) = read else {
                return Err(ReplayError::Invalid(
                    "offsets: the embedded mode has no Kafka offsets; choose ids, a time range or the dead letters".into(),
                ));
            };
            all.extend(read);
        }
        Ok(all)
    }

    /// Stores the new results in the run's scratch namespace, with the diff against the
    /// stored ones.
    async fn store_scratch(
        &self,
        decided: &[(OrderResult, Option<OrderResult>)],
        outcome: &mut Outcome,
    ) -> Result<(), ReplayError> {
        for chunk in decided.chunks(CHUNK) {
            let mut tally = DiffReport::default();
            for (candidate, stored) in chunk {
                match stored {
                    Some(stored) => tally.add(stored, candidate),
                    None => outcome.without_result += 1,
                }
            }
            let candidates: Vec<OrderResult> = chunk.iter().map(|(c, _)| c.clone()).collect();
            self.store
                .put_shadow(&outcome.run, &candidates, &tally)
                .await
                .map_err(ReplayError::Unavailable)?;
            outcome.report.merge(&tally);
            outcome.decided += chunk.len() as u64;
        }
        Ok(())
    }

    /// Replaces the stored results by the new ones, each recording what it replaced.
    async fn overwrite(
        &self,
        decided: Vec<(OrderResult, Option<OrderResult>)>,
        reason: &str,
        outcome: &mut Outcome,
    ) -> Result<(), ReplayError> {
        for (mut candidate, stored) in decided {
            candidate.replaced = stored.map(|old| Replaced {
                status: old.status,
                total: old.totals.total,
                ruleset_version: old.ruleset_version,
                processed_at_unix_ms: old.processed_at_unix_ms,
                reason: reason.to_string(),
                run: outcome.run.clone(),
            });
            self.store
                .replace(&candidate)
                .await
                .map_err(ReplayError::Unavailable)?;
            outcome.overwritten += 1;
        }
        Ok(())
    }

    /// Runs `request`.
    pub async fn replay(&self, request: Request) -> Result<Outcome, ReplayError> {
        let started = Instant::now();
        if request
            .overwrite
            .as_ref()
            .is_some_and(|r| r.trim().is_empty())
        {
            return Err(ReplayError::Invalid(
                "reason: say why the results are replaced (it is recorded in each)".into(),
            ));
        }
        let chain = match request.version {
            None => self.live.current(),
            Some(version) => self
                .live
                .chain_of(version)
                .await
                .map_err(|e| ReplayError::Version(format!("version {version}: {e:#}")))?,
        };
        let mut outcome = Outcome {
            run: format!("replay-{}-{}", chain.version, now_unix_ms()),
            version: chain.version,
            ..Outcome::default()
        };
        let orders = self
            .orders(&request.selection, request.limit, &mut outcome.skipped)
            .await?;
        let run = outcome.run.clone();
        let decided = tokio::task::spawn_blocking(move || {
            orders
                .into_iter()
                .map(|(order, stored)| {
                    let evaluation = chain.chain.evaluate(&order);
                    let mut result = OrderResult::from_evaluation(&order, evaluation, 1);
                    result.ruleset_version = chain.version;
                    result.processed_by = format!("replay {run}");
                    (result, stored)
                })
                .collect::<Vec<_>>()
        })
        .await
        .map_err(|e| ReplayError::Unavailable(anyhow::anyhow!("replay panicked: {e}")))?;
        self.store_scratch(&decided, &mut outcome).await?;
        if let Some(reason) = &request.overwrite {
            self.overwrite(decided, reason, &mut outcome).await?;
        }
        outcome.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            run = %outcome.run,
            version = outcome.version,
            decided = outcome.decided,
            differing = outcome.report.differing,
            overwritten = outcome.overwritten,
            seconds = outcome.seconds,
            "replay done"
        );
        Ok(outcome)
    }
}

/// The orders that `results` decided, with them; a result that does not keep its order
/// is skipped, saying why.
fn with_orders(
    results: Vec<OrderResult>,
    skipped: &mut Vec<String>,
) -> Vec<(Order, Option<OrderResult>)> {
    let mut out = Vec::new();
    for result in results {
        match result.order.clone() {
            Some(order) => out.push((order, Some(result))),
            None => skipped.push(format!(
                "{}: its result does not keep its order (written by the Go worker, or before results kept it)",
                result.id
            )),
        }
    }
    out
}
