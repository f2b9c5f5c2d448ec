//! The one pub/sub listener of a Redis backend: a single task subscribed to the result
//! announcements (waking the CacheService's waiters by id) and to the ruleset changes of
//! the worker group (waking the live ruleset). It reconnects on its own and stops on the
//! shutdown signal, like every other task of the process.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::waiters::Waiters;

/// Pause before subscribing again after the connection was lost.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// What the listener wakes.
pub struct Listener {
    client: redis::Client,
    waiters: Arc<Waiters>,
    /// The channel of result announcements.
    written: String,
    /// The ruleset channel of the worker group and who is told of a new version.
    rulesets: Option<(String, watch::Sender<u64>)>,
}

impl Listener {
    pub(super) fn new(
        client: redis::Client,
        waiters: Arc<Waiters>,
        written: String,
        rulesets: Option<(String, watch::Sender<u64>)>,
    ) -> Self {
        Self {
            client,
            waiters,
            written,
            rulesets,
        }
    }

    /// Listens until `shutdown`, subscribing again whenever the connection drops.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = self.listen_once() => {}
            }
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(RECONNECT_PAUSE) => {}
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
            self.waiters.wake(ids.split('\n'));
        } else if let Some((rulesets, tx)) = &self.rulesets
            && channel == rulesets
        {
            let version: u64 = message.get_payload().unwrap_or(0);
            tx.send_replace(version);
        }
    }
}
