//! [`Engine`]: the wasmtime engine (component model, fuel, epoch interruption, the
//! pooling allocator), the linker that grants plugins their only capability, `log`, and
//! what every chain of the engine shares (the compiled cache, the idle-instance budget).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;

use anyhow::Context as _;
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Config, Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};

use crate::bindings;
use crate::cache;
use crate::instance::HostState;
use crate::limits::{self, Limits};
use crate::native::NativeTwins;
use crate::wasi;

/// A wasmtime engine configured for rule plugins. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    wasmtime: wasmtime::Engine,
    linker: Linker<HostState>,
    limits: Limits,
    /// Native twins of plugins (benchmark baseline only).
    native: Option<Arc<dyn NativeTwins>>,
    /// Where compiled components are cached ([`Engine::cache_compiled_in`]).
    cache_dir: std::sync::OnceLock<std::path::PathBuf>,
    /// Idle reused instances held by every pool of this engine ([`Engine::reserve_idle`]).
    idle: AtomicU32,
}

impl Engine {
    /// Creates an engine enforcing `limits` and starts its epoch ticker thread, which
    /// stops when the last clone of the engine is dropped.
    pub fn new(limits: Limits) -> anyhow::Result<Self> {
        Self::build(limits, None)
    }

    /// Like [`Engine::new`], but a chain step whose plugin has a twin in `twins` runs the
    /// twin natively instead of the component: the **benchmark baseline**, never for
    /// production (no isolation, fuel, deadline or memory cap for those steps).
    pub fn with_native_twins(limits: Limits, twins: Arc<dyn NativeTwins>) -> anyhow::Result<Self> {
        Self::build(limits, Some(twins))
    }

    fn build(limits: Limits, native: Option<Arc<dyn NativeTwins>>) -> anyhow::Result<Self> {
        limits.validate()?;
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .consume_fuel(true)
            .epoch_interruption(true);
        let slots = limits.max_instances;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            // Components built by wit-component hold a few small core instances (shims).
            .total_core_instances(slots.saturating_mul(8))
            .total_memories(slots.saturating_mul(2))
            .total_tables(slots.saturating_mul(4))
            // A rule's own memory cap may exceed the engine's (`RuleLimits`); each store's
            // limiter holds every instance to its rule's cap.
            .max_memory_size(
                limits
                    .memory_bytes
                    .max((limits::MAX_RULE_MEMORY_MIB as usize) << 20),
            )
            // Measured here: these keep a fresh instance at ~10 µs instead of ~25-80 µs.
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(256 << 10)
            .pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let wasmtime = wasmtime::Engine::new(&config)
            .map_err(anyhow::Error::from)
            .context("configuring wasmtime")?;

        let mut linker = Linker::new(&wasmtime);
        wasi::add_to_linker(&mut linker)
            .context("adding the (empty) WASI context to the linker")?;
        bindings::Rule::add_to_linker::<_, HasSelf<_>>(&mut linker, |state| state)
            .map_err(anyhow::Error::from)
            .context("adding the log import to the linker")?;

        spawn_epoch_ticker(&wasmtime)?;
        Ok(Self {
            inner: Arc::new(EngineInner {
                wasmtime,
                linker,
                limits,
                native,
                cache_dir: std::sync::OnceLock::new(),
                idle: AtomicU32::new(0),
            }),
        })
    }

    /// From now on, compiled components are kept in `dir` (and loaded from it) by their
    /// sha256 and this engine's settings. Once per engine; later calls change nothing.
    /// `dir` is created 0700 if missing; one that a link, another user's, or writable by
    /// group or others is refused (it would hold native code this process runs).
    pub fn cache_compiled_in(&self, dir: std::path::PathBuf) -> anyhow::Result<()> {
        cache::prepare_dir(&dir)?;
        let _ = self.inner.cache_dir.set(dir);
        Ok(())
    }

    /// Where compiled components are cached, if anywhere.
    pub fn compiled_cache(&self) -> Option<&std::path::Path> {
        self.inner.cache_dir.get().map(std::path::PathBuf::as_path)
    }

    /// The limits every call is held to.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The native twins this engine runs instead of components, if any.
    pub(crate) fn native_twins(&self) -> Option<&dyn NativeTwins> {
        self.inner.native.as_deref()
    }

    /// Takes one of the slots that idle reused instances may hold, across every rule
    /// and chain of this engine: half of [`Limits::max_instances`], so that pooled
    /// instances never take the slots that new ones need. False when none is left.
    pub(crate) fn reserve_idle(&self) -> bool {
        let budget = self.inner.limits.max_instances / 2;
        self.inner
            .idle
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < budget).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back `count` slots taken by [`Engine::reserve_idle`].
    pub(crate) fn release_idle(&self, count: usize) {
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        self.inner.idle.fetch_sub(count, Ordering::Relaxed);
    }

    pub(crate) fn wasmtime(&self) -> &wasmtime::Engine {
        &self.inner.wasmtime
    }

    pub(crate) fn linker(&self) -> &Linker<HostState> {
        &self.inner.linker
    }
}

fn spawn_epoch_ticker(engine: &wasmtime::Engine) -> anyhow::Result<()> {
    let weak = engine.weak();
    thread::Builder::new()
        .name("wasm-epoch".into())
        .spawn(move || {
            loop {
                thread::sleep(limits::EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => return,
                }
            }
        })
        .context("starting the epoch ticker thread")?;
    Ok(())
}
