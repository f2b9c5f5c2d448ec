//! Compiled components on disk, by the component's sha256 and the engine's settings
//! (wasmtime's `precompile_compatibility_hash`): a worker that switches to a plugin it
//! compiled before (or that another process on the machine compiled) loads native code
//! instead of compiling again, which for a 10-20 MB interpreter-based plugin takes
//! seconds. A file that does not load (another wasmtime, a torn write) is compiled again
//! and replaced.
//!
//! What the directory holds is native code the host runs: it must be as protected as the
//! binary itself.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use wasmtime::component::Component;

/// Where the compiled form of component `digest` goes for `engine`.
fn path_of(engine: &wasmtime::Engine, dir: &Path, digest: &str) -> PathBuf {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    dir.join(format!("{digest}-{:016x}.cwasm", hasher.finish()))
}

/// Component `bytes` (of sha256 `digest`), from `dir` when it was compiled there before
/// for this engine's settings, else compiled and stored there. Answers whether it came
/// from the cache.
pub(crate) fn load_or_compile(
    engine: &wasmtime::Engine,
    dir: &Path,
    digest: &str,
    bytes: &[u8],
) -> wasmtime::Result<(Component, bool)> {
    let path = path_of(engine, dir, digest);
    if path.is_file() {
        // SAFETY: the file is one `store` below wrote: this engine's compilation of the
        // component whose sha256 names it, in a directory only the host writes (see the
        // module's note). wasmtime checks that it was made by a compatible engine.
        match unsafe { Component::deserialize_file(engine, &path) } {
            Ok(component) => return Ok((component, true)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "a cached component does not load; compiling it again");
            }
        }
    }
    let component = Component::new(engine, bytes)?;
    if let Err(e) = store(&component, &path) {
        tracing::warn!(path = %path.display(), error = %format!("{e:#}"), "cannot cache a compiled component");
    }
    Ok((component, false))
}

/// Writes the compiled component to `path`, atomically (a temporary file, renamed).
fn store(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize().map_err(anyhow::Error::from)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_extension(format!("partial-{}", std::process::id()));
    std::fs::write(&partial, bytes)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}
