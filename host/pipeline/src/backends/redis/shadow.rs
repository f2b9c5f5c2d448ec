//! A shadow run's results and tally in Redis, under the run's own hash tag
//! (`pipeline:{shadow:<run>}:...`, one slot on a cluster): the candidate's result of each
//! order (`result:<id>`), the counts (`stats`, a hash) and up to ten samples per kind of
//! difference (`samples:<kind>`, lists). One script per batch; everything expires after
//! the result TTL, counted from the run's last batch.

use anyhow::Context as _;

use super::RedisStore;
use crate::domain::OrderResult;
use crate::domain::diff::{DiffReport, KINDS, MAX_SAMPLES, Sample};

/// KEYS = stats; ARGV = key prefix, ttl ms (0: none), batch tally (JSON; its samples
/// are not read: cjson would turn their empty lists into objects), samples kept per
/// kind, how many samples follow, then kind and sample JSON pairs, then id and result
/// JSON pairs.
const RECORD_SCRIPT: &str = r#"
local prefix, ttl = ARGV[1], tonumber(ARGV[2])
local report = cjson.decode(ARGV[3])
redis.call('HINCRBY', KEYS[1], 'orders', report.orders)
redis.call('HINCRBY', KEYS[1], 'differing', report.differing)
for kind, n in pairs(report.by_kind) do redis.call('HINCRBY', KEYS[1], 'kind:' .. kind, n) end
for currency, amount in pairs(report.money) do
  redis.call('HINCRBY', KEYS[1], 'money:' .. currency, amount)
end
local samples = tonumber(ARGV[5])
for i = 6, 5 + 2 * samples, 2 do
  local list = prefix .. 'samples:' .. ARGV[i]
  redis.call('RPUSH', list, ARGV[i + 1])
  redis.call('LTRIM', list, 0, tonumber(ARGV[4]) - 1)
  if ttl > 0 then redis.call('PEXPIRE', list, ttl) end
end
if ttl > 0 then redis.call('PEXPIRE', KEYS[1], ttl) end
for i = 6 + 2 * samples, #ARGV, 2 do
  if ttl > 0 then
    redis.call('SET', prefix .. 'result:' .. ARGV[i], ARGV[i + 1], 'PX', ttl)
  else
    redis.call('SET', prefix .. 'result:' .. ARGV[i], ARGV[i + 1])
  end
end
return 1
"#;

static RECORD: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RECORD_SCRIPT));

impl RedisStore {
    fn shadow_prefix(&self, run: &str) -> String {
        format!("{}pipeline:{{shadow:{run}}}:", self.keys.prefix())
    }

    /// Stores a batch of the candidate's results of shadow run `run` and adds its tally.
    pub async fn put_shadow(
        &self,
        run: &str,
        candidates: &[OrderResult],
        tally: &DiffReport,
    ) -> anyhow::Result<()> {
        let prefix = self.shadow_prefix(run);
        let mut invocation = RECORD.key(format!("{prefix}stats"));
        invocation
            .arg(&prefix)
            .arg(self.ttl_ms)
            .arg(serde_json::to_string(tally).context("serialising a shadow tally")?)
            .arg(MAX_SAMPLES);
        let samples: Vec<(&String, String)> = tally
            .samples
            .iter()
            .flat_map(|(kind, list)| list.iter().map(move |s| (kind, s)))
            .map(|(kind, s)| Ok((kind, serde_json::to_string(s)?)))
            .collect::<Result<_, serde_json::Error>>()?;
        invocation.arg(samples.len());
        for (kind, json) in &samples {
            invocation.arg(*kind).arg(json);
        }
        for result in candidates {
            invocation
                .arg(&result.id)
                .arg(serde_json::to_string(result).context("serialising a result")?);
        }
        let mut connection = self.connection.clone();
        let _: i64 = invocation
            .invoke_async(&mut connection)
            .await
            .context("recording shadow results in Redis")?;
        Ok(())
    }

    /// The tally of shadow run `run` so far.
    pub async fn shadow_report(&self, run: &str) -> anyhow::Result<DiffReport> {
        let prefix = self.shadow_prefix(run);
        let mut connection = self.connection.clone();
        let stats: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
            .arg(format!("{prefix}stats"))
            .query_async(&mut connection)
            .await
            .context("reading a shadow tally from Redis")?;
        let mut report = DiffReport::default();
        for (field, value) in stats {
            let count = u64::try_from(value).unwrap_or(0);
            match field.split_once(':') {
                None if field == "orders" => report.orders = count,
                None if field == "differing" => report.differing = count,
                Some(("kind", kind)) => {
                    report.by_kind.insert(kind.to_string(), count);
                }
                Some(("money", currency)) => {
                    report.money.insert(currency.to_string(), value);
                }
                _ => {}
            }
        }
        for kind in KINDS {
            let samples: Vec<String> = redis::cmd("LRANGE")
                .arg(format!("{prefix}samples:{kind}"))
                .arg(0)
                .arg(-1)
                .query_async(&mut connection)
                .await
                .context("reading shadow samples from Redis")?;
            let samples: Vec<Sample> = samples
                .iter()
                .filter_map(|json| serde_json::from_str(json).ok())
                .collect();
            if !samples.is_empty() {
                report.samples.insert(kind.to_string(), samples);
            }
        }
        Ok(report)
    }

    /// The candidate's result of order `id` in shadow run `run`.
    pub async fn shadow_result(&self, run: &str, id: &str) -> anyhow::Result<Option<OrderResult>> {
        let mut connection = self.connection.clone();
        let json: Option<String> = redis::cmd("GET")
            .arg(format!("{}result:{id}", self.shadow_prefix(run)))
            .query_async(&mut connection)
            .await
            .context("reading a shadow result from Redis")?;
        json.map(|json| serde_json::from_str(&json).context("a stored shadow result is not valid"))
            .transpose()
    }
}
