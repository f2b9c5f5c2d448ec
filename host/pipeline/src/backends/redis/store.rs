//! Results in Redis. `order:<id>` holds exactly what the Go system wrote (proto3 JSON of
//! `{item, price, status}`), so a Go CacheService can still read it; `order-result:<id>`
//! beside it holds the full result. Both are written by one Lua script, atomically, and
//! expire together after the result TTL (`RESULT_TTL`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use super::singleflight::SingleFlight;
use super::{Conn, Keys, connect};
use crate::config::RedisTls;
use crate::domain::{OrderResult, PutOutcome};
use crate::waiters::Waiters;

/// Writes both keys, to expire after ARGV[3] ms (0: never), unless ARGV[4] is `keep` or
/// `recover` and a final (not `failed`) result exists (a replay's `--overwrite` passes
/// `replace`). Under `keep` a full key of another type than a string is an error
/// (WRONGTYPE), refused for good; `recover` (the `failed` result of an order whose result
/// was refused) writes over it: a value of another type under a result's key is not a
/// result. Returns 1 if written.
const PUT_SCRIPT: &str = r#"
if ARGV[4] ~= 'replace' then
  local existing = redis.pcall('GET', KEYS[2])
  if type(existing) == 'table' and existing.err then
    if ARGV[4] ~= 'recover' then
      return existing
    end
  elseif existing then
    local ok, decoded = pcall(cjson.decode, existing)
    if ok and type(decoded) == 'table' and decoded['status'] ~= 'failed' then
      return 0
    end
  end
end
local ttl = tonumber(ARGV[3])
if ttl > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  redis.call('SET', KEYS[2], ARGV[2], 'PX', ttl)
else
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('SET', KEYS[2], ARGV[2])
end
return 1
"#;

/// How often a waiting call re-reads Redis even without an announcement (results written
/// by other writers, such as the Go worker, or a missed message).
pub const FALLBACK_POLL: Duration = Duration::from_millis(100);

/// A Redis connection (reconnects on its own), the write script, the waiters woken by
/// result announcements (through the backend's [`Listener`](super::Listener)), and the
/// reads in flight, which concurrent reads of the same id join instead of asking Redis
/// again.
#[derive(Clone)]
pub struct RedisStore {
    pub(super) connection: Conn,
    put: redis::Script,
    pub(super) waiters: Arc<Waiters>,
    reading: Arc<SingleFlight<Result<Option<OrderResult>, Arc<anyhow::Error>>>>,
    pub(super) ttl_ms: u64,
    pub(super) keys: Keys,
}

impl RedisStore {
    /// Connects to `addr` (`host:port` as the Go system took it, a `redis://` URL, or
    /// cluster nodes), with no key prefix.
    /// Without a running [`Listener`](super::Listener) its waits re-read every
    /// [`FALLBACK_POLL`]; [`Redis::store`](super::Redis::store) makes one that has one.
    pub async fn connect(addr: &str) -> anyhow::Result<Self> {
        let (_, connection) = connect(addr, &RedisTls::default(), None).await?;
        let cluster = matches!(connection, Conn::Cluster(_));
        Ok(Self::new(
            connection,
            Arc::default(),
            Keys::new("", cluster),
        ))
    }

    pub(super) fn new(connection: Conn, waiters: Arc<Waiters>, keys: Keys) -> Self {
        Self {
            connection,
            put: redis::Script::new(PUT_SCRIPT),
            waiters,
            reading: Arc::default(),
            ttl_ms: 0,
            keys,
        }
    }

    /// Results written from now on expire after `ttl` (`None`: never, the default).
    pub fn with_ttl(mut self, ttl: Option<std::time::Duration>) -> Self {
        self.ttl_ms = ttl.map_or(0, |ttl| {
            u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
        });
        self
    }

    /// Writes `result` (both keys, atomically) unless a final result exists.
    pub async fn put(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        self.write(result, "keep").await
    }

    /// Writes the `failed` result of an order whose result Redis refused for good (see
    /// [`crate::store::ResultStore::refusal`]), unless a final result exists; a value of another type
    /// under its key is written over.
    pub async fn put_recovery(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        self.write(result, "recover").await
    }

    /// Writes `result` (both keys, atomically) whatever result exists: a replay's
    /// explicit `--overwrite`.
    pub async fn replace(&self, result: &OrderResult) -> anyhow::Result<()> {
        self.write(result, "replace").await.map(|_| ())
    }

    async fn write(&self, result: &OrderResult, existing: &str) -> anyhow::Result<PutOutcome> {
        let full = serde_json::to_string(result).context("serialising a result")?;
        let mut connection = self.connection.clone();
        let written: i64 = self
            .put
            .key(self.keys.go(&result.id))
            .key(self.keys.full(&result.id))
            .arg(result.go_json())
            .arg(full)
            .arg(self.ttl_ms)
            .arg(existing)
            .invoke_async(&mut connection)
            .await
            .context("writing a result to Redis")?;
        if written != 1 {
            return Ok(PutOutcome::KeptExisting);
        }
        // Calls of this process waiting for it get it now, as stored, without reading it
        // back (the announcement still tells other processes).
        self.waiters.deliver(&result.id, result);
        Ok(PutOutcome::Written)
    }

    /// The result of `id`: the full one, or one written by the Go worker. Concurrent
    /// calls for the same id share one read: a burst of reads of one order costs Redis
    /// one round trip at a time, not one per call.
    pub async fn get(&self, id: &str) -> anyhow::Result<Option<OrderResult>> {
        let read = self.reading.read(id, || {
            let (full, go) = (self.keys.full(id), self.keys.go(id));
            let (mut connection, id) = (self.connection.clone(), id.to_string());
            async move {
                read_one(&mut connection, &id, full, go)
                    .await
                    .map_err(Arc::new)
            }
        });
        read.await.map_err(|e| anyhow::anyhow!("{e:#}"))
    }

    /// The results of `ids`, in order: one `MGET` for all of them (on a cluster, whose
    /// `MGET` takes keys of one slot only, one per id, pipelined on the connection).
    pub async fn read_many(&self, ids: &[String]) -> anyhow::Result<Vec<Option<OrderResult>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        if matches!(self.connection, Conn::Cluster(_)) {
            let reads = ids.iter().map(|id| self.get(id));
            return futures::future::join_all(reads).await.into_iter().collect();
        }
        let mut command = redis::cmd("MGET");
        for id in ids {
            command.arg(self.keys.full(id)).arg(self.keys.go(id));
        }
        let mut connection = self.connection.clone();
        let values: Vec<Option<String>> = command
            .query_async(&mut connection)
            .await
            .context("reading results from Redis")?;
        anyhow::ensure!(
            values.len() == ids.len() * 2,
            "Redis answered {} values to an MGET of {} keys",
            values.len(),
            ids.len() * 2
        );
        let mut values = values.into_iter();
        ids.iter()
            .map(|id| decode(id, values.next().flatten(), values.next().flatten()))
            .collect()
    }

    /// Tells waiting readers (in any process) that these ids have results now.
    pub async fn announce(&self, ids: &[&str]) -> anyhow::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut connection = self.connection.clone();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.keys.written_channel())
            .arg(ids.join("\n"))
            .query_async(&mut connection)
            .await
            .context("announcing results")?;
        Ok(())
    }

    /// The result of `id`, waiting until `deadline` for it: handed over by the listener
    /// when announced or found by its sweep every [`FALLBACK_POLL`]; without a running
    /// listener, re-read every [`FALLBACK_POLL`].
    pub async fn wait(
        &self,
        id: &str,
        deadline: tokio::time::Instant,
    ) -> anyhow::Result<Option<OrderResult>> {
        self.waiters
            .wait_for(
                id,
                deadline,
                (!self.waiters.swept()).then_some(FALLBACK_POLL),
                || self.get(id),
            )
            .await
    }

    /// The milliseconds a key has left to live (for tests and tools): `None` when it
    /// does not exist, `Some(-1)` when it never expires.
    pub async fn ttl_ms(&self, key: &str) -> anyhow::Result<Option<i64>> {
        let mut connection = self.connection.clone();
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut connection)
            .await?;
        Ok((ttl != -2).then_some(ttl))
    }

    /// The raw value of a key (for tests and tools).
    pub async fn raw(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut connection = self.connection.clone();
        Ok(redis::cmd("GET")
            .arg(key)
            .query_async(&mut connection)
            .await?)
    }
}

/// Reads the full result of `id` (key `full`) or else its Go result (key `go`).
async fn read_one(
    connection: &mut Conn,
    id: &str,
    full: String,
    go: String,
) -> anyhow::Result<Option<OrderResult>> {
    let (full, go): (Option<String>, Option<String>) = redis::cmd("MGET")
        .arg(full)
        .arg(go)
        .query_async(connection)
        .await
        .context("reading a result from Redis")?;
    decode(id, full, go)
}

/// The result of `id` from its two keys' values: the full one, or the Go one.
fn decode(
    id: &str,
    full: Option<String>,
    go: Option<String>,
) -> anyhow::Result<Option<OrderResult>> {
    if let Some(full) = full {
        let result = serde_json::from_str(&full)
            .with_context(|| format!("the stored result of `{id}` is not valid"))?;
        return Ok(Some(result));
    }
    Ok(go.and_then(|json| OrderResult::from_go_json(id, &json)))
}

/// The result store seam, on Redis.
#[async_trait::async_trait]
impl crate::store::ResultStore for RedisStore {
    async fn put(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        RedisStore::put(self, result).await
    }

    async fn put_recovery(&self, result: &OrderResult) -> anyhow::Result<PutOutcome> {
        RedisStore::put_recovery(self, result).await
    }

    async fn replace(&self, result: &OrderResult) -> anyhow::Result<()> {
        RedisStore::replace(self, result).await
    }

    async fn get(&self, id: &str) -> anyhow::Result<Option<OrderResult>> {
        RedisStore::get(self, id).await
    }

    async fn wait_until(
        &self,
        id: &str,
        deadline: std::time::Instant,
    ) -> anyhow::Result<Option<OrderResult>> {
        self.wait(id, tokio::time::Instant::from_std(deadline))
            .await
    }

    /// One `MGET` for every id ([`RedisStore::read_many`]); with a wait, the missing ones
    /// are then handed over as they are written, with no read of their own.
    async fn get_many(
        &self,
        ids: &[String],
        deadline: Option<std::time::Instant>,
    ) -> anyhow::Result<Vec<Option<OrderResult>>> {
        match deadline {
            None => self.read_many(ids).await,
            Some(deadline) => {
                let poll = (!self.waiters.swept()).then_some(FALLBACK_POLL);
                self.waiters
                    .wait_for_many(
                        ids,
                        tokio::time::Instant::from_std(deadline),
                        poll,
                        |missing| async move { self.read_many(&missing).await },
                    )
                    .await
            }
        }
    }

    async fn announce(&self, ids: &[&str]) -> anyhow::Result<()> {
        RedisStore::announce(self, ids).await
    }

    async fn put_shadow(
        &self,
        run: &str,
        candidates: &[OrderResult],
        tally: &crate::domain::diff::DiffReport,
    ) -> anyhow::Result<()> {
        RedisStore::put_shadow(self, run, candidates, tally).await
    }

    async fn shadow_report(&self, run: &str) -> anyhow::Result<crate::domain::diff::DiffReport> {
        RedisStore::shadow_report(self, run).await
    }

    async fn shadow_result(&self, run: &str, id: &str) -> anyhow::Result<Option<OrderResult>> {
        RedisStore::shadow_result(self, run, id).await
    }

    fn refusal(&self, error: &anyhow::Error) -> Option<String> {
        super::permanent_error(error)
    }
}
