//! The AdminService's calls that read orders, plugins and the audit trail, or decide
//! orders again: what each does once its caller may (the service checks and audits).

use tonic::Status;

use super::AdminApi;
use crate::grpc::admin_convert::{info, replay_status, selection};
use crate::proto::admin;
use crate::replay::Request as ReplayRun;

impl AdminApi {
    /// Replays orders: to scratch, or over the stored results.
    pub(super) async fn run_replay(
        &self,
        request: admin::ReplayRequest,
    ) -> Result<admin::ReplayResponse, Status> {
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
        Ok(admin::ReplayResponse {
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
        })
    }

    /// The dead letters, with their orders and results.
    pub(super) async fn list_dead_letters(
        &self,
        request: admin::DeadLettersRequest,
    ) -> Result<admin::DeadLettersResponse, Status> {
        let limit = match request.limit {
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
        Ok(admin::DeadLettersResponse { letters })
    }

    /// An order's stored result and the version that decided it.
    pub(super) async fn find_decision(
        &self,
        request: admin::DecisionRequest,
    ) -> Result<admin::DecisionResponse, Status> {
        let id = request.id;
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
        Ok(admin::DecisionResponse {
            result_json: serde_json::to_string(&result)
                .map_err(|e| Status::internal(e.to_string()))?,
            version: Some(info(&version, active)),
        })
    }

    /// A plugin's bytes, only when they are the ones its digest names.
    pub(super) async fn plugin_blob(
        &self,
        request: admin::PluginRequest,
    ) -> Result<admin::PluginResponse, Status> {
        let digest = request.digest;
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
        Ok(admin::PluginResponse { wasm })
    }

    /// The audit events after `since`, and the hash the first must follow.
    pub(super) async fn audit_events(
        &self,
        request: admin::AuditRequest,
    ) -> Result<admin::AuditResponse, Status> {
        let limit = match request.limit {
            0 => 1000,
            n => n.min(10_000) as usize,
        };
        let registry = self.live.registry();
        let unavailable = |e: anyhow::Error| Status::unavailable(format!("registry: {e:#}"));
        let events = registry
            .audit(request.since, limit)
            .await
            .map_err(unavailable)?;
        // The hash the first returned event must follow.
        let prev = match request.since {
            0 => crate::domain::audit::GENESIS.to_string(),
            since => registry
                .audit(since - 1, 1)
                .await
                .map_err(unavailable)?
                .first()
                .map(|e| e.hash.clone())
                .unwrap_or_default(),
        };
        let events_json = events
            .iter()
            .map(serde_json::to_string)
            .collect::<Result<_, _>>()
            .map_err(|e| Status::internal(e.to_string()))?;
        Ok(admin::AuditResponse { events_json, prev })
    }
}
