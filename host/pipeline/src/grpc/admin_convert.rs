//! The AdminService's translations: requests into what the gate and the replayer take
//! (deploys, canary shares, replay selections), and records, rollouts and heartbeats
//! into answers.

use tonic::{Response, Status};

use crate::domain::ruleset::{PluginSignature, Rollout, RulesetRecord};
use crate::proto::admin::{self, deploy_request::Position};
use crate::replay::{ReplayError, Selection};
use crate::rules::gate::{Deploy, GateExample, Placement};
use crate::rules::status::WorkerStatus;
use order_rules_engine::{Isolation, RuleLimits};

pub(super) fn replay_status(e: ReplayError) -> Status {
    match e {
        ReplayError::Invalid(message) => Status::invalid_argument(message),
        ReplayError::Version(message) => Status::not_found(message),
        ReplayError::Unavailable(e) => Status::unavailable(format!("{e:#}")),
    }
}

/// The orders a replay request names.
pub(super) fn selection(request: &admin::ReplayRequest) -> Result<Selection, Status> {
    let mut chosen = Vec::new();
    if !request.ids.is_empty() {
        chosen.push(Selection::Ids(request.ids.clone()));
    }
    if request.since_unix_ms != 0 || request.until_unix_ms != 0 {
        if request.until_unix_ms <= request.since_unix_ms {
            return Err(Status::invalid_argument(
                "until_unix_ms: the end of the time range must come after its start",
            ));
        }
        chosen.push(Selection::Time {
            since: request.since_unix_ms,
            until: request.until_unix_ms,
        });
    }
    if !request.offsets.is_empty() {
        let ranges = request
            .offsets
            .iter()
            .map(|r| {
                if r.from < 0 || (r.to != 0 && r.to <= r.from) {
                    return Err(Status::invalid_argument(format!(
                        "offsets: partition {} from {} to {} is not a range",
                        r.partition, r.from, r.to
                    )));
                }
                Ok((r.partition, r.from, (r.to != 0).then_some(r.to)))
            })
            .collect::<Result<_, _>>()?;
        chosen.push(Selection::Offsets(ranges));
    }
    if request.dead_letters {
        chosen.push(Selection::DeadLetters);
    }
    match chosen.len() {
        1 => Ok(chosen.remove(0)),
        0 => Err(Status::invalid_argument(
            "ids, time range, offsets or dead_letters: choose the orders to replay",
        )),
        _ => Err(Status::invalid_argument(
            "ids, time range, offsets, dead_letters: choose one of them",
        )),
    }
}

/// A rollout as the API answers it.
pub(super) fn rollout_info(rollout: Rollout) -> Response<admin::RolloutInfo> {
    let shadow = rollout.shadow.as_ref();
    let canary = rollout.canary.as_ref();
    Response::new(admin::RolloutInfo {
        shadow_run: shadow.map(|s| s.id.clone()).unwrap_or_default(),
        shadow_version: shadow.map_or(0, |s| s.version),
        canary_version: canary.map_or(0, |c| c.version),
        canary_percent: canary.map_or(0.0, |c| f64::from(c.basis_points) / 100.0),
        canary_margin_percent: canary.map_or(0.0, |c| f64::from(c.margin_basis_points) / 100.0),
        last_canary_end: rollout.last_canary_end.unwrap_or_default(),
    })
}

/// A percentage of the API (0..=100) in basis points; `name` names it in the error.
pub(super) fn basis_points(name: &str, percent: f64) -> Result<u32, Status> {
    if !(0.0..=100.0).contains(&percent) || percent.is_nan() {
        return Err(Status::invalid_argument(format!(
            "{name}: {percent} is not a percentage between 0 and 100"
        )));
    }
    Ok((percent * 100.0).round() as u32)
}

/// A deploy request as the gate takes it.
pub(super) fn deploy_of(request: admin::DeployRequest) -> Result<Deploy, Status> {
    let isolation = deploy_isolation(&request)?;
    let limits = rule_limits_of(request.limits.unwrap_or_default())?;
    let signature = match request.signature {
        None => None,
        Some(s) => {
            let signature = PluginSignature {
                key_id: s.key_id,
                not_before_unix: s.not_before_unix,
                not_after_unix: s.not_after_unix,
                signature: s.signature,
            };
            crate::rules::trust::check_signature_fields(&signature)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Some(signature)
        }
    };
    Ok(Deploy {
        signature,
        limits,
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
    })
}

/// A rule's limits as the API gives them: 0 is the default.
impl From<admin::RuleLimits> for RuleLimits {
    fn from(limits: admin::RuleLimits) -> Self {
        let given = |v: u64| (v > 0).then_some(v);
        let given32 = |v: u32| (v > 0).then_some(v);
        Self {
            memory_mib: given32(limits.memory_mib),
            fuel: given(limits.fuel),
            deadline_ms: given(limits.deadline_ms),
            fuel_per_line_percent: given32(limits.fuel_per_line_percent),
            fuel_max_scale: given32(limits.fuel_max_scale),
        }
    }
}

/// A rule's limits from the API (0: the default); an error names the field to fix.
pub(super) fn rule_limits_of(limits: admin::RuleLimits) -> Result<RuleLimits, Status> {
    let limits = RuleLimits::from(limits);
    limits.validate().map_err(|e| {
        // "fuel-per-line-percent 10001 is ..." names the field `fuel_per_line_percent`.
        let (field, rest) = e.0.split_once(' ').unwrap_or((e.0.as_str(), ""));
        Status::invalid_argument(format!("limits.{} {rest}", field.replace('-', "_")))
    })?;
    Ok(limits)
}

/// A rule's limits as the API shows them.
pub(crate) fn rule_limits_info(limits: &RuleLimits) -> admin::RuleLimits {
    admin::RuleLimits {
        memory_mib: limits.memory_mib.unwrap_or(0),
        fuel: limits.fuel.unwrap_or(0),
        deadline_ms: limits.deadline_ms.unwrap_or(0),
        fuel_per_line_percent: limits.fuel_per_line_percent.unwrap_or(0),
        fuel_max_scale: limits.fuel_max_scale.unwrap_or(0),
    }
}

/// A heartbeat as the API answers it.
pub(super) fn worker_info(status: WorkerStatus, active: Option<u64>) -> admin::WorkerInfo {
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
pub(super) fn active_info(record: RulesetRecord) -> Response<admin::RulesetInfo> {
    Response::new(info(&record, true))
}

/// A record as the API shows it.
pub(super) fn info(record: &RulesetRecord, active: bool) -> admin::RulesetInfo {
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
                limits: (!r.limits.is_default()).then(|| rule_limits_info(&r.limits)),
                signature: r.signature.as_ref().map(|s| admin::PluginSignature {
                    key_id: s.key_id.clone(),
                    not_before_unix: s.not_before_unix,
                    not_after_unix: s.not_after_unix,
                    signature: s.signature.clone(),
                }),
            })
            .collect(),
        reason: record.body.reason.clone(),
        created_at_unix_ms: record.body.created_at_unix_ms,
        active,
    }
}

/// The proto enum of `isolation`.
pub(super) fn isolation_mode(isolation: Isolation) -> admin::IsolationMode {
    match isolation {
        Isolation::Fresh => admin::IsolationMode::Fresh,
        Isolation::Reuse => admin::IsolationMode::Reuse,
    }
}

/// A deploy's isolation: `isolation_mode` when set, else the older string field (empty
/// means fresh); the two must agree when both are given.
pub(super) fn deploy_isolation(request: &admin::DeployRequest) -> Result<Isolation, Status> {
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
