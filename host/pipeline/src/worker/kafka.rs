//! The Kafka worker: consumes the order topic as a member of the group, one task per
//! partition (in order within it, partitions concurrently), hands batches to the
//! [`Processor`], writes results and dead letters, and only then stores the offsets.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::backends::kafka::{DeadLetters, LogEntry, OrderConsumer};
use crate::domain::OrderResult;
use crate::processor::Processor;
use crate::store::Store;

/// Messages queued per partition before the consumer waits.
const LANE_QUEUE: usize = 1024;
/// Most messages of one partition processed together.
const LANE_BATCH: usize = 256;
/// Longest pause between attempts to reach the store or the dead-letter topic.
const MAX_IO_BACKOFF: Duration = Duration::from_secs(5);
/// How often the messages held back for a full partition queue are offered again.
const STALLED_RETRY: Duration = Duration::from_millis(20);

/// How an attempt to store something ended.
#[derive(Debug, PartialEq, Eq)]
enum Persisted {
    /// Stored.
    Done,
    /// Refused for good: the error's code and its text. Retrying cannot help.
    Refused(String, String),
    /// Shutdown came first.
    Stopped,
}

/// Retries `attempt` with backoff until it succeeds, `refusal` finds its error permanent,
/// or `shutdown` is cancelled.
async fn persist<F, Fut, T>(
    what: &str,
    shutdown: &CancellationToken,
    refusal: &(dyn Fn(&anyhow::Error) -> Option<String> + Sync),
    mut attempt: F,
) -> Persisted
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut pause = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(_) => return Persisted::Done,
            Err(e) => {
                if let Some(code) = refusal(&e) {
                    return Persisted::Refused(code, format!("{e:#}"));
                }
                tracing::warn!(error = %format!("{e:#}"), ?pause, "{what} failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return Persisted::Stopped,
                    () = tokio::time::sleep(pause) => {}
                }
                pause = (pause * 2).min(MAX_IO_BACKOFF);
            }
        }
    }
}

/// Consumes the order topic with `consumer` until `shutdown`; each partition is
/// processed in order by its own task, partitions concurrently.
///
/// This loop never waits for a partition: when one's queue is full (its orders retry in
/// place, or the store is down), the partition's fetching is paused and the message is
/// held until the queue has room. So the consumer is polled all the time and never
/// exceeds `max.poll.interval.ms`, however long one partition waits, and the other
/// partitions keep flowing.
pub async fn run(
    consumer: OrderConsumer,
    processor: Arc<Processor>,
    store: Store,
    dead_letters: DeadLetters,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    // Lanes live in a JoinSet owned here: if this task dies, they die with it.
    let mut lanes: HashMap<i32, mpsc::Sender<LogEntry>> = HashMap::new();
    let mut lane_tasks = JoinSet::new();
    // Messages of paused partitions, in order, waiting for room in their lane.
    let mut stalled: HashMap<i32, VecDeque<LogEntry>> = HashMap::new();
    let mut consume_errors: u64 = 0;
    let mut stalled_retry = tokio::time::interval(STALLED_RETRY);
    stalled_retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let message = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = stalled_retry.tick(), if !stalled.is_empty() => {
                offer_stalled(&mut stalled, &lanes, &consumer)?;
                continue;
            }
            message = consumer.next() => message,
        };
        let message = match message {
            Ok(message) => {
                if consume_errors > 0 {
                    tracing::info!(errors = consume_errors, "consuming again");
                    consume_errors = 0;
                }
                message
            }
            Err(e) => {
                // While the broker is away this repeats twice a second: say it once, then
                // every minute, and when consuming resumes.
                if consume_errors.is_multiple_of(120) {
                    tracing::warn!(error = %format!("{e:#}"), errors = consume_errors + 1, "kafka consume error");
                } else {
                    tracing::debug!(error = %format!("{e:#}"), "kafka consume error");
                }
                consume_errors += 1;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => continue,
                }
            }
        };
        let partition = message.partition();
        let lane = lanes.entry(partition).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(LANE_QUEUE);
            lane_tasks.spawn(
                lane_loop(
                    rx,
                    consumer.clone(),
                    Arc::clone(&processor),
                    store.clone(),
                    dead_letters.clone(),
                    shutdown.clone(),
                )
                .instrument(tracing::info_span!("kafka.partition", partition)),
            );
            tx
        });
        if let Some(held) = stalled.get_mut(&partition) {
            // Fetched before the pause took effect: keep the partition's order.
            held.push_back(message);
            continue;
        }
        match lane.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(message)) => {
                tracing::debug!(partition, "partition queue full: fetching paused");
                consumer.pause(partition);
                stalled.insert(partition, VecDeque::from([message]));
            }
            Err(TrySendError::Closed(_)) => lane_stopped(partition, &shutdown)?,
        }
    }
    tracing::info!("worker stopping: finishing in-flight orders");
    drop(lanes);
    while lane_tasks.join_next().await.is_some() {}
    consumer.commit();
    Ok(())
}

/// Moves held messages into their lanes while there is room; resumes each partition
/// whose held messages are all in.
fn offer_stalled(
    stalled: &mut HashMap<i32, VecDeque<LogEntry>>,
    lanes: &HashMap<i32, mpsc::Sender<LogEntry>>,
    consumer: &OrderConsumer,
) -> anyhow::Result<()> {
    let mut resumed = Vec::new();
    for (&partition, held) in stalled.iter_mut() {
        let Some(lane) = lanes.get(&partition) else {
            anyhow::bail!("partition {partition} has held messages but no task (a bug)");
        };
        while let Some(message) = held.pop_front() {
            match lane.try_send(message) {
                Ok(()) => {}
                Err(TrySendError::Full(message)) => {
                    held.push_front(message);
                    break;
                }
                Err(TrySendError::Closed(_)) => {
                    anyhow::bail!("the task of partition {partition} stopped unexpectedly")
                }
            }
        }
        if held.is_empty() {
            resumed.push(partition);
        }
    }
    for partition in resumed {
        stalled.remove(&partition);
        consumer.resume(partition);
        tracing::debug!(partition, "partition queue has room: fetching resumed");
    }
    Ok(())
}

/// A partition task only stops on shutdown; anything else is a bug. Fail the role (the
/// process exits, its messages are redelivered) rather than stall.
fn lane_stopped(partition: i32, shutdown: &CancellationToken) -> anyhow::Result<()> {
    if shutdown.is_cancelled() {
        Ok(())
    } else {
        anyhow::bail!("the task of partition {partition} stopped unexpectedly")
    }
}

async fn lane_loop(
    mut rx: mpsc::Receiver<LogEntry>,
    consumer: OrderConsumer,
    processor: Arc<Processor>,
    store: Store,
    dead_letters: DeadLetters,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(LANE_BATCH);
    while let Some(first) = rx.recv().await {
        // Take what is queued (up to LANE_BATCH): one evaluation pass, pipelined writes.
        batch.clear();
        batch.push(first);
        while batch.len() < LANE_BATCH {
            match rx.try_recv() {
                Ok(message) => batch.push(message),
                Err(_) => break,
            }
        }
        let taken = std::time::SystemTime::now();
        let payloads: Vec<&[u8]> = batch.iter().map(LogEntry::payload).collect();
        let processed = processor
            .process_batch(&payloads)
            .instrument(tracing::debug_span!(
                "kafka.process",
                messages = batch.len()
            ))
            .await;
        // Dead letters first, in order; then the results; then the offset.
        let mut results = Vec::with_capacity(batch.len());
        // For the spans: each result's message and when its evaluation started.
        let mut sources = Vec::with_capacity(batch.len());
        for (message, processed) in batch.iter().zip(processed) {
            let (result, headers) = processed.into_parts();
            if let Some((result, evaluated)) = result {
                results.push(result);
                sources.push((message, evaluated));
            }
            if let Some(headers) = headers
                && !dead_letter(message, headers, &dead_letters, &shutdown).await
            {
                tracing::info!("stopping before the batch was stored; it will be redelivered");
                return;
            }
        }
        let started = std::time::Instant::now();
        let write_started = std::time::SystemTime::now();
        let Some(refused) = write_results(&store, &mut results, &shutdown).await else {
            tracing::info!("stopping before the batch was stored; it will be redelivered");
            return;
        };
        // Orders whose result the store refused for good: dead-lettered with the reason
        // (their `failed` result is stored, when the store took that), so that the
        // partition moves on and the order can be replayed once the cause is fixed.
        for (index, headers) in refused {
            if !dead_letter(sources[index].0, headers, &dead_letters, &shutdown).await {
                tracing::info!("stopping before the batch was stored; it will be redelivered");
                return;
            }
        }
        crate::metrics::record_stored(results.iter().map(|r| r.status), started.elapsed());
        if crate::telemetry::enabled() {
            let stored = (write_started, std::time::SystemTime::now());
            for (result, (message, evaluated)) in results.iter().zip(&sources) {
                let order = crate::telemetry::Processed {
                    traceparent: message.header("traceparent"),
                    partition: message.partition(),
                    offset: message.offset(),
                    taken,
                    evaluated: *evaluated,
                    result,
                };
                crate::telemetry::record_processed(consumer.topic(), &order, stored);
            }
        }
        let now = crate::domain::now_unix_ms();
        for message in &batch {
            if let Some(appended) = message.appended_at_ms() {
                metrics::histogram!(crate::metrics::END_TO_END_SECONDS)
                    .record((now - appended).max(0) as f64 / 1e3);
            }
        }
        if let Some(last) = batch.last() {
            consumer.done(last);
        }
    }
}

/// Publishes `entry` to the dead-letter topic with `headers` plus its source. If the
/// topic refuses it for good (too large, with its headers, for the topic or the client),
/// it is published without its payload, saying so; if even that is refused, the error
/// is logged and counted and the partition moves on: the order is never retried forever.
/// Returns false only on shutdown.
async fn dead_letter(
    entry: &LogEntry,
    mut headers: Vec<(String, String)>,
    dead_letters: &DeadLetters,
    shutdown: &CancellationToken,
) -> bool {
    headers.extend(entry.source_headers());
    let refusal = &crate::backends::kafka::permanent_error;
    let sent = persist("dead-lettering", shutdown, refusal, || {
        dead_letters.send(entry, entry.payload(), &headers)
    })
    .await;
    let sent = match sent {
        Persisted::Refused(code, error) => {
            tracing::error!(key = %entry.key(), dlq = %dead_letters.topic(), %code, %error,
                "the dead-letter topic refused the message; dead-lettering it without its payload");
            metrics::counter!(crate::metrics::DEAD_LETTERS_REFUSED, "what" => "payload")
                .increment(1);
            headers.push((
                "payload-omitted".to_string(),
                format!(
                    "{} bytes; the topic refused them ({code})",
                    entry.payload().len()
                ),
            ));
            persist("dead-lettering", shutdown, refusal, || {
                dead_letters.send(entry, &[], &headers)
            })
            .await
        }
        other => other,
    };
    match sent {
        Persisted::Done => {
            tracing::warn!(key = %entry.key(), dlq = %dead_letters.topic(), "dead-lettered");
            true
        }
        Persisted::Refused(code, error) => {
            tracing::error!(key = %entry.key(), dlq = %dead_letters.topic(), %code, %error,
                partition = entry.partition(), offset = entry.offset(),
                "the dead-letter topic refused the message even without its payload; it is skipped");
            metrics::counter!(crate::metrics::DEAD_LETTERS_REFUSED, "what" => "message")
                .increment(1);
            true
        }
        Persisted::Stopped => false,
    }
}

/// Writes a batch's results concurrently (Redis pipelines them on one connection), in
/// waves so that two results of one id are written in message order. A result the
/// store refuses for good ([`Store::refusal`]) is replaced by a `failed` one
/// saying why; the indexes of those orders come back with the headers to dead-letter
/// them with. `None` on shutdown.
async fn write_results(
    store: &Store,
    results: &mut [Box<OrderResult>],
    shutdown: &CancellationToken,
) -> Option<Vec<(usize, Vec<(String, String)>)>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut waves: Vec<Vec<(usize, &OrderResult)>> = Vec::new();
    for (index, result) in results.iter().enumerate() {
        let wave = seen.entry(result.id.as_str()).or_insert(0);
        if waves.len() <= *wave {
            waves.push(Vec::new());
        }
        waves[*wave].push((index, result));
        *wave += 1;
    }
    let mut refused = Vec::new();
    let mut replacements = Vec::new();
    for wave in waves {
        let writes = wave.iter().map(|&(index, result)| async move {
            let written = persist("writing a result", shutdown, &|e| store.refusal(e), || {
                store.put(result)
            })
            .await;
            (index, result, written)
        });
        for (index, result, written) in join_all(writes).await {
            match written {
                Persisted::Done => {}
                Persisted::Stopped => return None,
                Persisted::Refused(code, error) => {
                    let (stored, replacement) =
                        store_refused(store, result, &code, &error, shutdown).await?;
                    refused.push((
                        index,
                        vec![
                            (
                                "reason".to_string(),
                                format!("the result store refused the result ({code})"),
                            ),
                            ("store-error".to_string(), error),
                            ("stored-as".to_string(), stored.to_string()),
                        ],
                    ));
                    replacements.push((index, replacement));
                }
            }
        }
    }
    for (index, replacement) in replacements {
        *results[index] = replacement;
    }
    // Waiting readers re-read on this; if it is lost they re-read within 100 ms anyway.
    let ids: Vec<&str> = results.iter().map(|r| r.id.as_str()).collect();
    if let Err(e) = store.announce(&ids).await {
        tracing::debug!(error = %format!("{e:#}"), "results written but not announced");
    }
    Some(refused)
}

/// Stores the `failed` result that stands for `result`, which the store refused for good
/// with `code`: returns what the store now holds for the order (`failed`, or `nothing`
/// when it refused that too) and the result. `None` on shutdown.
async fn store_refused(
    store: &Store,
    result: &OrderResult,
    code: &str,
    error: &str,
    shutdown: &CancellationToken,
) -> Option<(&'static str, OrderResult)> {
    tracing::error!(order_id = %result.id, %code, %error,
        "the result store refused the result for good; storing it as failed and dead-lettering the order");
    metrics::counter!(crate::metrics::RESULTS_REFUSED, "code" => code.to_string()).increment(1);
    let failed = result.refused_by_store(code, error);
    let stored = match persist(
        "writing a failed result",
        shutdown,
        &|e| store.refusal(e),
        || store.put_recovery(&failed),
    )
    .await
    {
        Persisted::Done => "failed",
        Persisted::Stopped => return None,
        Persisted::Refused(code, error) => {
            tracing::error!(order_id = %result.id, %code, %error,
                "the result store refused the failed result too; the order is only in the dead-letter topic");
            "nothing"
        }
    };
    Some((stored, failed))
}
