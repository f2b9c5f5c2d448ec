//! The one pub/sub listener of a Redis backend: a single task subscribed to the result
//! announcements and to the ruleset changes of the worker group (waking the live
//! ruleset). For an announcement it reads the results that CacheService calls wait for,
//! all in one read, and hands them over: a wait costs no read of its own once the result
//! is there. It reconnects on its own and stops on the shutdown signal, like every other
//! task of the process.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::RedisStore;
use super::store::FALLBACK_POLL;

/// Pause before subscribing again after the connection was lost.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// Most ids one read of the sweep or of the announced results asks for.
const READ_CHUNK: usize = 500;

/// What the listener wakes.
pub struct Listener {
    client: redis::Client,
    /// The store whose waiters it serves.
    store: RedisStore,
    /// The channel of result announcements.
    written: String,
    /// The ruleset channel of the worker group and who is told of a new version.
    rulesets: Option<(String, watch::Sender<u64>)>,
    /// Announced ids that calls wait for, not read yet, and the signal that there are
    /// some: read off the subscription's loop, so that announcements keep flowing while
    /// Redis answers, and all that came meanwhile in one read.
    announced: Mutex<Vec<String>>,
    announced_signal: Notify,
}

impl Listener {
    pub(super) fn new(
        client: redis::Client,
        store: RedisStore,
        written: String,
        rulesets: Option<(String, watch::Sender<u64>)>,
    ) -> Self {
        Self {
            client,
            store,
            written,
            rulesets,
            announced: Mutex::default(),
            announced_signal: Notify::new(),
        }
    }

    /// Listens until `shutdown`, subscribing again whenever the connection drops; and
    /// meanwhile reads the announced results that calls wait for, and sweeps.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let listen = async {
            loop {
                self.listen_once().await;
                tokio::time::sleep(RECONNECT_PAUSE).await;
            }
        };
        self.store.waiters.set_swept(true);
        tokio::select! {
            () = shutdown.cancelled() => {}
            () = listen => {}
            () = self.deliver_announced() => {}
            () = self.sweep() => {}
        }
        self.store.waiters.set_swept(false);
        Ok(())
    }

    /// Reads the results of the announced ids that calls wait for, all that were announced
    /// since the last read at once, and hands them over.
    async fn deliver_announced(&self) {
        loop {
            self.announced_signal.notified().await;
            let mut ids = std::mem::take(
                &mut *self
                    .announced
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner),
            );
            ids.sort_unstable();
            ids.dedup();
            for chunk in ids.chunks(READ_CHUNK) {
                deliver(&self.store, chunk).await;
            }
        }
    }

    /// Every [`FALLBACK_POLL`], reads every waited-for id at once and hands over the
    /// results found: results whose announcement was missed (the connection dropped) or
    /// never sent (the Go worker writes none) still reach their waiters, at a cost in
    /// proportion to the ids waited for, not to the calls waiting.
    async fn sweep(&self) {
        let mut tick = tokio::time::interval(FALLBACK_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ids = self.store.waiters.all();
            for chunk in ids.chunks(READ_CHUNK) {
                deliver(&self.store, chunk).await;
            }
        }
    }

    /// One subscription, until its connection is lost.
    async fn listen_once(&self) {
        let mut pubsub = match self.client.get_async_pubsub().await {
            Ok(pubsub) => pubsub,
            Err(e) => {
                tracing::warn!(error = %e, "cannot reach Redis for pub/sub; retrying");
                return;
            }
        };
        let mut channels = vec![self.written.clone()];
        if let Some((channel, _)) = &self.rulesets {
            channels.push(channel.clone());
        }
        if let Err(e) = pubsub.subscribe(&channels).await {
            tracing::warn!(error = %e, ?channels, "cannot subscribe; retrying");
            return;
        }
        let mut messages = pubsub.on_message();
        while let Some(message) = messages.next().await {
            self.dispatch(message.get_channel_name(), &message);
        }
        tracing::warn!("Redis pub/sub connection lost; subscribing again");
    }

    fn dispatch(&self, channel: &str, message: &redis::Msg) {
        if channel == self.written {
            let ids: String = message.get_payload().unwrap_or_default();
            let waited = self.store.waiters.waited(ids.split('\n'));
            if !waited.is_empty() {
                self.announced
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend(waited);
                self.announced_signal.notify_one();
            }
        } else if let Some((rulesets, tx)) = &self.rulesets
            && channel == rulesets
        {
            let version: u64 = message.get_payload().unwrap_or(0);
            tx.send_replace(version);
        }
    }
}

/// Reads the results of `ids` in one go and hands those found to their waiters (the
/// others wait on; if the read fails, the waiters' own deadline or the next sweep ends
/// their wait).
async fn deliver(store: &RedisStore, ids: &[String]) {
    match store.read_many(ids).await {
        Ok(results) => {
            for (id, result) in ids.iter().zip(&results) {
                if let Some(result) = result {
                    store.waiters.deliver(id, result);
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), ids = ids.len(), "cannot read waited-for results");
        }
    }
}
