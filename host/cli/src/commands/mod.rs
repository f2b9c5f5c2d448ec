//! The commands: [`serve`] the roles, the [`client`]s (`submit`, `get`, `health`,
//! `bench`), the [`plugin`] author's tools, and the [`admin`] calls that change the live
//! ruleset.

pub(crate) mod admin;
pub(crate) mod audit;
pub(crate) mod client;
pub(crate) mod new;
pub(crate) mod plugin;
pub(crate) mod replay;
pub(crate) mod rollout;
pub(crate) mod serve;
pub(crate) mod signing;
