//! Rules in the running pipeline: the [`registry`] every worker shares (plugins by digest,
//! ruleset versions), the [`live`] ruleset each worker follows and swaps atomically, the
//! deploy [`gate`] every change goes through (placement, rollback target), the
//! [`quarantine`] policy, the [`trust`] signed plugins need (`PLUGIN_TRUST_FILE`), and each
//! worker's [`status`] heartbeat. The plain data of a ruleset version is
//! [`domain::ruleset`](crate::domain::ruleset).

pub mod gate;
pub mod live;
pub mod quarantine;
pub mod registry;
pub mod report;
pub mod rollout;
pub mod status;
pub mod supervisor;
pub mod trust;
