//! `order.admin.AdminService`: deploy, activate and roll back rule plugins while orders
//! flow. A thin translation to the [deploy gate](crate::rules::gate), which every change
//! goes through; its errors become statuses in one place ([`super::status`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::ruleset::RulesetRecord;
use crate::proto::admin::{self, admin_service_server::AdminService, deploy_request::Position};
use crate::rules::gate::{Deploy, Gate, GateExample, Placement};
use crate::rules::live::LiveRuleset;
use crate::rules::status::WorkerStatus;
use order_rules_engine::Isolation;

/// The admin service.
pub struct AdminApi {
    gate: Gate,
    live: Arc<LiveRuleset>,
}

impl AdminApi {
    /// An admin service over `live`'s registry and engine.
    pub fn new(live: Arc<LiveRuleset>) -> Self {
        Self {
            gate: Gate::new(Arc::clone(&live)),
            live,
        }
    }
}

/// A heartbeat as the API answers it.
fn worker_info(status: WorkerStatus, active: Option<u64>) -> admin::WorkerInfo {
    admin::WorkerInfo {
        on_active_version: Some(status.ruleset_version) == active,
        instance: status.instance,
        ruleset_version: status.ruleset_version,
        last_error: status.last_error.unwrap_or_default(),
        orders: status.orders,
        rules: status
            .rules
            .into_iter()
            .map(|r| admin::RuleStatus {
                name: r.name,
                version: r.version,
                evaluations: r.evaluations,
                failures: r.failures,
                p50_us: r.p50_us,
                p99_us: r.p99_us,
                fuel_p50: r.fuel_p50,
                fuel_p99: r.fuel_p99,
            })
            .collect(),
        at_unix_ms: status.at_unix_ms,
    }
}

/// The active version as the API answers it.
fn active_info(record: RulesetRecord) -> Response<admin::RulesetInfo> {
    Response::new(info(&record, true))
}

/// A record as the API shows it.
pub fn info(record: &RulesetRecord, active: bool) -> admin::RulesetInfo {
    admin::RulesetInfo {
        version: record.version,
        rules: record
            .body
            .rules
            .iter()
            .map(|r| admin::RuleInfo {
                name: r.name.clone(),
                version: r.version.clone(),
                digest: r.digest.clone(),
                config: r.config.iter().cloned().collect(),
                isolation: r.isolation.to_string(),
                isolation_mode: isolation_mode(r.isolation).into(),
            })
            .collect(),
        reason: record.body.reason.clone(),
        created_at_unix_ms: record.body.created_at_unix_ms,
        active,
    }
}

/// The proto enum of `isolation`.
fn isolation_mode(isolation: Isolation) -> admin::IsolationMode {
    match isolation {
        Isolation::Fresh => admin::IsolationMode::Fresh,
        Isolation::Reuse => admin::IsolationMode::Reuse,
    }
}

/// A deploy's isolation: `isolation_mode` when set, else the older string field (empty
/// means fresh); the two must agree when both are given.
fn deploy_isolation(request: &admin::DeployRequest) -> Result<Isolation, Status> {
    let from_string = match request.isolation.as_str() {
        "" => None,
        text => Some(
            text.parse::<Isolation>()
                .map_err(|e| Status::invalid_argument(format!("isolation: {e}")))?,
        ),
    };
    let from_enum = match admin::IsolationMode::try_from(request.isolation_mode) {
        Ok(admin::IsolationMode::Unspecified) => None,
        Ok(admin::IsolationMode::Fresh) => Some(Isolation::Fresh),
        Ok(admin::IsolationMode::Reuse) => Some(Isolation::Reuse),
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "isolation_mode: {} is not an IsolationMode",
                request.isolation_mode
            )));
        }
    };
    match (from_enum, from_string) {
        (Some(a), Some(b)) if a != b => Err(Status::invalid_argument(format!(
            "isolation_mode ({a}) and isolation ({b}) disagree; set one of them"
        ))),
        (Some(isolation), _) | (None, Some(isolation)) => Ok(isolation),
        (None, None) => Ok(Isolation::Fresh),
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[tracing::instrument(name = "admin.deploy", skip_all)]
    async fn deploy(
        &self,
        request: Request<admin::DeployRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let request = request.into_inner();
        let isolation = deploy_isolation(&request)?;
        let deploy = Deploy {
            wasm: request.wasm,
            config: request.config.into_iter().collect(),
            isolation,
            placement: match request.position {
                Some(Position::Before(target)) => Placement::Before(target),
                Some(Position::After(target)) => Placement::After(target),
                Some(Position::Replace(target)) => Placement::Replace(target),
                None => Placement::SameNameOrEnd,
            },
            examples: request
                .examples
                .into_iter()
                .map(|e| GateExample {
                    name: e.name,
                    order_json: e.order_json,
                    expected_json: e.expected_json,
                })
                .collect(),
        };
        Ok(active_info(self.gate.deploy(deploy).await?))
    }

    async fn active(
        &self,
        _request: Request<admin::ActiveRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        Ok(active_info(self.gate.active().await?))
    }

    async fn history(
        &self,
        _request: Request<admin::HistoryRequest>,
    ) -> Result<Response<admin::HistoryResponse>, Status> {
        let (versions, active) = self.gate.history().await?;
        let versions = versions
            .iter()
            .map(|r| info(r, Some(r.version) == active))
            .collect();
        Ok(Response::new(admin::HistoryResponse { versions }))
    }

    #[tracing::instrument(name = "admin.activate", skip_all, fields(version = request.get_ref().version))]
    async fn activate(
        &self,
        request: Request<admin::ActivateRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let version = request.into_inner().version;
        Ok(active_info(self.gate.activate(version).await?))
    }

    #[tracing::instrument(name = "admin.rollback", skip_all)]
    async fn rollback(
        &self,
        _request: Request<admin::RollbackRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        Ok(active_info(self.gate.rollback().await?))
    }

    async fn workers(
        &self,
        _request: Request<admin::WorkersRequest>,
    ) -> Result<Response<admin::WorkersResponse>, Status> {
        let registry = self.live.registry();
        let unavailable = |e: anyhow::Error| Status::unavailable(format!("registry: {e:#}"));
        let active = registry.active_version().await.map_err(unavailable)?;
        let workers = registry.heartbeats().await.map_err(unavailable)?;
        Ok(Response::new(admin::WorkersResponse {
            active_version: active.unwrap_or(0),
            workers: workers
                .into_iter()
                .map(|status| worker_info(status, active))
                .collect(),
        }))
    }
}

/// Checks `authorization: Bearer <token>` in constant time; with no token configured
/// (allowed on loopback only) every call passes.
#[derive(Clone)]
pub struct TokenCheck {
    token: Option<Arc<str>>,
}

impl TokenCheck {
    /// A check for `token`.
    pub fn new(token: Option<String>) -> Self {
        Self {
            token: token.map(Arc::from),
        }
    }
}

impl tonic::service::Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("authorization: a bearer token (ADMIN_TOKEN) is required")
            })?;
        let (a, b) = (given.as_bytes(), token.as_bytes());
        let same =
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        if same {
            Ok(request)
        } else {
            Err(Status::unauthenticated("authorization: wrong bearer token"))
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn request(isolation: &str, mode: admin::IsolationMode) -> admin::DeployRequest {
        admin::DeployRequest {
            isolation: isolation.into(),
            isolation_mode: mode.into(),
            ..admin::DeployRequest::default()
        }
    }

    #[test]
    fn isolation_comes_from_the_enum_or_the_older_string() {
        use admin::IsolationMode as M;
        let cases = [
            ("", M::Unspecified, Isolation::Fresh),
            ("reuse", M::Unspecified, Isolation::Reuse),
            ("", M::Reuse, Isolation::Reuse),
            ("fresh", M::Fresh, Isolation::Fresh),
        ];
        for (text, mode, want) in cases {
            assert_eq!(deploy_isolation(&request(text, mode)).unwrap(), want);
        }
        let err = deploy_isolation(&request("reuse", M::Fresh)).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("disagree"), "{}", err.message());
        let err = deploy_isolation(&request("shared", M::Unspecified)).unwrap_err();
        assert!(err.message().starts_with("isolation:"), "{}", err.message());
        let mut bad = request("", M::Unspecified);
        bad.isolation_mode = 7;
        let err = deploy_isolation(&bad).unwrap_err();
        assert!(
            err.message().starts_with("isolation_mode:"),
            "{}",
            err.message()
        );
    }
}
