//! The Redis backend: the result store ([`RedisStore`], Go-compatible `order:<id>` keys),
//! the ruleset registry ([`RedisRegistry`]) and their one pub/sub [`Listener`], over one
//! connection ([`Redis`]).

mod audit;
mod conn;
mod pubsub;
mod registry;
mod reports;
mod shadow;
mod singleflight;
mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::config::RedisTls;
pub use conn::Conn;

pub use pubsub::Listener;
pub use registry::RedisRegistry;
pub use store::{FALLBACK_POLL, RedisStore};

/// The name of every key and channel the pipeline uses, under `KEY_PREFIX` (empty by
/// default, which keeps the Go system's `order:<id>`): several pipelines can share one
/// Redis with prefixes of their own.
///
/// On a Redis Cluster every script's keys share one slot: a result's full key is
/// `{order:<id>}:result` (its hash tag is the Go key, so both land where `order:<id>`
/// does), and a worker group's registry keys carry the group as their hash tag
/// (`pipeline:{<group>}:...`). An id that holds a `}` the Go key does not use as a tag
/// (`a}`, `}{`, `{}x}`) cannot be quoted in a tag: its full key starts with a short tag of
/// the Go key's slot instead (`{5061}order:a}:result`, see [`slot_tag`]). A single Redis
/// keeps the names it always had.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
    cluster: bool,
}

/// The part of `key` Redis Cluster hashes: the text between its first `{` and the next
/// `}` when that is not empty, else the whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

/// Number of hash slots of a Redis Cluster.
const SLOTS: u16 = 16384;

/// The hash slot of `key` on a Redis Cluster: CRC16 (XMODEM) of its [`hash_tag`], modulo
/// 16384, as Redis computes it (`CLUSTER KEYSLOT`).
pub fn hash_slot(key: &str) -> u16 {
    crc16::State::<crc16::XMODEM>::calculate(hash_tag(key).as_bytes()) % SLOTS
}

/// A short tag (decimal digits) whose keys hash to `slot`: the smallest number whose
/// text does. Built once, for every slot (about 160,000 CRCs, a few milliseconds).
pub fn slot_tag(slot: u16) -> String {
    static TAGS: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; usize::from(SLOTS)];
        let mut missing = tags.len();
        let mut n = 0u32;
        while missing > 0 {
            let slot = usize::from(hash_slot(&n.to_string()));
            if tags[slot] == u32::MAX {
                tags[slot] = n;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    tags[usize::from(slot % SLOTS)].to_string()
}

impl Keys {
    /// Keys under `prefix`, named for a cluster when `cluster`.
    pub fn new(prefix: &str, cluster: bool) -> Self {
        Self {
            prefix: prefix.to_string(),
            cluster,
        }
    }

    /// `KEY_PREFIX`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Go-compatible result of `id` (`order:<id>`).
    pub fn go(&self, id: &str) -> String {
        format!("{}order:{id}", self.prefix)
    }

    /// The full result of `id`; on a cluster in the slot of [`Keys::go`].
    pub fn full(&self, id: &str) -> String {
        if !self.cluster {
            return format!("{}order-result:{id}", self.prefix);
        }
        let go = self.go(id);
        if hash_tag(&go) != go {
            // The id has a hash tag of its own: keep it first.
            format!("{go}:result")
        } else if !go.contains('}') {
            format!("{{{go}}}:result")
        } else {
            // Redis hashes the whole Go key, and a tag ends at its first `}`: no tag can
            // hold it. A tag of the Go key's slot puts the full key beside it.
            format!("{{{}}}{go}:result", slot_tag(hash_slot(&go)))
        }
    }

    /// The channel announcing the ids whose results were written.
    pub fn written_channel(&self) -> String {
        format!("{}pipeline:results-written", self.prefix)
    }

    /// Where a plugin's bytes were stored by digest, shared by every worker group under
    /// the prefix, before each group kept its own (and collected them): still read, as a
    /// fallback for rulesets made then; never written or collected.
    pub fn shared_plugin(&self, digest: &str) -> String {
        format!("{}pipeline:plugin:{digest}", self.prefix)
    }

    /// The start of worker group `group`'s registry keys (on a cluster, one slot per
    /// group: config refuses braces in the group's name).
    pub fn registry(&self, group: &str) -> String {
        if self.cluster {
            format!("{}pipeline:{{{group}}}:", self.prefix)
        } else {
            format!("{}pipeline:{group}:", self.prefix)
        }
    }
}

/// The error code of a Redis error that no retry can get past (`CROSSSLOT`, `WRONGTYPE`,
/// `NOPERM`, a script error), or `None` for one that passes (the connection, `LOADING`,
/// `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, `READONLY`, `OOM`, `BUSY`, `MISCONF`,
/// authentication; `MOVED`/`ASK` are followed by the client). Unknown server codes are
/// taken as permanent: a write Redis refuses with a reason nobody here knows is retried
/// in vain, and ending the one order beats stalling its partition.
pub fn permanent_error(e: &anyhow::Error) -> Option<String> {
    use redis::{ErrorKind, ServerErrorKind};
    let error = e
        .chain()
        .find_map(|c| c.downcast_ref::<redis::RedisError>())?;
    match error.kind() {
        ErrorKind::Server(kind) => match kind {
            ServerErrorKind::CrossSlot | ServerErrorKind::NoPerm | ServerErrorKind::ExecAbort => {
                error.code().map(str::to_string)
            }
            // `ERR max number of clients reached` passes; script errors and the like
            // do not.
            ServerErrorKind::ResponseError => (!error
                .detail()
                .is_some_and(|d| d.contains("max number of clients")))
            .then(|| "ERR".to_string()),
            _ => None,
        },
        ErrorKind::Extension => {
            let code = error.code().unwrap_or("ERR");
            const PASSING: [&str; 9] = [
                "OOM",
                "BUSY",
                "MISCONF",
                "NOREPLICAS",
                "NOAUTH",
                "WRONGPASS",
                "LOADING",
                "NOTREADY",
                "UNKILLABLE",
            ];
            (!PASSING.contains(&code)).then(|| code.to_string())
        }
        ErrorKind::UnexpectedReturnType | ErrorKind::Client => Some(error.category().to_string()),
        _ => None,
    }
}

/// The pub/sub client (of the first node: classic pub/sub reaches every node of a
/// cluster) and the command connection to Redis at `addr`: one node (`host:port` as the
/// Go system took it, a `redis://` URL, or `rediss://` for TLS with `tls`'s certificates)
/// or a Redis Cluster (several nodes separated by commas, `cluster` true, or a node that
/// says it runs in cluster mode when `cluster` is `None`). Fails clearly within 10 s.
pub async fn connect(
    addr: &str,
    tls: &RedisTls,
    cluster: Option<bool>,
) -> anyhow::Result<(redis::Client, Conn)> {
    let urls = conn::node_urls(addr);
    // Logs and errors name the address without its password.
    let shown = crate::config::redacted_redis_addr(addr);
    let addr = shown.as_str();
    let Some(first) = urls.first() else {
        anyhow::bail!("REDIS_ADDR is empty");
    };
    let client = conn::client(first, addr, tls)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)))
        .set_number_of_retries(2);
    let mut connection = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|r| r.map_err(anyhow::Error::from))
    .with_context(|| format!("cannot connect to Redis at {addr}"))?;
    let cluster = match cluster {
        Some(cluster) => cluster,
        None => urls.len() > 1 || conn::is_cluster(&mut connection).await?,
    };
    if !cluster {
        return Ok((client, Conn::Single(connection)));
    }
    let connection = tokio::time::timeout(Duration::from_secs(10), conn::cluster(&urls, addr, tls))
        .await
        .map_err(|_| {
            anyhow::anyhow!("cannot connect to the Redis Cluster at {addr}: timed out")
        })??;
    tracing::info!(addr, "Redis Cluster");
    Ok((client, connection))
}

/// One Redis: a client (for pub/sub) and a self-reconnecting connection shared by the
/// store and the registry.
#[derive(Clone)]
pub struct Redis {
    client: redis::Client,
    connection: Conn,
    waiters: Arc<crate::waiters::Waiters>,
    keys: Keys,
}

impl Redis {
    /// Connects to `addr` (`REDIS_ADDR`, one node or a cluster: see [`connect`]); every
    /// key and channel is under `key_prefix` (`KEY_PREFIX`).
    pub async fn connect(
        addr: &str,
        key_prefix: &str,
        tls: &RedisTls,
        cluster: Option<bool>,
    ) -> anyhow::Result<Self> {
        let (client, connection) = connect(addr, tls, cluster).await?;
        let cluster = matches!(connection, Conn::Cluster(_));
        Ok(Self {
            client,
            connection,
            waiters: Arc::default(),
            keys: Keys::new(key_prefix, cluster),
        })
    }

    /// Whether this is a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self.connection, Conn::Cluster(_))
    }

    /// The result store, its waits woken by this backend's listener.
    pub fn store(&self) -> RedisStore {
        RedisStore::new(
            self.connection.clone(),
            Arc::clone(&self.waiters),
            self.keys.clone(),
        )
    }

    /// The registry of worker group `group`.
    pub fn registry(&self, group: &str) -> RedisRegistry {
        RedisRegistry::new(self.connection.clone(), self.keys.clone(), group)
    }

    /// The one listener of this backend: result announcements, and the ruleset changes
    /// of `registry` if there is one. Run it with the process's shutdown signal.
    pub fn listener(&self, registry: Option<&RedisRegistry>) -> Listener {
        Listener::new(
            self.client.clone(),
            self.store(),
            self.keys.written_channel(),
            registry.map(|r| (r.channel(), r.change_sender())),
        )
    }

    /// Whether Redis answers PING: the readiness probe of the roles that use Redis.
    pub async fn ping(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut connection)
            .await
            .context("Redis does not answer PING")?;
        Ok(())
    }

    /// Warns when this Redis may forget results it acknowledged: a worker commits an
    /// order's offset once Redis has acknowledged its result, so at-least-once needs
    /// every acknowledged write on disk (`appendonly yes`, `appendfsync always`). With
    /// no persistence a restart forgets committed results; with `everysec` a machine
    /// crash can lose the last second. Managed Redis that refuses `CONFIG` is not
    /// checked (logged at debug). Returns whether the setting was confirmed.
    pub async fn check_durability(&self) -> bool {
        let mut connection = self.connection.clone();
        let answer: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("append*")
            .query_async(&mut connection)
            .await;
        match answer {
            Ok(pairs) => {
                let get = |key: &str| {
                    pairs
                        .chunks(2)
                        .find(|pair| pair[0] == key)
                        .and_then(|pair| pair.get(1).cloned())
                        .unwrap_or_default()
                };
                let (aof, fsync) = (get("appendonly"), get("appendfsync"));
                let durable = aof == "yes" && fsync == "always";
                if durable {
                    tracing::info!(
                        "Redis keeps every acknowledged result on disk (appendfsync always)"
                    );
                } else {
                    tracing::warn!(
                        appendonly = %aof,
                        appendfsync = %fsync,
                        "Redis may lose acknowledged results whose offsets are already committed: \
                         a restart without persistence, or a machine crash with everysec, loses \
                         them. Run Redis with --appendonly yes --appendfsync always (README: Durability)"
                    );
                }
                durable
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot read Redis persistence settings");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_single_redis_keeps_its_key_names() {
        let keys = Keys::new("", false);
        assert_eq!(keys.go("a1"), "order:a1");
        assert_eq!(keys.full("a1"), "order-result:a1");
        assert_eq!(keys.registry("worker-group"), "pipeline:worker-group:");
    }

    #[test]
    fn on_a_cluster_a_results_keys_share_the_go_keys_slot() {
        let keys = Keys::new("shop:", true);
        assert_eq!(keys.go("a1"), "shop:order:a1");
        assert_eq!(keys.full("a1"), "{shop:order:a1}:result");
        assert_eq!(hash_tag(&keys.full("a1")), keys.go("a1"));
        // An id with a hash tag of its own: the Go key hashes that tag, so must the other.
        let go = keys.go("x{7}y");
        assert_eq!(hash_tag(&go), "7");
        assert_eq!(hash_tag(&keys.full("x{7}y")), "7");
        // Empty braces are no tag.
        assert_eq!(hash_tag("order:{}a"), "order:{}a");
        assert_eq!(keys.registry("g"), "shop:pipeline:{g}:");
    }

    #[test]
    fn hash_slots_are_redis_own() {
        // Values of `CLUSTER KEYSLOT` (the Redis Cluster specification's examples).
        assert_eq!(hash_slot("foo"), 12182);
        assert_eq!(hash_slot("{user1000}.following"), hash_slot("user1000"));
        assert_eq!(hash_slot("123456789"), 12739); // CRC16/XMODEM check value 0x31C3
        for slot in [0, 1, 5061, 16383] {
            assert_eq!(hash_slot(&slot_tag(slot)), slot);
        }
    }

    #[test]
    fn every_id_keeps_both_result_keys_in_one_slot() {
        for prefix in ["", "shop:"] {
            let keys = Keys::new(prefix, true);
            for id in [
                "a}", "}", "{}x}", "x{", "{a}b", "}{", "{", "{}", "}}{{", "a{b}c}", "o-1", "{}{x}",
                "x}{y}",
            ] {
                let (go, full) = (keys.go(id), keys.full(id));
                assert_eq!(
                    hash_slot(&full),
                    hash_slot(&go),
                    "`{full}` and `{go}` (id `{id}`) must share a slot"
                );
                assert_ne!(full, go);
            }
        }
        // The tag is only added where no other form works: the names stay as they were.
        let keys = Keys::new("", true);
        assert_eq!(keys.full("x{"), "{order:x{}:result");
        assert_eq!(keys.full("{a}b"), "order:{a}b:result");
        assert!(keys.full("a}").ends_with("}order:a}:result"));
    }
}
