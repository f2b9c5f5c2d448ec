//! Calls to the AdminService (`plugin deploy|list|history|activate|rollback`), with the
//! bearer token of `ADMIN_TOKEN`.

use std::io::Write;

use order_pipeline::proto;

use super::serve::runtime;
use crate::{AdminArgs, EXIT_OK, Failure};

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
    let token =
        match &admin.token {
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                "ADMIN_TOKEN has characters that cannot go in a header".to_string()
            })?),
            None => None,
        };
    let rulesets = runtime()?.block_on(async {
        let channel = crate::tls::connect(&admin.admin_addr, &admin.tls, "AdminService").await?;
        let client = proto::admin::admin_service_client::AdminServiceClient::with_interceptor(
            channel,
            BearerToken(token),
        );
        call(client)
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
            writeln!(
                out,
                "  {}. {} {} {} {} {}",
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
