//! Rollouts through the gate: a candidate version (an existing one, or the active one with
//! plugins deployed into it, stored without activating it) run as a shadow beside the
//! live version or as a canary deciding a share of the orders; promoted (activated like
//! `activate`), stopped, or, for a canary, ended by its watch.

use super::{Deploy, Gate, GateError};
use crate::domain::now_unix_ms;
use crate::domain::ruleset::{Canary, Rollout, RulesetRecord, ShadowRun};

/// What a rollout runs.
#[derive(Debug, Clone)]
pub enum Candidate {
    /// An existing ruleset version.
    Version(u64),
    /// The active version with these plugins deployed into it.
    Plugins(Vec<Deploy>),
}

impl Gate {
    /// The rollout in progress.
    pub async fn rollout(&self) -> Result<Rollout, GateError> {
        Ok(self
            .live
            .registry()
            .rollout()
            .await
            .map_err(GateError::Unavailable)?
            .unwrap_or_default())
    }

    async fn set_rollout(&self, rollout: &Rollout) -> Result<(), GateError> {
        self.live
            .registry()
            .set_rollout(rollout)
            .await
            .map_err(GateError::Unavailable)?;
        if let Err(e) = self.live.refresh_rollout().await {
            tracing::warn!(error = %format!("{e:#}"), "this process could not follow the rollout yet; it will retry");
        }
        Ok(())
    }

    /// The version `candidate` names, checked by the gate (builds, bundled examples,
    /// smoke order) and its plugins pinned; plugins make a new version, not activated.
    async fn candidate_version(&self, candidate: Candidate, what: &str) -> Result<u64, GateError> {
        let (version, rules) = match candidate {
            Candidate::Version(version) => {
                let record = self.version(version).await?;
                self.builds_and_decides(
                    &record.body.rules,
                    &format!("{what} refused: version {version}"),
                )
                .await?;
                (None, record)
            }
            Candidate::Plugins(deploys) => {
                let (_, body) = self.candidate(deploys, what).await?;
                let body = body.ok_or_else(|| {
                    GateError::Refused(format!(
                        "{what} refused: these plugins change nothing in the active ruleset"
                    ))
                })?;
                let version = self
                    .live
                    .registry()
                    .create(&body)
                    .await
                    .map_err(GateError::Unavailable)?;
                (Some(version), RulesetRecord { version, body })
            }
        };
        let digests: Vec<&str> = rules.body.rules.iter().map(|r| r.digest.as_str()).collect();
        let gone = self
            .live
            .registry()
            .pin(&digests)
            .await
            .map_err(GateError::Unavailable)?;
        if let Some(digest) = gone.first() {
            return Err(GateError::Refused(format!(
                "{what} refused: the registry no longer has plugin {digest}; deploy it again"
            )));
        }
        Ok(version.unwrap_or(rules.version))
    }

    /// Starts a shadow run of `candidate` (replacing one that runs).
    pub async fn shadow_start(&self, candidate: Candidate) -> Result<Rollout, GateError> {
        let version = self.candidate_version(candidate, "shadow").await?;
        let mut rollout = self.rollout().await?;
        let started_at_unix_ms = now_unix_ms();
        rollout.shadow = Some(ShadowRun {
            id: format!("shadow-{version}-{started_at_unix_ms}"),
            version,
            started_at_unix_ms,
        });
        self.set_rollout(&rollout).await?;
        tracing::info!(version, "shadow run started");
        Ok(rollout)
    }

    /// Stops the shadow run; its results and tally stay readable until they expire.
    pub async fn shadow_stop(&self) -> Result<Rollout, GateError> {
        let mut rollout = self.rollout().await?;
        let Some(shadow) = rollout.shadow.take() else {
            return Err(GateError::Refused("no shadow run is on".into()));
        };
        rollout.last_shadow = Some(shadow);
        self.set_rollout(&rollout).await?;
        Ok(rollout)
    }

    /// Activates the shadow candidate (as `activate` does) and ends the shadow run.
    pub async fn shadow_promote(&self) -> Result<RulesetRecord, GateError> {
        let mut rollout = self.rollout().await?;
        let shadow = rollout
            .shadow
            .take()
            .ok_or_else(|| GateError::Refused("no shadow run is on".into()))?;
        let record = self.activate(shadow.version).await?;
        rollout.last_shadow = Some(shadow);
        self.set_rollout(&rollout).await?;
        Ok(record)
    }

    /// Starts a canary of `candidate` on `basis_points` of the orders (replacing one
    /// that runs).
    pub async fn canary_start(
        &self,
        candidate: Candidate,
        basis_points: u32,
        margin_basis_points: u32,
    ) -> Result<Rollout, GateError> {
        if basis_points == 0 || basis_points > 10_000 {
            return Err(GateError::Invalid(
                "canary: give a share of the orders above 0% and at most 100%".into(),
            ));
        }
        let version = self.candidate_version(candidate, "canary").await?;
        let mut rollout = self.rollout().await?;
        rollout.canary = Some(Canary {
            version,
            basis_points,
            margin_basis_points,
            started_at_unix_ms: now_unix_ms(),
        });
        self.set_rollout(&rollout).await?;
        tracing::info!(version, basis_points, "canary started");
        Ok(rollout)
    }

    /// Activates the canary's candidate (as `activate` does) and ends the canary.
    pub async fn promote(&self) -> Result<RulesetRecord, GateError> {
        let mut rollout = self.rollout().await?;
        let canary = rollout
            .canary
            .take()
            .ok_or_else(|| GateError::Refused("no canary is running".into()))?;
        let record = self.activate(canary.version).await?;
        self.set_rollout(&rollout).await?;
        Ok(record)
    }

    /// Ends the canary of `version` (if it still runs), keeping `reason`.
    pub async fn end_canary(&self, version: u64, reason: &str) -> Result<bool, GateError> {
        let mut rollout = self.rollout().await?;
        if rollout.canary.as_ref().map(|c| c.version) != Some(version) {
            return Ok(false);
        }
        rollout.canary = None;
        rollout.last_canary_end = Some(reason.to_string());
        self.set_rollout(&rollout).await?;
        Ok(true)
    }
}
