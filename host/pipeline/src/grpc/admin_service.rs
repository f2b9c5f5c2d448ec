//! `order.admin.AdminService`: deploy, activate and roll back rule plugins while orders
//! flow. A deploy passes the activation gate first (the component loads and implements
//! the world, takes its config, passes the given examples on its own, and the whole new
//! chain builds and evaluates a smoke order without failing); only then is a new
//! ruleset version activated in the registry, which every worker follows.

use std::collections::BTreeMap;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::domain::Order;
use crate::domain::now_unix_ms;
use crate::proto::admin::{self, admin_service_server::AdminService, deploy_request::Position};
use crate::rules::live::{LiveRuleset, rule_ref};
use crate::rules::versions::{ActivateError, Expect, RulesetBody, RulesetRecord};
use order_rules_engine::runner;
use order_rules_engine::{Isolation, RuleChain, RuleSpec, Status as EvalStatus};

/// The admin service.
pub struct AdminApi {
    live: Arc<LiveRuleset>,
}

impl AdminApi {
    /// An admin service over `live`'s registry and engine.
    pub fn new(live: Arc<LiveRuleset>) -> Self {
        Self { live }
    }

    async fn active(&self) -> Result<RulesetRecord, Status> {
        self.live
            .registry()
            .active()
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::failed_precondition("no ruleset is active yet"))
    }

    /// Activates `body` if `expect` still holds, switches this process, answers its info.
    async fn activate(
        &self,
        body: RulesetBody,
        expect: u64,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let version = match self
            .live
            .registry()
            .activate(&body, Expect::Version(expect))
            .await
        {
            Ok(version) => version,
            Err(ActivateError::Conflict(_)) => {
                return Err(Status::aborted(
                    "the active ruleset changed during this call; look again (plugin list) and retry",
                ));
            }
            Err(ActivateError::Store(e)) => return Err(unavailable(e)),
        };
        tracing::info!(version, reason = %body.reason, "ruleset activated");
        if let Err(e) = self.live.refresh().await {
            tracing::warn!(error = %format!("{e:#}"), "this process could not switch yet; it will retry");
        }
        Ok(Response::new(info(&RulesetRecord { version, body }, true)))
    }
}

fn unavailable(e: anyhow::Error) -> Status {
    Status::unavailable(format!("registry unavailable: {e:#}"))
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
        let engine = self.live.engine().clone();
        let wasm = request.wasm;
        let plugin = tokio::task::spawn_blocking(move || engine.load(&wasm))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::invalid_argument(format!("plugin refused: {e}")))?;
        let config: Vec<(String, String)> = request
            .config
            .into_iter()
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect();
        let spec = RuleSpec {
            plugin: Arc::clone(&plugin),
            config,
            isolation,
        };
        let name = plugin.name().to_string();

        // Gate 1: the plugin alone takes its config and passes its examples.
        let examples = request.examples;
        let alone = spec.clone();
        let gate = tokio::task::spawn_blocking(move || -> Result<(), String> {
            let chain = RuleChain::new(vec![alone]).map_err(|e| e.to_string())?;
            for example in &examples {
                let order: Order = serde_json::from_str(&example.order_json)
                    .map_err(|e| format!("example `{}`: not an order: {e}", example.name))?;
                let expected: serde_json::Value = serde_json::from_str(&example.expected_json)
                    .map_err(|e| {
                        format!("example `{}`: expectation is not JSON: {e}", example.name)
                    })?;
                let actual =
                    serde_json::to_value(chain.evaluate(&order)).map_err(|e| e.to_string())?;
                if let Some(m) = runner::compare(&expected, &actual).first() {
                    let got = m
                        .actual
                        .as_ref()
                        .map_or("(missing)".to_string(), ToString::to_string);
                    return Err(format!(
                        "example `{}` failed: {}: expected {}, got {got}",
                        example.name, m.path, m.expected
                    ));
                }
            }
            Ok(())
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        if let Err(message) = gate {
            return Err(Status::failed_precondition(format!(
                "deploy refused: {message}"
            )));
        }

        // Where it goes in the active ruleset.
        let active = self.active().await?;
        let mut rules = active.body.rules.clone();
        let position_of = |target: &str| {
            rules.iter().position(|r| r.name == target).ok_or_else(|| {
                Status::failed_precondition(format!("the active ruleset has no rule `{target}`"))
            })
        };
        let entry = rule_ref(&spec);
        match request.position {
            Some(Position::Before(target)) => {
                let at = position_of(&target)?;
                rules.retain(|r| r.name != name);
                let at = rules
                    .iter()
                    .position(|r| r.name == target)
                    .unwrap_or(at.min(rules.len()));
                rules.insert(at, entry);
            }
            Some(Position::After(target)) => {
                position_of(&target)?;
                rules.retain(|r| r.name != name);
                let at = rules
                    .iter()
                    .position(|r| r.name == target)
                    .map_or(rules.len(), |i| i + 1);
                rules.insert(at, entry);
            }
            Some(Position::Replace(target)) => {
                let at = position_of(&target)?;
                rules[at] = entry;
            }
            None => match rules.iter().position(|r| r.name == name) {
                Some(at) => rules[at] = entry,
                None => rules.push(entry),
            },
        }
        if rules == active.body.rules {
            // Identical digest and config in the same place: nothing to do.
            return Ok(Response::new(info(&active, true)));
        }

        // Gate 2: the whole new chain builds and a smoke order does not fail.
        self.live
            .registry()
            .put_plugin(plugin.digest(), plugin.bytes())
            .await
            .map_err(unavailable)?;
        let chain = self.live.build(&rules).await.map_err(|e| {
            Status::failed_precondition(format!(
                "deploy refused: the new ruleset does not build: {e:#}"
            ))
        })?;
        let smoke = tokio::task::spawn_blocking(move || {
            chain.evaluate(&Order::single_item("smoke-test", "book", 100, "USD"))
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        if smoke.status == EvalStatus::Failed {
            let error = smoke.error.map(|e| e.to_string()).unwrap_or_default();
            return Err(Status::failed_precondition(format!(
                "deploy refused: a smoke order failed: {error}"
            )));
        }

        let body = RulesetBody {
            rules,
            reason: format!("deploy {name} {}", plugin.info().version),
            based_on: None,
            created_at_unix_ms: now_unix_ms(),
        };
        self.activate(body, active.version).await
    }

    async fn active(
        &self,
        _request: Request<admin::ActiveRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        Ok(Response::new(info(&self.active().await?, true)))
    }

    async fn history(
        &self,
        _request: Request<admin::HistoryRequest>,
    ) -> Result<Response<admin::HistoryResponse>, Status> {
        let active = self
            .live
            .registry()
            .active_version()
            .await
            .map_err(unavailable)?;
        let versions = self
            .live
            .registry()
            .history()
            .await
            .map_err(unavailable)?
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
        let active = self.active().await?;
        let target = self
            .live
            .registry()
            .get(version)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| {
                Status::not_found(format!("version: there is no ruleset version {version}"))
            })?;
        if target.body.rules == active.body.rules {
            return Ok(Response::new(info(&active, true)));
        }
        self.live.build(&target.body.rules).await.map_err(|e| {
            Status::failed_precondition(format!("version {version} does not build here: {e:#}"))
        })?;
        let body = RulesetBody {
            rules: target.body.rules,
            reason: format!("activate {version}"),
            based_on: Some(version),
            created_at_unix_ms: now_unix_ms(),
        };
        self.activate(body, active.version).await
    }

    #[tracing::instrument(name = "admin.rollback", skip_all)]
    async fn rollback(
        &self,
        _request: Request<admin::RollbackRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let active = self.active().await?;
        let origin = active.body.based_on.unwrap_or(active.version);
        let Some(target) = origin.checked_sub(1).filter(|v| *v > 0) else {
            return Err(Status::failed_precondition(format!(
                "version {} has no earlier version to roll back to",
                active.version
            )));
        };
        let record = self
            .live
            .registry()
            .get(target)
            .await
            .map_err(unavailable)?
            .ok_or_else(|| Status::not_found(format!("ruleset version {target} is missing")))?;
        let body = RulesetBody {
            rules: record.body.rules,
            reason: format!("rollback to {target}"),
            based_on: Some(target),
            created_at_unix_ms: now_unix_ms(),
        };
        self.activate(body, active.version).await
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
