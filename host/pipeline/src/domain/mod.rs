//! The domain: the order (the engine's [`Order`], what rules decide on) and its result
//! ([`OrderResult`], what the stores keep and the CacheService serves), and the wire
//! format of both ([`wire`]: protobuf <-> domain, with the validation of every field).

mod result;
pub mod wire;

pub use order_rules_engine::{AdjustmentKind, Order, OrderLine, Totals};
pub use result::{OrderResult, PutOutcome, ResultStatus, now_unix_ms};
