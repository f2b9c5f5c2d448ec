//! Shared helpers for the end-to-end tests: where things are, and small builders.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use order_pipeline::engine::{Engine, Isolation, Limits, Plugin, RuleChain, RuleSpec};
use order_pipeline::order::Order;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Path of a plugin built from `plugins/` by the host's build script, e.g. `fixture_spin`.
pub fn built_plugin(stem: &str) -> PathBuf {
    Path::new(order_pipeline::ruleset::PLUGIN_BUILD_DIR).join(format!("{stem}.wasm"))
}

/// Loads a built plugin into `engine`.
pub fn load(engine: &Engine, stem: &str) -> anyhow::Result<Arc<Plugin>> {
    let path = built_plugin(stem);
    let bytes = std::fs::read(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(engine.load(&bytes)?)
}

/// A chain of the given built plugins, each with its config, fresh instances.
pub fn chain(engine: &Engine, plugins: &[(&str, &[(&str, &str)])]) -> anyhow::Result<RuleChain> {
    chain_with(engine, plugins, Isolation::Fresh)
}

/// Like [`chain`] with the given isolation for every rule.
pub fn chain_with(
    engine: &Engine,
    plugins: &[(&str, &[(&str, &str)])],
    isolation: Isolation,
) -> anyhow::Result<RuleChain> {
    let specs = plugins
        .iter()
        .map(|(stem, config)| {
            Ok(RuleSpec {
                plugin: load(engine, stem)?,
                config: config
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                isolation,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(RuleChain::new(specs)?)
}

/// An engine with default limits.
pub fn engine() -> Engine {
    engine_with(Limits::default())
}

/// An engine with the given limits; panics (test helper) if it cannot be built.
pub fn engine_with(limits: Limits) -> Engine {
    match Engine::new(limits) {
        Ok(engine) => engine,
        Err(e) => panic!("cannot build engine: {e:#}"),
    }
}

/// The Go API's e2e order: `e2e-test-1`, `book`, 42.
pub fn go_order() -> Order {
    Order::single_item("e2e-test-1", "book", 42, "USD")
}

/// Runs the CLI; returns (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let mut out = Vec::new();
    let mut err = Vec::new();
    let mut argv = vec!["order-pipeline"];
    argv.extend_from_slice(args);
    let code = order_pipeline::cli::run(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}
