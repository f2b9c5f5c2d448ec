//! Rules in the running pipeline: the [`registry`] every worker shares (plugins by digest,
//! ruleset versions), the [`live`] ruleset each worker follows and swaps atomically, and
//! the plain data of a ruleset version ([`versions`]).

pub mod live;
pub mod registry;
pub mod versions;
