//! The WASI that plugins built for wasm32-wasip2 import, and nothing in it: no
//! filesystem, environment, arguments, network or stdin, both clocks stopped at zero,
//! stderr captured (bounded) for the report of a trap. Only with the `wasi` feature; the
//! built-in plugins (wasm32-unknown-unknown) import no WASI and run without it, and
//! without the feature a plugin that imports WASI is refused at load.

#[cfg(feature = "wasi")]
pub(crate) use with_wasi::{Wasi, add_to_linker};
#[cfg(not(feature = "wasi"))]
pub(crate) use without_wasi::{Wasi, add_to_linker};

#[cfg(feature = "wasi")]
mod with_wasi {

    use std::time::Duration;

    use wasmtime::component::{Linker, ResourceTable};
    use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
    use wasmtime_wasi::{
        HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView,
    };

    use crate::limits::MAX_STDERR_BYTES;

    /// The WASI state of one store.
    pub(crate) struct Wasi {
        ctx: WasiCtx,
        table: ResourceTable,
        stderr: MemoryOutputPipe,
    }

    impl Wasi {
        /// An empty WASI context whose stderr is kept.
        pub(crate) fn new() -> Self {
            let stderr = MemoryOutputPipe::new(MAX_STDERR_BYTES);
            let ctx = WasiCtxBuilder::new()
                .stderr(stderr.clone())
                .allow_tcp(false)
                .allow_udp(false)
                .allow_ip_name_lookup(false)
                .wall_clock(StoppedClock)
                .monotonic_clock(StoppedClock)
                .build();
            Self {
                ctx,
                table: ResourceTable::new(),
                stderr,
            }
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

    /// No WASI state.
    pub(crate) struct Wasi;

    impl Wasi {
        pub(crate) fn new() -> Self {
            Self
        }

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
