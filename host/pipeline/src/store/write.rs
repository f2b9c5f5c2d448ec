//! Writing a batch of results through the [`Store`] seam, for a log whose results go
//! to the store before its offset (Kafka): concurrently, in order per id, retried with
//! backoff until written, refused for good ([`Store::refusal`]) or shut down.

use std::collections::HashMap;
use std::time::Duration;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;

use super::Store;
use crate::domain::OrderResult;

/// Longest pause between attempts to reach the store or the dead-letter topic.
const MAX_IO_BACKOFF: Duration = Duration::from_secs(5);

/// How an attempt to store something ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Persisted {
    /// Stored.
    Done,
    /// Refused for good: the error's code and its text. Retrying cannot help.
    Refused(String, String),
    /// Shutdown came first.
    Stopped,
}

/// Retries `attempt` with backoff until it succeeds, `refusal` finds its error permanent,
/// or `shutdown` is cancelled.
pub async fn persist<F, Fut, T>(
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

/// Writes a batch's results concurrently (Redis pipelines them on one connection), in
/// waves so that two results of one id are written in message order; each result comes
/// with the index of its entry in the batch. A result the
/// store refuses for good ([`Store::refusal`]) is replaced by a `failed` one
/// saying why; the indexes of those orders come back with the headers to dead-letter
/// them with. `None` on shutdown.
pub async fn write_batch(
    store: &Store,
    results: &mut [(usize, Box<OrderResult>)],
    shutdown: &CancellationToken,
) -> Option<Vec<(usize, Vec<(String, String)>)>> {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    // (position in `results`, entry index, result)
    let mut waves: Vec<Vec<(usize, usize, &OrderResult)>> = Vec::new();
    for (position, (index, result)) in results.iter().enumerate() {
        let wave = seen.entry(result.id.as_str()).or_insert(0);
        if waves.len() <= *wave {
            waves.push(Vec::new());
        }
        waves[*wave].push((position, *index, result));
        *wave += 1;
    }
    let mut refused = Vec::new();
    let mut replacements = Vec::new();
    for wave in waves {
        let writes = wave.iter().map(|&(position, index, result)| async move {
            let written = persist("writing a result", shutdown, &|e| store.refusal(e), || {
                store.put(result)
            })
            .await;
            (position, index, result, written)
        });
        for (position, index, result, written) in join_all(writes).await {
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
                    replacements.push((position, replacement));
                }
            }
        }
    }
    for (position, replacement) in replacements {
        *results[position].1 = replacement;
    }
    // Waiting readers of other processes read on this; if it is lost they find the
    // results within 100 ms anyway.
    let ids: Vec<&str> = results.iter().map(|(_, r)| r.id.as_str()).collect();
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
