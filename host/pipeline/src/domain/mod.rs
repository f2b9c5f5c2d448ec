//! The domain: the order (the engine's [`Order`], what rules decide on) and its result
//! ([`OrderResult`], what the stores keep and the CacheService serves), the wire format
//! of both ([`wire`]: protobuf <-> domain, with the validation of every field), and a
//! ruleset version as the registry stores it ([`ruleset`]).

pub mod audit;
pub mod diff;
pub mod heartbeat;
mod result;
pub mod ruleset;
pub mod wire;

pub use order_rules_engine::{AdjustmentKind, Order, OrderLine, Totals};
pub use result::{OrderResult, PutOutcome, Replaced, ResultStatus, now_unix_ms};
