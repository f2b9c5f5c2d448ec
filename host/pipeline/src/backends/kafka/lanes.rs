//! The worker's side of the order topic ([`KafkaLog`]): one lane per partition, in order
//! within it, partitions concurrently. A lane commits a batch by dead-lettering what must
//! be, writing the results through the result store, and only then storing the
//! partition's offset (committed by librdkafka in the background, and at close).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;

use super::{DeadLetters, LogEntry, OrderConsumer};
use crate::order_log::{BatchOutcome, Committed, Entry, Headers, Lane, LogConsumer};
use crate::store::{Persisted, Store, persist, write_batch};

/// Messages queued per partition before the consumer waits.
const LANE_QUEUE: usize = 1024;
/// Most messages of one partition processed together.
const LANE_BATCH: usize = 256;
/// How often the messages held back for a full partition queue are offered again.
const STALLED_RETRY: Duration = Duration::from_millis(20);

/// The order topic as a member of the worker group, its dead-letter topic, and the
/// result store its lanes write to before they store an offset.
pub struct KafkaLog {
    orders: OrderConsumer,
    dead_letters: DeadLetters,
    store: Store,
}

impl KafkaLog {
    /// The worker's log: `orders`, dead letters to `dead_letters`, results to `store`.
    pub fn new(orders: OrderConsumer, dead_letters: DeadLetters, store: Store) -> Self {
        Self {
            orders,
            dead_letters,
            store,
        }
    }
}

#[async_trait::async_trait]
impl LogConsumer for KafkaLog {
    /// Consumes the order topic with `consumer` until `shutdown`; each partition is
    /// processed in order by its own task, partitions concurrently.
    ///
    /// This loop never waits for a partition: when one's queue is full (its orders retry in
    /// place, or the store is down), the partition's fetching is paused and the message is
    /// held until the queue has room. So the consumer is polled all the time and never
    /// exceeds `max.poll.interval.ms`, however long one partition waits, and the other
    /// partitions keep flowing.
    async fn feed(
        &mut self,
        open: &mut (dyn FnMut(Box<dyn Lane>) + Send),
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()> {
        let consumer = &self.orders;
        let mut lanes: HashMap<i32, mpsc::Sender<LogEntry>> = HashMap::new();
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
                    offer_stalled(&mut stalled, &lanes, consumer)?;
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
                open(Box::new(KafkaLane {
                    rx,
                    consumer: consumer.clone(),
                    store: self.store.clone(),
                    dead_letters: self.dead_letters.clone(),
                    shutdown: shutdown.clone(),
                    taken: Vec::new(),
                }));
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
                Err(TrySendError::Closed(_)) => lane_stopped(partition, shutdown)?,
            }
        }
        // The lanes finish what is queued for them, then end.
        drop(lanes);
        Ok(())
    }

    async fn close(&mut self) {
        self.orders.commit();
    }
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

/// One partition: the messages the feed queued for it.
struct KafkaLane {
    rx: mpsc::Receiver<LogEntry>,
    consumer: OrderConsumer,
    store: Store,
    dead_letters: DeadLetters,
    shutdown: CancellationToken,
    /// The batch taken last, as the broker gave it (for its dead letters and offset).
    taken: Vec<LogEntry>,
}

impl KafkaLane {
    /// Dead-letters these entries of the batch taken last, in order, each with its
    /// headers; false on shutdown.
    async fn dead_letter_all(&self, letters: Vec<(usize, Headers)>) -> bool {
        for (index, headers) in letters {
            let entry = &self.taken[index];
            if !dead_letter(entry, headers, &self.dead_letters, &self.shutdown).await {
                return false;
            }
        }
        true
    }
}

#[async_trait::async_trait]
impl Lane for KafkaLane {
    fn source(&self) -> &str {
        self.consumer.topic()
    }

    /// What is queued, up to [`LANE_BATCH`]: one evaluation pass, pipelined writes.
    async fn take(&mut self) -> anyhow::Result<Option<Vec<Entry>>> {
        let Some(first) = self.rx.recv().await else {
            return Ok(None);
        };
        self.taken.clear();
        self.taken.push(first);
        while self.taken.len() < LANE_BATCH {
            match self.rx.try_recv() {
                Ok(message) => self.taken.push(message),
                Err(_) => break,
            }
        }
        Ok(Some(
            self.taken
                .iter()
                .map(|m| Entry {
                    payload: m.payload().to_vec(),
                    partition: m.partition(),
                    offset: m.offset(),
                    // Only traces read it.
                    traceparent: crate::telemetry::enabled()
                        .then(|| m.header("traceparent").map(str::to_string))
                        .flatten(),
                    appended_at_ms: m.appended_at_ms(),
                })
                .collect(),
        ))
    }

    /// Dead letters first, in order; then the results; then the offset.
    async fn commit(
        &mut self,
        _batch: &[Entry],
        outcome: &mut BatchOutcome,
    ) -> anyhow::Result<Committed> {
        if !self
            .dead_letter_all(std::mem::take(&mut outcome.dead_letters))
            .await
        {
            return Ok(Committed::Stopped);
        }
        let Some(refused) = write_batch(&self.store, &mut outcome.results, &self.shutdown).await
        else {
            return Ok(Committed::Stopped);
        };
        // Orders whose result the store refused for good: dead-lettered with the reason
        // (their `failed` result is stored, when the store took that), so that the
        // partition moves on and the order can be replayed once the cause is fixed.
        if !self.dead_letter_all(refused).await {
            return Ok(Committed::Stopped);
        }
        if let Some(last) = self.taken.last() {
            self.consumer.done(last);
        }
        Ok(Committed::Done)
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
