//! `order.admin.AdminService`: deploy, activate and roll back rule plugins while orders
//! flow. A thin translation to the [deploy gate](crate::rules::gate), which every change
//! goes through; its errors become statuses in one place ([`super::status`]).

mod data;

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admin_convert::{active_info, basis_points, deploy_of, info, rollout_info, worker_info};
use super::principals::{Need, Principal, Role, require};
use crate::domain::audit::AuditEntry;
use crate::proto::admin::{self, admin_service_server::AdminService};
use crate::replay::Replayer;
use crate::rules::gate::{Candidate, DEFAULT_CANARY_MARGIN, Gate};
use crate::rules::live::LiveRuleset;
use crate::store::Store;

/// Largest message the AdminService takes or sends, either way: a deploy carries its
/// plugin, and a rule from an interpreter (JavaScript about 12 MB, Python about 18 MB)
/// is far above gRPC's default of 4 MiB.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// The admin service.
pub struct AdminApi {
    gate: Gate,
    live: Arc<LiveRuleset>,
    /// Where shadow runs' tallies are read (the worker's result store).
    store: Option<Store>,
    /// Replays and dead letters.
    replayer: Option<Arc<Replayer>>,
}

impl AdminApi {
    /// An admin service over `live`'s registry and engine, and the worker's `store`.
    pub fn new(live: Arc<LiveRuleset>, store: Option<Store>) -> Self {
        Self {
            gate: Gate::new(Arc::clone(&live)),
            live,
            store,
            replayer: None,
        }
    }

    /// Serves replays and dead letters with `replayer`.
    pub fn with_replayer(mut self, replayer: Arc<Replayer>) -> Self {
        self.replayer = Some(replayer);
        self
    }

    /// Runs `body` when `who` may make `call`, and appends one audit event either way:
    /// the principal, the call, `args` and how it ended. An audit that cannot be written
    /// is logged at error; the call's own answer stands.
    async fn audited<T>(
        &self,
        by: String,
        who: Result<Principal, Status>,
        call: &'static str,
        args: Vec<(&'static str, String)>,
        body: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let answer = match who {
            Ok(_) => body.await,
            Err(denied) => Err(denied),
        };
        let outcome = match &answer {
            Ok(_) => "ok".to_string(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        };
        let entry = AuditEntry {
            principal: by,
            action: call.to_string(),
            args: args.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
            outcome,
        };
        if let Err(e) = self.live.registry().append_audit(entry).await {
            metrics::counter!(crate::metrics::AUDIT_FAILURES).increment(1);
            tracing::error!(call, error = %format!("{e:#}"), "cannot write the audit event of an admin call");
        }
        answer
    }

    fn replayer(&self) -> Result<&Replayer, Status> {
        self.replayer
            .as_deref()
            .ok_or_else(|| Status::unavailable("this process does not replay"))
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    #[tracing::instrument(name = "admin.deploy", skip_all)]
    async fn deploy(
        &self,
        request: Request<admin::DeployRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let who = require(&request, "Deploy", Need::role(Role::Deployer));
        let by = principal_name(&request);
        let args = vec![(
            "digest",
            order_rules_engine::digest(&request.get_ref().wasm),
        )];
        self.audited(by, who, "Deploy", args, async move {
            let request = request.into_inner();
            let canary = basis_points("canary_percent", request.canary_percent)?;
            let margin = match basis_points("canary_margin_percent", request.canary_margin_percent)?
            {
                0 => DEFAULT_CANARY_MARGIN,
                margin => margin,
            };
            let deploy = deploy_of(request)?;
            if canary == 0 {
                return Ok(active_info(self.gate.deploy(deploy).await?));
            }
            let rollout = self
                .gate
                .canary_start(Candidate::Plugins(vec![deploy]), canary, margin)
                .await?;
            let version = rollout.canary.map_or(0, |c| c.version);
            Ok(Response::new(info(
                &self.gate.version(version).await?,
                false,
            )))
        })
        .await
    }

    async fn active(
        &self,
        request: Request<admin::ActiveRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let who = require(&request, "Active", Need::role(Role::Reader));
        let by = principal_name(&request);
        let args = Vec::new();
        self.audited(by, who, "Active", args, async move {
            Ok(active_info(self.gate.active().await?))
        })
        .await
    }

    async fn history(
        &self,
        request: Request<admin::HistoryRequest>,
    ) -> Result<Response<admin::HistoryResponse>, Status> {
        let who = require(&request, "History", Need::role(Role::Reader));
        let by = principal_name(&request);
        let args = Vec::new();
        self.audited(by, who, "History", args, async move {
            let (versions, active) = self.gate.history().await?;
            let versions = versions
                .iter()
                .map(|r| info(r, Some(r.version) == active))
                .collect();
            Ok(Response::new(admin::HistoryResponse { versions }))
        })
        .await
    }

    #[tracing::instrument(name = "admin.activate", skip_all, fields(version = request.get_ref().version))]
    async fn activate(
        &self,
        request: Request<admin::ActivateRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let who = require(&request, "Activate", Need::role(Role::Deployer));
        let by = principal_name(&request);
        let args = vec![("version", request.get_ref().version.to_string())];
        self.audited(by, who, "Activate", args, async move {
            let version = request.into_inner().version;
            Ok(active_info(self.gate.activate(version).await?))
        })
        .await
    }

    #[tracing::instrument(name = "admin.rollback", skip_all)]
    async fn rollback(
        &self,
        request: Request<admin::RollbackRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let who = require(&request, "Rollback", Need::role(Role::Operator));
        let by = principal_name(&request);
        let args = Vec::new();
        self.audited(by, who, "Rollback", args, async move {
            Ok(active_info(self.gate.rollback().await?))
        })
        .await
    }

    #[tracing::instrument(name = "admin.shadow_start", skip_all)]
    async fn shadow_start(
        &self,
        request: Request<admin::ShadowStartRequest>,
    ) -> Result<Response<admin::RolloutInfo>, Status> {
        // A candidate made of new plugins stores code: a deployer's call.
        let need = if request.get_ref().plugins.is_empty() {
            Need::role(Role::Operator)
        } else {
            Need::role(Role::Deployer)
        };
        let who = require(&request, "ShadowStart", need);
        let by = principal_name(&request);
        let args = vec![
            ("version", request.get_ref().version.to_string()),
            (
                "plugins",
                request
                    .get_ref()
                    .plugins
                    .iter()
                    .map(|p| order_rules_engine::digest(&p.wasm))
                    .collect::<Vec<_>>()
                    .join(","),
            ),
        ];
        self.audited(by, who, "ShadowStart", args, async move {
        let request = request.into_inner();
        let candidate = match (request.version, request.plugins.is_empty()) {
            (0, true) => {
                return Err(Status::invalid_argument(
                    "version or plugins: name the candidate (a version, or plugins to deploy into the active ruleset)",
                ));
            }
            (0, false) => Candidate::Plugins(
                request
                    .plugins
                    .into_iter()
                    .map(deploy_of)
                    .collect::<Result<_, _>>()?,
            ),
            (version, true) => Candidate::Version(version),
            (_, false) => {
                return Err(Status::invalid_argument(
                    "version and plugins: give one of them, not both",
                ));
            }
        };
        Ok(rollout_info(self.gate.shadow_start(candidate).await?))
        })
        .await
    }

    async fn shadow_diff(
        &self,
        request: Request<admin::ShadowDiffRequest>,
    ) -> Result<Response<admin::ShadowDiffResponse>, Status> {
        let who = require(&request, "ShadowDiff", Need::role(Role::Reader));
        let by = principal_name(&request);
        let args = Vec::new();
        self.audited(by, who, "ShadowDiff", args, async move {
            let rollout = self.gate.rollout().await?;
            let on = rollout.shadow.is_some();
            let Some(run) = rollout.shadow.or(rollout.last_shadow) else {
                return Err(Status::failed_precondition(
                    "no shadow run yet: start one with `plugin shadow start`",
                ));
            };
            let store = self
                .store
                .as_ref()
                .ok_or_else(|| Status::unavailable("this process has no result store"))?;
            let report = store
                .shadow_report(&run.id)
                .await
                .map_err(|e| Status::unavailable(format!("store: {e:#}")))?;
            Ok(Response::new(admin::ShadowDiffResponse {
                run: run.id,
                candidate_version: run.version,
                on,
                orders: report.orders,
                differing: report.differing,
                by_kind: report.by_kind.into_iter().collect(),
                money: report.money.into_iter().collect(),
                samples_json: serde_json::to_string(&report.samples)
                    .map_err(|e| Status::internal(e.to_string()))?,
            }))
        })
        .await
    }

    #[tracing::instrument(name = "admin.shadow_promote", skip_all)]
    async fn shadow_promote(
        &self,
        request: Request<admin::ShadowPromoteRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let who = require(&request, "ShadowPromote", Need::role(Role::Deployer));
        let by = principal_name(&request);
        let args = Vec::new();
        self.audited(by, who, "ShadowPromote", args, async move {
            Ok(active_info(self.gate.shadow_promote().await?))
        })
        .await
    }

    #[tracing::instrument(name = "admin.shadow_stop", skip_all)]
    async fn shadow_stop(
        &self,
        request: Request<admin::ShadowStopRequest>,
    ) -> Result<Response<admin::RolloutInfo>, Status> {
        let who = require(&request, "ShadowStop", Need::role(Role::Operator));
        let by = principal_name(&request);
        let args = Vec::new();
        self.audited(by, who, "ShadowStop", args, async move {
            Ok(rollout_info(self.gate.shadow_stop().await?))
        })
        .await
    }

    #[tracing::instrument(name = "admin.promote", skip_all)]
    async fn promote(
        &self,
        request: Request<admin::PromoteRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        let who = require(&request, "Promote", Need::role(Role::Deployer));
        let by = principal_name(&request);
        let args = Vec::new();
        self.audited(by, who, "Promote", args, async move {
            Ok(active_info(self.gate.promote().await?))
        })
        .await
    }

    async fn rollout(
        &self,
        request: Request<admin::RolloutRequest>,
    ) -> Result<Response<admin::RolloutInfo>, Status> {
        let who = require(&request, "Rollout", Need::role(Role::Reader));
        let by = principal_name(&request);
        let args = Vec::new();
        self.audited(by, who, "Rollout", args, async move {
            Ok(rollout_info(self.gate.rollout().await?))
        })
        .await
    }

    #[tracing::instrument(name = "admin.replay", skip_all)]
    async fn replay(
        &self,
        request: Request<admin::ReplayRequest>,
    ) -> Result<Response<admin::ReplayResponse>, Status> {
        // To scratch: an operator's; overwriting results needs the data grant too.
        let need = if request.get_ref().overwrite {
            Need::data(Role::Operator)
        } else {
            Need::role(Role::Operator)
        };
        let who = require(&request, "Replay", need);
        let by = principal_name(&request);
        let args = vec![
            ("version", request.get_ref().version.to_string()),
            ("overwrite", request.get_ref().overwrite.to_string()),
            ("reason", request.get_ref().reason.clone()),
            ("ids", request.get_ref().ids.len().to_string()),
        ];
        self.audited(by, who, "Replay", args, async move {
            self.run_replay(request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn dead_letters(
        &self,
        request: Request<admin::DeadLettersRequest>,
    ) -> Result<Response<admin::DeadLettersResponse>, Status> {
        let who = require(&request, "DeadLetters", Need::data(Role::Reader));
        let by = principal_name(&request);
        let args = vec![("limit", request.get_ref().limit.to_string())];
        self.audited(by, who, "DeadLetters", args, async move {
            self.list_dead_letters(request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn decision(
        &self,
        request: Request<admin::DecisionRequest>,
    ) -> Result<Response<admin::DecisionResponse>, Status> {
        let who = require(&request, "Decision", Need::data(Role::Reader));
        let by = principal_name(&request);
        let args = vec![("id", request.get_ref().id.clone())];
        self.audited(by, who, "Decision", args, async move {
            self.find_decision(request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn plugin(
        &self,
        request: Request<admin::PluginRequest>,
    ) -> Result<Response<admin::PluginResponse>, Status> {
        let who = require(&request, "Plugin", Need::role(Role::Reader));
        let by = principal_name(&request);
        let args = vec![("digest", request.get_ref().digest.clone())];
        self.audited(by, who, "Plugin", args, async move {
            self.plugin_blob(request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn audit(
        &self,
        request: Request<admin::AuditRequest>,
    ) -> Result<Response<admin::AuditResponse>, Status> {
        let who = require(&request, "Audit", Need::role(Role::Reader));
        let by = principal_name(&request);
        let args = vec![("since", request.get_ref().since.to_string())];
        self.audited(by, who, "Audit", args, async move {
            self.audit_events(request.into_inner())
                .await
                .map(Response::new)
        })
        .await
    }

    async fn workers(
        &self,
        request: Request<admin::WorkersRequest>,
    ) -> Result<Response<admin::WorkersResponse>, Status> {
        let who = require(&request, "Workers", Need::role(Role::Reader));
        let by = principal_name(&request);
        let args = Vec::new();
        self.audited(by, who, "Workers", args, async move {
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
        })
        .await
    }
}

/// The name of the principal that sent `request` (`unknown` before authentication).
fn principal_name<T>(request: &Request<T>) -> String {
    request
        .extensions()
        .get::<Principal>()
        .map_or_else(|| "unknown".to_string(), |p| p.name.clone())
}
