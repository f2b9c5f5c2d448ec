//! Workers' reports to the rules supervisor (`rules::supervisor`) when the supervisor runs
//! in another process: a stream beside the registry (`pipeline:{<group>}:reports`),
//! appended by workers (`XADD`, trimmed to about [`REPORTS_KEPT`]) and read by the
//! supervisors of the group as one consumer group, each report handled once and then
//! acknowledged. The only registry key a worker's Redis user needs to write.

use anyhow::Context as _;

use super::RedisRegistry;

/// About how many reports the stream keeps (older ones are trimmed as workers append).
pub const REPORTS_KEPT: usize = 10_000;
/// The consumer group of the supervisors.
const GROUP: &str = "supervisors";
/// Most reports read at once.
const BATCH: usize = 32;

/// `XREADGROUP`'s answer: per stream, its records (id, field-value pairs).
type StreamRead = Option<Vec<(String, Vec<(String, Vec<(String, String)>)>)>>;

impl RedisRegistry {
    /// The stream of reports.
    pub fn reports_key(&self) -> String {
        format!("{}reports", self.namespace)
    }

    /// Appends a report (JSON).
    pub async fn push_report(&self, json: &str) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let _: String = redis::cmd("XADD")
            .arg(self.reports_key())
            .arg("MAXLEN")
            .arg("~")
            .arg(REPORTS_KEPT)
            .arg("*")
            .arg("report")
            .arg(json)
            .query_async(&mut connection)
            .await
            .context("appending a report for the rules supervisor")?;
        Ok(())
    }

    /// Creates the supervisors' consumer group (and the stream) if it is missing.
    pub async fn reports_group(&self) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let created: redis::RedisResult<String> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.reports_key())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut connection)
            .await;
        match created {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e).context("creating the reports group"),
        }
    }

    /// The reports no supervisor has taken yet (id, JSON), at most a batch.
    pub async fn read_reports(&self, consumer: &str) -> anyhow::Result<Vec<(String, String)>> {
        let mut connection = self.connection.clone();
        let read: StreamRead = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("STREAMS")
            .arg(self.reports_key())
            .arg(">")
            .query_async(&mut connection)
            .await
            .context("reading the workers' reports")?;
        Ok(read
            .into_iter()
            .flatten()
            .flat_map(|(_, records)| records)
            .map(|(id, fields)| {
                let json = fields
                    .into_iter()
                    .find(|(name, _)| name == "report")
                    .map(|(_, json)| json)
                    .unwrap_or_default();
                (id, json)
            })
            .collect())
    }

    /// Marks a report handled.
    pub async fn ack_report(&self, id: &str) -> anyhow::Result<()> {
        let mut connection = self.connection.clone();
        let _: i64 = redis::cmd("XACK")
            .arg(self.reports_key())
            .arg(GROUP)
            .arg(id)
            .query_async(&mut connection)
            .await
            .context("acknowledging a report")?;
        Ok(())
    }
}

/// Workers' reports in a Redis stream, for the supervisor of another process.
#[async_trait::async_trait]
impl crate::rules::registry::ReportQueue for RedisRegistry {
    async fn push(&self, json: &str) -> anyhow::Result<()> {
        self.push_report(json).await
    }
    async fn create_group(&self) -> anyhow::Result<()> {
        self.reports_group().await
    }
    async fn read(&self, consumer: &str) -> anyhow::Result<Vec<(String, String)>> {
        self.read_reports(consumer).await
    }
    async fn ack(&self, id: &str) -> anyhow::Result<()> {
        self.ack_report(id).await
    }
}
