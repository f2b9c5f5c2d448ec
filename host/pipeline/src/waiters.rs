//! Clients waiting for results, woken by order id: both result stores use it, so that a
//! write wakes exactly the calls waiting for its ids. A store that has read a result for
//! its waiters hands it to them ([`Waiters::deliver`]), so that they need not read it
//! again each.

use std::collections::HashMap;

use tokio::sync::oneshot;

use crate::domain::OrderResult;

/// What a waiter is woken with: the result, when the waker read it for the waiters.
pub type Wake = Option<Box<OrderResult>>;

/// Clients waiting for the results of order ids, woken by id when a result is written
/// (instead of every waiter re-reading the store on every write).
#[derive(Default)]
pub struct Waiters {
    by_id: std::sync::Mutex<HashMap<String, Vec<oneshot::Sender<Wake>>>>,
    /// Whether a task re-reads every waited-for id now and then, for all waiters at once
    /// (then a waiter need not poll on its own).
    swept: std::sync::atomic::AtomicBool,
}

impl Waiters {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<oneshot::Sender<Wake>>>> {
        self.by_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers interest in `id`; the receiver fires when [`Waiters::wake`] or
    /// [`Waiters::deliver`] names it.
    pub fn register(&self, id: &str) -> oneshot::Receiver<Wake> {
        let (tx, rx) = oneshot::channel();
        self.lock().entry(id.to_string()).or_default().push(tx);
        rx
    }

    /// Drops the registrations of `id` whose receivers are gone.
    pub fn forget(&self, id: &str) {
        let mut by_id = self.lock();
        if let Some(list) = by_id.get_mut(id) {
            list.retain(|tx| !tx.is_closed());
            if list.is_empty() {
                by_id.remove(id);
            }
        }
    }

    /// Wakes everyone waiting for one of `ids`; they read the store again.
    pub fn wake<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut by_id = self.lock();
        if by_id.is_empty() {
            return;
        }
        for id in ids {
            for tx in by_id.remove(id).unwrap_or_default() {
                let _ = tx.send(None);
            }
        }
    }

    /// Which of `ids` someone waits for, in order.
    pub fn waited<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<String> {
        let by_id = self.lock();
        if by_id.is_empty() {
            return Vec::new();
        }
        ids.into_iter()
            .filter(|id| by_id.contains_key(*id))
            .map(str::to_string)
            .collect()
    }

    /// Every id someone waits for.
    pub fn all(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Notes whether a task sweeps the waited-for ids (see [`Waiters::swept`]).
    pub fn set_swept(&self, swept: bool) {
        self.swept
            .store(swept, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether a task re-reads the waited-for ids for all waiters now and then.
    pub fn swept(&self) -> bool {
        self.swept.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Hands the result of `id` (read once for all of them, or just written) to everyone
    /// waiting for it.
    pub fn deliver(&self, id: &str, result: &OrderResult) {
        let Some(waiting) = self.lock().remove(id) else {
            return;
        };
        for tx in waiting {
            let _ = tx.send(Some(Box::new(result.clone())));
        }
    }

    /// Reads `id` with `read` until it is found or `deadline` passes. It registers before
    /// each read, so that a write between the two is not missed, then sleeps until woken
    /// by [`Waiters::wake`] (and reads again) or handed the result by
    /// [`Waiters::deliver`], or at most `poll` when writers may not announce.
    pub async fn wait_for<F, Fut>(
        &self,
        id: &str,
        deadline: tokio::time::Instant,
        poll: Option<std::time::Duration>,
        mut read: F,
    ) -> anyhow::Result<Option<OrderResult>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<OrderResult>>>,
    {
        let found = loop {
            let woken = self.register(id);
            match read().await {
                Ok(None) => {}
                done => break done,
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break Ok(None);
            }
            let until = poll.map_or(deadline, |poll| (now + poll).min(deadline));
            if let Ok(Ok(Some(result))) = tokio::time::timeout_at(until, woken).await {
                break Ok(Some(*result));
            }
        };
        self.forget(id);
        found
    }

    /// Like [`Waiters::wait_for`] for many ids at once: `read` reads the missing ones in
    /// one go (registering all of them first), then handed-over results are taken as they
    /// come; only a wake without a result, or `poll`, makes it read the missing ones
    /// again. Results in the order of `ids`.
    pub async fn wait_for_many<F, Fut>(
        &self,
        ids: &[String],
        deadline: tokio::time::Instant,
        poll: Option<std::time::Duration>,
        mut read: F,
    ) -> anyhow::Result<Vec<Option<OrderResult>>>
    where
        F: FnMut(Vec<String>) -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Vec<Option<OrderResult>>>>,
    {
        use futures::StreamExt as _;
        let mut results: Vec<Option<OrderResult>> = vec![None; ids.len()];
        let mut missing: Vec<usize> = (0..ids.len()).collect();
        let outcome = 'read: loop {
            let woken: Vec<oneshot::Receiver<Wake>> =
                missing.iter().map(|&i| self.register(&ids[i])).collect();
            let read_now = match read(missing.iter().map(|&i| ids[i].clone()).collect()).await {
                Ok(read_now) => read_now,
                Err(e) => break Err(e),
            };
            let mut waiting = futures::stream::FuturesUnordered::new();
            for ((&i, found), rx) in missing.iter().zip(read_now).zip(woken) {
                match found {
                    Some(result) => results[i] = Some(result),
                    None => waiting.push(async move { (i, rx.await) }),
                }
            }
            if waiting.is_empty() {
                break Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                break Ok(());
            }
            let until = poll.map_or(deadline, |poll| (now + poll).min(deadline));
            loop {
                match tokio::time::timeout_at(until, waiting.next()).await {
                    // All handed over.
                    Ok(None) => break 'read Ok(()),
                    Ok(Some((i, Ok(Some(result))))) => results[i] = Some(*result),
                    // Woken without a result (or the poll is due): read the rest again.
                    Ok(Some(_)) | Err(_) => {
                        if tokio::time::Instant::now() >= deadline {
                            break 'read Ok(());
                        }
                        break;
                    }
                }
            }
            missing = (0..ids.len()).filter(|&i| results[i].is_none()).collect();
        };
        for id in ids {
            self.forget(id);
        }
        outcome.map(|()| results)
    }
}
