//! `order-pipeline audit`: the AdminService's audit trail, oldest first, with its hash
//! chain checked: every event's number follows the one before, its `prev` is that
//! event's hash, and its own hash matches what it says.

use std::io::Write;

use clap::Args;
use order_pipeline::domain::audit::{AuditEvent, verify};
use order_pipeline::proto;

use super::admin::client;
use super::serve::runtime;
use crate::exit::{EXIT_OK, EXIT_TEST_FAILED, Failure};
use crate::shared_args::AdminArgs;

/// Events asked for per call.
const PAGE: u32 = 1000;

/// `audit` arguments.
#[derive(Debug, Args)]
pub(crate) struct AuditArgs {
    /// Only events after this number, or younger than this age (e.g. `1h`, `7d`). The
    /// chain is checked from the first event either way.
    #[arg(long)]
    since: Option<String>,
    /// One JSON object per event.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminArgs,
}

/// Prints the trail; exits 1 when its chain is broken.
pub(crate) fn audit(args: AuditArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let (after, min_time) = match args.since.as_deref().map(str::trim) {
        None | Some("") => (0, i64::MIN),
        Some(text) => {
            match text.parse::<u64>() {
                Ok(seq) => (seq, i64::MIN),
                Err(_) => {
                    let age = humantime::parse_duration(text).map_err(|e| {
                    format!("--since `{text}` is neither an event number nor an age such as 1h ({e})")
                })?;
                    let age = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                    (0, order_pipeline::domain::now_unix_ms().saturating_sub(age))
                }
            }
        }
    };
    let events =
        runtime()?.block_on(async {
            let mut admin = client(&args.admin).await?;
            let mut events: Vec<AuditEvent> = Vec::new();
            loop {
                let since = events.last().map_or(0, |e| e.seq);
                let page = admin
                    .audit(proto::admin::AuditRequest { since, limit: PAGE })
                    .await
                    .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
                    .into_inner();
                let count = page.events_json.len();
                for json in page.events_json {
                    events.push(serde_json::from_str(&json).map_err(|e| {
                        format!("the AdminService sent an event that is not one: {e}")
                    })?);
                }
                if count < PAGE as usize {
                    return Ok::<_, String>(events);
                }
            }
        })?;
    let chain = verify(&events, order_pipeline::domain::audit::GENESIS);
    for event in events
        .iter()
        .filter(|e| e.seq > after && e.at_unix_ms >= min_time)
    {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(event)?)?;
        } else {
            let args: Vec<String> = event.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(
                out,
                "{} {} {} {} [{}] {}",
                event.seq,
                event.at_unix_ms,
                event.principal,
                event.action,
                args.join(" "),
                event.outcome
            )?;
        }
    }
    match chain {
        Ok(()) => {
            if !args.json {
                writeln!(out, "chain intact: {} events", events.len())?;
            }
            Ok(EXIT_OK)
        }
        Err(broken) => {
            writeln!(out, "CHAIN BROKEN: {broken}")?;
            Ok(EXIT_TEST_FAILED)
        }
    }
}
