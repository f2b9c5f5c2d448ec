//! What every order-pipeline rule plugin shares: the bindings of the `order:rules@0.1.0`
//! WIT world, the glue that turns a [`Rule`] into the exported component functions, and
//! helpers to read the rule's key/value config and to do money arithmetic.
//!
//! A rule implements [`Rule`] with a pure `decide` function (unit-testable on the host
//! target) and exports itself with [`export_rule!`].

use std::any::Any;
use std::cell::RefCell;

/// The allocator of wasm32-unknown-unknown builds (the built-in plugins). std's own
/// dlmalloc gets every byte of heap from `memory.grow`, so each fresh instance grew its
/// memory, which costs the host an `mprotect` and a TLB shootdown on every instantiation;
/// dlmalloc 0.2.14 first uses the free part of the initial memory (`__heap_base` to
/// `__heap_end`), which `plugins/.cargo/config.toml` sizes to hold an order's work.
#[cfg(all(target_arch = "wasm32", target_os = "unknown"))]
#[global_allocator]
static ALLOCATOR: dlmalloc::GlobalDlmalloc = dlmalloc::GlobalDlmalloc;

pub mod config;
pub mod money;

pub use config::Config;

/// Bindings generated from `wit/` (the one place plugins generate them).
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "rule",
        path: "../../wit",
        pub_export_macro: true,
        export_macro_name: "__export_rule_world",
    });
}

use bindings::Guest;
pub use bindings::order::rules::log::{Level, log};
pub use bindings::order::rules::types::{
    Adjustment, AdjustmentKind, ChainContext, Order, OrderLine, Outcome, PluginInfo, Reason,
    RetryError, Totals,
};

/// A business rule, written as plain Rust: what it is, how it reads its config, and the
/// decision itself.
pub trait Rule: 'static {
    /// The parsed configuration the decision needs.
    type Settings: 'static;

    /// Name, version and description.
    fn info() -> PluginInfo;

    /// Parses the config; every key the rule knows must be taken from `config`, so that
    /// unknown keys are reported by the caller.
    fn settings(config: &mut Config) -> Result<Self::Settings, String>;

    /// The decision: a pure function of the order, what earlier rules did, and settings.
    fn decide(order: &Order, context: &ChainContext, settings: &Self::Settings) -> Outcome;
}

/// Turns a [`Rule`] into the exported functions of the `rule` world. Used by
/// [`export_rule!`]; not meant to be named by plugins.
pub struct Component<R>(std::marker::PhantomData<R>);

thread_local! {
    /// The settings from the last successful `configure` of this instance.
    static SETTINGS: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// Sends a panic's message to the host through `log` (error level, `panic: ...`) before
/// the trap, so that it can say why the rule failed: a wasm32-unknown-unknown build has
/// no stderr. Installed by the first call into an instance.
fn report_panics() {
    #[cfg(target_arch = "wasm32")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                log(Level::Error, &format!("panic: {info}"))
            }));
        });
    }
}

impl<R: Rule> Guest for Component<R> {
    fn describe() -> PluginInfo {
        report_panics();
        R::info()
    }

    fn configure(config: Vec<(String, String)>) -> Result<(), String> {
        report_panics();
        let settings = parse_settings::<R>(config)?;
        SETTINGS.with(|cell| *cell.borrow_mut() = Some(Box::new(settings)));
        Ok(())
    }

    fn evaluate(order: Order, context: ChainContext) -> Outcome {
        report_panics();
        SETTINGS.with(|cell| {
            let mut cell = cell.borrow_mut();
            if cell.is_none() {
                // The host always configures first; an unconfigured instance gets defaults.
                match parse_settings::<R>(Vec::new()) {
                    Ok(settings) => *cell = Some(Box::new(settings)),
                    Err(message) => {
                        return Outcome::Retryable(RetryError {
                            code: "not-configured".into(),
                            message,
                        });
                    }
                }
            }
            match cell.as_ref().and_then(|s| s.downcast_ref::<R::Settings>()) {
                Some(settings) => R::decide(&order, &context, settings),
                None => Outcome::Retryable(RetryError {
                    code: "not-configured".into(),
                    message: "settings of another type were stored".into(),
                }),
            }
        })
    }
}

/// Parses `config` into `R::Settings`, refusing keys the rule did not take.
pub fn parse_settings<R: Rule>(config: Vec<(String, String)>) -> Result<R::Settings, String> {
    let mut config = Config::new(config)?;
    let settings = R::settings(&mut config)?;
    config.finish()?;
    Ok(settings)
}

/// Exports a [`Rule`] implementation as this component's `rule` world. Only on wasm:
/// natively the crate is a plain library (its `decide` used by tests and benchmarks),
/// and several rules can be linked into one program.
#[macro_export]
macro_rules! export_rule {
    ($rule:ident) => {
        #[cfg(target_arch = "wasm32")]
        mod __order_pipeline_export {
            type __OrderPipelineRule = $crate::Component<super::$rule>;
            $crate::bindings::__export_rule_world!(__OrderPipelineRule with_types_in $crate::bindings);
        }
    };
}

/// Shorthand for a rejection with one reason.
pub fn reject(code: &str, message: impl Into<String>) -> Outcome {
    Outcome::Reject(vec![reason(code, message)])
}

/// Builds a [`Reason`].
pub fn reason(code: &str, message: impl Into<String>) -> Reason {
    Reason {
        code: code.to_string(),
        message: message.into(),
    }
}

/// Builds [`PluginInfo`] from this crate's Cargo metadata.
#[macro_export]
macro_rules! plugin_info {
    () => {
        $crate::PluginInfo {
            name: env!("CARGO_PKG_NAME").to_string(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            description: env!("CARGO_PKG_DESCRIPTION").to_string(),
        }
    };
}

/// Builders for the rules' unit tests.
pub mod testing {
    use super::*;

    /// An order in `currency` with `lines` as (sku, quantity, unit price); other fields empty.
    pub fn order(currency: &str, lines: &[(&str, u32, i64)]) -> Order {
        Order {
            id: "o-1".into(),
            customer_id: String::new(),
            currency: currency.into(),
            lines: lines
                .iter()
                .map(|(sku, quantity, unit_price)| OrderLine {
                    sku: sku.to_string(),
                    quantity: *quantity,
                    unit_price: *unit_price,
                })
                .collect(),
            shipping_country: String::new(),
            coupon_codes: Vec::new(),
            attributes: Vec::new(),
        }
    }

    /// The context a first rule in a chain sees: totals from the lines (saturating, as the
    /// host computes them), no adjustments.
    pub fn context(order: &Order) -> ChainContext {
        let subtotal = order
            .lines
            .iter()
            .map(|l| l.unit_price.saturating_mul(i64::from(l.quantity)))
            .fold(0i64, i64::saturating_add);
        ChainContext {
            totals: Totals {
                subtotal,
                discounts: 0,
                surcharges: 0,
                tax: 0,
                total: subtotal,
            },
            adjustments: Vec::new(),
        }
    }

    /// Settings parsed from `pairs` exactly as the host's `configure` call would.
    pub fn settings<R: Rule>(pairs: &[(&str, &str)]) -> Result<R::Settings, String> {
        parse_settings::<R>(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reject_builds_one_reason() {
        match reject("bad", "it is bad") {
            Outcome::Reject(reasons) => {
                assert_eq!(reasons.len(), 1);
                assert_eq!(reasons[0].code, "bad");
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[test]
    fn test_context_sums_lines() {
        let order = testing::order("EUR", &[("a", 2, 150), ("b", 1, 100)]);
        assert_eq!(testing::context(&order).totals.total, 400);
    }
}
