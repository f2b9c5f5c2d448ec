//! The Redis backend: the result store ([`RedisStore`], Go-compatible `order:<id>` keys)
//! and the ruleset registry ([`RedisRegistry`]), over one connection helper.

mod registry;
mod store;

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::ConnectionManager;

pub use registry::RedisRegistry;
pub use store::{FALLBACK_POLL, RedisStore, WRITTEN_CHANNEL, full_key, go_key};

/// A client and a self-reconnecting connection to Redis at `addr` (`host:port` as the
/// Go system took it, or a `redis://` URL); fails clearly within 10 s.
pub async fn connect(addr: &str) -> anyhow::Result<(redis::Client, ConnectionManager)> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("redis://{addr}")
    };
    let client = redis::Client::open(url.as_str())
        .with_context(|| format!("REDIS_ADDR `{addr}` is not a Redis address"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2);
    let connection = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("cannot connect to Redis at {addr}"))?;
    Ok((client, connection))
}
