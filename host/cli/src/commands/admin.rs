//! Calls to the AdminService (`plugin deploy|list|history|activate|rollback`), with the
//! bearer token of `ADMIN_TOKEN`.

use std::io::Write;

use order_pipeline::proto;

use super::serve::runtime;
use crate::exit::{EXIT_OK, Failure};
use crate::shared_args::AdminArgs;

pub(crate) type AdminClient = proto::admin::admin_service_client::AdminServiceClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// Adds `authorization: Bearer <token>` to every admin call.
#[derive(Clone)]
pub(crate) struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client of the AdminService at `admin`, with its bearer token.
pub(crate) async fn client(admin: &AdminArgs) -> Result<AdminClient, String> {
    let token =
        match &admin.token {
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                "ADMIN_TOKEN has characters that cannot go in a header".to_string()
            })?),
            None => None,
        };
    let channel = crate::tls::connect(&admin.admin_addr, &admin.tls, "AdminService").await?;
    Ok(
        proto::admin::admin_service_client::AdminServiceClient::with_interceptor(
            channel,
            BearerToken(token),
        )
        .max_decoding_message_size(order_pipeline::grpc::admin_service::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(order_pipeline::grpc::admin_service::MAX_MESSAGE_BYTES),
    )
}

/// Connects to the AdminService, runs `call`, prints the rulesets it answers.
pub(crate) fn admin_call<F, Fut>(
    admin: &AdminArgs,
    out: &mut dyn Write,
    call: F,
) -> Result<i32, Failure>
where
    F: FnOnce(AdminClient) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<proto::admin::RulesetInfo>, tonic::Status>>,
{
    let rulesets = runtime()?.block_on(async {
        call(client(admin).await?)
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })?;
    for ruleset in rulesets {
        let active = if ruleset.active { " (active)" } else { "" };
        writeln!(
            out,
            "version {}{active}: {}",
            ruleset.version, ruleset.reason
        )?;
        for (i, rule) in ruleset.rules.iter().enumerate() {
            let mut config: Vec<String> = rule
                .config
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            config.sort();
            // The rule's own limits, when it has any: "limits: memory-mib=64 fuel=...".
            let limits = rule
                .limits
                .map(|l| {
                    [
                        ("memory-mib", l.memory_mib as u64),
                        ("fuel", l.fuel),
                        ("deadline-ms", l.deadline_ms),
                        ("fuel-per-line-percent", u64::from(l.fuel_per_line_percent)),
                        ("fuel-max-scale", u64::from(l.fuel_max_scale)),
                    ]
                    .into_iter()
                    .filter(|(_, v)| *v > 0)
                    .map(|(k, v)| format!(" {k}={v}"))
                    .collect::<String>()
                })
                .filter(|l| !l.is_empty())
                .map(|l| format!(" limits:{l}"))
                .unwrap_or_default();
            // Who signed it, and until when: " signed:team-2026 until 2027-12-01T10:00:00Z".
            let signed = rule
                .signature
                .as_ref()
                .map(|s| {
                    let until = std::time::UNIX_EPOCH
                        + std::time::Duration::from_secs(s.not_after_unix.max(0) as u64);
                    format!(
                        " signed:{} until {}",
                        s.key_id,
                        humantime::format_rfc3339_seconds(until)
                    )
                })
                .unwrap_or_default();
            writeln!(
                out,
                "  {}. {} {} {} {} {}{limits}{signed}",
                i + 1,
                rule.name,
                rule.version,
                &rule.digest[..rule.digest.len().min(12)],
                rule.isolation,
                config.join(" ")
            )?;
        }
    }
    Ok(EXIT_OK)
}

/// `plugin status`: every live worker, its ruleset version (flagged when it is not the
/// active one) and its rules' figures. Exits 1 when a worker is not on the active
/// version, or none is live.
pub(crate) fn workers(admin: &AdminArgs, out: &mut dyn Write) -> Result<i32, Failure> {
    let answer = runtime()?.block_on(async {
        client(admin)
            .await?
            .workers(proto::admin::WorkersRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    })?;
    let now = order_pipeline::domain::now_unix_ms();
    writeln!(
        out,
        "active ruleset version {}; {} live worker(s)",
        answer.active_version,
        answer.workers.len()
    )?;
    for worker in &answer.workers {
        let flag = if worker.on_active_version {
            String::new()
        } else {
            format!("  NOT ON THE ACTIVE VERSION {}", answer.active_version)
        };
        writeln!(
            out,
            "{}: version {}{flag}, {} orders, heartbeat {:.1} s ago",
            worker.instance,
            worker.ruleset_version,
            worker.orders,
            (now - worker.at_unix_ms).max(0) as f64 / 1000.0
        )?;
        if !worker.last_error.is_empty() {
            writeln!(out, "  last error: {}", worker.last_error)?;
        }
        for rule in &worker.rules {
            writeln!(
                out,
                "  {} {}: {} evaluations, {} failed, p50 {} µs, p99 {} µs, fuel p50 {} p99 {}",
                rule.name,
                rule.version,
                rule.evaluations,
                rule.failures,
                rule.p50_us,
                rule.p99_us,
                rule.fuel_p50,
                rule.fuel_p99
            )?;
        }
    }
    let all_current =
        !answer.workers.is_empty() && answer.workers.iter().all(|w| w.on_active_version);
    Ok(if all_current {
        EXIT_OK
    } else {
        crate::exit::EXIT_TEST_FAILED
    })
}
