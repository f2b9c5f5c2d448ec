//! One connection type for a single Redis and a Redis Cluster: the store and the registry
//! send their commands and scripts through [`Conn`] whatever Redis it is. A single node
//! is a self-reconnecting `ConnectionManager`; a cluster is redis-rs's cluster connection,
//! which follows the slot map, routes each command (and script) by its keys, splits
//! multi-slot `MGET`s, and reconnects on its own.

use std::time::Duration;

use anyhow::Context as _;
use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use crate::config::RedisTls;

/// A connection to a single Redis or to a Redis Cluster; cheap to clone.
#[derive(Clone)]
pub enum Conn {
    /// One Redis.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// The nodes of `REDIS_ADDR`: `host:port` (as the Go system took it) or URLs, separated
/// by commas; a bare address becomes `redis://`.
pub fn node_urls(addr: &str) -> Vec<String> {
    addr.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            if a.contains("://") {
                a.to_string()
            } else {
                format!("redis://{a}")
            }
        })
        .collect()
}

/// A client of one node (`url`), with `tls`'s certificates for `rediss://`.
pub fn client(url: &str, addr: &str, tls: &RedisTls) -> anyhow::Result<redis::Client> {
    match certificates(tls)? {
        Some(certs) => redis::Client::build_with_tls(url, certs).with_context(|| {
            format!("REDIS_ADDR `{addr}` with REDIS_CA/REDIS_CERT/REDIS_KEY: not usable")
        }),
        None => redis::Client::open(url)
            .with_context(|| format!("REDIS_ADDR `{addr}` is not a Redis address")),
    }
}

/// The certificates of `tls`, read from their files; `None` when none is set.
fn certificates(tls: &RedisTls) -> anyhow::Result<Option<redis::TlsCertificates>> {
    if !tls.is_set() {
        return Ok(None);
    }
    let read = |var: &str, path: &std::path::Path| {
        std::fs::read(path).with_context(|| format!("{var} `{}`: cannot read", path.display()))
    };
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(redis::ClientTlsConfig {
            client_cert: read("REDIS_CERT", cert)?,
            client_key: read("REDIS_KEY", key)?,
        }),
        None => None,
    };
    let root_cert = match &tls.ca {
        Some(ca) => Some(read("REDIS_CA", ca)?),
        None => None,
    };
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// A cluster connection through the seed nodes `urls`.
pub async fn cluster(urls: &[String], addr: &str, tls: &RedisTls) -> anyhow::Result<Conn> {
    let mut builder = redis::cluster::ClusterClientBuilder::new(urls.to_vec())
        .connection_timeout(Duration::from_secs(5))
        .response_timeout(Duration::from_secs(5))
        .retries(3);
    if let Some(certs) = certificates(tls)? {
        builder = builder.certs(certs);
    }
    let client = builder
        .build()
        .with_context(|| format!("REDIS_ADDR `{addr}` does not name Redis Cluster nodes"))?;
    let connection = client
        .get_async_connection()
        .await
        .with_context(|| format!("cannot connect to the Redis Cluster at {addr}"))?;
    Ok(Conn::Cluster(connection))
}

/// Whether the node behind `connection` runs in cluster mode (`INFO cluster`).
pub async fn is_cluster(connection: &mut ConnectionManager) -> anyhow::Result<bool> {
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(connection)
        .await
        .context("asking Redis whether it is a cluster (INFO cluster)")?;
    Ok(info.lines().any(|l| l.trim() == "cluster_enabled:1"))
}
