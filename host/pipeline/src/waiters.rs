//! Clients waiting for results, woken by order id: both result stores use it, so that a
//! write wakes exactly the calls waiting for its ids.

/// Clients waiting for the results of order ids, woken by id when a result is written
/// (instead of every waiter re-reading the store on every write).
#[derive(Default)]
pub struct Waiters {
    by_id:
        std::sync::Mutex<std::collections::HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>>,
}

impl Waiters {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, Vec<tokio::sync::oneshot::Sender<()>>>,
    > {
        self.by_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Registers interest in `id`; the receiver fires when [`Waiters::wake`] names it.
    pub fn register(&self, id: &str) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
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

    /// Wakes everyone waiting for one of `ids`.
    pub fn wake<'a>(&self, ids: impl IntoIterator<Item = &'a str>) {
        let mut by_id = self.lock();
        if by_id.is_empty() {
            return;
        }
        for id in ids {
            for tx in by_id.remove(id).unwrap_or_default() {
                let _ = tx.send(());
            }
        }
    }

    /// Reads `id` with `read` until it is found or `deadline` passes. It registers before
    /// each read, so that a write between the two is not missed, then sleeps until woken
    /// by [`Waiters::wake`], or at most `poll` when writers may not announce.
    pub async fn wait_for<T, F, Fut>(
        &self,
        id: &str,
        deadline: tokio::time::Instant,
        poll: Option<std::time::Duration>,
        mut read: F,
    ) -> anyhow::Result<Option<T>>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
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
            let _ = tokio::time::timeout_at(until, woken).await;
        };
        self.forget(id);
        found
    }
}
