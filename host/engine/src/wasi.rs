//! The WASI that plugins built for wasm32-wasip2 import, and nothing in it: no
//! filesystem, environment, arguments, network or stdin, both clocks stopped at zero,
//! randomness seeded per order ([`OrderSeed`]: the same order and rule always draw the
//! same bytes, so a replay or a shadow run decides exactly as the live run did), random
//! requests bounded by [`MAX_RANDOM_BYTES`](crate::limits::MAX_RANDOM_BYTES), stderr
//! captured (bounded) for the report of a trap. Only with the `wasi` feature; the
//! built-in plugins (wasm32-unknown-unknown) import no WASI and run without it, and
//! without the feature a plugin that imports WASI is refused at load.

use sha2::{Digest as _, Sha256};

#[cfg(feature = "wasi")]
pub(crate) use with_wasi::{Wasi, add_to_linker};
#[cfg(not(feature = "wasi"))]
pub(crate) use without_wasi::{Wasi, add_to_linker};

/// What a rule's randomness is seeded from, besides the order's id: the rule as the
/// ruleset holds it (its component's digest and its config), so that a rule draws the
/// same bytes for an order under every ruleset version that has it unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OrderSeed([u8; 32]);

impl OrderSeed {
    /// The seed of the rule of component `digest` with `config`.
    pub(crate) fn of_rule(digest: &str, config: &[(String, String)]) -> Self {
        let mut hash = Sha256::new();
        hash.update(b"order-pipeline wasi random v1\0");
        hash.update(digest.as_bytes());
        for (key, value) in config {
            for part in [key, value] {
                hash.update((part.len() as u64).to_le_bytes());
                hash.update(part.as_bytes());
            }
        }
        Self(hash.finalize().into())
    }

    /// The generator's seed for order `id`.
    #[cfg_attr(not(feature = "wasi"), allow(dead_code))]
    pub(crate) fn for_order(&self, id: &str) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(self.0);
        hash.update(id.as_bytes());
        hash.finalize().into()
    }

    /// The constant `wasi:random/insecure-seed` answers for this rule.
    #[cfg_attr(not(feature = "wasi"), allow(dead_code))]
    pub(crate) fn insecure_seed(&self) -> u128 {
        let mut bytes = [0; 16];
        bytes.copy_from_slice(&self.0[..16]);
        u128::from_le_bytes(bytes)
    }
}

#[cfg(feature = "wasi")]
mod with_wasi {

    use std::convert::Infallible;
    use std::sync::{Arc, Mutex, PoisonError};
    use std::time::Duration;

    use rand::rngs::StdRng;
    use rand::{Rng as _, SeedableRng as _, TryRng};
    use wasmtime::component::{Linker, ResourceTable};
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
    use wasmtime_wasi::{
        HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
    };

    use super::OrderSeed;
    use crate::limits::{MAX_RANDOM_BYTES, MAX_STDERR_BYTES};

    /// The WASI state of one store.
    pub(crate) struct Wasi {
        ctx: WasiCtx,
        table: ResourceTable,
        stderr: MemoryOutputPipe,
        random: SeededRandom,
    }

    impl Wasi {
        /// An empty WASI context whose stderr is kept, for the rule seeded by `seed`.
        pub(crate) fn new(seed: &OrderSeed) -> Self {
            let stderr = MemoryOutputPipe::new(MAX_STDERR_BYTES);
            let random = SeededRandom::default();
            // Until the first evaluation (`describe`, `configure`): the rule's own seed.
            random.lock().seed = Some((*seed, String::new()));
            let ctx = WasiCtxBuilder::new()
                .stderr(stderr.clone())
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .wall_clock(StoppedClock)
                .monotonic_clock(StoppedClock)
                .secure_random(random.clone())
                .insecure_random(random.clone())
                .insecure_random_seed(seed.insecure_seed())
                .max_random_size(MAX_RANDOM_BYTES)
                .build();
            Self {
                ctx,
                table: ResourceTable::new(),
                stderr,
                random,
            }
        }

        /// Seeds the randomness of the next call, for order `id`: the generator is made
        /// only if the plugin draws (most rules never do).
        pub(crate) fn seed_for(&self, seed: &OrderSeed, id: &str) {
            let mut state = self.random.lock();
            state.seed = Some((*seed, id.to_string()));
            state.rng = None;
        }

        /// What the plugin wrote to stderr (where a Rust panic message goes), trimmed.
        pub(crate) fn stderr(&self) -> String {
            String::from_utf8_lossy(&self.stderr.contents())
                .trim()
                .to_string()
        }
    }

    impl Wasi {
        /// What wasmtime-wasi works on: the store data's [`WasiView`] returns this.
        pub(crate) fn view(&mut self) -> WasiCtxView<'_> {
            WasiCtxView {
                ctx: &mut self.ctx,
                table: &mut self.table,
            }
        }
    }

    /// Links the (empty) WASI context of the store data `T`.
    pub(crate) fn add_to_linker<T: WasiView + 'static>(
        linker: &mut Linker<T>,
    ) -> anyhow::Result<()> {
        wasmtime_wasi::p2::add_to_linker_sync(linker).map_err(anyhow::Error::from)
    }

    /// The generator behind both WASI random interfaces of one store: ChaCha12 seeded
    /// from the rule and the order of the call ([`Wasi::seed_for`]).
    #[derive(Clone, Default)]
    struct SeededRandom(Arc<Mutex<RandomState>>);

    #[derive(Default)]
    struct RandomState {
        /// What the next generator is made from, until it is made.
        seed: Option<(OrderSeed, String)>,
        rng: Option<StdRng>,
    }

    impl SeededRandom {
        fn lock(&self) -> std::sync::MutexGuard<'_, RandomState> {
            self.0.lock().unwrap_or_else(PoisonError::into_inner)
        }

        fn with<T>(&self, draw: impl FnOnce(&mut StdRng) -> T) -> T {
            let mut state = self.lock();
            let state = &mut *state;
            let rng = state.rng.get_or_insert_with(|| {
                // Outside an evaluation (configure): the rule's seed and no order.
                let seed = match &state.seed {
                    Some((seed, id)) => seed.for_order(id),
                    None => [0; 32],
                };
                StdRng::from_seed(seed)
            });
            draw(rng)
        }
    }

    impl TryRng for SeededRandom {
        type Error = Infallible;

        fn try_next_u32(&mut self) -> Result<u32, Infallible> {
            Ok(self.with(|rng| rng.next_u32()))
        }
        fn try_next_u64(&mut self) -> Result<u64, Infallible> {
            Ok(self.with(|rng| rng.next_u64()))
        }
        fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
            self.with(|rng| rng.fill_bytes(dst));
            Ok(())
        }
    }

    /// Plugins get no clock: both WASI clocks stand still at zero.
    struct StoppedClock;

    impl HostWallClock for StoppedClock {
        fn resolution(&self) -> Duration {
            Duration::from_secs(1)
        }
        fn now(&self) -> Duration {
            Duration::ZERO
        }
    }

    impl HostMonotonicClock for StoppedClock {
        fn resolution(&self) -> u64 {
            1_000_000_000
        }
        fn now(&self) -> u64 {
            0
        }
    }
}

#[cfg(not(feature = "wasi"))]
mod without_wasi {

    use wasmtime::component::Linker;

    use super::OrderSeed;

    /// No WASI state.
    pub(crate) struct Wasi;

    impl Wasi {
        pub(crate) fn new(_seed: &OrderSeed) -> Self {
            Self
        }

        /// Nothing to seed without WASI.
        pub(crate) fn seed_for(&self, _seed: &OrderSeed, _id: &str) {}

        /// Nothing is captured without WASI.
        pub(crate) fn stderr(&self) -> String {
            String::new()
        }
    }

    /// Links nothing.
    pub(crate) fn add_to_linker<T>(_linker: &mut Linker<T>) -> anyhow::Result<()> {
        Ok(())
    }
}
