//! `order.admin.AdminService`: deploy, activate and roll back rule plugins while orders
//! flow. A thin translation to the [deploy gate](crate::rules::gate), which every change
//! goes through; its errors become statuses in one place ([`super::status`]).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::admin_convert::{
    active_info, basis_points, deploy_of, info, replay_status, rollout_info, selection, worker_info,
};
use super::principals::{Need, Role, require};
use crate::proto::admin::{self, admin_service_server::AdminService};
use crate::replay::{Replayer, Request as ReplayRun};
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
        require(&request, "Deploy", Need::role(Role::Deployer))?;
        let request = request.into_inner();
        let canary = basis_points("canary_percent", request.canary_percent)?;
        let margin = match basis_points("canary_margin_percent", request.canary_margin_percent)? {
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
    }

    async fn active(
        &self,
        request: Request<admin::ActiveRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        require(&request, "Active", Need::role(Role::Reader))?;
        Ok(active_info(self.gate.active().await?))
    }

    async fn history(
        &self,
        request: Request<admin::HistoryRequest>,
    ) -> Result<Response<admin::HistoryResponse>, Status> {
        require(&request, "History", Need::role(Role::Reader))?;
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
        require(&request, "Activate", Need::role(Role::Deployer))?;
        let version = request.into_inner().version;
        Ok(active_info(self.gate.activate(version).await?))
    }

    #[tracing::instrument(name = "admin.rollback", skip_all)]
    async fn rollback(
        &self,
        request: Request<admin::RollbackRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        require(&request, "Rollback", Need::role(Role::Operator))?;
        Ok(active_info(self.gate.rollback().await?))
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
        require(&request, "ShadowStart", need)?;
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
    }

    async fn shadow_diff(
        &self,
        request: Request<admin::ShadowDiffRequest>,
    ) -> Result<Response<admin::ShadowDiffResponse>, Status> {
        require(&request, "ShadowDiff", Need::role(Role::Reader))?;
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
    }

    #[tracing::instrument(name = "admin.shadow_promote", skip_all)]
    async fn shadow_promote(
        &self,
        request: Request<admin::ShadowPromoteRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        require(&request, "ShadowPromote", Need::role(Role::Deployer))?;
        Ok(active_info(self.gate.shadow_promote().await?))
    }

    #[tracing::instrument(name = "admin.shadow_stop", skip_all)]
    async fn shadow_stop(
        &self,
        request: Request<admin::ShadowStopRequest>,
    ) -> Result<Response<admin::RolloutInfo>, Status> {
        require(&request, "ShadowStop", Need::role(Role::Operator))?;
        Ok(rollout_info(self.gate.shadow_stop().await?))
    }

    #[tracing::instrument(name = "admin.promote", skip_all)]
    async fn promote(
        &self,
        request: Request<admin::PromoteRequest>,
    ) -> Result<Response<admin::RulesetInfo>, Status> {
        require(&request, "Promote", Need::role(Role::Deployer))?;
        Ok(active_info(self.gate.promote().await?))
    }

    async fn rollout(
        &self,
        request: Request<admin::RolloutRequest>,
    ) -> Result<Response<admin::RolloutInfo>, Status> {
        require(&request, "Rollout", Need::role(Role::Reader))?;
        Ok(rollout_info(self.gate.rollout().await?))
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
        require(&request, "Replay", need)?;
        let request = request.into_inner();
        let selection = selection(&request)?;
        if request.overwrite && request.reason.trim().is_empty() {
            return Err(Status::invalid_argument(
                "reason: say why the results are replaced (it is recorded in each)",
            ));
        }
        let outcome = self
            .replayer()?
            .replay(ReplayRun {
                selection,
                version: (request.version != 0).then_some(request.version),
                overwrite: request.overwrite.then_some(request.reason),
                limit: match request.limit {
                    0 => crate::replay::DEFAULT_LIMIT,
                    n => n as usize,
                },
            })
            .await
            .map_err(replay_status)?;
        Ok(Response::new(admin::ReplayResponse {
            run: outcome.run,
            version: outcome.version,
            decided: outcome.decided,
            differing: outcome.report.differing,
            by_kind: outcome.report.by_kind.into_iter().collect(),
            money: outcome.report.money.into_iter().collect(),
            samples_json: serde_json::to_string(&outcome.report.samples)
                .map_err(|e| Status::internal(e.to_string()))?,
            without_result: outcome.without_result,
            overwritten: outcome.overwritten,
            skipped: outcome.skipped,
            seconds: outcome.seconds,
        }))
    }

    async fn dead_letters(
        &self,
        request: Request<admin::DeadLettersRequest>,
    ) -> Result<Response<admin::DeadLettersResponse>, Status> {
        require(&request, "DeadLetters", Need::data(Role::Reader))?;
        let limit = match request.into_inner().limit {
            0 => 1000,
            n => n as usize,
        };
        let letters = self
            .replayer()?
            .dead_letters(limit)
            .await
            .map_err(replay_status)?;
        let letters = letters
            .into_iter()
            .map(|l| {
                let (order_json, error) = match l.order {
                    Ok(order) => (
                        serde_json::to_string(&order).unwrap_or_default(),
                        String::new(),
                    ),
                    Err(why) => (String::new(), why),
                };
                admin::DeadLetter {
                    position: l.position,
                    headers: l.headers.into_iter().collect(),
                    order_json,
                    error,
                    result_status: l.result_status.unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(admin::DeadLettersResponse { letters }))
    }

    async fn decision(
        &self,
        request: Request<admin::DecisionRequest>,
    ) -> Result<Response<admin::DecisionResponse>, Status> {
        require(&request, "Decision", Need::data(Role::Reader))?;
        let id = request.into_inner().id;
        let store = self
            .store
            .as_ref()
            .ok_or_else(|| Status::unavailable("this process has no result store"))?;
        let result = store
            .get(&id)
            .await
            .map_err(|e| Status::unavailable(format!("store: {e:#}")))?
            .ok_or_else(|| Status::not_found(format!("id: no result for `{id}`")))?;
        if result.order.is_none() {
            return Err(Status::failed_precondition(format!(
                "id: the result of `{id}` does not keep its order (written by the Go worker, or before results kept it)"
            )));
        }
        let version = self.gate.version(result.ruleset_version).await?;
        let active = self.gate.active().await?.version == version.version;
        Ok(Response::new(admin::DecisionResponse {
            result_json: serde_json::to_string(&result)
                .map_err(|e| Status::internal(e.to_string()))?,
            version: Some(info(&version, active)),
        }))
    }

    async fn plugin(
        &self,
        request: Request<admin::PluginRequest>,
    ) -> Result<Response<admin::PluginResponse>, Status> {
        require(&request, "Plugin", Need::role(Role::Reader))?;
        let digest = request.into_inner().digest;
        let wasm = self
            .live
            .registry()
            .plugin(&digest)
            .await
            .map_err(|e| Status::unavailable(format!("registry: {e:#}")))?
            .ok_or_else(|| Status::not_found(format!("digest: no plugin {digest}")))?;
        // The registry's bytes are handed out only when they are the ones the digest names.
        if order_rules_engine::digest(&wasm) != digest {
            metrics::counter!(crate::metrics::PLUGIN_BLOBS_REFUSED, "reason" => "digest-mismatch")
                .increment(1);
            return Err(Status::data_loss(format!(
                "digest: the registry's blob for {digest} does not match it (substituted or corrupted)"
            )));
        }
        Ok(Response::new(admin::PluginResponse { wasm }))
    }

    async fn workers(
        &self,
        request: Request<admin::WorkersRequest>,
    ) -> Result<Response<admin::WorkersResponse>, Status> {
        require(&request, "Workers", Need::role(Role::Reader))?;
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
